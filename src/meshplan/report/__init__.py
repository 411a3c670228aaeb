"""Self-contained HTML reports of meshplan's JSON results (`--html FILE`, `meshplan report`).

A report is drawn from a result's JSON alone (the envelope's `command` picks the page), so
`meshplan report RESULT.json --html FILE` writes what `--html` on the command would have.
Charts are Plotly's (SVG, never WebGL: they render in headless browsers and on machines
without a GPU), its JavaScript embedded in the page; Plotly is the `report` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.output import SCHEMA_VERSION

EXTRA_HINT = "pip install 'meshplan[report]'"


def require_report_extra(flag: str = "--html") -> None:
    """Refuse before any work when Plotly is missing: the user is told which extra to add."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise MeshplanError(f"{flag}: HTML reports need the report extra: {EXTRA_HINT}") \
            from None


def _pages() -> dict[str, tuple[Callable[[dict[str, Any]], list[Any]],
                                Callable[[dict[str, Any]], str]]]:
    from meshplan.report import serving, training

    return {"plan": (training.plan_sections, training.title_of),
            "estimate": (training.estimate_sections, training.title_of),
            "simulate": (training.simulate_sections, training.title_of),
            "serve simulate": (serving.simulate_sections, serving.simulate_title),
            "serve plan": (serving.plan_sections, serving.plan_title)}


def render_html(doc: dict[str, Any]) -> str:
    """The page of a JSON result (`MeshplanError` for one no page draws)."""
    from meshplan.report.page import render

    pages = _pages()
    command = doc.get("command") if isinstance(doc, dict) else None
    if command is None:
        raise MeshplanError("not a meshplan result with a report: it has no 'command' key "
                            f"(reports draw the --json output of: {', '.join(pages)})")
    if command not in pages:
        raise MeshplanError(f"{command!r} results have no report; reports draw the --json "
                            f"output of: {', '.join(pages)}")
    version = doc.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise MeshplanError(f"this result has JSON schema {version}, newer than this meshplan "
                            f"reads ({SCHEMA_VERSION}): upgrade meshplan")
    sections, title = pages[command]
    try:
        return render(title(doc), doc, sections(doc))
    except KeyError as err:
        raise MeshplanError(f"this {command!r} result lacks {err.args[0]!r}, which its report "
                            "draws; write it again with this meshplan's --json") from None
    except (TypeError, IndexError, ValueError, AttributeError):
        raise MeshplanError(f"this {command!r} result is not in the shape its report draws; "
                            "write it again with this meshplan's --json") from None


def write_html(doc: dict[str, Any], path: str | Path) -> None:
    require_report_extra()
    page = render_html(doc)
    try:
        Path(path).write_text(page, encoding="utf-8")
    except OSError as err:
        raise MeshplanError(f"--html={path}: cannot write: {err.strerror}") from None
