"""Context parallelism's ring costs and ZeRO-3/FSDP's prefetched gathers (issue 16, part 3):
each term against a number from its source, a monotonic property, and that plans without
context parallelism or ZeRO-3 do not move."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost import collectives, comm
from meshplan.cost.kernels import Kernels, attention_key_efficiency
from meshplan.cost.layer import BatchShape
from meshplan.cost.train import comm as train_comm
from meshplan.cost.train.passes import attention_times
from meshplan.cost.train.step import evaluate
from meshplan.mesh import Group, Mesh
from meshplan.specs import Job
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.plan import Plan, PlanArrays

MODEL = load_model("llama3-8b")
H100 = load_cluster("dgx-h100")
JOB = Job(global_batch_size=64, seq_len=8192)


def _arrays(*plans: Plan) -> PlanArrays:
    return PlanArrays.from_plans(list(plans))


def _ideal_network(cluster, kernel_overhead: float, latency: float = 0.0):
    """A cluster whose links and HBM are free, so only fixed per-step costs remain."""
    tiers = tuple(t.model_copy(update={"bandwidth": 1e30, "latency": latency})
                  for t in cluster.network)
    acc = cluster.accelerator.model_copy(update={"memory_bandwidth": 1e30})
    return cluster.model_copy(update={"network": tiers, "accelerator": acc,
                                      "kernel_overhead": kernel_overhead})


def test_attention_rate_follows_the_fa3_benchmark():
    # pytorch/benchmark PR #2391, FA3 forward on H100 (d=128, batch x seqlen = 16k): TFLOP/s.
    keys = np.array([512, 1024, 2048, 4096, 8192, 16384])
    tflops = np.array([430.32, 517.099, 565.544, 590.233, 614.234, 620.73])
    rule = attention_key_efficiency(keys) / attention_key_efficiency(16384)
    assert np.allclose(rule, tflops / tflops[-1], rtol=0.012)
    assert attention_key_efficiency(230.0) == pytest.approx(0.5)


def test_ring_block_efficiency_is_one_without_cp_and_falls_with_cp():
    assert collectives.cp_block_efficiency(8192, 1) == 1.0
    eff = collectives.cp_block_efficiency(8192, np.array([1, 2, 4, 8]))
    assert np.all(np.diff(eff) < 0)
    # cp = 8 at s = 8192: blocks loop over 512 keys on average, the causal whole over 4096.
    assert eff[-1] == pytest.approx((512 / 742) / (4096 / 4326))


def test_zigzag_split_gives_every_rank_the_same_work():
    # Load-balanced causal ring: cp ranks x per-rank pairs = the causal triangle, s^2 / 2.
    s = 8192
    for cp in (1, 2, 4, 8):
        shape = BatchShape.training(1, s, cp)
        assert cp * shape.causal_pairs == pytest.approx(s * s / 2)
        assert collectives.cp_block_keys(s, cp) * cp == s / 2


def _cp_terms(cluster, cp: int, job: Job = JOB):
    P = _arrays(Plan(cp=cp, dp=8 // cp))
    mesh = Mesh(P)
    K = Kernels(cluster, job.precision)
    attn = attention_times(MODEL, job, K, mesh)
    layers = np.full(1, float(MODEL.num_layers))
    return train_comm.cp_exposed(MODEL, cluster, job, K, mesh, layers, attn), attn, mesh


@pytest.mark.parametrize("cp", [1, 2, 4, 8])
def test_a_ring_of_cp_steps_costs_cp_minus_one_launches(cp):
    launch = 1e-3
    (fwd, bwd), _, _ = _cp_terms(_ideal_network(H100, launch), cp)
    expected = MODEL.num_layers * (cp - 1) * launch
    assert fwd[0] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert bwd[0] == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_each_exchange_exposes_its_latency_when_the_block_cannot_hide_it():
    latency = 0.5  # far longer than any 8k block: each of the cp - 1 exchanges sticks out
    cluster = _ideal_network(H100, 0.0, latency)
    (fwd, _), attn, _ = _cp_terms(cluster, 4)
    hidden = cluster.overlap.cp * float(attn.core_forward[0]) / 4
    assert fwd[0] == pytest.approx(MODEL.num_layers * 3 * (latency - hidden), rel=1e-9)


def test_the_exchange_hides_behind_its_block():
    # Long sequence on NVLink: every K/V block arrives while the current block computes.
    job = Job(global_batch_size=8, seq_len=131072)
    (fwd, _), attn, mesh = _cp_terms(H100, 4, job)
    tier = mesh.tier_index(H100, Group.CP)
    kv = collectives.cp_kv_bytes(MODEL, mesh.tokens_per_microbatch(job.seq_len), 1)
    assert comm.p2p_time(H100, tier, kv)[0] < H100.overlap.cp * attn.core_forward[0] / 4
    merge = Kernels(H100, "bf16").memory(collectives.cp_merge_bytes(MODEL, 32768, 1, False))
    assert fwd[0] == pytest.approx(MODEL.num_layers * 3 * (merge + H100.kernel_overhead))


def test_more_context_parallelism_costs_more_ring_time():
    plans = [Plan(cp=cp, dp=8 // cp, micro_batch_size=1) for cp in (1, 2, 4, 8)]
    c = evaluate(MODEL, H100, JOB, _arrays(*plans))
    per_token = c.time["cp_comm"] / c.num_microbatches
    assert per_token[0] == 0.0
    assert np.all(np.diff(per_token) > 0)
    assert np.all(np.diff(c.step_time) > 0)


def test_prefetch_depth_one_exposes_exactly_the_first_gather_when_compute_covers_the_rest():
    first, per_layer, n = np.array([2.0]), np.array([2.0]), np.array([32.0])
    assert train_comm.prefetched_exposed(first, per_layer, np.array([3.0]), n)[0] == 2.0
    # Gathers longer than a layer's compute set the pace: 2 + 31 x (2 - 1.5).
    assert train_comm.prefetched_exposed(first, per_layer, np.array([1.5]), n)[0] == 17.5
    assert train_comm.FSDP_PREFETCH_DEPTH == 1


def _zero3(cluster, fwd: float, bwd: float, pp: int = 1):
    P = _arrays(Plan(dp=8, zero_stage=3, pp=pp))
    mesh = Mesh(P)
    params = np.array([8e9 / pp])
    layers = np.array([32.0 / pp])
    dp = train_comm.dp_times(cluster, JOB, mesh, params, np.zeros(1), np.array([fwd]),
                             np.array([bwd]), layers)
    shard = mesh.members(cluster, Group.DP_SHARD)
    # Each layer's collectives are their own: priced at one layer's bytes.
    ag = comm.all_gather_time(cluster, shard, 2.0 * params / layers)[0]
    rs = comm.reduce_scatter_time(cluster, shard, JOB.grad_bytes * params / layers)[0]
    return dp, ag, rs


def test_every_layer_collective_pays_the_ring_latency():
    """Latency only (free links): each of the 32 layers' gathers and reduce-scatters takes the
    ring's (n - 1) steps, not 1/32 of them (one FSDP unit per layer is one NCCL call)."""
    c = _ideal_network(H100, 0.0, latency=1e-5)
    dp, ag, rs = _zero3(c, fwd=0.0, bwd=0.0)
    assert ag == pytest.approx(7 * 1e-5) and rs == pytest.approx(7 * 1e-5)
    total = dp.per_step[0] - dp.grad_exposed[0] + dp.per_microbatch[0]
    assert total == pytest.approx((32 + 31 + 32) * 7 * 1e-5, rel=1e-9)


