"""Helpers the export targets share: refusals, the rank-order check and the header lines.

Every target is a pure function `(model, job, plan, cluster) -> str`. What a target cannot
express it refuses with one `MeshplanError` line naming the field, the value and why, so that an
export is either faithful to the plan or not written at all.
"""

from __future__ import annotations

from typing import Any

from meshplan.errors import MeshplanError, invalid
from meshplan.schedules.registry import SCHEDULE_SPECS, schedule_spec
from meshplan.schedules.spec import ScheduleSpec
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import DEFAULT_AXIS_ORDER, Plan


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
    selects it. Orders are compared on the axes of degree > 1 only, the first match wins.
    """
    wanted = active_order(plan, plan.axis_order)
    for order, setting in choices.items():
        if active_order(plan, order) == wanted:
            return setting
    known = " or ".join("-".join(order) for order in choices)
    raise refuse(engine, "axis_order", "-".join(plan.axis_order),
                 f"builds ranks in the order {known} (innermost first) only")


def engine_schedule(plan: Plan, engine: str, engine_key: str, hint: str) -> ScheduleSpec | None:
    """The plan's schedule spec if the engine runs it (None when pp == 1), else a refusal.

    `engine_key` names the `ScheduleSpec` field holding the engine's name for a schedule
    (`megatron`, `torchtitan`, `deepspeed`); None there means the engine cannot run it.
    `hint` ends the refusal (where to export instead, or why the engine lacks it).
    """
    if plan.pp == 1:
        if plan.vpp > 1:
            raise refuse(engine, "vpp", plan.vpp, "builds virtual stages only when pp > 1")
        return None
    spec = schedule_spec(plan.schedule)
    if getattr(spec, engine_key) is None:
        runs = ", ".join(s.name for s in SCHEDULE_SPECS if getattr(s, engine_key) is not None)
        raise refuse(engine, "schedule", plan.schedule, f"runs only {runs}; {hint}")
    return spec


def microbatches(job: Job, plan: Plan) -> int:
    """Micro-batches per data-parallel rank per step (exact: the plan rules require it)."""
    return job.global_batch_size // (plan.dp * plan.micro_batch_size)


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


__all__ = ["DEFAULT_AXIS_ORDER", "active_order", "engine_schedule", "header", "match_order",
           "microbatches", "refuse"]
