"""Prefill/decode disaggregation: the closed form of a request alone, the KV transfer by hand,
conservation in both pools, the fast path against the plain loop, JSON and CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from meshplan.errors import MeshplanError
from meshplan.serve import (
    DeploymentSpec,
    DisaggregatedSpec,
    Lengths,
    Workload,
    draw,
    resolve_disaggregated,
)
from meshplan.serve.iteration import IterationCost
from meshplan.serve.loop import simulate
from meshplan.specs.io import load_cluster, load_model

CLUSTER = load_cluster("dgx-h100")
MODEL = load_model("llama3-8b")


def disagg(p=None, d=None):
    return resolve_disaggregated(MODEL, CLUSTER, DisaggregatedSpec(
        prefill=p or DeploymentSpec(), decode=d or DeploymentSpec()))


def alone(dep, prompt, out, plain=False):
    w = Workload(arrival="burst", num_requests=1, input=Lengths(mean=prompt),
                 output=Lengths(mean=out))
    return simulate(dep, draw(w), plain=plain)


def by_hand_transfer(tier: int, nbytes: float) -> float:
    t = CLUSTER.network[tier]
    return nbytes / (t.bandwidth * float(t.bus_efficiency(nbytes))) + t.latency


def test_a_request_alone_prefills_transfers_then_decodes():
    """TTFT = the prefill iteration on the prefill instance; E2E = TTFT + the KV transfer +
    the (out - 1) decode steps on the decode instance."""
    prompt, out = 1000, 40
    dep = disagg(d=DeploymentSpec(tp=2))
    r = alone(dep, prompt, out)
    pre, dec = IterationCost(dep.prefill), IterationCost(dep.decode)
    prefill = pre.time(1, prompt, 0, prompt * prompt, prompt, 1)
    decode = sum(dec.time(1, 1, prompt + g - 1, 1, prompt + g, 1) for g in range(1, out))
    # GPU 0 sends to GPUs 1-2 on the same NVLink node; the larger per-GPU share is the
    # prefill GPU's: every layer's K and V of 8 heads x 128, bf16
    nbytes = prompt * 32 * 2 * 8 * 128 * 2.0
    transfer = by_hand_transfer(0, nbytes)
    assert r.kv_transfer_s[0] == pytest.approx(transfer, rel=1e-12)
    m = r.metrics
    assert m.ttft_s[0] == pytest.approx(prefill, rel=1e-12)
    assert m.e2e_s[0] == pytest.approx(prefill + transfer + decode, rel=1e-12)
    assert r.iterations == out  # one prefill, out - 1 decode steps
    assert alone(dep, prompt, out, plain=True).metrics.e2e_s[0] == pytest.approx(
        m.e2e_s[0], rel=1e-12)


def test_the_transfer_crosses_nodes_over_the_scale_out_link():
    # 8 prefill instances fill node 0; the decode instance is GPU 8, on node 1
    dep = disagg(p=DeploymentSpec(instances=8))
    prompt = 2048
    r = alone(dep, prompt, 4)
    nbytes = prompt * 32 * 2 * 8 * 128 * 2.0
    assert r.kv_transfer_s[0] == pytest.approx(by_hand_transfer(1, nbytes), rel=1e-12)
    assert r.kv_transfer_s[0] > 5 * alone(disagg(), prompt, 4).kv_transfer_s[0]


def test_one_token_requests_end_on_the_prefill_pool():
    w = Workload(arrival="poisson", rate=50, num_requests=50, seed=0, input=Lengths(mean=300),
                 output=Lengths(mean=1))
    r = simulate(disagg(), draw(w))
    assert len(r.kv_transfer_s) == 0
    np.testing.assert_array_equal(r.metrics.finish_s, r.metrics.first_token_s)


@pytest.fixture(scope="module")
def loaded():
    w = Workload(arrival="poisson", rate=30, num_requests=500, seed=5,
                 input=Lengths(kind="uniform", mean=900, spread=0.6),
                 output=Lengths(kind="lognormal", mean=100, spread=0.9))
    dep = disagg(p=DeploymentSpec(instances=2, max_num_batched_tokens=2048),
                 d=DeploymentSpec(tp=2, instances=2, router="least-requests",
                                  gpu_memory_utilization=0.3))
    reqs = draw(w)
    return dep, reqs, simulate(dep, reqs), simulate(dep, reqs, plain=True)


def test_every_request_finishes_once_and_both_pools_free_their_blocks(loaded):
    dep, reqs, r, _ = loaded
    m = r.metrics
    assert np.all(np.isfinite(m.finish_s)) and len(m.finish_s) == len(reqs)
    assert np.all(m.first_token_s >= m.arrival_s) and np.all(m.finish_s >= m.first_token_s)
    assert int(m.itl_weights.sum()) == int((reqs.output_len - 1).sum())
    assert len(r.kv_transfer_s) == int((reqs.output_len > 1).sum())
    assert r.kv_usage[-1, 1] == 0.0  # (the loop also asserts every pool's blocks are free)
    # the second token comes after the first plus a transfer
    many = reqs.output_len > 1
    assert np.all(m.finish_s[many] - m.first_token_s[many] >= r.kv_transfer_s.min())


def test_fast_path_equals_the_plain_loop(loaded):
    _, reqs, f, p = loaded
    assert f.iterations == p.iterations and f.preemptions == p.preemptions
    for name in ("first_scheduled_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(getattr(f.metrics, name), getattr(p.metrics, name),
                                   rtol=1e-9, atol=0)
    np.testing.assert_allclose(np.sort(f.metrics.itl_s), np.sort(p.metrics.itl_s), rtol=1e-9,
                               atol=1e-15)


def test_json_carries_both_pools(loaded):
    dep, _, r, _ = loaded
    out = r.to_json()
    d = out["deployment"]
    assert d["disaggregated"] is True and d["num_gpus"] == 2 + 4 == dep.num_gpus
    for role, tp, n in (("prefill", 1, 2), ("decode", 2, 2)):
        assert d[role]["tp"] == tp and d[role]["instances"] == n and d[role]["pp"] == 1
        assert d[role]["disaggregated"] is False
    assert set(out["memory"]) == {"prefill", "decode"}
    assert out["kv_transfer_ms"]["count"] == len(r.kv_transfer_s)
    assert out["num_completed"] == 500


def test_pools_must_share_the_kv_format_and_fit_the_cluster():
    with pytest.raises(MeshplanError, match="kv_cache_dtype"):
        disagg(d=DeploymentSpec(kv_cache_dtype="fp8"))
    with pytest.raises(MeshplanError, match="decode tp=3"):
        disagg(d=DeploymentSpec(tp=3))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "meshplan", "serve", "simulate", *args],
                          capture_output=True, text=True)


def test_cli_disaggregated_json_and_bad_input():
    r = run_cli("--prefill-instances", "1", "--decode-instances", "2", "--decode-tp", "2",
                "--rate", "5", "--num-requests", "40", "--input-len", "200", "--output-len",
                "20", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["deployment"]["decode"]["tp"] == 2 and out["deployment"]["num_gpus"] == 5
    assert out["num_completed"] == 40
    for bad in (["--prefill-instances", "1"], ["--decode-tp", "2"], ["--pp", "0"],
                ["--ep", "2"]):
        r = run_cli(*bad, "--rate", "5", "--num-requests", "10")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)


@pytest.mark.parametrize(("engine", "blocks"), [("vllm", 700), ("sglang", 11200),
                                                ("trtllm", 350)])  # ~11k tokens each
def test_an_overloaded_decode_pool_preempts_but_never_deadlocks(engine, blocks):
    """Decode KV far smaller than the load: requests preempted on the decode instance go
    before new transfers, and landed requests run at once, so every request finishes and
    every block comes back (a landed request once waited holding blocks the preempted head
    of the queue needed, and the run never ended)."""
    from meshplan.serve import DisaggregatedSpec, simulate

    spec = DisaggregatedSpec(
        prefill=DeploymentSpec(tp=1, instances=2, engine=engine),
        decode=DeploymentSpec(tp=1, instances=1, engine=engine, num_gpu_blocks=blocks))
    w = Workload(arrival="poisson", rate=60, num_requests=300, seed=1,
                 input=Lengths(mean=600), output=Lengths(kind="uniform", mean=200, spread=0.5))
    r = simulate("llama3-8b", "dgx-h100", spec, w)
    out = r.to_json()
    assert out["num_completed"] == 300
    assert np.all(np.isfinite(r.metrics.finish_s))
    if engine != "trtllm":  # GUARANTEED_NO_EVICT admits what fits whole: no preemption
        assert out["preemptions"] > 0
