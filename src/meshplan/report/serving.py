"""Pages of the serving commands: `serve simulate` (latency CDFs against the SLOs, KV-cache
use and queue length over time) and `serve plan` (the Pareto frontier of tokens/s per GPU
against tokens/s per user, throughput and goodput against request rate, and the best
plan's own simulation)."""

from __future__ import annotations

import math
from typing import Any

from meshplan.report.page import Section

LATENCIES = (("ttft_ms", "TTFT", "slo_ttft_ms"), ("tpot_ms", "TPOT", "slo_tpot_ms"),
             ("e2e_ms", "E2E latency", None))


def cdf_figure(dist: list[float], name: str, slo_ms: float | None) -> Any:
    """A latency's CDF from its percentile curve, with the SLO bound as a vertical line."""
    import plotly.graph_objects as go

    share = [i / (len(dist) - 1) for i in range(len(dist))]
    fig = go.Figure(go.Scatter(x=dist, y=share, mode="lines+markers", name=name,
                               marker={"size": 4},
                               hovertemplate=f"{name} %{{x:.1f}} ms: %{{y:.0%}} of requests"
                                             "<extra></extra>"))
    if slo_ms is not None:
        fig.add_vline(x=slo_ms, line_dash="dash", line_color="#e45756",
                      annotation_text=f"SLO {slo_ms:g} ms")
    fig.update_layout(xaxis_title=f"{name} (ms)", yaxis_title="share of requests",
                      yaxis_tickformat=".0%", height=340)
    return fig


def series_figure(series: dict[str, list[list[float]]]) -> Any:
    """KV-cache use (left axis) and requests waiting (right axis) against time."""
    import plotly.graph_objects as go

    fig = go.Figure()
    kv, queue = series.get("kv_usage", []), series.get("queue_length", [])
    fig.add_trace(go.Scatter(x=[t for t, _ in kv], y=[v for _, v in kv], name="KV cache used",
                             mode="lines", line_shape="hv",
                             hovertemplate="%{y:.0%} of KV blocks at %{x:.1f} s"
                                           "<extra></extra>"))
    fig.add_trace(go.Scatter(x=[t for t, _ in queue], y=[v for _, v in queue],
                             name="requests waiting", mode="lines", line_shape="hv",
                             yaxis="y2", hovertemplate="%{y:.0f} waiting at %{x:.1f} s"
                                                       "<extra></extra>"))
    most = max((v for _, v in queue), default=0.0)
    fig.update_layout(xaxis_title="time (s)",
                      yaxis={"title": "KV cache used (all instances)", "tickformat": ".0%",
                             "rangemode": "tozero"},
                      yaxis2={"title": "requests waiting", "overlaying": "y", "side": "right",
                              "rangemode": "tozero", "tickformat": ",d",
                              "dtick": max(1, math.ceil(most / 5))}, height=360)
    return fig


