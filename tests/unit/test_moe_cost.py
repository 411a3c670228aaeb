"""MoE training cost (cost/moe.py, the MoE part of cost/layer.py, the expert all-to-all and
its overlap, multi-token prediction), each against its source's number where one exists."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meshplan.api import estimate
from meshplan.cost import comm
from meshplan.cost import flops as F
from meshplan.cost import moe as M
from meshplan.cost.kernels import Kernels
from meshplan.cost.layer import BatchShape, LayerDegrees, mlp_parts
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.plan import Plan


def test_router_and_permutation_bytes_follow_the_alltoall_dispatcher():
    m = load_model("qwen3-30b-a3b")
    T, h, k = 4096.0, m.hidden_size, m.moe.top_k
    assert M.router_bytes(m, T) == 9 * T * m.moe.num_experts
    # One rank's experts, no exchange: permute (2 A h) and unpermute (A h + T h) only.
    assert M.permutation_bytes(m, T, 1, 128) == pytest.approx(2 * h * (3 * T * k + T))
    # EP with several local experts adds the chunk sort and its inverse (4 A h).
    assert M.permutation_bytes(m, T, 8, 16) == pytest.approx(2 * h * (7 * T * k + T))
    assert M.permutation_bytes(m, T, 128, 1) == pytest.approx(2 * h * (3 * T * k + T))


def test_grouped_gemm_rows_are_padded_to_128_row_tiles():
    assert list(M.grouped_gemm_rows(np.array([0.2, 1, 128, 129, 4096]))) == \
        [128, 128, 128, 256, 4096]


def test_expected_maximum_of_normals_matches_the_tables():
    # Exact expected maxima of n standard normals: 1/sqrt(pi) at n = 2; 1.53875 at n = 10
    # (Harter 1961, Biometrika 48, Table 1).
    assert M.max_normal_z(1) == 0.0
    assert M.max_normal_z(2) == pytest.approx(1 / math.sqrt(math.pi), rel=0.05)
    assert M.max_normal_z(10) == pytest.approx(1.53875, rel=0.01)


def test_load_imbalance_matches_a_simulated_uniform_router():
    """Dropless uniform top-k routing: the busiest of ep ranks over the mean, closed form vs
    a Monte Carlo router (each token picks k distinct experts of E uniformly)."""
    m = load_model("qwen3-30b-a3b").moe
    rng = np.random.default_rng(0)
    E, k, ep, tokens = m.num_experts, m.top_k, 8, 256  # 256 tokens per rank
    trials = []
    for _ in range(200):
        picks = np.argsort(rng.random((tokens * ep, E)), axis=1)[:, :k]
        per_rank = np.bincount(picks.ravel() // (E // ep), minlength=ep)
        trials.append(per_rank.max() / per_rank.mean())
    closed = float(M.load_imbalance(m, tokens * k, ep))
    assert closed == pytest.approx(np.mean(trials), rel=0.01)
    assert closed > 1.01
    assert float(M.load_imbalance(m, tokens * k, 1)) == 1.0
    assert float(M.load_imbalance(m, tokens * k, ep, force_balanced=True)) == 1.0
    capped = m.model_copy(update={"capacity_factor": 1.0})
    assert float(M.load_imbalance(capped, tokens * k, ep)) == 1.0


def test_load_imbalance_never_exceeds_every_assignment_on_one_rank():
    """The busiest of ep ranks holds at most all the assignments: factor <= ep, finite, for
    any token count the vectorised search may hand it (down to a fraction of a token)."""
    m = load_model("deepseek-v3").moe
    assert m is not None
    few = np.array([1e-6, 0.5, 1.0, 4.0, 64.0, 1e6])
    for ep in (2, 8, 64):
        f = M.load_imbalance(m, few, ep)
        assert np.all(np.isfinite(f)) and np.all(f >= 1.0) and np.all(f <= ep)


def test_all_to_all_reaches_deepep_bandwidths():
    """DeepEP normal kernels (deepseek-ai/DeepEP docs/legacy.md): 4,096 tokens x 7,168 x
    top-8; intranode EP8 dispatch 153 GB/s on H800 NVLink, internode EP16 43 GB/s per CX-7
    NIC."""
    nbytes = 4096 * 8 * 7168 * 2.0
    h800 = load_cluster("dgx-h800")
    intra = [np.array([8]), np.array([8])]
    t = float(comm.all_to_all_time(h800, intra, nbytes, plateau=True)[0]) \
        - h800.network[0].latency
    assert nbytes * 7 / 8 / t == pytest.approx(153e9, rel=0.01)
    inter = [np.array([8]), np.array([16])]
    t = float(comm.all_to_all_time(h800, inter, nbytes, plateau=True)[0]) \
        - h800.network[1].latency
    assert nbytes * 8 / 16 / t == pytest.approx(43e9, rel=0.01)


def _moe_case(**plan):
    model = load_model("qwen3-30b-a3b")
    job = Job(global_batch_size=256, seq_len=4096)
    base = dict(tp=1, pp=1, ep=16, dp=16, micro_batch_size=1, recompute="selective")
    return model, job, Plan(**{**base, **plan})


def test_ep_overlap_hides_the_all_to_all_behind_the_other_pass():
    model, job, plan = _moe_case()
    c = load_cluster("dgx-h100")
    plain = estimate(model, c, job, plan, 16, simulate=False).time_breakdown_s["ep_comm"]
    hidden = estimate(model, c, job, plan.model_copy(update={"ep_comm_overlap": True}), 16,
                      simulate=False).time_breakdown_s["ep_comm"]
    assert 0.0 <= hidden < 0.5 * plain
    # Nothing of the other micro-batch's compute usable: fully exposed again.
    none = c.model_copy(update={"overlap": c.overlap.model_copy(update={"ep_overlapped": 0.0})})
    again = estimate(model, none, job, plan.model_copy(update={"ep_comm_overlap": True}), 16,
                     simulate=False).time_breakdown_s["ep_comm"]
    assert again == pytest.approx(plain)


def test_dense_estimates_do_not_depend_on_the_moe_cost(monkeypatch):
    """A dense model's estimate is bit-identical whatever the MoE constants; a MoE one moves."""
    c = load_cluster("dgx-h100")
    dense = load_model("llama3-8b")
    job = Job(global_batch_size=64, seq_len=4096)
    dplan = Plan(tp=2, pp=2, dp=2, micro_batch_size=1)
    model, mjob, mplan = _moe_case()

    def run():
        return (estimate(dense, c, job, dplan, 8).step_time_s,
                estimate(model, c, mjob, mplan, 16).step_time_s)

    d0, m0 = run()
    monkeypatch.setattr(M, "ROUTER_BYTES_PER_SCORE", 900.0)
    monkeypatch.setattr(M, "GROUPED_GEMM_ROW_TILE", 8192)
    monkeypatch.setattr(comm, "ALL_TO_ALL_EFFICIENCY", (0.01, 0.01))
    d1, m1 = run()
    assert d1 == d0
    assert m1 > 1.5 * m0


