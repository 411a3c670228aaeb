"""The fast path (cached iteration cost, fast-forwarded decode runs, weighted inter-token
gaps) against the plain loop (one iteration at a time, each timed by the layer core)."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.serve import DeploymentSpec, Lengths, Workload, draw, resolve
from meshplan.serve.iteration import IterationCost, kv_capacity
from meshplan.serve.loop import simulate
from meshplan.serve.metrics import summary, weighted_summary
from meshplan.specs.io import load_cluster, load_model

REL = 1e-9


def deploy(model: str = "llama3-8b", **kw):
    return resolve(load_model(model), load_cluster("dgx-h100"), DeploymentSpec(**kw))


@pytest.mark.parametrize(("model", "tp", "dpa"), [("llama3-8b", 1, 1), ("llama3-8b", 4, 1),
                                                  ("mixtral-8x7b", 2, 1),
                                                  ("mixtral-8x7b", 4, 4)])
def test_cached_iteration_time_equals_the_layer_core(model, tp, dpa):
    kw = {"ep": tp, "dp_attention": dpa} if dpa > 1 else {}
    cost = IterationCost(deploy(model, tp=tp, **kw))
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = int(rng.integers(1, 300))
        q = rng.integers(1, 600, b) * (rng.random(b) < 0.1) + 1
        p = rng.integers(0, 4000, b)
        args = (b, float(q.sum()), float((q * p).sum()), float((q * q).sum()),
                float((p + q).sum()), int(rng.integers(0, b + 1)))
        assert cost.time(*args) == pytest.approx(cost.time_reference(*args), rel=1e-12)
    prefix, b = 12345.0, 37
    steps = cost.decode_times(b, prefix, 40)
    ref = [cost.time_reference(b, b, prefix + b * j, b, prefix + b * (j + 1), b)
           for j in range(40)]
    np.testing.assert_allclose(steps, ref, rtol=1e-12)


def test_weighted_percentiles_equal_the_expanded_sample():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 100, 1000):
        v, w = rng.random(n), rng.integers(1, 50, n)
        v[: n // 3] = v[0]
        fast, ref = weighted_summary(v, w, 1e3), summary(np.repeat(v, w), 1e3)
        for key, value in ref.items():
            assert fast[key] == pytest.approx(value, rel=1e-12), key


def assert_same(d, w):
    reqs = draw(w)
    fast, plain = simulate(d, reqs), simulate(d, reqs, plain=True)
    assert fast.iterations == plain.iterations and fast.preemptions == plain.preemptions
    f, p = fast.metrics, plain.metrics
    for name in ("first_scheduled_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(getattr(f, name), getattr(p, name), rtol=REL, atol=0)
    assert np.all(np.isfinite(f.finish_s))
    assert int(f.itl_weights.sum()) == len(p.itl_s) == int((reqs.output_len - 1).sum())
    np.testing.assert_allclose(np.sort(f.itl_s), np.sort(p.itl_s), rtol=REL, atol=1e-15)
    assert fast.kv_usage[:, 1].max() == pytest.approx(plain.kv_usage[:, 1].max(), rel=1e-12)
    assert fast.kv_usage[-1, 1] == plain.kv_usage[-1, 1] == 0.0
    assert len(fast.kv_usage) <= len(plain.kv_usage)
    jf, jp = fast.to_json(0.2, 0.05), plain.to_json(0.2, 0.05)
    assert jf["iterations"] == jp["iterations"] and jf["num_completed"] == jp["num_completed"]
    for key, block in jp["metrics"].items():
        if isinstance(block, dict):
            for stat, value in block.items():
                assert jf["metrics"][key][stat] == pytest.approx(value, rel=REL), (key, stat)
        elif block is not None:
            assert jf["metrics"][key] == pytest.approx(block, rel=REL), key
    return fast, plain


def test_poisson_load_fast_equals_plain():
    w = Workload(arrival="poisson", rate=15, num_requests=300, seed=2,
                 input=Lengths(mean=512), output=Lengths(mean=256))
    fast, plain = assert_same(deploy(), w)
    assert len(fast.kv_usage) < 0.7 * len(plain.kv_usage)  # the fast path did skip steps


def test_varied_lengths_and_a_burst_fast_equal_plain():
    w = Workload(arrival="poisson", rate=20, num_requests=200, seed=3,
                 input=Lengths(kind="uniform", mean=800, spread=0.5),
                 output=Lengths(kind="lognormal", mean=120, spread=0.8))
    assert_same(deploy(), w)
    burst = Workload(arrival="burst", num_requests=150, seed=4,
                     input=Lengths(kind="normal", mean=300, spread=0.3),
                     output=Lengths(kind="uniform", mean=100, spread=0.9))
    assert_same(deploy(max_num_seqs=64), burst)


def test_chunked_prefill_fast_equals_plain():
    """Prompts over the token budget (chunks of 512, one leaving a single token)."""
    w = Workload(arrival="gamma", rate=6, cv=2.0, num_requests=120, seed=5,
                 input=Lengths(kind="uniform", mean=1300, spread=0.6),
                 output=Lengths(mean=80))
    assert_same(deploy(max_num_batched_tokens=512), w)
    one_left = Workload(arrival="constant", rate=4, num_requests=30, seed=6,
                        input=Lengths(mean=513), output=Lengths(mean=40))
    assert_same(deploy(max_num_batched_tokens=512), one_left)


def test_preemption_with_a_tiny_cache_fast_equals_plain():
    d = deploy(gpu_memory_utilization=0.25)
    tokens = kv_capacity(d).num_blocks * d.block_size
    w = Workload(arrival="burst", num_requests=40, input=Lengths(mean=tokens // 20),
                 output=Lengths(mean=tokens // 20))
    fast, _ = assert_same(d, w)
    assert fast.preemptions > 0
    w2 = Workload(arrival="poisson", rate=30, num_requests=80, seed=7,
                  input=Lengths(kind="uniform", mean=tokens // 15, spread=0.5),
                  output=Lengths(kind="uniform", mean=tokens // 15, spread=0.5))
    assert_same(d, w2)


@pytest.mark.parametrize("router", ["round-robin", "least-requests", "least-tokens"])
def test_two_instances_fast_equal_plain(router):
    w = Workload(arrival="poisson", rate=25, num_requests=200, seed=8,
                 input=Lengths(kind="lognormal", mean=400, spread=0.6),
                 output=Lengths(kind="lognormal", mean=150, spread=0.6))
    assert_same(deploy(instances=2, router=router), w)


def test_long_runs_through_arrivals_and_finishes_fast_equal_plain(monkeypatch):
    """One vLLM V1 instance: the fast path applies steps in which arrivals are admitted whole
    and requests finish (one-token outputs, prompts of whole blocks, a prompt-only step
    after the batch drained among them) without asking the scheduler, and stops where the
    scheduler must decide (blocks short, a chunk, max_num_seqs): equal to the plain loop."""
    from meshplan.serve.schedulers import VLLMScheduler
    calls = []
    real = VLLMScheduler.schedule
    monkeypatch.setattr(VLLMScheduler, "schedule", lambda s: calls.append(1) or real(s))
    short = Workload(arrival="poisson", rate=30, num_requests=400, seed=12,
                     input=Lengths(kind="uniform", mean=48, spread=0.9),
                     output=Lengths(kind="uniform", mean=4, spread=0.9))
    fast, plain = assert_same(deploy(), short)
    w = Workload(arrival="poisson", rate=15, num_requests=300, seed=2,
                 input=Lengths(mean=512), output=Lengths(mean=256))
    calls.clear()
    fast, plain = assert_same(deploy(), w)
    fast_calls = len(calls) - plain.iterations  # the plain loop schedules every step
    assert 0 < fast_calls < 0.02 * fast.iterations
    d = deploy(gpu_memory_utilization=0.25, max_num_seqs=24, max_num_batched_tokens=1024)
    tokens = kv_capacity(d).num_blocks * d.block_size
    tight = Workload(arrival="poisson", rate=40, num_requests=200, seed=13,
                     input=Lengths(kind="uniform", mean=tokens // 30, spread=0.8),
                     output=Lengths(kind="uniform", mean=tokens // 30, spread=0.8))
    fast, _ = assert_same(d, tight)
    assert fast.preemptions > 0
    d = deploy(gpu_memory_utilization=0.25)  # arrivals left waiting for blocks
    tokens = kv_capacity(d).num_blocks * d.block_size
    blocked = Workload(arrival="poisson", rate=10, num_requests=200, seed=13,
                       input=Lengths(kind="uniform", mean=tokens // 6, spread=0.8),
                       output=Lengths(kind="uniform", mean=tokens // 60, spread=0.8))
    assert_same(d, blocked)
    crowd = Workload(arrival="poisson", rate=60, num_requests=150, seed=14,
                     input=Lengths(kind="uniform", mean=40, spread=0.5),
                     output=Lengths(kind="uniform", mean=120, spread=0.5))
    assert_same(deploy(max_num_seqs=8), crowd)  # a full batch with arrivals waiting
    burst = Workload(arrival="burst", num_requests=80, seed=14,
                     input=Lengths(kind="uniform", mean=40, spread=0.5),
                     output=Lengths(kind="uniform", mean=60, spread=0.5))
    assert_same(deploy(max_num_batched_tokens=48), burst)  # a budget under max_num_seqs


def test_the_kv_usage_timeline_is_bounded_and_keeps_its_peak_and_last_sample():
    from meshplan.serve.loop import Timeline
    rng = np.random.default_rng(9)
    line = Timeline(cap=8)
    v = rng.random(1000)
    for t, x in enumerate(v):
        line.add(float(t), float(x))
    a = line.to_array()
    assert len(a) <= 17 and a[:, 1].max() == v.max() and tuple(a[-1]) == (999.0, v[-1])
    assert np.all(np.diff(a[:, 0]) > 0)


def test_whole_prompts_and_a_full_batch_fast_equal_plain():
    """No chunked prefill, and max_num_seqs reached with requests waiting (a fast-forward
    runs while they wait for a finish)."""
    w = Workload(arrival="poisson", rate=40, num_requests=150, seed=10,
                 input=Lengths(kind="uniform", mean=900, spread=0.5),
                 output=Lengths(kind="uniform", mean=60, spread=0.8))
    assert_same(deploy(enable_chunked_prefill=False, max_num_batched_tokens=2048,
                       max_num_seqs=8), w)
    assert_same(deploy(instances=2, router="least-tokens", max_num_seqs=4), w)


def test_multi_step_groups_keep_their_phase_on_the_fast_path():
    """vLLM V0 with --num-scheduler-steps 10: a fast-forwarded decode run crosses group
    boundaries, and an arrival inside a group waits for it to end on both paths."""
    w = Workload(arrival="poisson", rate=4, num_requests=200, seed=3,
                 input=Lengths(kind="lognormal", mean=200, spread=0.8),
                 output=Lengths(kind="lognormal", mean=180, spread=0.8))
    fast, plain = assert_same(deploy(engine="vllm-v0", num_scheduler_steps=10), w)
    wait = fast.metrics.first_scheduled_s - draw(w).arrival_s
    assert np.mean(wait) > 0.010  # ~ half a group of ~9 ms steps, not one step


def test_the_busiest_attention_rank_sets_the_step():
    """Data-parallel attention: decodes spread evenly (a remainder sequence on one rank), a
    lone prompt runs on its own rank, and that rank's attention is what the step waits for."""
    d = deploy("mixtral-8x7b", tp=4, ep=4, dp_attention=4)
    cost = IterationCost(d)
    assert cost.rank_share(256, 256) == pytest.approx(0.25 + 0.75 / 256)
    assert cost.rank_share(4096, 4096.0**2) == 1.0  # one 4096-token prompt alone
    # 2048 decodes + one 2048-token chunk: about an even share plus the rest of the chunk
    mixed = cost.rank_share(4096, 2048 + 2048.0**2)
    assert 0.25 < mixed < 1.0
    lone = cost.time_reference(1, 4096, 0.0, 4096.0**2, 4096, 1)
    even = cost.time_reference(1, 4096, 0.0, 4096.0**2, 4096, 1, share=0.25)
    assert lone > 1.2 * even  # the prompt's attention on one rank, not a quarter on each
    assert IterationCost(deploy("mixtral-8x7b", tp=4)).rank_share(1, 1) == 1.0


