"""The typed bridge from the cost model to the pipeline simulator.

`StageTimes` holds, for every plan of a costed batch, what one micro-batch costs on each kind
of pipeline rank (its layers' F, I, W with their exposed TP/CP/EP communication, the
embedding and head extras, the transfer between stages, the gradient reduction and the
activation bytes); `stage_costs` turns plan i into the per-stage `StageCosts` the simulator
runs. Built once, in `cost.train.step.evaluate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meshplan.cost.train.allocator import fragmentation
from meshplan.cost.train.passes import PassTimes
from meshplan.schedules.spec import W_ACTIVATION_SHARE

PASS_TERMS = ("compute", "tp_comm", "cp_comm", "ep_comm")
"""What one micro-batch's F + I + W on a rank is made of (they add up to it)."""
COMM_TERMS = PASS_TERMS[1:]


@dataclass(frozen=True)
class PassComm:
    """One axis's exposed collectives inside one kind of pass (F or I), per stage: the seconds
    folded into that pass's duration, and the bytes the collectives carry (before overlap)."""

    axis: str
    """"tp", "cp" or "ep"."""
    seconds: tuple[float, ...]
    nbytes: tuple[float, ...]


@dataclass(frozen=True)
class StageCosts:
    """Seconds and bytes per stage for one micro-batch (one plan; what the simulator runs)."""

    forward: tuple[float, ...]
    backward_input: tuple[float, ...]
    backward_weight: tuple[float, ...]
    activation_bytes: tuple[float, ...]
    p2p_time: float = 0.0
    p2p_blocking: float = 0.0
    w_share: float = W_ACTIVATION_SHARE
    """Share of a stage's activations kept from I until W (inputs of the linear layers)."""
    grad_reduce: float = 0.0
    """Data-parallel gradient reduction each rank runs on its comm stream after its backward."""
    grad_reduce_overlap: float = 0.0
    """Share of the rank's last backward action the reduction may overlap (bucketed
    reduce-scatter starts while the last micro-batch's gradients are still being produced)."""
    p2p_bytes: float = 0.0
    """What one transfer between stages carries per GPU (for traces)."""
    forward_comm: tuple[PassComm, ...] = ()
    """The TP / CP / EP part of `forward` (for traces; the simulator runs the totals)."""
    backward_comm: tuple[PassComm, ...] = ()
    """The TP / CP / EP part of `backward_input` (W has none)."""


