"""Pages of the training commands: `plan` (the space's Pareto frontier, the top plans' time
and memory breakdowns), `estimate` (one plan's breakdowns) and `simulate` (the pipeline
timeline and each rank's activation memory over the step)."""

from __future__ import annotations

import re
from typing import Any

from meshplan.report.page import Section
from meshplan.specs.plan import Plan
from meshplan.tables import plan_rows

TIME_PARTS = {"compute": "compute", "tp_comm": "TP comm", "cp_comm": "CP comm",
              "ep_comm": "EP comm", "pp_comm": "PP comm", "bubble": "pipeline bubble",
              "dp_comm": "DP comm", "optimizer": "optimizer"}
KIND_COLOURS = {"F": "#4c78a8", "B": "#e45756", "I": "#f58518", "W": "#72b7b2",
                "tp": "#54a24b", "cp": "#eeca3b", "ep": "#ff9da6", "comm": "#9d755d",
                "grad": "#b279a2"}
KIND_NAMES = {"F": "forward", "B": "backward", "I": "backward (input grad)",
              "W": "backward (weight grad)", "tp": "TP collectives", "cp": "CP ring exchange",
              "ep": "EP all-to-all", "comm": "pipeline send", "grad": "gradient reduction"}
STREAMS = ("compute", "tp", "cp", "ep", "comm")
"""Lane order within a rank (the simulator's streams, `sim.engine.Interval.stream`)."""
ACTION = re.compile(r"(\d+)([FBIW])(\d+)")


def hbm_gib(doc: dict[str, Any]) -> float | None:
    return doc.get("inputs", {}).get("cluster", {}).get("memory_gib")


def describe(p: dict[str, Any]) -> str:
    """A plan's one-line label (`Plan.describe`) from its JSON."""
    return Plan.model_validate(p).describe()


def frontier_figure(doc: dict[str, Any]) -> Any:
    """Tokens/s per GPU against peak memory per GPU for the costed space; frontier marked."""
    import plotly.graph_objects as go

    space = doc["space"]
    cols = {c: i for i, c in enumerate(space["columns"])}
    rows = space["rows"]

    def pick(keep: Any) -> list[list[Any]]:
        return [r for r in rows if keep(r)]

    def hover(r: list[Any]) -> str:
        return (f"tp{r[cols['tp']]} cp{r[cols['cp']]} pp{r[cols['pp']]} dp{r[cols['dp']]} "
                f"ep{r[cols['ep']]}<br>schedule {r[cols['schedule']]} (vpp "
                f"{r[cols['vpp']]}), micro-batch {r[cols['micro_batch_size']]}<br>recompute "
                f"{r[cols['recompute']]}, ZeRO {r[cols['zero_stage']]}<br>"
                f"{r[cols['tokens_per_s_per_gpu']]:,.0f} tok/s/GPU, "
                f"{r[cols['memory_gib']]:.1f} GiB")

    fig = go.Figure()
    x, y = cols["memory_gib"], cols["tokens_per_s_per_gpu"]
    for name, keep, marker in (
            ("fits", lambda r: r[cols["fits"]], {"color": "#4c78a8", "size": 6}),
            ("does not fit", lambda r: not r[cols["fits"]],
             {"color": "#bbbbbb", "size": 6, "symbol": "x"})):
        pts = pick(keep)
        fig.add_trace(go.Scatter(x=[r[x] for r in pts], y=[r[y] for r in pts], mode="markers",
                                 name=name, marker=marker, text=[hover(r) for r in pts],
                                 hovertemplate="%{text}<extra></extra>"))
    front = sorted(pick(lambda r: r[cols["pareto"]]), key=lambda r: r[x])
    fig.add_trace(go.Scatter(x=[r[x] for r in front], y=[r[y] for r in front],
                             mode="lines+markers", name="Pareto frontier",
                             line={"color": "#e45756"}, marker={"size": 8},
                             text=[hover(r) for r in front],
                             hovertemplate="%{text}<extra></extra>"))
    ranked = doc.get("plans", [])[:10]
    fig.add_trace(go.Scatter(
        x=[e["memory_gib"]["peak"] for e in ranked], y=[e["tokens_per_s_per_gpu"] for e in ranked],
        mode="markers+text", name="ranked plans", text=[f"#{i}" for i in
                                                         range(1, len(ranked) + 1)],
        textposition="top center", marker={"color": "#222", "size": 10, "symbol": "star"},
        customdata=[f"#{i} {describe(e['plan'])}: step {e['step_time_s']:.3f} s "
                    f"({e['source']})" for i, e in enumerate(ranked, 1)],
        hovertemplate="%{customdata}<extra></extra>"))
    hbm = hbm_gib(doc)
    layout: dict[str, Any] = {}
    if hbm:
        fig.add_vline(x=hbm, line_dash="dash", line_color="#444",
                      annotation_text=f"HBM {hbm:.0f} GiB")
        # Plans far beyond the HBM would squeeze the ones that fit into a sliver: the axis
        # stops at twice it (zoom out, or autoscale, to see them).
        widest = max((r[x] for r in rows), default=hbm)
        layout["xaxis_range"] = [0, min(widest * 1.05, 2 * hbm)]
    fig.update_layout(xaxis_title="peak memory per GPU (GiB)",
                      yaxis_title="tokens/s per GPU", hovermode="closest", height=480,
                      **layout)
    return fig


