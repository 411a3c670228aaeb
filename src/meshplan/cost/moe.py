"""What a mixture-of-experts layer costs beyond its expert GEMMs, as Megatron-Core runs it.

One MoE layer's forward on one GPU with the `alltoall` token dispatcher (Megatron-Core
`MoEAlltoAllTokenDispatcher`, with `--moe-permute-fusion`, TE's fused permute kernels; the
plan's `moe_dispatcher` changes what the exchange sends, `dispatch_tier_shares`):
  router GEMM (in `layer.mlp_parts`) -> score function + top-k (`router_bytes`)
  -> permute tokens into expert order -> all-to-all dispatch -> sort the received chunks by
  local expert -> grouped expert GEMMs (`grouped_gemm_rows`) -> sort back -> all-to-all
  combine -> unpermute, weighted by the routing probabilities (`permutation_bytes`).
The expert GEMMs run on the busiest rank's tokens (`load_imbalance`); the exchanges are
priced in `collectives.ep_dispatch_combine_time` and their overlap in `train.comm`.
"""

from __future__ import annotations

from functools import cache
from statistics import NormalDist

import numpy as np

from meshplan.cost.kernels import ACTIVATION_BYTES
from meshplan.specs.model import Model, MoE
from meshplan.specs.plan import MOE_DISPATCHERS

Num = float | np.ndarray

ALLTOALL = "alltoall"
"""Megatron-Core's alltoall token dispatcher, as above (training)."""
FUSED = "fused"
"""A serving engine's fused MoE kernel (vLLM `fused_moe`, SGLang): routing, permutation and
the expert GEMMs in a few kernels, costed as balanced with one permutation each way; its
serving calibration (`serving_calibration.toml`) was fitted on that form."""

ROUTER_BYTES_PER_SCORE = 9.0
"""HBM bytes per (token, expert) score of the router's score function and top-k: read the
fp32 logits (4), write the fp32 probabilities (4) and the boolean routing map (1). Megatron-
Core keeps router scores in fp32 (`--moe-router-dtype fp32` in its MoE recipes) and fuses the
softmax / sigmoid, top-k and (group-limited) selection into one kernel
(`--moe-router-fusion`, TE `fused_topk_with_score_function`); the auxiliary-loss statistics
are of the same kernel. One read and one write per tensor, as meshplan counts element-wise
kernels (`cost.layer`)."""

def dispatcher_kernels(ep: Num, local_experts: Num) -> np.ndarray:
    """Kernels of a MoE layer's forward beyond its GEMMs, each paying
    `Cluster.kernel_overhead`: the fused score function + top-k, the fused permute and
    unpermute, and with ep > 1 and several local experts the two chunk sorts
    (Megatron-Core `MoEAlltoAllTokenDispatcher` with `--moe-permute-fusion`)."""
    return 3.0 + 2.0 * _sorts(ep, local_experts)


def _sorts(ep: Num, local_experts: Num) -> np.ndarray:
    """1 where the received chunks are re-sorted by local expert, else 0."""
    return np.where((np.asarray(ep) > 1) & (np.asarray(local_experts) > 1), 1.0, 0.0)


GROUPED_GEMM_ROW_TILE = 128
"""Rows (tokens) of one tile of a grouped expert GEMM: each expert's token block is padded to
a multiple of it (DeepGEMM's m-grouped contiguous layout aligns every expert segment to the
128-row block, `get_m_alignment_for_contiguous_layout`; CUTLASS / cuBLAS Hopper GEMM tiles
are 128 rows). A balanced training batch (thousands of rows per expert) loses < 3 %.
Training only: serving's fused kernels are costed unpadded (`FUSED`)."""


def router_bytes(model: Model, tokens: Num) -> Num:
    """Forward HBM bytes of the score function and top-k over `tokens` tokens."""
    assert model.moe is not None
    return ROUTER_BYTES_PER_SCORE * tokens * model.moe.num_experts


