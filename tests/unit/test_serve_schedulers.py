"""The engines' schedulers: conservation, a request alone, determinism, each engine's own rule
(SGLang's separate prefill batches and retraction, TensorRT-LLM's guaranteed-no-evict, static
batches), prefix caching, memory-fraction semantics, and the fast path against the plain loop."""

from __future__ import annotations

import numpy as np
import pytest
from test_serve_fast import assert_same

from meshplan.serve import DeploymentSpec, Lengths, Workload, draw, resolve
from meshplan.serve.iteration import IterationCost, kv_capacity
from meshplan.serve.loop import simulate
from meshplan.serve.schedulers import (
    SGLangScheduler,
    StaticScheduler,
    TRTLLMScheduler,
    VLLMScheduler,
    make_scheduler,
    sglang_max_running,
)
from meshplan.specs.io import load_cluster, load_model

ENGINES = ["vllm", "vllm-v0", "sglang", "trtllm", "static"]


def deploy(engine: str = "vllm", **kw):
    return resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                   DeploymentSpec(engine=engine, **kw))


def small_cache(engine: str, tokens: int, **kw):
    """A deployment whose cache holds about `tokens` tokens (via the memory fraction)."""
    d = deploy(engine, **kw)
    cap = kv_capacity(d)
    per_token = cap.block_bytes / d.block_size
    hbm = d.cluster.accelerator.memory_bytes
    if d.engine.memory_fraction_of == "hbm":
        f = (cap.weights_bytes + cap.workspace_bytes + cap.reserved_bytes
             + tokens * per_token) / hbm
    elif d.engine.memory_fraction_of == "free":
        f = tokens * per_token / (hbm - cap.weights_bytes - cap.workspace_bytes
                                  - cap.reserved_bytes)
    else:
        f = (cap.weights_bytes + tokens * per_token) / (hbm - cap.reserved_bytes)
    return deploy(engine, gpu_memory_utilization=f, **kw)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_request_finishes_once_tokens_add_up_blocks_return(engine):
    w = Workload(arrival="poisson", rate=20, num_requests=250, seed=3,
                 input=Lengths(kind="uniform", mean=700, spread=0.5),
                 output=Lengths(kind="lognormal", mean=100, spread=0.8))
    reqs = draw(w)
    r = simulate(deploy(engine), reqs)
    m = r.metrics
    assert np.all(np.isfinite(m.finish_s)) and np.all(m.first_token_s >= m.arrival_s)
    assert np.all(m.finish_s >= m.first_token_s)
    # one first token per request, one gap per later token: the output tokens
    assert int(m.itl_weights.sum()) + len(reqs) == int(reqs.output_len.sum())
    assert r.kv_usage[-1, 1] == 0.0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_request_alone_takes_its_prefill_then_one_decode_step_per_token(engine):
    d = deploy(engine)
    prompt, out = 1000, 40
    w = Workload(arrival="burst", num_requests=1, input=Lengths(mean=prompt),
                 output=Lengths(mean=out))
    r = simulate(d, draw(w))
    cost = IterationCost(d)
    prefill = cost.time(1, prompt, 0, prompt * prompt, prompt, 1)
    decode = sum(cost.time(1, 1, prompt + g - 1, 1, prompt + g, 1) for g in range(1, out))
    assert r.metrics.ttft_s[0] == pytest.approx(prefill, rel=1e-12)
    assert r.metrics.e2e_s[0] == pytest.approx(prefill + decode, rel=1e-12)
    assert r.iterations == out


@pytest.mark.parametrize("engine", ENGINES)
def test_same_seed_same_numbers_other_seed_other_numbers(engine):
    def run(seed):
        w = Workload(arrival="poisson", rate=12, num_requests=120, seed=seed,
                     input=Lengths(kind="normal", mean=400, spread=0.3),
                     output=Lengths(kind="uniform", mean=60, spread=0.5))
        return simulate(deploy(engine, instances=2), draw(w)).to_json()
    assert run(5) == run(5)
    assert run(5)["metrics"] != run(6)["metrics"]


