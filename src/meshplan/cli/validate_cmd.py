"""`meshplan validate`: predict every published run and print the error tables.

Registered on the main app by `register(app)`; parsing and printing only, the work is
`meshplan.api.validate`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from meshplan import api
from meshplan.cli.options import COMMON, calibration_ref
from meshplan.cli.render import console, print_json
from meshplan.output import envelope

CalibrationOption = next(ann for name, ann, _ in COMMON if name == "calibration")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _abs_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float) -> str:
    return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def rows_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="published runs: measured vs predicted (error on the source's metric)",
              header_style="bold")
    for col, just in (("id", "left"), ("metric", "left"), ("measured", "right"),
                      ("predicted", "right"), ("error", "right"), ("thr. error", "right"),
                      ("fits", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        t.add_row(r["id"], r["metric"], _num(r["measured"]), _num(r["predicted"]),
                  _pct(r["error"]), _pct(r["throughput_error"]),
                  "yes" if r["fits"] else "[red]NO")
    return t


def stats_table(title: str, groups: dict[str, dict[str, Any]], spearman: bool = False) -> Table:
    t = Table(title=title, header_style="bold")
    t.add_column("group")
    for col in ("runs", "median |err|", "p90 |err|", "bias") + (("Spearman",) if spearman else ()):
        t.add_column(col, justify="right")
    for name, s in groups.items():
        cells = [str(s["count"]), _abs_pct(s["median_abs_error"]), _abs_pct(s["p90_abs_error"]),
                 _pct(s["bias"])]
        if spearman:
            cells.append("-" if s["spearman"] is None else f"{s['spearman']:.2f}")
        t.add_row(name, *cells)
    return t


def print_report(result: dict[str, Any]) -> None:
    s = result["summary"]
    if result["rows"]:
        console.print(rows_table(result["rows"]))
    console.print("Throughput error = predicted / measured throughput - 1 "
                  "(positive: meshplan optimistic).")
    console.print(stats_table("overall", {"all": s["all"], "headline": s["headline"],
                                          "sweep": s["sweep"]}))
    console.print(stats_table("by source", s["by_source"]))
    console.print(stats_table("by accelerator", s["by_accelerator"]))
    if s["sweep_groups"]:
        console.print(stats_table("sweep groups (Spearman: predicted vs measured throughput)",
                                  s["sweep_groups"], spearman=True))
    if s["memory"]["count"]:
        mem = s["memory"]
        console.print(stats_table("peak memory (error on GiB, vs the reserved or allocated "
                                  "peak each source reports)",
                                  {"runs with memory": mem, **mem["by_source"]}))
    if s["oom_misses"]:
        console.print(f"[red]{len(s['oom_misses'])} measured runs predicted not to fit:[/] "
                      + ", ".join(s["oom_misses"]))
    if result["skipped"]:
        by_reason: dict[str, list[str]] = defaultdict(list)
        for k in result["skipped"]:
            by_reason[k["reason"]].append(k["id"])
        t = Table(title=f"skipped ({len(result['skipped'])})", header_style="bold")
        t.add_column("reason")
        t.add_column("runs", justify="right")
        t.add_column("ids")
        for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            t.add_row(reason, str(len(ids)), ", ".join(ids[:3]) + (" ..." if len(ids) > 3 else ""))
        console.print(t)
    console.print(f"{s['compared']} runs compared, {s['skipped']} skipped")


def register(app: typer.Typer) -> None:
    """Add the `validate` command to the CLI app."""

    @app.command("validate")
    def validate_command(
        runs: Annotated[Path | None, typer.Option(
            "--runs", help="Runs file in the published_training_runs.json schema "
                           "(default: the shipped dataset)")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]
        = False,
        source: Annotated[str | None, typer.Option(
            "--source", help="Only the runs of this source_id")] = None,
        headline_only: Annotated[bool, typer.Option(
            "--headline-only", help="Skip sweep rows (is_sweep = true)")] = False,
        analytic: Annotated[bool, typer.Option(
            "--analytic", help="Closed-form pipeline time instead of the event simulation "
                               "(faster)")] = False,
        calibration: CalibrationOption = None,  # type: ignore[valid-type]
    ) -> None:
        """Predict published training runs and report the error against each measurement."""
        result = api.validate(runs, source=source, headline_only=headline_only,
                              simulate=not analytic, calibration=calibration_ref(calibration))
        if json_out:
            print_json(envelope("validate", {
                "runs": "shipped" if runs is None else str(runs), "source": source,
                "headline_only": headline_only, "analytic": analytic,
                "calibration": calibration}, result))
            return
        print_report(result)
