"""Where each mesh axis lands on the network.

Ranks are laid out by `axis_order` (innermost, fastest-varying first), as Megatron-Core's
RankGenerator does. The dense mesh uses (tp, cp, dp, pp); the expert mesh of MoE layers uses
(etp, ep, edp, pp) with etp in tp's place and edp = dp * cp * tp / (ep * etp) in dp's place.
Hybrid sharding (HSDP) splits dp into `dps` (shard group, inner) and `dpr` (replicas).
A group of ranks is described by the axes it spans; the number of its members inside one
domain of a network tier follows from the axis strides.
"""

from __future__ import annotations

import numpy as np

from meshplan.specs.cluster import Cluster
from meshplan.specs.plan import PlanArrays


def dense_sizes(P: PlanArrays) -> dict[str, np.ndarray]:
    return {"tp": P.tp, "cp": P.cp, "dp": P.dp, "pp": P.pp, "ep": np.ones_like(P.tp),
            "dps": P.dp_shard, "dpr": P.dp // P.dp_shard}


def expert_sizes(P: PlanArrays) -> dict[str, np.ndarray]:
    edp = (P.dp * P.cp * P.tp) // (P.ep * P.etp)
    return {"tp": P.etp, "cp": np.ones_like(P.tp), "ep": P.ep, "dp": edp, "pp": P.pp,
            "dps": edp, "dpr": np.ones_like(P.tp)}


def strides(order: tuple[str, ...], sizes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rank stride of each axis: the product of the sizes of the axes inside it."""
    out, acc = {}, np.ones_like(sizes["tp"])
    for axis in order:
        out[axis] = acc
        acc = acc * sizes[axis]
    # Hybrid sharding splits dp into an inner shard group and an outer replica group.
    out["dps"] = out["dp"]
    out["dpr"] = out["dp"] * sizes["dps"]
    return out


def members_within(axes: tuple[str, ...], sizes: dict[str, np.ndarray],
                   stride: dict[str, np.ndarray], domain: int) -> np.ndarray:
    """Members of a group spanning `axes` that share one domain of `domain` consecutive ranks."""
    k = np.ones_like(sizes["tp"])
    for axis in axes:
        inside = np.maximum(domain // stride[axis], 1)
        k = k * np.minimum(sizes[axis], inside)
    return k


def tier_members(cluster: Cluster, axes: tuple[str, ...], P: PlanArrays,
                 expert: bool = False) -> list[np.ndarray]:
    """For each network tier (inner to outer), group members inside one domain of that tier.

    The last entry is always the whole group size, so the outermost tier carries whatever
    the inner ones do not.
    """
    sizes = expert_sizes(P) if expert else dense_sizes(P)
    stride = strides(P.axis_order, sizes)
    size = np.ones_like(P.tp)
    for axis in axes:
        size = size * sizes[axis]
    counts = [np.minimum(members_within(axes, sizes, stride, t.domain_size), size)
              for t in cluster.network[:-1]]
    return [*counts, size]


def axis_tier_index(cluster: Cluster, axes: tuple[str, ...], P: PlanArrays,
                    expert: bool = False) -> np.ndarray:
    """Index of the innermost tier whose domain holds the whole group (0 = NVLink)."""
    members = tier_members(cluster, axes, P, expert)
    size = members[-1]
    idx = np.full(len(P), len(members) - 1)
    for i in reversed(range(len(members))):
        idx = np.where(members[i] >= size, i, idx)
    return idx
