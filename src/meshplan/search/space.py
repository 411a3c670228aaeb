"""Enumerate the plan space for (model, job, GPU count) as numpy arrays.

Degrees are powers of two for tp, cp, ep (as engines require for NCCL-friendly groups), any
divisor of the layer count for pp, and every divisor of the per-replica batch for the
micro-batch. The cartesian product is built with numpy broadcasting and filtered by
`meshplan.specs.rules`, so no Python loop runs per plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.schedules.registry import schedule_code, schedule_spec
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import DEFAULT_AXIS_ORDER, RECOMPUTE, SCHEDULES, PlanArrays
from meshplan.specs.rules import legal_mask
from meshplan.specs.stages import default_uneven_split


@dataclass(frozen=True)
class SpaceOptions:
    """Bounds of the search."""

    max_tp: int = 64
    max_cp: int = 32
    max_micro_batch: int = 16
    max_vpp: int = 8
    schedules: tuple[str, ...] = ("1f1b", "interleaved-1f1b", "zb-h1", "zb-h2", "zb-v",
                                  "dualpipe-v")
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    recompute: tuple[str, ...] = RECOMPUTE
    offload: bool = False


def _pow2_upto(n: int) -> list[int]:
    out, v = [], 1
    while v <= n:
        out.append(v)
        v *= 2
    return out


def _divisors(n: int, upto: int | None = None) -> list[int]:
    return [d for d in range(1, (upto or n) + 1) if n % d == 0]


def _product(**axes: list[int] | np.ndarray) -> dict[str, np.ndarray]:
    grids = np.meshgrid(*[np.asarray(v) for v in axes.values()], indexing="ij")
    return {k: g.ravel() for k, g in zip(axes, grids, strict=True)}


def _schedule_options(model: Model, opts: SpaceOptions) -> tuple[np.ndarray, np.ndarray]:
    """(schedule code, vpp) pairs: every chunk count each schedule's spec allows, up to
    `max_vpp` where the spec sets no limit."""
    codes, vpps = [], []
    for name in opts.schedules:
        for v in schedule_spec(name).chunk_choices(opts.max_vpp):
            codes.append(schedule_code(name))
            vpps.append(v)
    return np.array(codes), np.array(vpps)


def enumerate_plans(model: Model, job: Job, num_gpus: int,
                    opts: SpaceOptions | None = None) -> tuple[PlanArrays, int]:
    """All legal plans, and how many candidates were generated before filtering."""
    opts = opts or SpaceOptions()
    tps = [t for t in _pow2_upto(min(opts.max_tp, num_gpus))]
    cps = _pow2_upto(min(opts.max_cp, num_gpus))
    # pp: divisors of the layer count (even split) and powers of two that need an uneven one
    pps = sorted({p for p in _divisors(model.num_layers) if p <= num_gpus}
                 | {p for p in _pow2_upto(min(num_gpus, model.num_layers))
                    if default_uneven_split(model.num_layers, p) != (0, 0)})
    # Degree triples first (small), so only those that fill the GPUs are expanded further.
    deg = _product(tp=tps, cp=cps, pp=pps)
    fill = num_gpus % (deg["tp"] * deg["cp"] * deg["pp"]) == 0
    deg = {k: v[fill] for k, v in deg.items()}
    deg["dp"] = num_gpus // (deg["tp"] * deg["cp"] * deg["pp"])
    fits_batch = job.global_batch_size % deg["dp"] == 0
    deg = {k: v[fits_batch] for k, v in deg.items()}
    split = np.array([default_uneven_split(model.num_layers, int(p)) for p in deg["pp"]],
                     dtype=np.int64).reshape(-1, 2)
    deg["first"], deg["last"] = split[:, 0], split[:, 1]

    mbs_all = np.array(_divisors(job.global_batch_size, opts.max_micro_batch))
    sched, vpp = _schedule_options(model, opts)
    eps = [1]
    if model.moe is not None:
        eps = [e for e in _pow2_upto(num_gpus) if model.moe.num_experts % e == 0]
    idx = _product(d=np.arange(len(deg["dp"])), mbs=np.arange(len(mbs_all)),
                   s=np.arange(len(sched)), ep=np.array(eps), etp=np.array([0, 1]),
                   zero=np.array(opts.zero_stages),
                   rc=np.array([RECOMPUTE.index(r) for r in opts.recompute]))
    d = idx["d"]
    tp = deg["tp"][d]
    pp = deg["pp"][d]
    # Single-stage plans need only one schedule entry.
    keep = (pp > 1) | (idx["s"] == 0)
    keep &= model.is_moe | (idx["etp"] == 0)
    idx = {k: v[keep] for k, v in idx.items()}
    d = idx["d"]
    tp, pp = deg["tp"][d], deg["pp"][d]
    n = len(d)
    etp = np.where(idx["etp"] == 1, tp, 1)
    first_l, last_l = deg["first"][d], deg["last"][d]
    P = PlanArrays(
        dp=deg["dp"][d], tp=tp, pp=pp, cp=deg["cp"][d], ep=idx["ep"], etp=etp,
        sp=tp > 1, zero=idx["zero"], dp_shard=deg["dp"][d], mbs=mbs_all[idx["mbs"]],
        vpp=np.where(pp > 1, vpp[idx["s"]], 1),
        schedule=np.where(pp > 1, sched[idx["s"]], SCHEDULES.index("1f1b")),
        recompute=idx["rc"], offload=np.full(n, opts.offload), overlap_grad=np.ones(n, bool),
        tp_overlap=np.zeros(n, bool), ep_overlap=np.zeros(n, bool),
        first_layers=first_l, last_layers=last_l, axis_order=DEFAULT_AXIS_ORDER,
    )
    legal = legal_mask(model, job, num_gpus, P)
    return P.select(legal), n
