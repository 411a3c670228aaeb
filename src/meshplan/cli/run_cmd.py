"""`meshplan run` (prove a plan on torch.distributed) and `meshplan calibrate --local`.

torch is imported only inside the command bodies (through `meshplan.execute`), so the CLI
starts without it and a missing extra is the one-line error of `meshplan.execute`.
`run` takes the shared flags of `with_inputs`, with defaults sized for one machine (the debug
model, a calibrated `meshplan-local.toml`, a batch of 8 x 128) instead of the big-cluster
example defaults; `--num-gpus` defaults to the ranks the plan flags name (or `--nproc`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from meshplan import api
from meshplan.cli.options import COMMON, Inputs, with_inputs
from meshplan.cli.render import console, print_json
from meshplan.errors import MeshplanError
from meshplan.estimate import GIB

LOCAL_CLUSTER = "meshplan-local.toml"
RUN_DEFAULTS = {"model": "debug", "cluster": LOCAL_CLUSTER, "global_batch_size": 8,
                "seq_len": 128}

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]


def _prepare_local(kwargs: dict[str, Any]) -> None:
    """Default --num-gpus from the machine, and insist on a calibrated cluster file."""
    if kwargs["num_gpus"] is None:
        kwargs["num_gpus"] = _default_ranks(kwargs)
    if kwargs["cluster"] == LOCAL_CLUSTER and not Path(LOCAL_CLUSTER).exists():
        raise MeshplanError(f"--cluster={LOCAL_CLUSTER!r}: no such file here; run "
                            "`meshplan calibrate --local` first or pass --cluster")


def _local_inputs(func: Any) -> Any:
    """`with_inputs()` with single-machine defaults and `--num-gpus` optional."""
    overrides: dict[str, tuple[Any, Any]] = {
        name: (ann, RUN_DEFAULTS[name]) for name, ann, _ in COMMON if name in RUN_DEFAULTS}
    overrides["num_gpus"] = (Annotated[int | None, typer.Option(
        "--num-gpus", help="Ranks in the job (default: what the plan flags name, "
                           "or --nproc x --nnodes)")], None)
    return with_inputs(overrides=overrides, prepare=_prepare_local)(func)


def _default_ranks(kw: dict[str, Any]) -> int:
    """--nproc x --nnodes when the plan flags fit in it (dp fills the rest), else the ranks
    the plan flags name (so a plan too big for --nproc gets the "needs N ranks" error)."""
    named = 1
    for axis in ("tp", "pp", "cp", "dp"):
        named *= kw.get(axis) or 1
    if kw.get("nproc") is not None:
        available = int(kw["nproc"]) * int(kw.get("nnodes") or 1)
        if available % named == 0 and (kw.get("dp") is None or available == named):
            return available
    return named


def _signed(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured if measured else float("nan")


def _report(inputs: Inputs, measured: dict[str, Any], predicted: dict[str, Any],
            nodes: int) -> None:
    from rich.table import Table

    plan = inputs.plan()
    console.print(f"{plan.describe()} on {plan.num_gpus} rank(s) ({measured['device']}, "
                  f"{nodes} node(s)), {inputs.model.name}, batch {inputs.job.global_batch_size}"
                  f" x {inputs.job.seq_len}, {inputs.job.precision}, "
                  f"{len(measured['losses'])} steps")
    table = Table(header_style="bold")
    for col in ("", "measured", "predicted", "error"):
        table.add_column(col, justify="right" if col else "left")
    t_m, t_p = measured["step_time_s"], predicted["step_time_s"]
    m_m, m_p = measured["peak_memory_gib"], predicted["memory_gib"]["peak"]
    table.add_row("step time", f"{t_m * 1e3:.1f} ms", f"{t_p * 1e3:.1f} ms",
                  f"{_signed(t_p, t_m):+.1%}")
    table.add_row("peak memory", f"{m_m:.2f} GiB", f"{m_p:.2f} GiB", f"{_signed(m_p, m_m):+.1%}")
    console.print(table)
    console.print("loss: " + " ".join(f"{x:.4f}" for x in measured["losses"]))


def run(inputs: Inputs,
        steps: Annotated[int, typer.Option("--steps", help="Optimizer steps to run")] = 10,
        warmup: Annotated[int, typer.Option("--warmup", help="Steps left out of the timing")
                          ] = 3,
        nproc: Annotated[int | None, typer.Option(
            "--nproc", help="Ranks per node available (default: what the plan needs)")] = None,
        nnodes: Annotated[int, typer.Option("--nnodes", help="torchrun --nnodes")] = 1,
        node_rank: Annotated[int | None, typer.Option("--node-rank", help="torchrun --node-rank")
                             ] = None,
        rdzv_endpoint: Annotated[str | None, typer.Option(
            "--rdzv-endpoint", help="torchrun --rdzv-endpoint host:port (multi-node)")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Weights and data seed")] = 0,
        optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd")] = "adamw",
        threads: Annotated[int, typer.Option("--threads-per-rank",
                                             help="CPU threads per rank")] = 1,
        json_out: JsonFlag = False) -> None:
    """Run a plan on torch.distributed, measure it and compare with the prediction."""
    plan = inputs.plan()
    capacity = (nproc if nproc is not None else plan.num_gpus // max(nnodes, 1)) * nnodes
    if plan.num_gpus > capacity:
        raise MeshplanError(f"plan {plan.describe()} needs {plan.num_gpus} ranks; --nproc "
                            f"{nproc} x --nnodes {nnodes} gives {capacity}")
    if plan.num_gpus % nnodes:
        raise MeshplanError(f"--nnodes={nnodes}: must divide the plan's {plan.num_gpus} ranks")
    for name, value, low in (("--steps", steps, 1), ("--warmup", warmup, 0),
                             ("--threads-per-rank", threads, 1)):
        if value < low:
            raise MeshplanError(f"{name}={value}: must be >= {low}")
    if warmup >= steps:
        raise MeshplanError(f"--warmup={warmup}: must be below --steps ({steps})")
    if optimizer not in ("adamw", "sgd"):
        raise MeshplanError(f"--optimizer={optimizer!r}: adamw or sgd")
    if inputs.job.precision == "fp8":
        raise MeshplanError("--precision=fp8: meshplan run computes in bf16 or fp16 "
                            "(torch autocast has no fp8)")
    from meshplan.execute.launch import launch  # raises MeshplanError without torch
    from meshplan.execute.parallelize import check_supported
    from meshplan.execute.runtime import RunConfig, default_device_type

    check_supported(inputs.model, plan, default_device_type())
    predicted = api.estimate(inputs.model, inputs.cluster, inputs.job, plan).to_json()
    cfg = RunConfig(model=inputs.model.model_dump(mode="json"),
                    plan=plan.model_dump(mode="json"),
                    global_batch_size=inputs.job.global_batch_size, seq_len=inputs.job.seq_len,
                    steps=steps, warmup=warmup, seed=seed, dtype=inputs.job.precision,
                    optimizer=optimizer, threads_per_rank=threads)
    args = []
    if nnodes > 1:
        if rdzv_endpoint is None or node_rank is None:
            raise MeshplanError("--nnodes > 1 needs --rdzv-endpoint and --node-rank")
        args = [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}"]
    local_ranks = plan.num_gpus // nnodes
    cores = os.cpu_count() or 1
    if local_ranks * threads > cores and not json_out:
        print(f"note: {local_ranks} rank(s) x {threads} thread(s) on {cores} core(s): ranks "
              "time-share the CPU, so the measured step is slower than the prediction, which "
              "assumes each rank has its own device", file=sys.stderr)
    result = launch(cfg, local_ranks, args)
    if result is None:  # a node without rank 0: rank 0's node reports
        return
    measured = {"step_time_s": result["step_time_s"],
                "peak_memory_gib": result["peak_memory_bytes"] / GIB,
                "losses": result["losses"], "step_times_s": result["step_times_s"],
                "peak_memory_gib_per_rank": [b / GIB for b in
                                             result["peak_memory_bytes_per_rank"]],
                "device": result["device"]}
    error = _signed(predicted["step_time_s"], measured["step_time_s"])
    if json_out:
        print_json({"measured": measured, "predicted": predicted, "error": error})
        return
    _report(inputs, measured, predicted, nnodes)


def calibrate(
        local: Annotated[bool, typer.Option("--local", help="Measure this machine")] = False,
        runs: Annotated[str | None, typer.Option(
            "--runs", help="Fit the presets' efficiency factors to published runs in this "
                           "file (schema of published_training_runs.json); 'shipped' for "
                           "meshplan's own")] = None,
        write: Annotated[bool, typer.Option(
            "--write", help="With --runs: write the fitted factors to presets/calibration.toml"
        )] = False,
        loso: Annotated[bool, typer.Option(
            "--loso/--no-loso", help="With --runs: leave-one-source-out error (slower)")] = True,
        out: Annotated[Path, typer.Option("--out", help="Cluster file to write")] = Path(
            LOCAL_CLUSTER),
        threads: Annotated[int, typer.Option("--threads-per-rank",
                                             help="CPU threads one rank gets")] = 1,
        json_out: JsonFlag = False) -> None:
    """Measure this machine (--local) or fit the presets to published runs (--runs FILE)."""
    if local == (runs is not None):
        raise MeshplanError("calibrate: give exactly one of --local (measure this machine) or "
                            "--runs FILE (fit the presets to published runs)")
    if runs is not None:
        from meshplan.cli.calibrate_runs import calibrate_runs

        calibrate_runs(None if runs == "shipped" else runs, write, loso, json_out)
        return
    if threads < 1:
        raise MeshplanError(f"--threads-per-rank={threads}: must be >= 1")
    from meshplan.execute.calibrate import calibrate_local

    data = calibrate_local(out, threads=threads)
    if json_out:
        print_json({"path": str(out), "cluster": data})
        return
    acc, net = data["accelerator"], data["network"][0]
    peaks = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in acc["peak_flops"].items())
    console.print(f"wrote {out}: {acc['name']}, peak GFLOP/s {peaks}; memory "
                  f"{acc['memory_bandwidth'] / 1e9:.1f} GB/s; {net['name']} busbw "
                  f"{net['bandwidth'] / 1e9:.2f} GB/s, latency {net['latency'] * 1e6:.0f} us; "
                  f"kernel overhead {data['kernel_overhead'] * 1e6:.0f} us")


def register(app: typer.Typer) -> None:
    """Add `run` and `calibrate` to the meshplan app."""
    app.command("run")(_local_inputs(run))
    app.command("calibrate")(calibrate)
