"""`meshplan serve validate`: predict published serving runs and report the errors.

Parsing and printing only; the work is `meshplan.serve.validate`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from meshplan.cli.render import console, print_json
from meshplan.serve.validate import load_serving_runs, validate


def validate_cmd(
    runs: Annotated[str, typer.Option("--runs", help="Serving-runs JSON file, or 'shipped'")
                    ] = "shipped",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")
                        ] = False,
) -> None:
    """Rebuild each published serving run, simulate it, compare every metric it reports."""
    rows = load_serving_runs(None if runs == "shipped" else runs)
    result = validate(rows)
    if json_out:
        print_json(result)
        return
    t = Table(title=f"{len(rows)} serving runs", header_style="bold")
    for col in ("scenario", "pairs", "predicted", "median |err|", "p90 |err|", "bias"):
        t.add_column(col, justify="left" if col == "scenario" else "right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:+.1%}" if x < 0 else f"{x:.1%}"

    for scenario, s in result["summary"].items():
        t.add_row(scenario, str(s["pairs"]), pct(s["predicted_share"]), pct(s["median_abs"]),
                  pct(s["p90_abs"]), pct(s["bias"]))
    console.print(t)
    skipped = [r for r in result["rows"] if r["skipped"]]
    for r in skipped:
        console.print(f"skipped {r['id']}: {r['skipped']}")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_cmd)