def run_sections(run: dict[str, Any], slo: dict[str, float | None], what: str
                 ) -> list[Section]:
    """A simulation's CDFs, time series and summary table (`ServeResult.to_json`)."""
    out: list[Section] = []
    dist = run.get("distributions", {})
    for key, name, slo_key in LATENCIES:
        if dist.get(key):
            out.append(Section(f"{name} distribution{what}").chart(
                cdf_figure(dist[key], name, slo.get(slo_key) if slo_key else None)))
    if run.get("timeseries"):
        out.append(Section(f"KV cache and queue over time{what}",
                           note="each point is the largest value of its stretch of time")
                   .chart(series_figure(run["timeseries"])))
    m = run.get("metrics")
    transfers = run.get("kv_transfer_ms")
    if m and transfers:
        out.append(Section(f"KV transfers{what}", note=f"{transfers['count']:,} prefill-to-decode "
                           f"transfers, mean {transfers['mean']:.2f} ms, p99 "
                           f"{transfers['p99']:.2f} ms on the wire"))
    if m:
        rows = [[key, *(m[key][p] for p in ("mean", "p50", "p90", "p99"))]
                for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queueing_ms")]
        table = Section(f"Latencies{what}",
                        note=f"{m['requests_per_s']:.3g} req/s, "
                             f"{m['output_tokens_per_s']:,.0f} output tok/s "
                             f"({m['output_tokens_per_s_per_gpu']:,.0f} per GPU), "
                             f"{run.get('preemptions', 0)} preemptions")
        out.append(table.table(["metric", "mean", "p50", "p90", "p99"], rows))
    return out


def deployment_label(d: dict[str, Any]) -> str:
    """`4 x tp2 pp1 vllm`, or `2P tp4 pp1 + 2D tp8 pp1 vllm` for a disaggregated one."""
    def pool(p: dict[str, Any], role: str = "") -> str:
        ep = f" ep{p['ep']}" if p.get("ep", 1) > 1 else ""
        return f"{p['instances']}{role or ' x'} tp{p['tp']} pp{p['pp']}{ep}"

    if d.get("disaggregated"):
        return f"{pool(d['prefill'], 'P')} + {pool(d['decode'], 'D')} {d['prefill']['engine']}"
    return f"{pool(d)} {d.get('engine', '')}"


def simulate_title(doc: dict[str, Any]) -> str:
    i, w = doc.get("inputs", {}), doc.get("inputs", {}).get("workload", {})
    rate = f" at {w['rate']:g} req/s" if w.get("rate") else ""
    return (f"{i.get('model', '?')} on {i.get('cluster', '?')}: "
            f"{deployment_label(doc['deployment'])}, {w.get('arrival', '?')}{rate}")


def plan_title(doc: dict[str, Any]) -> str:
    i = doc.get("inputs", {})
    return (f"{i.get('model', '?')} on {i.get('num_gpus', '?')} GPUs of "
            f"{i.get('cluster', '?')}: deployments under the SLOs")


def simulate_sections(doc: dict[str, Any]) -> list[Section]:
    if not doc.get("fits", True):
        return [Section("Does not fit", note=str(doc.get("why_not")))]
    inputs = doc.get("inputs", {})
    slo = {"slo_ttft_ms": inputs.get("slo_ttft_ms"), "slo_tpot_ms": inputs.get("slo_tpot_ms")}
    return run_sections(doc, slo, "")


def pareto_figure(doc: dict[str, Any]) -> Any:
    """Every simulated plan's tokens/s per GPU against tokens/s per user; the frontier."""
    import plotly.graph_objects as go

    fig = go.Figure()
    shown = {p["label"] for p in doc["plans"]}
    everyone = doc["plans"] + [p for p in doc["pareto"] if p["label"] not in shown]
    for disagg, name, colour in ((False, "colocated", "#4c78a8"),
                                 (True, "disaggregated", "#f58518")):
        pts = [p for p in everyone if p["disaggregated"] == disagg]
        fig.add_trace(go.Scatter(
            x=[p["tokens_per_s_per_user"] for p in pts],
            y=[p["tokens_per_s_per_gpu"] for p in pts], mode="markers", name=name,
            marker={"color": colour, "size": 9}, text=[p["label"] for p in pts],
            hovertemplate="%{text}<br>%{y:,.0f} tok/s/GPU, %{x:.1f} tok/s/user"
                          "<extra></extra>"))
    front = sorted(doc["pareto"], key=lambda p: p["tokens_per_s_per_user"])
    fig.add_trace(go.Scatter(x=[p["tokens_per_s_per_user"] for p in front],
                             y=[p["tokens_per_s_per_gpu"] for p in front],
                             mode="lines", name="Pareto frontier", line={"color": "#e45756"},
                             hoverinfo="skip"))
    fig.update_layout(xaxis_title="tokens/s per user (interactivity)",
                      yaxis_title="output tokens/s per GPU", height=440)
    return fig


def rate_figure(plans: list[dict[str, Any]]) -> Any:
    """Throughput and goodput against offered request rate, from each plan's rate search."""
    import plotly.colors
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for k, p in enumerate(plans):
        probes = p.get("probes", [])
        if not probes:
            continue
        colour = palette[k % len(palette)]
        rates = [x["rate_per_s"] for x in probes]
        for key, dash, what in (("requests_per_s", "solid", "throughput"),
                                ("goodput_requests_per_s", "dot", "goodput")):
            fig.add_trace(go.Scatter(
                x=rates, y=[x[key] for x in probes], mode="lines+markers",
                name=f"{p['label']} {what}", line={"dash": dash, "color": colour},
                marker={"color": colour},
                hovertemplate=f"{p['label']}<br>{what} %{{y:.2f}} req/s at %{{x:.2f}} req/s "
                              "offered<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=[p["max_rate_per_s"]], y=[p["steady_state"]["requests_per_s"]], mode="markers",
            marker={"color": colour, "size": 14, "symbol": "star"}, showlegend=False,
            hovertemplate=f"{p['label']}: highest rate within the SLOs, %{{x:.2f}} req/s"
                          "<extra></extra>"))
    top = max((x["rate_per_s"] for p in plans for x in p.get("probes", [])), default=1.0)
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="keeping up (y = x)",
                             line={"color": "#999", "dash": "dash"}, hoverinfo="skip"))
    fig.update_layout(xaxis_title="offered request rate (req/s)",
                      yaxis_title="completed requests/s (measured window)", height=440)
    return fig


def plan_sections(doc: dict[str, Any]) -> list[Section]:
    plans = doc["plans"]
    slo = doc["slo"]
    pct = f"p{slo['percentile']:g}"
    rows = [[i, p["label"], p["disaggregated"], p["num_gpus"], p["max_rate_per_s"],
             p["goodput_per_gpu"], p["tokens_per_s_per_gpu"], p["tokens_per_s_per_user"],
             p["slo_measured"]["ttft_ms"], p["slo_measured"]["tpot_ms"]]
            for i, p in enumerate(plans, 1)]
    out = [Section("Best deployments", note=f"SLOs: TTFT p{slo['percentile']:g} <= "
                                            f"{slo['ttft_ms']:g} ms, TPOT p"
                                            f"{slo['percentile']:g} <= {slo['tpot_ms']:g} ms")
           .table(["#", "deployment", "disaggregated", "GPUs", "max req/s", "req/s per GPU",
                   "tok/s/GPU", "tok/s/user", f"TTFT {pct} (ms)", f"TPOT {pct} (ms)"], rows),
           Section("Tokens/s per GPU against tokens/s per user").chart(pareto_figure(doc)),
           Section("Throughput and goodput against request rate",
                   note="every rate each plan's search simulated, measured over the second "
                        "half of its arrivals; stars: the highest rate within the SLOs")
           .chart(rate_figure(plans))]
    best = doc.get("best_simulation")
    if best:
        s = {"slo_ttft_ms": slo["ttft_ms"], "slo_tpot_ms": slo["tpot_ms"]}
        out += run_sections(best, s, f" (#1 {plans[0]['label']} at its max rate)")
    if doc.get("pruned"):
        out.append(Section("Layouts that lost").table(
            ["class", "reason", "count", "example", "detail"],
            [[x["class"], x["reason"], x["count"], x["example"], x["detail"]]
             for x in doc["pruned"]]))
    return out