def test_trtllm_requests_waiting_on_promised_blocks_fast_equal_plain():
    """TensorRT-LLM's GUARANTEED_NO_EVICT: a burst larger than the KV pool's promises waits
    with fewer than max_batch_size running; the fast path runs decodes meanwhile (only a
    finish frees a promise) and still equals the plain loop."""
    d = deploy(engine="trtllm", gpu_memory_utilization=0.3)
    tokens = kv_capacity(d).num_blocks * d.block_size
    w = Workload(arrival="burst", num_requests=120, seed=11,
                 input=Lengths(kind="uniform", mean=tokens // 60, spread=0.5),
                 output=Lengths(kind="uniform", mean=tokens // 60, spread=0.5))
    fast, plain = assert_same(d, w)
    assert len(fast.kv_usage) < 0.5 * len(plain.kv_usage)  # it did skip steps
    fixed = Workload(arrival="burst", num_requests=100, input=Lengths(mean=tokens // 80),
                     output=Lengths(mean=tokens // 40))
    assert_same(d, fixed)


def test_steps_with_prompts_pay_the_host_overhead_their_engine_runs_them_with():
    """Decode-only steps run in CUDA graphs (a multi-step group's share of the host time); a
    step with prompt tokens pays the whole graph figure, plus, where its engine's graphs do
    not take it (V0, TensorRT-LLM's PyTorch backend; V1 above 512 tokens), the eager
    launches' excess over the GPU work they hide behind; a TensorRT engine
    (`trtllm-engine`) enqueues it from C++ at the graphed figure."""
    v1 = deploy()
    c = IterationCost(v1)
    e = v1.engine
    extra = e.iteration_overhead_eager_s - e.iteration_overhead_s
    assert extra > 0
    assert c.step_overhead(64, 64, 0.0) == e.iteration_overhead_s
    assert c.step_overhead(1, 512, 0.0) == e.iteration_overhead_s
    assert c.step_overhead(1, 513, 0.0) == pytest.approx(e.iteration_overhead_eager_s)
    assert c.step_overhead(1, 513, extra / 2) == pytest.approx(e.iteration_overhead_s + extra / 2)
    assert c.step_overhead(1, 8000, 0.2) == e.iteration_overhead_s  # hidden behind the GPU
    v0 = deploy(engine="vllm-v0", num_scheduler_steps=10)
    c0 = IterationCost(v0)
    e0 = v0.engine
    assert c0.step_overhead(64, 64, 0.0) == pytest.approx(e0.iteration_overhead_s / 10)
    assert c0.step_overhead(1, 100, 0.0) == pytest.approx(e0.iteration_overhead_eager_s)
    assert c0.step_overhead(1, 8000, 0.5) == e0.iteration_overhead_s  # whole, not a tenth
    trt = deploy(engine="trtllm")
    assert IterationCost(trt).step_overhead(1, 100, 0.0) == pytest.approx(
        trt.engine.iteration_overhead_eager_s)
    cpp = deploy(engine="trtllm-engine")
    assert IterationCost(cpp).step_overhead(1, 8000, 0.0) == cpp.engine.iteration_overhead_s
    # the cached path charges the same (a prompt step alone and one among decodes)
    for cost in (c, c0, IterationCost(trt)):
        for args in ((1, 600.0, 0.0, 360000.0, 600.0, 1), (9, 208.0, 4000.0, 40064.0, 4208.0, 9)):
            assert cost.time(*args) == pytest.approx(cost.time_reference(*args), rel=1e-12)
