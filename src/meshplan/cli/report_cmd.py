"""`--html FILE` (shared by the commands that have a report) and `meshplan report RESULT.json
--html FILE`: both draw the command's JSON result (`meshplan.report`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from meshplan.cli.options import check_out
from meshplan.cli.render import console, print_json
from meshplan.errors import MeshplanError

HtmlOpt = Annotated[str | None, typer.Option(
    "--html", help="Also write a self-contained HTML report here (needs meshplan\\[report])")]


def check_html(path: str | None) -> None:
    """Before any work: the report extra is installed and the file can be written."""
    if path is None:
        return
    from meshplan.report import require_report_extra

    require_report_extra()
    check_out("--html", path)


def emit(doc: dict[str, Any], json_out: bool, html: str | None) -> None:
    """Write the report (when asked) and print the JSON (when asked) of one result."""
    if html is not None:
        from meshplan.report import write_html

        write_html(doc, html)
    if json_out:
        print_json(doc)
    elif html is not None:  # on stderr: stdout may be a CSV table
        print(f"report written to {html}", file=sys.stderr)


def report(result: Annotated[str, typer.Argument(help="A meshplan --json output file")],
           html: Annotated[str, typer.Option("--html", help="The HTML file to write")]
           ) -> None:
    """Draw a saved --json result as a self-contained HTML report."""
    from meshplan.report import write_html
    from meshplan.specs.io import parse_json, read_text

    check_html(html)
    doc = parse_json(read_text(Path(result)), result)
    if not isinstance(doc, dict):
        raise MeshplanError(f"{result}: expected a JSON object at the top level (a meshplan "
                            "--json result)")
    write_html(doc, html)
    console.print(f"report written to {html}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