def burst(n: int, prompt: int, out: int) -> Workload:
    return Workload(arrival="burst", num_requests=n, input=Lengths(mean=prompt),
                    output=Lengths(mean=out))


def test_trtllm_guaranteed_no_evict_never_preempts_where_vllm_does():
    tokens = 40_000
    w = burst(60, 600, 600)  # 72,000 tokens wanted at once
    v = simulate(small_cache("vllm", tokens), draw(w))
    t = simulate(small_cache("trtllm", tokens), draw(w))
    assert v.preemptions > 0
    assert t.preemptions == 0 and np.all(np.isfinite(t.metrics.finish_s))
    # admission waits for whole prompt + output: never more than the cache holds at once
    d = small_cache("trtllm", tokens)
    whole = -(-1200 // d.block_size)
    assert t.kv_usage[:, 1].max() <= (kv_capacity(d).num_blocks // whole) * whole \
        / kv_capacity(d).num_blocks + 1e-12


def test_trtllm_admits_only_what_fits_whole():
    s = TRTLLMScheduler(num_blocks=100, block_size=10, max_num_seqs=64,
                        max_num_batched_tokens=8192, chunked_prefill=False)
    for rid in range(3):
        s.add(rid, 300, 200)  # 50 blocks each, whole
    step = s.schedule()
    assert [rid for rid, _ in step.scheduled] == [0, 1] and s.promised == 100
    assert s.used_blocks == 60  # allocated as computed: 30 + 30


def test_trtllm_chunks_contexts_in_block_multiples_after_the_decodes():
    s = TRTLLMScheduler(num_blocks=1000, block_size=32, max_num_seqs=64,
                        max_num_batched_tokens=100, chunked_prefill=True)
    s.add(0, 50, 5)
    s.complete(s.schedule())  # prefilled, one token out
    s.add(1, 500, 5)
    step = s.schedule()
    assert step.scheduled == [(0, 1), (1, 96)]  # 99 left -> 3 blocks of 32


def test_static_batch_prefills_together_and_admits_nobody_mid_batch():
    d = deploy("static", max_num_seqs=8)
    prompt = 300
    w = Workload(arrival="constant", rate=1000, num_requests=12, input=Lengths(mean=prompt),
                 output=Lengths(kind="uniform", mean=30, spread=0.5), seed=1)
    reqs = draw(w)
    r = simulate(d, reqs, plain=True)
    m = r.metrics
    cost = IterationCost(d)
    # the first batch is the one request there at t = 0; the next 8 wait for it to end
    first_end = m.finish_s[0]
    assert np.all(m.first_scheduled_s[1:] >= first_end)
    batch = np.arange(1, 9)
    assert np.all(m.first_token_s[batch] == m.first_token_s[1])
    b = len(batch)
    prefill = cost.time(b, b * prompt, 0, b * prompt * prompt, b * prompt, b)
    assert m.first_token_s[1] - m.first_scheduled_s[1] == pytest.approx(prefill, rel=1e-12)
    # the batch decodes until its longest member ends, then the last three start
    assert np.all(m.first_scheduled_s[9:] >= m.finish_s[batch].max())


def test_static_batch_ttft_equals_its_prefill_iteration():
    d = deploy("static", max_num_seqs=16)
    prompt, b = 512, 16
    r = simulate(d, draw(burst(b, prompt, 8)))
    cost = IterationCost(d)
    prefill = cost.time(b, b * prompt, 0, b * prompt * prompt, b * prompt, b)
    np.testing.assert_allclose(r.metrics.ttft_s, prefill, rtol=1e-12)
    assert r.iterations == 8


def test_sglang_runs_prefill_batches_apart_from_decode_batches():
    s = SGLangScheduler(num_blocks=100_000, block_size=1, max_num_seqs=64,
                        max_num_batched_tokens=8192, chunked_prefill=True,
                        prefix_caching=False, max_prefill_tokens=16384,
                        init_new_token_ratio=0.7, min_new_token_ratio_factor=0.14,
                        new_token_ratio_decay_steps=600, clip_max_new_tokens=4096,
                        retract_decode_steps=20)
    s.add(0, 100, 50)
    s.complete(s.schedule())
    s.complete(s.schedule())  # a decode batch of request 0
    s.add(1, 200, 50)
    step = s.schedule()
    assert step.scheduled == [(1, 200)]  # prefill alone: request 0 waits this step
    s.complete(step)
    assert s.schedule().scheduled == [(0, 1), (1, 1)]


def test_sglang_chunks_a_long_prompt_and_decodes_wait_for_its_last_chunk():
    s = SGLangScheduler(num_blocks=100_000, block_size=1, max_num_seqs=64,
                        max_num_batched_tokens=1000, chunked_prefill=True,
                        prefix_caching=False, max_prefill_tokens=16384,
                        init_new_token_ratio=0.7, min_new_token_ratio_factor=0.14,
                        new_token_ratio_decay_steps=600, clip_max_new_tokens=4096,
                        retract_decode_steps=20)
    s.add(0, 50, 20)
    s.complete(s.schedule())
    s.add(1, 2500, 20)
    sizes = []
    for _ in range(3):
        step = s.schedule()
        sizes.append(step.scheduled)
        s.complete(step)
    assert sizes == [[(1, 1000)], [(1, 1000)], [(1, 500)]]
    assert s.schedule().scheduled == [(0, 1), (1, 1)]


def test_sglang_reserves_decode_tokens_and_retracts_when_the_pool_runs_out():
    d = small_cache("sglang", 30_000)
    r = simulate(d, draw(burst(60, 500, 700)))
    assert r.preemptions > 0 and np.all(np.isfinite(r.metrics.finish_s))
    s = make_scheduler(d, kv_capacity(d))
    assert isinstance(s, SGLangScheduler)
    assert s.new_token_ratio == pytest.approx(0.7) and s.min_ratio == pytest.approx(0.098)
    # admission: prompt + min(output, 4096) must fit under the free tokens less the
    # running requests' reservation (output left x ratio)
    cap = s.num_blocks
    for rid in range(200):
        s.add(rid, 100, 1900)
    step = s.schedule()
    admitted = len(step.scheduled)
    assert admitted * 2000 < cap <= (admitted + 1) * 2000 + 1


def test_sglang_memory_fraction_and_request_limit_follow_server_args():
    """H100 80 GiB, tp 1: chunked_prefill_size 8192, cuda_graph_max_bs 256, reserved =
    512 + 8192 x 1.5 + 256 x 2 + 128 = 13,440 MiB; mem_fraction_static = round((81,920 -
    13,440) / 81,920, 3) = 0.836."""
    d = deploy("sglang")
    assert d.max_num_batched_tokens == 8192 and d.gpu_memory_utilization == 0.836
    assert d.engine.graph_max_bs(d.cluster.accelerator, 4) == 512
    d8 = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                 DeploymentSpec(engine="sglang", tp=8))
    # tp 8: 512 + 12,288 + 512 x 2 + 1,024 = 14,848 MiB
    assert d8.gpu_memory_utilization == round((81920 - 14848) / 81920, 3)
    cap = kv_capacity(d)
    hbm, res = d.cluster.accelerator.memory_bytes, cap.reserved_bytes
    kv = 0.836 * (hbm - res) - cap.weights_bytes
    assert cap.num_blocks == int(kv // cap.block_bytes)
    tokens = cap.num_blocks
    assert sglang_max_running(d, tokens) == min(tokens // 2, min(max(
        int(tokens / d.model.max_seq_len * 512), 2048), 4096))


