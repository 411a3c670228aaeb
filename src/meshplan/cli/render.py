"""Printing: rich tables for people, JSON for programs."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from meshplan.compare import Difference
from meshplan.estimate import GIB, Estimate
from meshplan.tables import Rows, plan_rows

console = Console(width=None if sys.stdout.isatty() else 160)


def print_json(obj: Any) -> None:
    """Print strict JSON: a NaN or infinity is a bug upstream (inputs are validated so that
    none arises), refused here rather than written as invalid JSON."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def rows_table(rows: Rows, title: str | None = None) -> Table:
    columns, values = rows
    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c.title, justify="left" if c.left else "right")
    for row in values:
        table.add_row(*(c.show(v) for c, v in zip(columns, row, strict=True)))
    return table


def write_csv(rows: Rows) -> None:
    """Header row, then the raw values (floats in full precision, booleans as true/false)."""
    columns, values = rows
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(c.name for c in columns)
    for row in values:
        w.writerow(str(v).lower() if isinstance(v, bool) else v for v in row)


def plans_table(estimates: list[Estimate], title: str) -> Table:
    return rows_table(plan_rows([e.to_json() for e in estimates]), title)


def breakdown_tables(e: Estimate) -> tuple[Table, Table]:
    t = Table(title="time per step", header_style="bold")
    t.add_column("term")
    t.add_column("seconds", justify="right")
    t.add_column("share", justify="right")
    for k, v in e.time_breakdown_s.items():
        t.add_row(k, f"{v:.4f}", f"{v / e.step_time_s:.1%}")
    t.add_row("[bold]step", f"[bold]{e.step_time_s:.4f}", "100%")
    m = Table(title="memory per GPU (peak rank)", header_style="bold")
    m.add_column("term")
    m.add_column("GiB", justify="right")
    for k, v in e.memory_bytes.items():
        m.add_row(f"[bold]{k}" if k == "peak" else k, f"{v / GIB:.2f}")
    m.add_row("capacity", f"{e.memory_capacity_bytes / GIB:.2f}")
    return t, m


def summary_line(e: Estimate) -> str:
    budget = ""
    if "time_to_train_days" in e.extra:
        budget = (f"; {e.extra['token_budget']:.3g} tokens in "
                  f"{e.extra['time_to_train_days']:.1f} days = "
                  f"{e.extra['gpu_hours']:,.0f} GPU-hours")
    return (f"{e.plan.describe()}: step {e.step_time_s:.3f} s, "
            f"{e.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, MFU {e.mfu:.1%}, HFU {e.hfu:.1%}, "
            f"peak {e.memory_bytes['peak'] / GIB:.1f} GiB ({e.fit_reason}); "
            f"tiers {', '.join(f'{k}:{v}' for k, v in e.axis_tiers.items()) or '-'}{budget}")


def compare_table(estimates: list[Estimate], diffs: list[Difference]) -> Table:
    """One column per plan: the headline figures, then every time term (s) and memory term
    (GiB), each later plan's cell with its change against plan #1."""
    table = Table(title="plans side by side (changes against #1)", header_style="bold")
    table.add_column("")
    for i, e in enumerate(estimates, 1):
        table.add_column(f"#{i} {e.plan.describe()}", justify="right")

    def row(name: str, values: list[float], fmt: str, scale: float = 1.0) -> None:
        def cell(v: float) -> str:
            delta = format((v - values[0]) / scale, "+" + fmt)
            same = delta.lstrip("+-").strip("0.,") == ""
            return format(v / scale, fmt) + ("" if same else f" ({delta})")

        table.add_row(name, format(values[0] / scale, fmt), *(cell(v) for v in values[1:]))

    row("step (s)", [e.step_time_s for e in estimates], ".3f")
    row("tokens/s/GPU", [e.tokens_per_s_per_gpu for e in estimates], ",.0f")
    row("MFU (%)", [100 * e.mfu for e in estimates], ".1f")
    table.add_row("fits", *("yes" if e.fits else "NO" for e in estimates))
    for key in estimates[0].time_breakdown_s:
        row(f"time: {key}", [e.time_breakdown_s.get(key, 0.0) for e in estimates], ".3f")
    for key in estimates[0].memory_bytes:
        row(f"mem: {key} (GiB)", [e.memory_bytes.get(key, 0.0) for e in estimates], ".2f",
            GIB)
    assert len(diffs) == len(estimates) - 1
    return table
