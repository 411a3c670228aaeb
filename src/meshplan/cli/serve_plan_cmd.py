"""`meshplan serve plan` (search deployments under SLOs) and `meshplan serve export` (launch
scripts for vLLM / SGLang). Parsing and printing only; the work is `meshplan.serve.plan` and
`meshplan.serve.export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from meshplan.cli.options import FormatOpt, check_out, wants_csv
from meshplan.cli.render import console, print_json, rows_table, write_csv
from meshplan.cli.report_cmd import HtmlOpt, check_html, emit
from meshplan.cli.serve_options import (
    ClusterOpt,
    DecodeInstancesOpt,
    DecodeTpOpt,
    DpAttentionOpt,
    EpOpt,
    GpuMemoryUtilizationOpt,
    InstancesOpt,
    KvCacheDtypeOpt,
    MaxNumBatchedTokensOpt,
    MaxNumSeqsOpt,
    ModelOpt,
    NoChunkedPrefillOpt,
    PpOpt,
    PrefillInstancesOpt,
    PrefillTpOpt,
    TpOpt,
    deployment_spec,
    option,
    serve_flag,
)
from meshplan.errors import MeshplanError, from_validation_error
from meshplan.output import envelope
from meshplan.serve import load_serving_cluster, resolve_any
from meshplan.serve.export import TARGETS, export, refuse
from meshplan.serve.plan import ServePlan, WhatIf, plan, what_if
from meshplan.serve.plan.whatif import check_price, parse_counts
from meshplan.specs.io import load_model
from meshplan.tables import Column, Rows, fixed


def _write(text: str, out: str) -> None:
    if out == "-":
        sys.stdout.write(text)
        return
    try:
        Path(out).write_text(text)
    except OSError as err:
        raise MeshplanError(f"--out={out}: cannot write: {err.strerror}") from None
    typer.echo(f"launch script written to {out}", err=True)


def _print_what_if(w: WhatIf) -> None:
    """One line per GPU count: its best plan and what a million requests cost with it."""
    t = Table(title="what-if: best plan per GPU count", header_style="bold")
    cols = ["GPUs", "best deployment", "max req/s", "req/s/GPU", "tok/s/GPU", "GPU-h/1M req"]
    if w.gpu_hour_price is not None:
        cols.append("$/1M req")
    for col in cols:
        t.add_column(col, justify="left" if col == "best deployment" else "right")
    for row in w.rows:
        if row.result is None:
            t.add_row(str(row.num_gpus), "none meets the SLOs", *["-"] * (len(cols) - 2))
            continue
        b = row.result.best
        cells = [str(row.num_gpus), b.label, f"{b.max_rate_per_s:.2f}",
                 f"{b.goodput_per_gpu:.3f}", f"{b.tokens_per_s_per_gpu:.0f}",
                 f"{b.gpu_hours_per_million_requests:.1f}"]
        if row.cost_per_million_requests is not None:
            cells.append(f"{row.cost_per_million_requests:.2f}")
        t.add_row(*cells)
    console.print(t)


def plan_rows(r: ServePlan, gpu_hour_price: float | None = None) -> Rows:
    """The ranked deployments: one source for the table and the CSV."""
    pct = f"{r.query.percentile:g}"
    columns = (
        Column("rank", "#"), Column("deployment", "deployment", left=True),
        Column("gpus", "GPUs"), Column("max_rate_per_s", "max req/s", fixed(".2f")),
        Column("goodput_per_gpu", "req/s/GPU", fixed(".3f")),
        Column("tokens_per_s_per_gpu", "tok/s/GPU", fixed(".0f")),
        Column("tokens_per_s_per_user", "tok/s/user", fixed(".1f")),
        Column(f"ttft_p{pct}_ms", f"TTFT p{pct}", fixed(".0f")),
        Column(f"tpot_p{pct}_ms", f"TPOT p{pct}", fixed(".1f")),
        Column("gpu_hours_per_million_requests", "GPU-h/1M req", fixed(".1f")),
        *([Column("cost_per_million_requests", "$/1M req", fixed(".2f"))]
          if gpu_hour_price is not None else []),
    )
    values = [(k, p.label, p.num_gpus, p.max_rate_per_s, p.goodput_per_gpu,
               p.tokens_per_s_per_gpu, p.tokens_per_s_per_user, p.slo_ttft_ms, p.slo_tpot_ms,
               p.gpu_hours_per_million_requests,
               *([p.gpu_hours_per_million_requests * gpu_hour_price]
                 if gpu_hour_price is not None else [])) for k, p in enumerate(r.plans, 1)]
    return columns, values


def _print_plan(r: ServePlan, gpu_hour_price: float | None = None) -> None:
    q = r.query
    console.print(f"{r.model} on {r.cluster}: {r.candidates} deployments, {r.simulated} "
                  f"simulated ({r.simulations} runs); SLO p{q.percentile:g} TTFT <= "
                  f"{q.slo_ttft_s * 1e3:g} ms, TPOT <= {q.slo_tpot_s * 1e3:g} ms; "
                  f"objective {r.objective}")
    console.print(rows_table(plan_rows(r, gpu_hour_price)))
    console.print("Pareto frontier (tok/s/GPU vs tok/s/user): " + "; ".join(
        f"{p.label} ({p.tokens_per_s_per_gpu:.0f}, {p.tokens_per_s_per_user:.1f})"
        for p in r.pareto))
    if r.pruned:
        t = Table(title="pruned", header_style="bold")
        for col in ("class", "reason", "count", "why (first)"):
            t.add_column(col)
        for x in r.pruned:
            t.add_row(x.layout_class, x.reason + (" (simulated)" if x.simulated else ""),
                      str(x.count), x.detail)
        console.print(t)


def plan_cmd(
    model: ModelOpt = "llama3-8b",
    cluster: ClusterOpt = "dgx-h100",
    num_gpus: Annotated[str, option("--num-gpus", "GPUs to deploy on; several (8,16,32): "
                                    "the search per count, what-if")] = "8",
    workload: Annotated[str, option("--workload", "Arrivals (poisson)")] = "poisson",
    input_len: Annotated[int, option("--input-len", "Prompt tokens")] = 1024,
    output_len: Annotated[int, option("--output-len", "Output tokens")] = 256,
    slo_ttft_ms: Annotated[float, option("--slo-ttft-ms", "TTFT bound (ms)")] = 2000.0,
    slo_tpot_ms: Annotated[float, option("--slo-tpot-ms", "TPOT bound (ms)")] = 100.0,
    slo_percentile: Annotated[float, option("--slo-percentile", "Percentile the SLOs bound")
                              ] = 99.0,
    objective: Annotated[str, option("--objective", "goodput-per-gpu, throughput or cost")
                         ] = "goodput-per-gpu",
    top: Annotated[int, option("--top", "Plans to show")] = 5,
    engine: Annotated[str | None, option("--engine", "Engine profile (default: the --export "
                                       "target, else vllm)")] = None,
    num_requests: Annotated[int, option("--num-requests", "Fewest requests a simulation runs "
                                      "(more for long-lived requests)")] = 1000,
    seed: Annotated[int, option("--seed", "Workload seed")] = 0,
    workers: Annotated[int | None, option("--workers", "Processes (default: every core)")
                       ] = None,
    no_disaggregation: Annotated[bool, option("--no-disaggregation",
                                            "Colocated deployments only")] = False,
    ray: Annotated[str | None, option("--ray", "Run the simulations as Ray tasks on the "
                                    "cluster at this address (auto: RAY_ADDRESS)")] = None,
    gpu_hour_price: Annotated[float | None, option("--gpu-hour-price", "Price of a GPU-hour: "
                                                 "also the cost per million requests")
                              ] = None,
    export_to: Annotated[str | None, option("--export", "Also write the best plan the engine "
                                          "can express: vllm or sglang")] = None,
    out: Annotated[str | None, option("--out", "Launch script file (- for stdout)")] = None,
    fmt: FormatOpt = "table",
    html: HtmlOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")
                        ] = False,
) -> None:
    """Search deployments of N GPUs for the highest request rate within TTFT/TPOT SLOs."""
    check_html(html)
    csv_out = wants_csv(fmt, json_out)
    if export_to is not None:
        check_out("--out", out, stdout_ok=True)  # before the search
    if workload != "poisson":
        raise MeshplanError(f"--workload={workload!r}: the search uses poisson arrivals")
    counts = parse_counts(num_gpus)
    check_price(gpu_hour_price)
    if len(counts) > 1 and (csv_out or html):
        raise MeshplanError("--format csv / --html with several --num-gpus: the what-if table "
                            "has its own shape; give one count, or --json")
    if len(counts) > 1 and export_to is not None:
        raise MeshplanError("--export with several --num-gpus: export one count's best plan "
                            "(give one count)")
    if export_to is not None and export_to not in TARGETS:
        raise MeshplanError(f"--export={export_to!r}: one of {', '.join(TARGETS)}")
    if (export_to is None) != (out is None):
        raise MeshplanError("--export and --out: give both (the script's target and file)")
    if json_out and out == "-":
        raise MeshplanError("--json with --out -: both would go to standard output")
    if workers is not None and workers < 1:
        raise MeshplanError(f"--workers={workers}: must be positive")
    eng = engine or ("sglang" if export_to == "sglang" else "vllm")
    common: dict[str, Any] = dict(slo_percentile=slo_percentile, objective=objective, top=top,
                                  engine=eng, num_requests=num_requests, seed=seed,
                                  disaggregation=not no_disaggregation)
    inputs = {"model": model, "cluster": cluster,
              "num_gpus": counts[0] if len(counts) == 1 else counts, "input_len": input_len,
              "output_len": output_len, "slo_ttft_ms": slo_ttft_ms, "slo_tpot_ms": slo_tpot_ms,
              "gpu_hour_price": gpu_hour_price, **common}
    if len(counts) > 1:
        w = what_if(model, cluster, counts, input_len, output_len, slo_ttft_ms, slo_tpot_ms,
                    gpu_hour_price, workers, ray, **common)
        if json_out:
            print_json(envelope("serve plan", inputs, w.to_json()))
        else:
            _print_what_if(w)
        return
    r = plan(model, cluster, counts[0], input_len, output_len, slo_ttft_ms, slo_tpot_ms,
             workers=workers, ray_address=ray, **common)
    if json_out or html:
        emit(envelope("serve plan", inputs, {**r.to_json(gpu_hour_price),
                                             "best_simulation": _replay_best(r, model, cluster)}),
             json_out, html)
    if csv_out:
        write_csv(plan_rows(r, gpu_hour_price))
    elif not json_out and out != "-":
        _print_plan(r, gpu_hour_price)
    if export_to is not None and out is not None:
        m, c = load_model(model), load_serving_cluster(cluster)
        for p in r.all_plans:
            d = resolve_any(m, c, p.spec)
            if refuse(d, export_to) is None:
                _write(export(d, export_to), out)
                return
        raise MeshplanError(f"--export={export_to}: it can express none of the plans found")


def _replay_best(r: ServePlan, model: str, cluster: str) -> dict[str, Any]:
    """The best plan simulated again at its highest rate (the same numbers as in its row:
    the search is deterministic), with its latency distributions and time series."""
    from meshplan.serve import simulate

    best = r.best
    return simulate(model, cluster, best.spec, best.workload).to_json(
        r.query.slo_ttft_s, r.query.slo_tpot_s)


def export_cmd(
    to: Annotated[str, option("--to", "vllm or sglang")],
    out: Annotated[str, option("--out", "Launch script file (- for stdout)")] = "-",
    model: ModelOpt = "llama3-8b",
    cluster: ClusterOpt = "dgx-h100",
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    ep: EpOpt = 1,
    dp_attention: DpAttentionOpt = 1,
    instances: InstancesOpt = 1,
    prefill_instances: PrefillInstancesOpt = None,
    decode_instances: DecodeInstancesOpt = None,
    prefill_tp: PrefillTpOpt = None,
    decode_tp: DecodeTpOpt = None,
    engine: Annotated[str | None, option("--engine", "Engine profile (default: --to)")] = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    max_num_batched_tokens: MaxNumBatchedTokensOpt = None,
    gpu_memory_utilization: GpuMemoryUtilizationOpt = None,
    no_chunked_prefill: NoChunkedPrefillOpt = False,
    kv_cache_dtype: KvCacheDtypeOpt = "bf16",
    weights_dtype: Annotated[str, option("--weights-dtype", "bf16, fp16 or fp8")] = "bf16",
) -> None:
    """Write the launch script of a deployment for vLLM or SGLang."""
    check_out("--out", out, stdout_ok=True)
    if to not in TARGETS:
        raise MeshplanError(f"--to={to!r}: one of {', '.join(TARGETS)}")
    try:
        common: dict[str, Any] = dict(
            pp=pp, ep=ep, dp_attention=dp_attention, engine=engine or to,
            kv_cache_dtype=kv_cache_dtype, weights_dtype=weights_dtype,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_chunked_prefill=False if no_chunked_prefill else None)
        spec = deployment_spec(tp, instances, prefill_instances, decode_instances,
                               prefill_tp, decode_tp, **common)
    except ValidationError as err:
        raise from_validation_error(err, "serve export", serve_flag) from None
    d = resolve_any(load_model(model), load_serving_cluster(cluster), spec)
    _write(export(d, to), out)


def register(app: typer.Typer) -> None:
    """Add `plan` and `export` to `meshplan serve`."""
    app.command("plan")(plan_cmd)
    app.command("export")(export_cmd)