def permutation_bytes(model: Model, tokens: Num, ep: Num, local_experts: Num) -> Num:
    """Forward HBM bytes of moving one rank's `tokens` tokens to their experts and back.

    bf16 rows of width h, A = tokens x top-k assignments: the fused permute reads and writes
    one row per assignment (2 A h elements); after the dispatch, with more than one local
    expert, the received chunks are re-sorted by expert (`sort_chunks_by_idxs`, 2 A h) and
    sorted back before the combine (2 A h); the fused unpermute reads A rows, scales them by
    the routing probabilities and sums them into the token's row (A h + tokens h).
    """
    assert model.moe is not None
    h = model.hidden_size
    assignments = tokens * model.moe.top_k
    sort = 4.0 * _sorts(ep, local_experts)
    return ACTIVATION_BYTES * h * ((2.0 + sort + 1.0) * assignments + tokens)


def grouped_gemm_rows(rows: Num) -> np.ndarray:
    """Rows a grouped GEMM computes for an expert given `rows` tokens: padded to whole
    `GROUPED_GEMM_ROW_TILE` tiles (at least one)."""
    r = np.maximum(np.asarray(rows, dtype=float), 1.0)
    return np.ceil(r / GROUPED_GEMM_ROW_TILE - 1e-9) * GROUPED_GEMM_ROW_TILE


@cache
def max_normal_z(n: int) -> float:
    """Expected maximum of n independent standard normals, Blom's approximation
    Phi^-1((n - 0.375) / (n + 0.25)) (Blom, Statistical Estimates and Transformed Beta-
    Variables, 1958): 0.589 at n = 2 (exact 1/sqrt(pi) = 0.564), 1.546 at n = 10 (exact
    1.539, Harter 1961), closer as n grows. 0 for n = 1."""
    return 0.0 if n <= 1 else NormalDist().inv_cdf((n - 0.375) / (n + 0.25))


def _z(ep: Num) -> np.ndarray:
    arr = np.asarray(ep, dtype=float)
    keys, inverse = np.unique(arr, return_inverse=True)
    return np.array([max_normal_z(int(k)) for k in keys])[inverse].reshape(arr.shape)


def load_imbalance(moe: MoE, assignments_per_rank: Num, ep: Num,
                   force_balanced: Num = False) -> np.ndarray:
    """Busiest expert-parallel rank's routed tokens over the mean (>= 1).

    The step waits for the busiest of the ep ranks (the all-to-alls synchronise them). With
    dropless routing spread uniformly (the ideal a load-balancing loss or DeepSeek-V3's bias
    aims at), a rank's load is a sum of A x ep assignments each landing on it with p = 1/ep:
    mean A, variance A (1 - p) approximately (binomial; a token's k experts are distinct,
    which only lowers it); the expected maximum of ep such loads is
    A + z(ep) sqrt(A (1 - p)), z the expected maximum of ep standard normals
    (`max_normal_z`). A capacity factor caps every expert at cf x its mean (tokens beyond
    are dropped: Lepikhin et al. 2021, GShard; Megatron `--moe-expert-capacity-factor`), so
    the factor is at most cf, and never above ep (the busiest rank cannot receive more than
    every assignment; the normal approximation exceeds it only for a handful of tokens).
    `force_balanced` (per plan): routing forced even (Megatron-Core
    `--moe-router-force-load-balancing`, which benchmarking tables use, `Plan.
    moe_force_balanced`): every rank gets exactly A, factor 1. Real learned routers are less
    even than uniform; the uniform factor is their lower bound.
    """
    a = np.maximum(np.asarray(assignments_per_rank, dtype=float), 1e-9)
    p = 1.0 / np.maximum(np.asarray(ep, dtype=float), 1.0)
    factor = np.minimum(1.0 + _z(ep) * np.sqrt((1.0 - p) / a), 1.0 / p)
    if moe.capacity_factor is not None:
        factor = np.minimum(factor, max(moe.capacity_factor, 1.0))
    return np.asarray(np.where(force_balanced, 1.0, factor))