def breakdown_figures(plans: list[dict[str, Any]], labels: list[str],
                      hbm: float | None) -> tuple[Any, Any]:
    """Stacked bars of each plan's step time by part and its peak memory by term (the HBM
    line over the memory bars)."""
    import plotly.graph_objects as go

    time_fig = go.Figure()
    for key, name in TIME_PARTS.items():
        vals = [p["time_breakdown_s"].get(key, 0.0) for p in plans]
        if any(v > 0 for v in vals):
            time_fig.add_trace(go.Bar(x=labels, y=vals, name=name,
                                      hovertemplate=f"{name}: %{{y:.4f}} s<extra></extra>"))
    time_fig.update_layout(barmode="stack", yaxis_title="step time (s)", height=420)
    mem_fig = go.Figure()
    terms = [k for k in plans[0]["memory_gib"] if k != "peak"]
    for key in terms:
        vals = [p["memory_gib"].get(key, 0.0) for p in plans]
        if any(v > 0 for v in vals):
            mem_fig.add_trace(go.Bar(x=labels, y=vals, name=key.replace("_", " "),
                                     hovertemplate=f"{key}: %{{y:.2f}} GiB<extra></extra>"))
    if hbm:
        mem_fig.add_hline(y=hbm, line_dash="dash", line_color="#444",
                          annotation_text=f"HBM {hbm:.0f} GiB")
    mem_fig.update_layout(barmode="stack", yaxis_title="peak memory per GPU (GiB)", height=420)
    return time_fig, mem_fig


def title_of(doc: dict[str, Any]) -> str:
    i = doc.get("inputs", {})
    job = i.get("job", {})
    return (f"{i.get('model', {}).get('name', '?')} on {i.get('num_gpus', '?')} x "
            f"{i.get('cluster', {}).get('accelerator', '?')}, batch "
            f"{job.get('global_batch_size', '?')} x {job.get('seq_len', '?')}")


def plan_sections(doc: dict[str, Any]) -> list[Section]:
    plans = doc["plans"]
    space = doc["space"]
    top = plans[:8]
    labels = [f"#{i} {describe(e['plan'])}" for i, e in enumerate(top, 1)]
    out = [Section("Plan space: throughput against memory",
                   note=f"{space['evaluated']:,} plans costed; {len(space['rows']):,} drawn "
                        "(the whole Pareto frontier of the plans that fit, the best of the "
                        "ranking and an even sample of the rest; stars: the ranked plans, "
                        "as simulated). Hover a point for its layout.")
           .chart(frontier_figure(doc)),
           Section("Best plans", note="one row per layout at its best setting; 'costed by' "
                   "says whether its step is the event simulation of its schedule or the "
                   "closed form").ranking(plan_rows(plans))]
    if top:
        t, m = breakdown_figures(top, labels, hbm_gib(doc))
        out += [Section("Step time of the best plans").chart(t),
                Section("Peak memory of the best plans").chart(m)]
    return out


