"""`meshplan serve validate` (predict published serving runs, report the errors) and
`meshplan serve calibrate` (fit the engine overheads on them, leave one source out).

Parsing and printing only; the work is `meshplan.serve.validate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from meshplan.cli.options import check_out
from meshplan.cli.render import console, print_json
from meshplan.output import envelope
from meshplan.serve.validate import load_serving_runs, validate
from meshplan.serve.validate.calibrate import calibrate, calibration_toml
from meshplan.serve.validate.report import summarise

RUNS_HELP = "Serving-runs JSON file (published_serving_runs.json's schema), or 'shipped'"


def validate_cmd(
    runs: Annotated[str, typer.Option("--runs", help=RUNS_HELP)] = "shipped",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")
                        ] = False,
) -> None:
    """Rebuild each published serving run, simulate it, compare every metric it reports."""
    rows = load_serving_runs(None if runs == "shipped" else runs)
    result = validate(rows)
    if json_out:
        print_json(envelope("serve validate", {"runs": runs}, result))
        return
    console.print(summary_table(f"{len(rows)} serving runs", result["summary"]))
    for r in result["rows"]:
        if r["skipped"]:
            console.print(f"skipped {r['id']}: {r['skipped']}")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def summary_table(title: str, summary: dict[str, Any]) -> Table:
    t = Table(title=title, header_style="bold")
    for col in ("scenario", "pairs", "predicted", "median |err|", "p90 |err|", "mean err"):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for scenario, s in summary.items():
        t.add_row(scenario, str(s["pairs"]), _pct(s["predicted_share"]),
                  _pct(s["median_abs_error"]), _pct(s["p90_abs_error"]), _pct(s["bias"]))
    return t


def calibrate_cmd(
    runs: Annotated[str, typer.Option("--runs", help=RUNS_HELP)] = "shipped",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the fitted overheads here (serving_calibration.toml format)")
                   ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")
                        ] = False,
) -> None:
    """Fit each engine profile's overheads to the runs; report in-sample and held-out
    (leave one source out) errors. Minutes for the shipped runs on 2 cores."""
    check_out("--out", out)  # before minutes of fitting
    rows = load_serving_runs(None if runs == "shipped" else runs)
    fit = calibrate(rows)
    if out is not None:
        out.write_text(calibration_toml(fit, runs), encoding="utf-8")
    result = {"fitted": {e: {"iteration_overhead_s": p[0], "block_overhead_s": p[1]}
                         for e, p in fit.fitted.items()},
              "in_sample": summarise(fit.in_sample), "leave_one_source_out": summarise(fit.loso)}
    if json_out:
        print_json(envelope("serve calibrate", {"runs": runs, "out": None if out is None
                                                else str(out)}, result))
        return
    for engine, p in sorted(fit.fitted.items()):
        console.print(f"{engine}: iteration_overhead_s {p[0]:.3g}, block_overhead_s {p[1]:.3g}")
    console.print(summary_table("in-sample", result["in_sample"]))
    console.print(summary_table("leave one source out", result["leave_one_source_out"]))
    if out is not None:
        console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_cmd)
    app.command("calibrate")(calibrate_cmd)
