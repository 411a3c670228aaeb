"""`meshplan serve simulate`: simulate a request stream through a serving deployment.

Parsing and printing only; the work is `meshplan.serve.simulate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from meshplan.cli import complete
from meshplan.cli.render import console
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
from meshplan.serve import (
    Lengths,
    Workload,
    load_serving_cluster,
    simulate,
)
from meshplan.specs.io import load_model

serve_app = typer.Typer(no_args_is_help=True, help="Serving: simulate LLM inference deployments.")


@serve_app.command("simulate")
def simulate_cmd(
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
    trace: Annotated[str | None, option("--trace", "Write a Perfetto trace-event JSON file")
                     ] = None,
    engine: Annotated[str, option("--engine", "Engine profile (presets/engines)",
                                  autocompletion=complete.engines)] = "vllm",
    router: Annotated[str, option("--router", "round-robin, least-requests or least-tokens")
                      ] = "round-robin",
    workload: Annotated[str, option("--workload", "Arrivals: poisson, gamma, constant, burst, "
                                  "closed (--clients) or replay (--lengths-file's times)")
                        ] = "poisson",
    rate: Annotated[float | None, option("--rate", "Requests per second")] = None,
    cv: Annotated[float, option("--cv", "Gap coefficient of variation (gamma)")] = 1.0,
    clients: Annotated[int | None, option("--clients", "Concurrent clients (closed loop)")
                       ] = None,
    think_s: Annotated[float, option("--think-s", "Closed loop: seconds a client waits "
                                   "between a response and its next request")] = 0.0,
    num_requests: Annotated[int | None, option(
        "--num-requests", "Requests to simulate (default 1000, or every row of "
        "--lengths-file)")] = None,
    input_len: Annotated[int, option("--input-len", "Mean prompt tokens")] = 1024,
    output_len: Annotated[int, option("--output-len", "Mean output tokens")] = 256,
    lengths: Annotated[str, option("--lengths", "fixed, uniform, normal, lognormal or zipf")
                       ] = "fixed",
    spread: Annotated[float, option("--spread", "Length spread (see Lengths; zipf: the "
                                  "exponent)")] = 0.0,
    lengths_file: Annotated[str | None, option(
        "--lengths-file", "CSV or JSONL trace: input_len, output_len[, arrival_s or "
        "timestamp] per request")] = None,
    prefix_len: Annotated[int, option("--prefix-len", "Prompt tokens shared by each group")
                          ] = 0,
    prefix_group_size: Annotated[int, option("--prefix-group-size",
                                           "Consecutive requests sharing one prefix")] = 1,
    max_num_seqs: MaxNumSeqsOpt = None,
    max_num_batched_tokens: MaxNumBatchedTokensOpt = None,
    gpu_memory_utilization: GpuMemoryUtilizationOpt = None,
    no_chunked_prefill: NoChunkedPrefillOpt = False,
    kv_cache_dtype: KvCacheDtypeOpt = "bf16",
    num_gpu_blocks: Annotated[int | None, option(
        "--num-gpu-blocks", "KV blocks per instance instead of the memory estimate")] = None,
    num_scheduler_steps: Annotated[int, option(
        "--num-scheduler-steps", "Decode steps per scheduling (vllm-v0 multi-step)")] = 1,
    seed: Annotated[int, option("--seed", "Workload seed")] = 0,
    slo_ttft_ms: Annotated[float | None, option("--slo-ttft-ms", "TTFT bound for goodput")
                           ] = None,
    slo_tpot_ms: Annotated[float | None, option("--slo-tpot-ms", "TPOT bound for goodput")
                           ] = None,
    html: HtmlOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")
                        ] = False,
) -> None:
    """Simulate a request stream through a deployment; print latencies and throughput."""
    check_html(html)
    try:
        common: dict[str, Any] = dict(
            pp=pp, ep=ep, dp_attention=dp_attention, engine=engine, router=router,
            kv_cache_dtype=kv_cache_dtype, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_chunked_prefill=False if no_chunked_prefill else None,
            num_gpu_blocks=num_gpu_blocks, num_scheduler_steps=num_scheduler_steps)
        spec = deployment_spec(tp, instances, prefill_instances, decode_instances,
                               prefill_tp, decode_tp, **common)
        kind = lengths
        work = Workload(arrival=workload, rate=rate, cv=cv,  # type: ignore[arg-type]
                        clients=clients, think_s=think_s,
                        num_requests=num_requests, seed=seed,
                        lengths_file=None if lengths_file is None else Path(lengths_file),
                        prefix_len=prefix_len, prefix_group_size=prefix_group_size,
                        input=Lengths(kind=kind, mean=input_len, spread=spread),  # type: ignore[arg-type]
                        output=Lengths(kind=kind, mean=output_len, spread=spread))  # type: ignore[arg-type]
    except ValidationError as err:
        raise from_validation_error(err, "serve simulate", serve_flag) from None
    for flag, bound in (("--slo-ttft-ms", slo_ttft_ms), ("--slo-tpot-ms", slo_tpot_ms)):
        if bound is not None and not 0 < bound < float("inf"):
            raise MeshplanError(f"{flag}={bound}: must be a positive number of milliseconds")
    result = simulate(load_model(model), load_serving_cluster(cluster), spec, work,
                      trace=trace)
    slo_ttft = None if slo_ttft_ms is None else slo_ttft_ms / 1e3
    slo_tpot = None if slo_tpot_ms is None else slo_tpot_ms / 1e3
    out = result.to_json(slo_ttft, slo_tpot)
    if json_out or html:
        inputs = {"model": model, "cluster": cluster, "deployment": spec.model_dump(mode="json"),
                  "workload": work.model_dump(mode="json"), "slo_ttft_ms": slo_ttft_ms,
                  "slo_tpot_ms": slo_tpot_ms}
        emit(envelope("serve simulate", inputs, out), json_out, html)
        if json_out:
            return
    d = out["deployment"]
    pools = [("prefill ", d["prefill"]), ("decode ", d["decode"])] if d["disaggregated"] \
        else [("", d)]
    layout = ", ".join(f"{role}{p['instances']} x tp{p['tp']} pp{p['pp']}"
                       + (f" ep{p['ep']}" if p["ep"] > 1 else "")
                       + (f" dp-attention{p['dp_attention']}" if p["dp_attention"] > 1 else "")
                       + f" {p['engine']} (max_num_seqs {p['max_num_seqs']}, "
                       f"max_num_batched_tokens {p['max_num_batched_tokens']})"
                       for role, p in pools)
    console.print(f"{d['model']} on {d['num_gpus']} x {result.deployment.cluster.accelerator.name}"
                  f": {layout}")
    if not result.fits:
        console.print(f"does not fit: {result.why_not}")
        raise typer.Exit(1)
    m = out["metrics"]
    t = Table(title=f"{out['num_completed']} of {out['num_requests']} requests",
              header_style="bold")
    for col in ("metric", "mean", "p50", "p90", "p99"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queueing_ms"):
        s = m[key]
        t.add_row(key, *("-" if s[p] is None else f"{s[p]:.1f}"
                         for p in ("mean", "p50", "p90", "p99")))
    console.print(t)
    console.print(f"{m['requests_per_s']:.2f} req/s, {m['output_tokens_per_s']:,.0f} output "
                  f"tok/s ({m['output_tokens_per_s_per_gpu']:,.0f} per GPU); KV cache "
                  f"{result.capacity.to_json()['kv_cache_gib']:.1f} GiB per GPU, peak use "
                  f"{out['kv_usage_peak']:.0%}, {out['preemptions']} preemptions")
    if "kv_transfer_ms" in out:
        x = out["kv_transfer_ms"]
        console.print(f"{x['count']} KV transfers, mean {x['mean']:.2f} ms, p99 {x['p99']:.2f} ms")
    if trace is not None:
        console.print(f"trace written to {trace}")
    if slo_ttft is not None or slo_tpot is not None:
        console.print(f"goodput {m['goodput_requests_per_s']:.2f} req/s "
                      f"({m['slo_attainment']:.1%} of requests within the SLOs)")


def register(app: typer.Typer) -> None:
    """Add `serve` to the meshplan app."""
    from meshplan.cli import serve_plan_cmd, serve_validate_cmd

    serve_validate_cmd.register(serve_app)
    serve_plan_cmd.register(serve_app)
    app.add_typer(serve_app, name="serve")