def test_the_moe_block_is_costed_on_the_busiest_rank(monkeypatch):
    """ep = 8: each local expert gets 4,096 x 8 x 8 / 128 = 2,048 rows on average; the
    busiest rank's experts get `load_imbalance` more, padded to whole tiles."""
    import meshplan.cost.layer as L

    m = load_model("qwen3-30b-a3b")
    K = Kernels(load_cluster("dgx-h100"), "bf16")
    shape, deg = BatchShape.training(1, 4096, 1), LayerDegrees(ep=8)
    busiest = float(np.asarray(mlp_parts(m, K, shape, deg, True, M.ALLTOALL).gemm))
    imbalance = float(M.load_imbalance(m.moe, 4096 * m.moe.top_k, 8))
    monkeypatch.setattr(L, "load_imbalance", lambda *a, **k: 1.0)
    mean = float(np.asarray(mlp_parts(m, K, shape, deg, True, M.ALLTOALL).gemm))
    router = float(np.asarray(L._linear(K, 2 * 4096 * m.hidden_size * 128, 4096,
                                         m.hidden_size)))
    rows = float(M.grouped_gemm_rows(2048 * imbalance)[()])
    assert imbalance > 1.0
    # Time goes with the padded rows, less the larger GEMM's slightly higher efficiency.
    ratio = (busiest - router) / (mean - router)
    assert imbalance < ratio <= rows / 2048


def test_mtp_adds_a_layer_a_projection_and_a_head_pass():
    m = load_model("deepseek-v3")
    assert m.mtp_layers == 1
    none = m.model_copy(update={"mtp_layers": 0})
    B, s = 8, 4096
    tokens = B * s
    extra = F.forward_flops(m, B, s) - F.forward_flops(none, B, s)
    assert extra == pytest.approx(float(F.mtp_flops(m, B, s)))
    layer = F.qkv_flops(m, tokens) + F.attention_core_flops(m, B, s) \
        + F.out_proj_flops(m, tokens) + F.moe_flops(m, tokens)
    assert extra == pytest.approx(layer + F.head_flops(m, tokens)
                                  + 4 * tokens * m.hidden_size ** 2)
    c = load_cluster("dgx-h100")
    job = Job(global_batch_size=64, seq_len=4096)
    plan = Plan(tp=8, pp=1, ep=8, dp=8, micro_batch_size=1, recompute="full")
    t_mtp = estimate(m, c, job, plan, 64, simulate=False).step_time_s
    t_none = estimate(none, c, job, plan, 64, simulate=False).step_time_s
    assert t_mtp > t_none


def test_serving_keeps_the_fused_moe_form():
    """Serving engines' fused MoE kernels: no imbalance, padding or dispatcher kernels."""
    m = load_model("qwen3-30b-a3b")
    K = Kernels(load_cluster("dgx-h100"), "bf16")
    shape, deg = BatchShape.training(1, 4096, 1), LayerDegrees(ep=8)
    fused = mlp_parts(m, K, shape, deg, True)
    megatron = mlp_parts(m, K, shape, deg, True, M.ALLTOALL)
    assert fused.launches == 0 and float(megatron.launches) == 5.0  # top-k, (un)permute, 2 sorts
    h, k = m.hidden_size, m.moe.top_k
    act = 6 * 4096 * k * m.moe.expert_ffn_hidden_size
    assert float(fused.elementwise_bytes) == pytest.approx(act + 8 * 4096 * k * h)
    assert float(np.asarray(megatron.gemm)) > float(np.asarray(fused.gemm))