@dataclass(frozen=True)
class StageTimes:
    """Per-plan arrays: the cost of one micro-batch on the pipeline ranks of each plan."""

    unit: PassTimes
    """F, I (recompute and exposed comm included), W of the L / pp layers of an evenly split
    rank, all its chunks together; `recompute` is zero (folded into I)."""
    unit_terms: dict[str, np.ndarray]
    """`unit`'s F + I + W split by PASS_TERMS."""
    pass_comm: dict[str, tuple[np.ndarray, np.ndarray]]
    """By COMM_TERMS, the exposed seconds in `unit`'s (F, I); they sum to `unit_terms`."""
    pass_comm_bytes: dict[str, tuple[np.ndarray, np.ndarray]]
    """By COMM_TERMS, the bytes those collectives carry in (F, I)."""
    rank_scale: tuple[np.ndarray, np.ndarray, np.ndarray]
    """Layers of the (first, middle, last) rank over L / pp (uneven splits)."""
    layers_per_rank: np.ndarray
    """L / pp: the layers of an evenly split rank."""
    embedding: PassTimes
    head: PassTimes
    p2p: np.ndarray
    """One activation or gradient transfer between stages."""
    p2p_bytes: np.ndarray
    p2p_blocking: float
    """Share of a transfer that stalls the sender (1 - overlap.pp)."""
    grad_reduce: np.ndarray
    grad_reduce_exposed: np.ndarray
    """The analytic model's exposed share of `grad_reduce` (the simulator replaces it)."""
    grad_reduce_overlap: np.ndarray
    activation_bytes: np.ndarray
    """One micro-batch's activations on an evenly split rank (all its chunks)."""
    head_activation_bytes: np.ndarray
    static_memory: tuple[dict[str, np.ndarray], ...]
    """Memory that does not depend on the schedule, by term, of the first, a middle and the
    last rank (`memory.RANK_POSITIONS`; 'activations' is full recompute's rebuilt layer)."""
    fragmentation_share: np.ndarray
    """The allocator's reserve over its allocated peak (`allocator.fragmentation_share`)."""

    def rank_scale_of(self, i: int, rank: int, pp: int) -> float:
        first, mid, last = (float(x[i]) for x in self.rank_scale)
        return first if rank == 0 else last if rank == pp - 1 else mid

    def static_memory_of(self, i: int, rank: int, pp: int) -> dict[str, float]:
        """By term, the schedule-independent memory of `rank`."""
        first, middle, last = self.static_memory
        kind = first if rank == 0 else last if rank == pp - 1 else middle
        return {k: float(v[i]) for k, v in kind.items()}

    def rank_memory(self, i: int, rank: int, pp: int, held: float) -> dict[str, float]:
        """By term, the peak memory of `rank` holding `held` bytes of in-flight activations,
        with the allocator's reserve on what the rank allocates."""
        terms = self.static_memory_of(i, rank, pp)
        terms["activations"] += held
        terms["fragmentation"] = float(fragmentation(terms, self.fragmentation_share[i]))
        return terms

    def rank_terms(self, i: int, rank: int, pp: int, head_rank: int) -> dict[str, float]:
        """PASS_TERMS of one micro-batch on `rank` (the embedding on rank 0 and the head on
        `head_rank` count as compute)."""
        k = self.rank_scale_of(i, rank, pp)
        out = {t: float(self.unit_terms[t][i]) * k for t in PASS_TERMS}
        if rank == 0:
            out["compute"] += _total(self.embedding, i)
        if rank == head_rank:
            out["compute"] += _total(self.head, i)
        return out

    def stage_scales(self, i: int, stage_to_rank: tuple[int, ...], pp: int) -> list[float]:
        """Each stage's layers over an evenly split rank's L / pp. A rank's chunks share its
        layers equally, unless they do not divide into whole layers per chunk on a rank that
        holds the first or the last stage: then its other chunks hold the rounded-up share
        and that end stage the rest (a chunk cannot hold part of a layer; the Zero Bubble
        fork's --allow-padding-num-layers takes the padding from the end chunks,
        megatron/model/transformer.py get_offset, branch arxiv)."""
        v = len(stage_to_rank) // pp
        even = float(self.layers_per_rank[i])
        out = [self.rank_scale_of(i, r, pp) / v for r in stage_to_rank]
        done: set[int] = set()
        for end in (0, len(stage_to_rank) - 1):
            r = stage_to_rank[end]
            n = round(self.rank_scale_of(i, r, pp) * even, 6)
            per = math.ceil(n / v)
            rest = n - (v - 1) * per
            if r in done or v == 1 or n % v == 0 or n != int(n) or rest < 0:
                continue
            done.add(r)  # a V-shaped rank 0 holds both ends: the first takes the rest
            for s, rank in enumerate(stage_to_rank):
                if rank == r:
                    out[s] = (rest if s == end else per) / even
        return out

    def stage_costs(self, i: int, stage_to_rank: tuple[int, ...], pp: int) -> StageCosts:
        """Per-stage F, I, W and activation bytes of plan i: each stage does its rank's work
        per chunk (`stage_scales`); the first stage adds the embedding, the last the LM head
        and loss."""
        scale = self.stage_scales(i, stage_to_rank, pp)
        u = self.unit
        fw = [float(u.forward[i]) * k for k in scale]
        bi = [float(u.backward_input[i]) * k for k in scale]
        bw = [float(u.backward_weight[i]) * k for k in scale]
        acts = [float(self.activation_bytes[i]) * k for k in scale]
        fw[0] += float(self.embedding.forward[i])
        bi[0] += float(self.embedding.backward_input[i])
        bw[0] += float(self.embedding.backward_weight[i])
        fw[-1] += float(self.head.forward[i])
        bi[-1] += float(self.head.backward_input[i])
        bw[-1] += float(self.head.backward_weight[i])
        acts[-1] += float(self.head_activation_bytes[i])

        def comm(p: int) -> tuple[PassComm, ...]:
            return tuple(PassComm(t.removesuffix("_comm"),
                                  tuple(float(self.pass_comm[t][p][i]) * k for k in scale),
                                  tuple(float(self.pass_comm_bytes[t][p][i]) * k
                                        for k in scale))
                         for t in COMM_TERMS)

        return StageCosts(tuple(fw), tuple(bi), tuple(bw), tuple(acts),
                          p2p_time=float(self.p2p[i]), p2p_blocking=self.p2p_blocking,
                          grad_reduce=float(self.grad_reduce[i]),
                          grad_reduce_overlap=float(self.grad_reduce_overlap[i]),
                          p2p_bytes=float(self.p2p_bytes[i]), forward_comm=comm(0),
                          backward_comm=comm(1))


def _total(p: PassTimes, i: int) -> float:
    return float(p.forward[i] + p.backward_input[i] + p.backward_weight[i])
