"""Per-instance layouts: pipeline stages (vLLM's layer split and batch queue), expert and
data-parallel attention memory, and the layout rules."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.errors import MeshplanError
from meshplan.serve import DeploymentSpec, Lengths, Workload, draw, resolve
from meshplan.serve.deployment import stage_layers
from meshplan.serve.iteration import (
    IterationCost,
    kv_bytes_per_token_per_gpu,
    kv_capacity,
    weights_bytes_per_gpu,
)
from meshplan.serve.loop import simulate
from meshplan.specs.io import load_cluster, load_model

CLUSTER = load_cluster("dgx-h100")


def deploy(model="llama3-8b", **kw):
    m = load_model(model) if isinstance(model, str) else model
    return resolve(m, CLUSTER, DeploymentSpec(**kw))


def test_stage_layers_follow_vllm_get_pp_indices():
    # vllm/distributed/utils.py get_pp_indices: the remainder goes to the stages just before
    # the last
    assert stage_layers(32, 2) == (16, 16)
    assert stage_layers(30, 4) == (7, 8, 8, 7)
    assert stage_layers(31, 4) == (8, 8, 8, 7)
    assert stage_layers(80, 3) == (27, 27, 26)
    assert sum(stage_layers(61, 7)) == 61


def test_weights_per_gpu_by_layout():
    m = load_model("llama3-8b")
    h, V = m.hidden_size, m.vocab_size
    d = deploy(tp=2, pp=2)
    # per layer: attention (q, o: h x h; k, v: h x 1024) + gated MLP 3 h f + two RMSNorms
    layer = 2 * h * h + 2 * h * 8 * 128 + 3 * h * m.ffn_hidden_size + 2 * h
    last = 16 * layer + V * h + h  # the last stage: LM head and final norm
    assert weights_bytes_per_gpu(d) == pytest.approx(2.0 * last / 2, rel=1e-12)
    assert weights_bytes_per_gpu(deploy(tp=2)) == pytest.approx(
        2.0 * (32 * layer + 2 * V * h + h) / 2, rel=1e-12)
    # Mixtral: experts over the stage's tp GPUs whatever ep; dp attention replicates the rest
    mx = load_model("mixtral-8x7b")
    full = weights_bytes_per_gpu(deploy(mx, tp=4))
    assert weights_bytes_per_gpu(deploy(mx, tp=4, ep=4)) == pytest.approx(full, rel=1e-12)
    from meshplan.cost.params import count_params
    c = count_params(mx)
    experts = 32 * c.expert
    other = c.total - experts
    assert weights_bytes_per_gpu(deploy(mx, tp=4, ep=4, dp_attention=2)) == pytest.approx(
        2.0 * (other / 2 + experts / 4), rel=1e-12)


def test_kv_per_gpu_splits_by_tp_and_pp_and_replicates_past_the_kv_heads():
    d = deploy(tp=2, pp=2)
    assert kv_bytes_per_token_per_gpu(d) == 16 * 2 * (8 / 2) * 128 * 2.0
    few = load_model("llama3-8b").model_copy(update={"num_kv_heads": 2})
    assert kv_bytes_per_token_per_gpu(deploy(few, tp=4)) == 32 * 2 * 1 * 128 * 2.0
    # dp attention: each rank its own pool, the heads split over tp / dp only
    mx = load_model("mixtral-8x7b")
    one, two = kv_capacity(deploy(mx, tp=4, ep=4)), kv_capacity(deploy(mx, tp=4, ep=4,
                                                                       dp_attention=2))
    assert two.attention_ranks == 2 and two.num_blocks == 2 * two.blocks_per_rank
    assert kv_bytes_per_token_per_gpu(deploy(mx, tp=4, dp_attention=2)) == 32 * 2 * 4 * 128 * 2.0
    assert one.block_bytes * 2 == two.block_bytes


@pytest.mark.parametrize(("kw", "match"), [
    (dict(tp=3), "must divide num_attention_heads"),
    (dict(ep=2), "only for MoE"),
    (dict(dp_attention=2, tp=2), "only for MoE"),
    (dict(pp=33), "more pipeline stages than layers"),
    (dict(tp=16), "fit in one node"),
])
def test_bad_layouts_are_one_line_errors(kw, match):
    with pytest.raises(MeshplanError, match=match) as e:
        deploy(**kw)
    assert "\n" not in str(e.value)


def test_bad_moe_layouts_are_one_line_errors():
    for kw, match in ((dict(tp=4, ep=3), "ep=3: must divide tp"),
                      (dict(tp=4, dp_attention=3), "dp_attention=3: must divide tp")):
        with pytest.raises(MeshplanError, match=match):
            deploy("mixtral-8x7b", **kw)
    odd = load_model("llama3-8b").model_copy(update={"num_attention_heads": 48,
                                                     "num_kv_heads": 8})
    with pytest.raises(MeshplanError, match="num_kv_heads"):
        deploy(odd, tp=6)


def one(d, prompt, out, plain=False):
    w = Workload(arrival="burst", num_requests=1, input=Lengths(mean=prompt),
                 output=Lengths(mean=out))
    return simulate(d, draw(w), plain=plain)


def test_two_stages_add_the_send_to_one_request_alone():
    """Same total layers: TTFT(pp=2) = TTFT(pp=1) + one stage hand-off of the prompt."""
    prompt = 1000
    flat, piped = deploy(tp=1), deploy(tp=1, pp=2)
    t1 = one(flat, prompt, 1).metrics.ttft_s[0]
    t2 = one(piped, prompt, 1).metrics.ttft_s[0]
    send = IterationCost(piped).send_time(prompt, 0)
    assert send > 0
    assert t2 == pytest.approx(t1 + send, rel=1e-9)
    # every decode step pays its one-token send too
    e1, e2 = one(flat, prompt, 20).metrics.e2e_s[0], one(piped, prompt, 20).metrics.e2e_s[0]
    sends = send + sum(IterationCost(piped).send_time(1, 0) for _ in range(19))
    assert e2 == pytest.approx(e1 + sends, rel=1e-9)


def test_a_loaded_pipeline_keeps_both_stages_busy():
    """With many requests two batches are in flight: output tokens/s well above the
    stage-serialised instance (pp=1 on the same layers, no sends)."""
    w = Workload(arrival="burst", num_requests=600, input=Lengths(mean=256),
                 output=Lengths(mean=128), seed=2)
    reqs = draw(w)
    flat = simulate(deploy(tp=1), reqs).to_json()["metrics"]["output_tokens_per_s"]
    piped = simulate(deploy(tp=1, pp=2), reqs).to_json()["metrics"]["output_tokens_per_s"]
    assert piped > 1.3 * flat


@pytest.mark.parametrize("kw", [dict(tp=2, pp=2), dict(tp=1, pp=3)])
def test_pipelined_fast_and_plain_paths_agree(kw):
    d = deploy(**kw)
    w = Workload(arrival="poisson", rate=25, num_requests=300, seed=4,
                 input=Lengths(kind="uniform", mean=700, spread=0.5),
                 output=Lengths(kind="lognormal", mean=60, spread=0.7))
    reqs = draw(w)
    f, p = simulate(d, reqs), simulate(d, reqs, plain=True)
    assert f.iterations == p.iterations
    np.testing.assert_allclose(f.metrics.finish_s, p.metrics.finish_s, rtol=1e-9)
    assert np.all(np.isfinite(f.metrics.finish_s))
    assert f.kv_usage[-1, 1] == 0.0


def test_moe_layouts_simulate_and_expert_parallel_costs_its_all_to_all():
    mx = load_model("mixtral-8x7b")
    tp, ep = deploy(mx, tp=4), deploy(mx, tp=4, ep=4)
    args = (64, 64.0, 64 * 500.0, 64.0, 64 * 501.0, 64)
    ct, ce = IterationCost(tp), IterationCost(ep)
    assert ce._expert_exchange(64.0) > 0
    assert ce.time(*args) == pytest.approx(ce.time_reference(*args), rel=1e-12)
    assert ct.time(*args) != ce.time(*args)
    for d in (ep, deploy(mx, tp=4, ep=2, dp_attention=2), deploy(mx, tp=4, dp_attention=4)):
        w = Workload(arrival="poisson", rate=10, num_requests=100, seed=1,
                     input=Lengths(mean=300), output=Lengths(mean=30))
        r = simulate(d, draw(w))
        assert np.all(np.isfinite(r.metrics.finish_s))
