"""Rankings as columns and raw rows: one source for the terminal table, the CSV
(`cli.render`) and the HTML report's table (`report`), so the three cannot drift."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meshplan.specs.plan import schedule_label


@dataclass(frozen=True)
class Column:
    """One column of a ranking, shown as a table or written as CSV from the same rows."""

    name: str
    """CSV header: machine-readable, units in the name (`step_s`, `mem_gib`)."""
    title: str
    """Table header."""
    show: Callable[[Any], str] = str
    """How a table prints a raw value (the CSV writes the value itself)."""
    left: bool = False


Rows = tuple[tuple[Column, ...], list[tuple[Any, ...]]]
"""Columns and one tuple of raw values per row."""


def fixed(spec: str) -> Callable[[Any], str]:
    return lambda v: format(v, spec)


SOURCES = {"simulated": "sim", "analytic": "formula"}
"""How a plan's step was costed (`Estimate.source`): the event simulation of its schedule or
the closed form (plans ranked below the simulated ones, or single-stage plans)."""


def plan_rows(plans: Sequence[dict[str, Any]]) -> Rows:
    """One row per ranked plan (`Estimate.to_json()` each): its degrees and settings, step,
    throughput, MFU, memory, free memory, what binds it, how many equivalent plans it stands
    for ("alike"), whether it fits and how it was costed."""
    columns = (
        Column("rank", "#"), Column("tp", "tp"), Column("cp", "cp"), Column("pp", "pp"),
        Column("dp", "dp"), Column("ep", "ep"), Column("mbs", "mbs"),
        Column("schedule", "schedule", left=True), Column("zero", "zero"),
        Column("recompute", "recompute", left=True),
        Column("step_s", "step (s)", fixed(".3f")),
        Column("tokens_per_s_per_gpu", "tok/s/GPU", fixed(",.0f")),
        Column("mfu", "MFU", fixed(".1%")),
        Column("mem_gib", "mem (GiB)", fixed(".1f")),
        Column("free_gib", "free (GiB)", fixed(".1f")),
        Column("binds", "binds", left=True), Column("alike", "alike"),
        Column("fits", "fits", lambda v: "yes" if v else "NO"),
        Column("costed_by", "costed by", lambda v: SOURCES.get(v, v), left=True),
    )
    values = []
    for i, e in enumerate(plans, 1):
        p = e["plan"]
        values.append((i, p["tp"], p["cp"], p["pp"], p["dp"], p["ep"], p["micro_batch_size"],
                       schedule_label(p["pp"], p["schedule"], p["vpp"]), p["zero_stage"],
                       p["recompute"], e["step_time_s"],
                       e["tokens_per_s_per_gpu"], e["mfu"], e["memory_gib"]["peak"],
                       e["headroom_gib"], e["binds"], e["equivalent_plans"], e["fits"],
                       e["source"]))
    return columns, values