def test_memory_fractions_mean_what_each_engine_means():
    v, t = deploy("vllm"), deploy("trtllm")
    cv, ct = kv_capacity(v), kv_capacity(t)
    hbm = v.cluster.accelerator.memory_bytes
    assert cv.num_blocks == int((0.9 * hbm - cv.weights_bytes - cv.workspace_bytes
                                 - cv.reserved_bytes) // cv.block_bytes)
    assert ct.num_blocks == int(0.9 * (hbm - ct.weights_bytes - ct.workspace_bytes
                                       - ct.reserved_bytes) // ct.block_bytes)
    # same 0.9, but of the free memory: more KV cache for TensorRT-LLM
    assert ct.num_blocks * ct.block_bytes > cv.num_blocks * cv.block_bytes


def drive(s, arrivals: dict[int, list[tuple[int, int, int, int, int]]], steps: int):
    """Run a scheduler alone: at step j add arrivals[j] (rid, prompt, output, group,
    prefix); return the tokens scheduled per request."""
    tokens: dict[int, int] = {}
    for j in range(steps):
        for a in arrivals.get(j, []):
            s.add(*a)
        step = s.schedule()
        for rid, n in step.scheduled:
            tokens[rid] = tokens.get(rid, 0) + n
        s.complete(step)
        if not s.has_work and j > max(arrivals):
            break
    return tokens


def vllm(blocks=1000, bs=16):
    return VLLMScheduler(blocks, bs, 64, 8192, True, prefix_caching=True)


def test_vllm_prefix_hits_are_block_aligned_and_leave_the_last_token():
    s = vllm()
    prefix, prompt = 1000, 1100
    tokens = drive(s, {0: [(0, prompt, 3, 7, prefix)], 2: [(1, prompt, 3, 7, prefix)]}, 50)
    hit = prefix // 16 * 16  # 992: 62 full blocks
    assert tokens[0] == prompt + 2 and tokens[1] == prompt - hit + 2
    # a prompt that is all prefix recomputes its last block's tokens (the last must sample)
    s = vllm()
    tokens = drive(s, {0: [(0, 64, 2, 1, 64)], 2: [(1, 64, 2, 1, 64)]}, 20)
    assert tokens[1] == 64 - 48 + 1
    assert s.free_blocks == s.num_blocks and s.cached_blocks == 4


def test_vllm_shares_a_prefix_within_one_step_and_counts_shared_blocks_once():
    s = vllm()
    for rid in range(4):
        s.add(rid, 800, 5, 0, 640)  # 40 shared blocks, 10 own each
    step = s.schedule()
    assert [n for _, n in step.scheduled] == [800, 160, 160, 160]
    assert s.used_blocks == 40 + 4 * 10
    s.complete(step)
    while s.has_work:
        s.complete(s.schedule())
    assert s.free_blocks == s.num_blocks and s.cached_blocks == 40


def test_freed_prefix_blocks_stay_cached_until_evicted_lru():
    s = vllm(blocks=100, bs=16)
    drive(s, {0: [(0, 400, 2, 1, 320)]}, 10)  # group 1: 20 blocks cached
    assert s.cached_blocks == 20 and s.free_blocks == 100
    tokens = drive(s, {0: [(1, 400, 2, 1, 320)]}, 10)
    assert tokens[1] == 80 + 1  # hit
    drive(s, {0: [(2, 1500, 2, -1, 0)]}, 10)  # 94 blocks: evicts most of group 1
    assert s.cached_blocks < 20
    tokens = drive(s, {0: [(3, 400, 2, 1, 320)]}, 10)
    assert tokens[3] == 400 + 1  # the first blocks went first: no hit left
    assert s.free_blocks == s.num_blocks


def test_sglang_radix_cache_hits_after_the_prefill_not_within_its_batch():
    d = deploy("sglang")
    s = make_scheduler(d, kv_capacity(d))
    tokens = drive(s, {0: [(0, 700, 3, 2, 600), (1, 700, 3, 2, 600)],
                       5: [(2, 700, 3, 2, 600)]}, 30)
    assert tokens[0] == tokens[1] == 702  # one batch: no hit yet
    assert tokens[2] == 700 - 600 + 2  # page size 1: the whole prefix
    assert s.free_blocks == s.num_blocks


def test_prefix_caching_cuts_ttft_in_the_loop():
    w = Workload(arrival="poisson", rate=4, num_requests=60, seed=2, prefix_len=2000,
                 prefix_group_size=6, input=Lengths(mean=100), output=Lengths(mean=20))
    on = simulate(deploy("vllm"), draw(w))
    off = simulate(deploy("vllm", enable_prefix_caching=False), draw(w))
    assert on.metrics.ttft_s.mean() < 0.6 * off.metrics.ttft_s.mean()


def test_swap_preemption_keeps_the_computed_tokens():
    s = VLLMScheduler(10, 16, 64, 8192, True)
    s.swap = True
    s.add(0, 100, 50)
    s.complete(s.schedule())
    s._preempt(0)
    r = s.requests[0]
    assert r.computed == 100 and r.blocks == 0 and s.free_blocks == 10
    step = s.schedule()
    assert step.scheduled == [(0, 1)] and r.blocks == 7


def test_static_scheduler_keeps_ended_members_until_the_batch_ends():
    s = StaticScheduler(1000, 16, 4, 8192, False)
    s.add(0, 32, 1)
    s.add(1, 32, 3)
    s.complete(s.schedule())  # prefill: request 0 ends at once
    assert s.running == [0, 1] and s.used_blocks == 3 + 3  # 33 and 35 tokens
    s.add(2, 32, 2)
    step = s.schedule()
    assert step.scheduled == [(0, 1), (1, 1)] and step.sampled == 2
    s.complete(step)
    s.complete(s.schedule())
    assert s.running == [] and s.free_blocks == 1000
    assert s.schedule().scheduled == [(2, 32)]


FAST = ["vllm", "vllm-v0", "sglang", "trtllm"]


@pytest.mark.parametrize("engine", FAST)
def test_fast_path_equals_plain_loop(engine):
    w = Workload(arrival="poisson", rate=15, num_requests=150, seed=2,
                 input=Lengths(kind="uniform", mean=500, spread=0.5),
                 output=Lengths(kind="lognormal", mean=150, spread=0.6))
    fast, plain = assert_same(deploy(engine), w)
    assert len(fast.kv_usage) < len(plain.kv_usage)  # it did skip steps


@pytest.mark.parametrize("engine", FAST)
def test_fast_path_equals_plain_under_pressure_prefixes_and_a_closed_loop(engine):
    d = small_cache(engine, 25_000)
    w = Workload(arrival="poisson", rate=30, num_requests=80, seed=7,
                 input=Lengths(kind="uniform", mean=800, spread=0.5),
                 output=Lengths(kind="uniform", mean=600, spread=0.5))
    assert_same(d, w)
    pre = Workload(arrival="gamma", rate=8, cv=2.0, num_requests=90, seed=8, prefix_len=700,
                   prefix_group_size=5, input=Lengths(mean=150),
                   output=Lengths(kind="uniform", mean=80, spread=0.8))
    assert_same(deploy(engine, instances=2, router="least-tokens"), pre)
    closed = Workload(arrival="closed", clients=6, think_s=0.05, num_requests=60, seed=9,
                      input=Lengths(kind="uniform", mean=300, spread=0.5),
                      output=Lengths(kind="uniform", mean=90, spread=0.5))
    assert_same(deploy(engine), closed)


def test_only_schedulers_checked_for_it_fast_forward():
    for engine, ok in (("vllm", True), ("sglang", True), ("trtllm", True),
                       ("static", False)):
        d = deploy(engine)
        assert make_scheduler(d, kv_capacity(d)).fast_forward_ok is ok


def test_vllm_v0_iterations_are_prefills_or_decodes_never_both():
    """V0's default scheduler: a waiting prompt that fits is prefilled in an iteration of its
    own, stalling the running decodes; V1 would mix them."""
    from meshplan.serve.schedulers import VLLMV0Scheduler

    s = VLLMV0Scheduler(num_blocks=1000, block_size=16, max_num_seqs=8,
                        max_num_batched_tokens=4096, chunked_prefill=False)
    s.add(0, 100, 5)
    first = s.schedule()
    assert first.scheduled == [(0, 100)]
    s.complete(first)
    s.add(1, 200, 5)
    second = s.schedule()  # the new prompt alone, request 0 waits
    assert second.scheduled == [(1, 200)]
    s.complete(second)
    third = s.schedule()  # now both decode
    assert sorted(third.scheduled) == [(0, 1), (1, 1)]


def test_vllm_v0_keeps_the_watermark_free():
    """Beside a running request a prompt must leave 1 % of the blocks free; alone it may
    take them (V0 would otherwise reject it for good)."""
    from meshplan.serve.schedulers import VLLMV0Scheduler

    def with_running(prompt_blocks: int) -> list[tuple[int, int]]:
        s = VLLMV0Scheduler(num_blocks=200, block_size=16, max_num_seqs=8,
                            max_num_batched_tokens=8192)
        s.add(0, 16, 5)
        s.complete(s.schedule())  # request 0 holds 1 block (2 once it decodes)
        s.add(1, prompt_blocks * 16, 2)
        return s.schedule().scheduled
    assert with_running(197) == [(1, 197 * 16)]  # 199 - 197 = 2 blocks left: the watermark
    assert with_running(198) == [(0, 1)]  # would leave 1 < 2: request 0 decodes instead
    alone = VLLMV0Scheduler(num_blocks=200, block_size=16, max_num_seqs=8,
                            max_num_batched_tokens=8192)
    alone.add(0, 200 * 16, 1)
    assert alone.schedule().scheduled == [(0, 200 * 16)]


def test_vllm_v0_multi_step_groups_decodes_before_new_prompts():
    """--num-scheduler-steps 3: once a decode group starts, a new prompt waits for it."""
    from meshplan.serve.schedulers import VLLMV0Scheduler

    s = VLLMV0Scheduler(num_blocks=1000, block_size=16, max_num_seqs=8,
                        max_num_batched_tokens=4096, decode_steps=3)
    s.add(0, 100, 10)
    s.complete(s.schedule())  # the prefill
    kinds = []
    for step in range(4):
        if step == 1:
            s.add(1, 50, 5)  # arrives inside the group
        st = s.schedule()
        kinds.append([rid for rid, _ in st.scheduled])
        s.complete(st)
    assert kinds == [[0], [0], [0], [1]]  # three decodes, then the waiting prompt


def test_multi_step_is_refused_for_other_engines():
    from meshplan.errors import MeshplanError
    from meshplan.serve import DeploymentSpec, resolve
    from meshplan.specs.io import load_cluster, load_model

    with pytest.raises(MeshplanError, match="multi-step scheduling is vLLM V0's"):
        resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                DeploymentSpec(engine="vllm", num_scheduler_steps=4))
    d = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                DeploymentSpec(engine="vllm-v0", num_scheduler_steps=4))
    assert d.iteration_overhead_s == pytest.approx(d.engine.iteration_overhead_s / 4)


def test_vllm_batch_limits_bind_each_data_parallel_rank():
    """vLLM's DP ranks each run a scheduler with the same max_num_seqs / token budget
    (EngineProfile.limits_per_attention_rank); TensorRT-LLM's profile keeps them per
    instance."""
    from meshplan.serve import DeploymentSpec, resolve
    from meshplan.specs.io import load_cluster, load_model

    m, c = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    one = resolve(m, c, DeploymentSpec(engine="vllm", tp=2, ep=2, max_num_seqs=128,
                                       max_num_batched_tokens=2048))
    two = resolve(m, c, DeploymentSpec(engine="vllm", tp=2, ep=2, dp_attention=2,
                                       max_num_seqs=128, max_num_batched_tokens=2048))
    assert (one.max_num_seqs, one.max_num_batched_tokens) == (128, 2048)
    assert (two.max_num_seqs, two.max_num_batched_tokens) == (256, 4096)
    trt = resolve(m, c, DeploymentSpec(engine="trtllm", tp=2, ep=2, dp_attention=2,
                                       max_num_seqs=128))
    assert trt.max_num_seqs == 128