def test_a_layer_gather_runs_at_its_own_size_on_the_curve():
    """A layer's 0.5 GB gather sits lower on the NVLink curve than the whole model's 16 GB:
    the per-layer collectives take longer than 1/32 of one model-sized gather."""
    _, ag, _ = _zero3(H100, fwd=0.0, bwd=0.0)
    shard = Mesh(_arrays(Plan(dp=8, zero_stage=3))).members(H100, Group.DP_SHARD)
    whole = comm.all_gather_time(H100, shard, 2.0 * 8e9)[0] / 32
    assert ag > 1.02 * whole


def test_zero3_exposes_the_first_gather_per_step_and_the_last_reduce_scatter_per_microbatch():
    dp, ag, rs = _zero3(H100, fwd=100.0, bwd=200.0)  # compute covers every layer's traffic
    assert dp.per_microbatch[0] == pytest.approx(rs, rel=1e-12)
    assert dp.per_step[0] - dp.grad_exposed[0] == pytest.approx(ag, rel=1e-12)
    assert ag > 0 and rs > 0


def test_zero3_traffic_without_compute_to_hide_behind_is_all_exposed():
    dp, ag, rs = _zero3(H100, fwd=0.0, bwd=0.0)
    n = 32
    # Forward: n gathers; backward: n - 1 gathers (the last layer stays gathered) + n RS.
    total = dp.per_step[0] - dp.grad_exposed[0] + dp.per_microbatch[0]
    assert total == pytest.approx(n * ag + (n - 1) * ag + n * rs, rel=1e-12)


def test_zero3_with_pipelining_gathers_once_per_step():
    dp, ag, rs = _zero3(H100, fwd=100.0, bwd=200.0, pp=2)
    assert dp.per_microbatch[0] == 0.0
    assert dp.per_step[0] - dp.grad_exposed[0] == pytest.approx(ag + rs, rel=1e-12)


def test_plans_without_cp_or_zero3_do_not_see_the_new_terms(monkeypatch):
    """The new terms contribute exactly nothing to cp = 1, ZeRO < 3 plans: neutralising them
    leaves every figure bitwise the same."""
    plans = [Plan(dp=64), Plan(dp=32, tp=2, zero_stage=2), Plan(dp=16, tp=2, pp=2),
             Plan(dp=8, tp=8, zero_stage=0, recompute="full"), Plan(dp=64, cp=1, zero_stage=1)]
    job = Job(global_batch_size=512, seq_len=8192)
    before = evaluate(MODEL, H100, job, _arrays(*plans))
    monkeypatch.setattr(train_comm, "cp_ring_steps", lambda cp: 0 * cp)
    monkeypatch.setattr(train_comm, "prefetched_exposed",
                        lambda first, per_layer, window, n: 0 * first)
    import meshplan.cost.train.passes as passes
    monkeypatch.setattr(passes, "cp_block_efficiency", lambda s, cp: np.ones_like(cp, float))
    after = evaluate(MODEL, H100, job, _arrays(*plans))
    assert np.array_equal(before.step_time, after.step_time)
    for k in before.time:
        assert np.array_equal(before.time[k], after.time[k])
    assert np.array_equal(before.memory["peak"], after.memory["peak"])
