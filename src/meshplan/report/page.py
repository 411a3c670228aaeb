"""One self-contained HTML page: a header echoing the inputs and meshplan's version, then
sections of charts and tables, with Plotly's JavaScript embedded once (no CDN, no server:
the file opens offline)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from meshplan.tables import Rows

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px;
       color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.note { color: #555; font-size: 0.85rem; } .chart { min-height: 420px; }
details { margin: 0.5rem 0; } pre { font-size: 0.8rem; white-space: pre-wrap; }
"""


@dataclass
class Section:
    """A titled part of the page: charts (Plotly figures) and HTML fragments, in order."""

    title: str
    parts: list[Any] = field(default_factory=list)
    note: str = ""

    def chart(self, figure: Any) -> Section:
        self.parts.append(figure)
        return self

    def table(self, header: list[str], rows: list[list[Any]]) -> Section:
        self.parts.append(table_html(header, rows))
        return self

    def ranking(self, rows: Rows) -> Section:
        """A ranking as the terminal shows it (`meshplan.tables`: the same columns)."""
        columns, values = rows
        self.parts.append(table_html([c.title for c in columns],
                                     [[c.show(v) for c, v in zip(columns, r, strict=True)]
                                      for r in values], [c.left for c in columns]))
        return self


def cell(v: Any) -> str:
    """A table cell's text: numbers to 4 significant figures, None as a dash."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def table_html(header: list[str], rows: list[list[Any]],
               left: list[bool] | None = None) -> str:
    """Numbers right-aligned, text left (or as `left` says per column)."""
    def klass(j: int, v: Any) -> str:
        text = left[j] if left is not None else \
            not isinstance(v, (int, float)) or isinstance(v, bool)
        return " class=text" if text else ""

    head = "".join(f"<th{klass(j, '') if left else ''}>{html.escape(h)}</th>"
                   for j, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{klass(j, v)}>{html.escape(cell(v))}</td>"
                                    for j, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(title: str, doc: dict[str, Any], sections: list[Section]) -> str:
    """The page: `doc`'s envelope (version, command, inputs) in the header, then `sections`."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    body: list[str] = [f"<h1>{html.escape(title)}</h1>",
                       f"<p class=note>meshplan {html.escape(str(doc.get('meshplan_version')))}"
                       f" · <code>meshplan {html.escape(str(doc.get('command')))}</code> · "
                       f"JSON schema {html.escape(str(doc.get('schema_version')))}</p>"]
    n = 0
    for s in sections:
        body.append(f"<section><h2>{html.escape(s.title)}</h2>")
        if s.note:
            body.append(f"<p class=note>{html.escape(s.note)}</p>")
        for part in s.parts:
            if isinstance(part, str):
                body.append(part)
                continue
            n += 1
            part.update_layout(margin={"t": 30, "b": 50, "l": 60, "r": 20},
                               template="plotly_white")
            body.append(pio.to_html(part, include_plotlyjs=False, full_html=False,
                                    div_id=f"chart-{n}", default_width="100%",
                                    config={"displaylogo": False, "responsive": True}))
        body.append("</section>")
    inputs = json.dumps(doc.get("inputs", {}), indent=2, sort_keys=True)
    body.append("<section><h2>Inputs</h2><details><summary>everything this result answered"
                f"</summary><pre>{html.escape(inputs)}</pre></details></section>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>")