def estimate_sections(doc: dict[str, Any]) -> list[Section]:
    t, m = breakdown_figures([doc], [describe(doc["plan"])], hbm_gib(doc))
    return [Section("The plan", note=f"memory: {doc.get('fit_reason')}")
            .ranking(plan_rows([doc])),
            Section("Step time").chart(t), Section("Peak memory").chart(m)]


def kind_of(name: str, stream: str) -> tuple[str, str]:
    """(colour class, micro-batch label) of a timeline box: its action's kind on the compute
    lane, its axis on a collective lane, else a send or the gradient reduction."""
    hit = ACTION.search(name)
    mb = hit.group(3) if hit else ""
    if stream == "compute" and hit:
        return hit.group(2), mb
    if stream in ("tp", "cp", "ep"):
        return stream, mb
    return ("grad" if name.startswith("grad") else "comm"), mb


def timeline_figure(timeline: dict[str, Any]) -> Any:
    """One lane per rank and stream; boxes coloured by F / B / I / W, labelled with their
    micro-batch (when few enough to read)."""
    import plotly.graph_objects as go

    boxes = timeline["intervals"]
    present = {(b[0], b[1]) for b in boxes}
    lanes = [f"rank {r} {s}" for r in sorted({b[0] for b in boxes}) for s in STREAMS
             if (r, s) in present]
    groups: dict[str, list[list[Any]]] = {}
    for rank, stream, name, start, end in boxes:
        kind, mb = kind_of(name, stream)
        groups.setdefault(kind, []).append([f"rank {rank} {stream}", start, end, name, mb])
    labelled = len(boxes) <= 2000
    fig = go.Figure()
    for kind in KIND_COLOURS:
        bs = groups.get(kind, [])
        if not bs:
            continue
        fig.add_trace(go.Bar(
            y=[b[0] for b in bs], base=[b[1] * 1e3 for b in bs],
            x=[(b[2] - b[1]) * 1e3 for b in bs], orientation="h", name=KIND_NAMES[kind],
            marker={"color": KIND_COLOURS[kind], "line": {"width": 0.5, "color": "white"}},
            text=[b[4] for b in bs] if labelled else None, textposition="inside",
            insidetextanchor="middle", customdata=[[b[3], b[1] * 1e3, b[2] * 1e3] for b in bs],
            hovertemplate="%{customdata[0]}: %{customdata[1]:.2f} to %{customdata[2]:.2f} ms"
                          "<extra></extra>"))
    fig.update_layout(barmode="overlay", xaxis_title="time in the step (ms)",
                      yaxis={"categoryorder": "array", "categoryarray": lanes[::-1]},
                      height=max(300, 60 * len(lanes)), bargap=0.25)
    return fig


def memory_figure(timeline: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for r, points in enumerate(timeline["activation_gib"]):
        fig.add_trace(go.Scatter(x=[t * 1e3 for t, _ in points], y=[v for _, v in points],
                                 mode="lines", line_shape="hv", name=f"rank {r}",
                                 hovertemplate=f"rank {r}: %{{y:.2f}} GiB at %{{x:.2f}} ms"
                                               "<extra></extra>"))
    fig.update_layout(xaxis_title="time in the step (ms)",
                      yaxis_title="activation memory held (GiB)", height=380)
    return fig


def simulate_sections(doc: dict[str, Any]) -> list[Section]:
    out = []
    timeline = doc.get("timeline")
    if timeline and timeline["intervals"]:
        note = "one lane per pipeline rank and stream; hover a box for its times"
        if timeline.get("truncated"):
            note += f" (the first {len(timeline['intervals']):,} boxes only)"
        out += [Section("Pipeline timeline", note=note).chart(timeline_figure(timeline)),
                Section("Activation memory over the step").chart(memory_figure(timeline))]
    return out + estimate_sections(doc)