DEDUPLICATING = ("flex-deepep", "hybridep")
"""Dispatchers that send a token once per destination rank inside a node and once per
destination node across nodes, whatever the number of its experts there (`Plan.
moe_dispatcher`): DeepEP's normal kernels send one RDMA copy per destination node to the GPU
of the same local index, which forwards it over NVLink to the ranks holding its experts
(deepseek-ai/DeepEP README, "asymmetric-domain bandwidth forwarding"; DeepSeek-V3, arXiv:
2412.19437 Sec. 3.2.2: "each token ... is transmitted to at most 4 nodes ... then
forwarded via NVLink"), and HybridEP (Megatron-Core `--moe-flex-dispatcher-backend
hybridep`, a branch of DeepEP for NVL72 and multi-node) does the same. Megatron-Core's
alltoall dispatcher sends one row per (token, expert) assignment."""


def miss_probability(num_experts: int, top_k: int, held: Num) -> np.ndarray:
    """Probability that none of a token's top_k distinct experts, drawn uniformly from
    num_experts, is among `held` given experts: C(E - m, k) / C(E, k) = prod_i (E - m - i) /
    (E - i), i < k (hypergeometric, no success in k draws)."""
    m = np.asarray(held, dtype=float)
    out = np.ones_like(m)
    for i in range(top_k):
        out = out * np.clip((num_experts - m - i) / (num_experts - i), 0.0, 1.0)
    return out


def distinct_share(moe: MoE, ep: Num, group: Num) -> np.ndarray:
    """Copies a deduplicating dispatcher sends to peers in other groups of `group` expert-
    parallel ranks, over the top_k copies per token an assignment-wise all-to-all sends
    there (<= 1).

    Experts sit contiguously, E / ep per rank (Megatron-Core's expert placement), so a group
    of g ranks holds m = E g / ep experts and receives the token with probability 1 - C(E - m,
    k) / C(E, k) (`miss_probability`), once; the assignment-wise all-to-all sends it k m / E
    copies on average. Their ratio: ep (1 - C(E - m, k) / C(E, k)) / (k g). Routing is taken
    uniform (force-balanced, or a balanced router); group-limited routing (DeepSeek-V3's
    node limit of 4) only lowers the copies. g = 1 (ranks inside one node): DeepEP's one
    copy per destination rank. Example: Qwen3-235B (E 128, k 8) over EP32 with 4 ranks per
    node: 0.66 of the assignment-wise traffic crosses the network."""
    g = np.asarray(group, dtype=float)
    e = np.asarray(ep, dtype=float)
    held = moe.num_experts * g / np.maximum(e, 1.0)
    hit = 1.0 - miss_probability(moe.num_experts, moe.top_k, held)
    return np.asarray(np.minimum(e * hit / (moe.top_k * np.maximum(g, 1.0)), 1.0))


def dispatch_tier_shares(moe: MoE, members: list[np.ndarray], dispatcher: np.ndarray
                         ) -> list[np.ndarray]:
    """Per network tier, the share of the assignment-wise all-to-all bytes a plan's
    dispatcher sends across it (`comm.all_to_all_time`'s `tier_scale`): 1 for the
    alltoall dispatcher; for a deduplicating one (`DEDUPLICATING`), `distinct_share` for the
    peers first reached at the tier, grouped by the inner tier's domains (one rank each at
    the innermost tier)."""
    dedup = np.isin(dispatcher, [MOE_DISPATCHERS.index(d) for d in DEDUPLICATING])
    n = members[-1]
    prev = np.ones_like(n)
    shares = []
    for k in members:
        shares.append(np.where(dedup, distinct_share(moe, n, prev), 1.0))
        prev = np.maximum(k, prev)
    return shares


def capacity_share(moe: MoE) -> float:
    """Share of the routed assignments the experts compute: 1 dropless; with a capacity
    factor below 1, at most cf of them (the rest are dropped)."""
    return 1.0 if moe.capacity_factor is None else min(moe.capacity_factor, 1.0)
