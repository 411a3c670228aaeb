"""The device mesh of many plans: axis names, the rank group each collective spans, and the
counts derived from the degrees, computed once per batch of plans.

Ranks are laid out by `axis_order` (innermost, fastest-varying first), as Megatron-Core's
RankGenerator does. The dense mesh uses (tp, cp, dp, pp); the expert mesh of MoE layers uses
(etp, ep, edp, pp) with etp in tp's place and edp = dp * cp * tp / (ep * etp) in dp's place
(Megatron-Core `parallel_state`, expert data parallel). Hybrid sharding (HSDP) splits dp into
`dps` (shard group, inner) and `dpr` (replicas, outer). The number of a group's members inside
one domain of a network tier follows from the axis strides; that decides which tier (NVLink,
scale-out) the group's collectives cross.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

import numpy as np

from meshplan.specs.cluster import Cluster
from meshplan.specs.plan import PlanArrays


class Axis(StrEnum):
    """Mesh axes as `Plan` and `axis_order` name them."""

    TP = "tp"
    CP = "cp"
    EP = "ep"
    DP = "dp"
    PP = "pp"


class Group(StrEnum):
    """Rank groups that run a collective, each spanning the axes in `GROUP_AXES`."""

    TP = "tp"
    CP = "cp"
    PP = "pp"
    DP = "dp"
    """Gradient reduction of the dense weights: data parallel spans cp x dp (every rank of a
    context-parallel group holds the same weights)."""
    DP_SHARD = "dp_shard"
    """ZeRO / FSDP sharding group of the dense weights: cp x dp_shard."""
    DP_REPLICA = "dp_replica"
    """HSDP replicas of one shard group."""
    EP = "ep"
    EDP = "edp"
    """Expert data parallel: the ranks holding the same experts."""


GROUP_AXES: dict[Group, tuple[tuple[str, ...], bool]] = {
    Group.TP: (("tp",), False),
    Group.CP: (("cp",), False),
    Group.PP: (("pp",), False),
    Group.DP: (("cp", "dp"), False),
    Group.DP_SHARD: (("cp", "dps"), False),
    Group.DP_REPLICA: (("dpr",), False),
    Group.EP: (("ep",), True),
    Group.EDP: (("dp",), True),
}
"""Per group: the (pseudo-)axes it spans and whether they are those of the expert mesh."""

Num = int | np.ndarray

REPORTED_GROUPS: tuple[Group, ...] = (Group.TP, Group.CP, Group.DP, Group.PP, Group.EP)
"""Groups whose network tier an estimate reports, under their axis names."""


@dataclass(frozen=True, eq=False)
class Mesh:
    """Derived sizes and network placement of every plan in `plans` (one entry per plan)."""

    plans: PlanArrays

    @cached_property
    def num_gpus(self) -> np.ndarray:
        P = self.plans
        return P.dp * P.tp * P.pp * P.cp

    @cached_property
    def edp(self) -> np.ndarray:
        """Expert data-parallel degree."""
        P = self.plans
        return (P.dp * P.cp * P.tp) // (P.ep * P.etp)

    @cached_property
    def shard(self) -> np.ndarray:
        """GPUs the dense weights' ZeRO/FSDP states are split over (dp_shard x cp)."""
        return self.plans.dp_shard * self.plans.cp

    @cached_property
    def seq_shard(self) -> np.ndarray:
        """Divisor of the activations outside the TP regions: tp with sequence parallelism."""
        return np.where(self.plans.sp, self.plans.tp, 1)

    def num_microbatches(self, global_batch_size: int) -> np.ndarray:
        """Micro-batches per optimizer step of each data-parallel replica."""
        return np.asarray(num_microbatches(global_batch_size, self.plans.dp, self.plans.mbs))

    def tokens_per_microbatch(self, seq_len: int) -> np.ndarray:
        """Tokens of one micro-batch on one GPU (its context-parallel share)."""
        return self.plans.mbs * seq_len / self.plans.cp

    def _sizes(self, expert: bool) -> dict[str, np.ndarray]:
        P, one = self.plans, np.ones_like(self.plans.tp)
        if expert:
            return {"tp": P.etp, "cp": one, "ep": P.ep, "dp": self.edp, "pp": P.pp,
                    "dps": self.edp, "dpr": one}
        return {"tp": P.tp, "cp": P.cp, "dp": P.dp, "pp": P.pp, "ep": one,
                "dps": P.dp_shard, "dpr": P.dp // P.dp_shard}

    @cached_property
    def _layout(self) -> dict[bool, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        out = {}
        for expert in (False, True):
            sizes = self._sizes(expert)
            out[expert] = (sizes, _strides(self.plans.axis_order, sizes))
        return out

    def group_size(self, group: Group) -> np.ndarray:
        axes, expert = GROUP_AXES[group]
        sizes = self._layout[expert][0]
        size = np.ones_like(self.plans.tp)
        for axis in axes:
            size = size * sizes[axis]
        return size

    def members(self, cluster: Cluster, group: Group) -> list[np.ndarray]:
        """For each network tier (inner to outer), the group's members inside one domain of
        that tier; the last entry is the whole group, so the outermost tier carries the rest."""
        axes, expert = GROUP_AXES[group]
        sizes, stride = self._layout[expert]
        size = self.group_size(group)
        counts = [np.minimum(_members_within(axes, sizes, stride, t.domain_size), size)
                  for t in cluster.network[:-1]]
        return [*counts, size]

    def tier_index(self, cluster: Cluster, group: Group) -> np.ndarray:
        """Index of the innermost tier whose domain holds the whole group (0 = NVLink)."""
        members = self.members(cluster, group)
        size = members[-1]
        idx = np.full(len(self.plans), len(members) - 1)
        for i in reversed(range(len(members))):
            idx = np.where(members[i] >= size, i, idx)
        return idx

    def tiers(self, cluster: Cluster, i: int = 0) -> dict[str, str]:
        """Network tier each reported group of plan i lands on (groups of size > 1 only)."""
        out = {}
        for group in REPORTED_GROUPS:
            if self.group_size(group)[i] > 1:
                out[group.value] = cluster.network[int(self.tier_index(cluster, group)[i])].name
        return out


def num_microbatches(global_batch_size: int, dp: Num, micro_batch_size: Num) -> Num:
    """Micro-batches per optimizer step of one data-parallel replica (one plan or many)."""
    return global_batch_size // (dp * micro_batch_size)


def _strides(order: tuple[str, ...], sizes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rank stride of each axis: the product of the sizes of the axes inside it."""
    out, acc = {}, np.ones_like(sizes["tp"])
    for axis in order:
        out[axis] = acc
        acc = acc * sizes[axis]
    # Hybrid sharding splits dp into an inner shard group and an outer replica group.
    out["dps"] = out["dp"]
    out["dpr"] = out["dp"] * sizes["dps"]
    return out


def _members_within(axes: tuple[str, ...], sizes: dict[str, np.ndarray],
                    stride: dict[str, np.ndarray], domain: int) -> np.ndarray:
    """Members of a group spanning `axes` that share one domain of `domain` consecutive ranks."""
    k = np.ones_like(sizes["tp"])
    for axis in axes:
        inside = np.maximum(domain // stride[axis], 1)
        k = k * np.minimum(sizes[axis], inside)
    return k
