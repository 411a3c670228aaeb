"""Printing: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from meshplan.estimate import GIB, Estimate

console = Console(width=None if sys.stdout.isatty() else 160)


def print_json(obj: Any) -> None:
    """Print strict JSON: a NaN or infinity is a bug upstream (inputs are validated so that
    none arises), refused here rather than written as invalid JSON."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def plans_table(estimates: list[Estimate], title: str) -> Table:
    """One row per group of equivalent plans ("alike": how many it stands for), with its free
    memory and what binds it."""
    table = Table(title=title, header_style="bold")
    left = ("schedule", "recompute", "binds")
    for col in ("#", "tp", "cp", "pp", "dp", "ep", "mbs", "schedule", "zero", "recompute",
                "step (s)", "tok/s/GPU", "MFU", "mem (GiB)", "free (GiB)", "binds", "alike",
                "fits"):
        table.add_column(col, justify="left" if col in left else "right")
    for i, e in enumerate(estimates, 1):
        p = e.plan
        sched = "-" if p.pp == 1 else p.schedule + (f"/v{p.vpp}" if p.vpp > 1 else "")
        table.add_row(str(i), str(p.tp), str(p.cp), str(p.pp), str(p.dp), str(p.ep),
                      str(p.micro_batch_size), sched, str(p.zero_stage), p.recompute,
                      f"{e.step_time_s:.3f}", f"{e.tokens_per_s_per_gpu:,.0f}", f"{e.mfu:.1%}",
                      f"{e.memory_bytes['peak'] / GIB:.1f}", f"{e.headroom_bytes / GIB:.1f}",
                      e.binding, str(e.equivalent_plans), "yes" if e.fits else "NO")
    return table


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
