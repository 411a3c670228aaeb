"""Collective and point-to-point times on a tiered network (alpha-beta model).

Sizes follow nccl-tests (PERFORMANCE.md): `nbytes` is the full (gathered / reduced) buffer,
and busbw = algbw x 2(n-1)/n for all-reduce, x (n-1)/n for all-gather, reduce-scatter and
all-to-all. A ring over n ranks on one tier therefore takes
    all-reduce      2(n-1)/n * S / busbw + 2(n-1) * alpha
    all-gather/RS     (n-1)/n * S / busbw +  (n-1) * alpha
with busbw = bandwidth * bus_efficiency(S) (Thakur, Rabenseifner & Gropp 2005 for the ring;
NCCL tuning.cc for the per-step latency). A group spanning several tiers is one ring whose
busbw is set by its slowest crossing (see `_ring`).

`members` is the list from `meshplan.mesh.Mesh.members`: the group's members inside one domain
of each network tier.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meshplan.specs.cluster import Cluster, NetworkTier

Num = float | np.ndarray


def _busbw(tier: NetworkTier, nbytes: Num) -> np.ndarray:
    return tier.bandwidth / tier.oversubscription * tier.bus_efficiency(nbytes)


def ring_curve_bytes(tier: NetworkTier, nbytes: Num, n: Num) -> Num:
    """The size at which a ring all-gather / reduce-scatter of `nbytes` over n ranks reads
    the tier's curve: the one giving the same per-step share S / n on the ring the curve was
    measured on (`BusCurve.ranks`; NCCL has only rings for these two, each step moving one
    rank's share: Jeaugey, PAT, arXiv:2506.20252 Sec. 1, "linear latency ... at scale").
    A FSDP layer's all-gather over 96 ranks thus runs at the efficiency the 32-rank sweep
    shows at a third of its size."""
    ranks = tier.bus_efficiency.ranks
    return nbytes if ranks is None else nbytes * ranks / np.maximum(n, 2)


def _ring(cluster: Cluster, members: list[np.ndarray], nbytes: Num, factor: float,
          all_reduce: bool = False) -> np.ndarray:
    """Ring collective over a group that may span tiers.

    A ring that leaves a domain of tier i-1 crosses tier i once per domain and NCCL runs one
    channel per NIC, so the k_{i-1} members inside a domain pool their links: the ring's busbw
    is min_i(k_{i-1} x bandwidth_i x efficiency_i) (hardware.md Sec. 2: multi-node all-reduce
    busbw ~ NICs per node x per-NIC rate; 192 GB/s measured on DGX A100, issue_nccl_812).
    Latency: the slowest crossed tier per step, over n - 1 ring steps (all-reduce: at most
    2 log2 n, NCCL's tree for large groups).
    """
    n = members[-1]
    shape = np.broadcast(n, nbytes).shape
    busbw = np.full(shape, np.inf)
    alpha = np.zeros(shape)
    prev = np.ones_like(n)
    for i, tier in enumerate(cluster.network):
        k = members[i]
        crosses = k > prev
        # All-reduce is read at S: the tree NCCL picks at scale pipelines fixed-size chunks
        # whatever n (and the curves are all-reduce sweeps).
        size = nbytes if all_reduce else ring_curve_bytes(tier, nbytes, n)
        bw = _busbw(tier, size) * (prev if i else 1)
        if all_reduce and i == 0:
            bw = bw * np.where(k >= n, tier.all_reduce_boost, 1.0)
        busbw = np.where(crosses, np.minimum(busbw, bw), busbw)
        alpha = np.where(crosses, np.maximum(alpha, tier.latency), alpha)
        prev = np.maximum(k, prev)
    # NCCL has a tree (log-depth) algorithm for all-reduce only; all-gather and
    # reduce-scatter run as rings of n - 1 steps.
    steps = n - 1
    if all_reduce:
        steps = np.minimum(n - 1, 2 * np.ceil(np.log2(np.maximum(n, 2))))
    t = factor * (n - 1) / n * nbytes / busbw + factor * steps * alpha
    return np.where(n > 1, t, 0.0)


def all_reduce_time(cluster: Cluster, members: list[np.ndarray], nbytes: Num) -> np.ndarray:
    """Hierarchical ring all-reduce of `nbytes`."""
    return _ring(cluster, members, nbytes, 2.0, all_reduce=True)


def all_gather_time(cluster: Cluster, members: list[np.ndarray], nbytes: Num) -> np.ndarray:
    """All-gather producing `nbytes` per rank (reduce-scatter costs the same)."""
    return _ring(cluster, members, nbytes, 1.0)


reduce_scatter_time = all_gather_time


ALL_TO_ALL_EFFICIENCY = (0.77, 0.86)
"""Achieved share of a tier's per-GPU bandwidth in an all-to-all, (scale-up tier, scale-out
tiers). All-to-all moves every byte once, point to point, so it has no ring pipeline to fill
and its efficiency is a plateau, not the ring's message-size curve (`NetworkTier.
bus_efficiency`). Scale-up: DeepEP's intranode EP8 dispatch / combine reach 153 / 158 GB/s
on H800 NVLink of 200 GB/s per direction (deepseek-ai/DeepEP docs/legacy.md;
measured_efficiency.yaml ep_deepep_normal_ep8). Scale-out: one NIC per GPU (NCCL all-to-all
cannot pool a node's NICs, NVIDIA/nccl-tests#267: 48-49 GB/s per 400G CX-7) at DeepEP's
internode EP16 rate, 43 GB/s of 50 (ep_deepep_normal_ep16), the lowest of its EP16-EP64
figures."""


def all_to_all_time(cluster: Cluster, members: list[np.ndarray], nbytes: Num,
                    plateau: bool = False, tier_scale: Sequence[Num] | None = None) -> np.ndarray:
    """All-to-all where each rank holds `nbytes` and keeps 1/n of it.

    The share bound for peers first reachable at tier i crosses that tier, plus the tier's
    latency; tiers run concurrently, so the slowest one sets the time (inter-node: about one
    NIC per GPU, hardware.md Sec. 2). Its rate: `plateau`, `ALL_TO_ALL_EFFICIENCY` of the
    tier's bandwidth, measured on large exchanges (DeepEP's 4,096-token batches: training's
    regime); otherwise the tier's message-size curve at the share, the small messages of a
    decode step, for which no all-to-all sweep exists (hardware.md Sec. 7) and on which the
    serving calibration was fitted. `tier_scale`: per tier, the share of those bytes that
    crosses it (a MoE dispatcher that deduplicates copies: `cost.moe.dispatch_tier_shares`).
    """
    n = members[-1]
    worst = np.zeros(np.broadcast(n, nbytes).shape)
    prev = np.ones_like(n)
    for i, (tier, k) in enumerate(zip(cluster.network, members, strict=True)):
        share = np.asarray(nbytes * (k - prev) / n, dtype=float)
        if tier_scale is not None:
            share = share * tier_scale[i]
        bw = (tier.bandwidth / tier.oversubscription * ALL_TO_ALL_EFFICIENCY[min(i, 1)]
              if plateau else _busbw(tier, np.maximum(share, 1.0)))
        t = share / bw + tier.latency
        worst = np.maximum(worst, np.where(k > prev, t, 0.0))
        prev = np.maximum(k, prev)
    return worst


def p2p_time(cluster: Cluster, tier_index: np.ndarray, nbytes: Num) -> np.ndarray:
    """One point-to-point transfer of `nbytes` between ranks meeting first at `tier_index`."""
    out = np.zeros(np.broadcast(tier_index, nbytes).shape)
    for i, tier in enumerate(cluster.network):
        t = nbytes / _busbw(tier, nbytes) + tier.latency
        out = np.where(tier_index == i, t, out)
    return out
