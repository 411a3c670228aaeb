"""Helpers the export targets share: refusals, the rank-order check and the header lines.

Every target is a pure function `(model, job, plan, cluster) -> str`. What a target cannot
express it refuses with one `MeshplanError` line naming the field, the value and why, so that an
export is either faithful to the plan or not written at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from meshplan.errors import MeshplanError, invalid
from meshplan.mesh import num_microbatches
from meshplan.schedules.registry import SCHEDULE_SPECS, schedule_spec
from meshplan.schedules.spec import ScheduleSpec
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import AXES, DEFAULT_AXIS_ORDER, Plan, PlanArrays


def refuse(engine: str, field: str, value: Any, why: str) -> MeshplanError:
    """`field=value: <engine> <why>`, the one-line refusal every target raises."""
    return invalid(field, value, f"{engine} {why}")


def degree(plan: Plan, axis: str) -> int:
    return int(getattr(plan, axis))


def active_order(plan: Plan, order: tuple[str, ...]) -> tuple[str, ...]:
    """`order` restricted to the axes of degree > 1: only those decide which ranks talk."""
    return tuple(axis for axis in order if degree(plan, axis) > 1)


def match_order(plan: Plan, engine: str, choices: dict[tuple[str, ...], str | None]) -> str | None:
    """The engine setting (or None for its default) whose rank order equals the plan's.

    `choices` maps each rank order the engine can build (innermost axis first) to the flag that
    selects it. Orders are compared on the axes of degree > 1 only, the first match wins; a
    plan no order matches is refused by `order_refusal` before the target runs.
    """
    wanted = active_order(plan, plan.axis_order)
    for order, setting in choices.items():
        if active_order(plan, order) == wanted:
            return setting
    raise AssertionError("order_refusal lets no unmatched plan through")


@dataclass(frozen=True)
class Refusal:
    """One thing a target cannot express, checked on many plans at once (as `specs.rules`
    does): `refused` marks the plans it refuses; `value` and `why` word the refusal of plan
    i. The same refusals filter a search space (`expressible`) and stop a single export."""

    field: str
    refused: Callable[[Model, Job, PlanArrays], Any]
    """A boolean mask over the plans (or one bool for all of them)."""
    value: Callable[[Model, Job, PlanArrays, int], Any]
    why: Callable[[Model, Job, PlanArrays, int], str] | str


def expressible(refusals: tuple[Refusal, ...], model: Model, job: Job,
                P: PlanArrays) -> np.ndarray:
    """True for the plans no refusal applies to."""
    ok = np.ones(len(P), dtype=bool)
    for r in refusals:
        ok &= ~np.broadcast_to(np.asarray(r.refused(model, job, P), dtype=bool), ok.shape)
    return ok


def first_refusal(engine: str, refusals: tuple[Refusal, ...], model: Model, job: Job,
                  plan: Plan) -> MeshplanError | None:
    """The one-line refusal of the first rule `plan` breaks, or None."""
    P = PlanArrays.from_plans([plan])
    for r in refusals:
        if bool(np.asarray(r.refused(model, job, P), dtype=bool).reshape(-1)[0]):
            why = r.why if isinstance(r.why, str) else r.why(model, job, P, 0)
            return refuse(engine, r.field, r.value(model, job, P, 0), why)
    return None


def check(engine: str, refusals: tuple[Refusal, ...], model: Model, job: Job,
          plan: Plan) -> None:
    """Raise the first refusal `plan` breaks."""
    err = first_refusal(engine, refusals, model, job, plan)
    if err is not None:
        raise err


def field_value(name: str) -> Callable[[Model, Job, PlanArrays, int], Any]:
    """`value` of a refusal: plan i's entry of the PlanArrays column `name`."""
    return lambda M, J, P, i: getattr(P, name)[i].item()


def constant(value: Any) -> Callable[[Model, Job, PlanArrays, int], Any]:
    return lambda M, J, P, i: value


def order_refusal(choices: dict[tuple[str, ...], str | None]) -> Refusal:
    """Refuse plans whose rank order (on the axes of degree > 1) no engine order matches."""
    def refused(M: Model, J: Job, P: PlanArrays) -> np.ndarray:
        active = np.stack([getattr(P, axis) > 1 for axis in AXES], axis=1)
        out = np.zeros(len(P), dtype=bool)
        for pattern in np.unique(active, axis=0):
            used = {a for a, on in zip(AXES, pattern, strict=True) if on}
            wanted = tuple(a for a in P.axis_order if a in used)
            matched = any(tuple(a for a in order if a in used) == wanted for order in choices)
            out |= np.all(active == pattern, axis=1) & (not matched)
        return out

    known = " or ".join("-".join(order) for order in choices)
    return Refusal("axis_order", refused, lambda M, J, P, i: "-".join(P.axis_order),
                   f"builds ranks in the order {known} (innermost first) only")


def schedule_refusals(engine_key: str, hint: str) -> tuple[Refusal, ...]:
    """Virtual stages without a pipeline, and schedules the engine does not run.

    `engine_key` names the `ScheduleSpec` field holding the engine's name for a schedule
    (`megatron`, `torchtitan`, `deepspeed`); None there means the engine cannot run it.
    `hint` ends the refusal (where to export instead, or why the engine lacks it).
    """
    unsupported = [i for i, s in enumerate(SCHEDULE_SPECS) if getattr(s, engine_key) is None]
    runs = ", ".join(s.name for s in SCHEDULE_SPECS if getattr(s, engine_key) is not None)
    return (
        Refusal("vpp", lambda M, J, P: (P.pp == 1) & (P.vpp > 1), field_value("vpp"),
                "builds virtual stages only when pp > 1"),
        Refusal("schedule", lambda M, J, P: (P.pp > 1) & np.isin(P.schedule, unsupported),
                lambda M, J, P, i: SCHEDULE_SPECS[int(P.schedule[i])].name,
                f"runs only {runs}; {hint}"),
    )


def uneven(P: PlanArrays) -> np.ndarray:
    """Plans with explicit first/last-rank layer counts."""
    return (P.first_layers > 0) | (P.last_layers > 0)


def uneven_value(M: Model, J: Job, P: PlanArrays, i: int) -> int:
    return int(P.first_layers[i]) or int(P.last_layers[i])


def engine_schedule(plan: Plan, engine_key: str) -> ScheduleSpec | None:
    """The plan's schedule spec when it is pipelined (the engine runs it: `schedule_refusals`
    has passed), else None."""
    if plan.pp == 1:
        return None
    spec = schedule_spec(plan.schedule)
    assert getattr(spec, engine_key) is not None
    return spec


def microbatches(job: Job, plan: Plan) -> int:
    """Micro-batches per data-parallel rank per step (exact: the plan rules require it)."""
    return int(num_microbatches(job.global_batch_size, plan.dp, plan.micro_batch_size))


def header(engine: str, source: str, model: Model, job: Job, plan: Plan) -> list[str]:
    """Comment lines (without the comment marker) that open every export."""
    from meshplan import __version__

    return [
        f"meshplan {__version__} export for {engine}",
        f"model {model.name}, {plan.num_gpus} GPUs, global batch {job.global_batch_size} x "
        f"{job.seq_len} tokens, {job.precision}",
        f"plan: {plan.describe()}",
        f"mirrors {source}",
    ]


__all__ = ["DEFAULT_AXIS_ORDER", "Refusal", "active_order", "check", "constant",
           "engine_schedule", "expressible", "field_value", "first_refusal", "header",
           "match_order", "microbatches", "order_refusal", "refuse", "schedule_refusals",
           "uneven", "uneven_value"]
