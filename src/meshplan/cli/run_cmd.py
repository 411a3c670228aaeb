"""`meshplan run`: prove a plan on torch.distributed (the workflow is `meshplan.api.run`).

torch is imported only by the API once the inputs are checked (through `meshplan.execute`), so
the CLI starts without it and a missing extra is the one-line error of `meshplan.execute`.
`run` takes the shared flags of `with_inputs`, with defaults sized for one machine (the debug
model, a calibrated `meshplan-local.toml`, a batch of 8 x 128) instead of the big-cluster
example defaults; `--num-gpus` defaults to the ranks the plan flags name (or `--nproc`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from meshplan import api
from meshplan.api.running import signed_error
from meshplan.cli.options import COMMON, Inputs, with_inputs
from meshplan.cli.render import console, print_json
from meshplan.errors import MeshplanError
from meshplan.output import envelope

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


def _report(inputs: Inputs, result: api.RunResult, nodes: int) -> None:
    from rich.table import Table

    plan, measured, predicted = inputs.plan(), result.measured, result.predicted.to_json()
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
                  f"{signed_error(t_p, t_m):+.1%}")
    table.add_row("peak memory", f"{m_m:.2f} GiB", f"{m_p:.2f} GiB",
                  f"{result.memory_error:+.1%}")
    console.print(table)
    console.print(f"measured peak memory: {measured['peak_memory_measures']}")
    console.print("loss: " + " ".join(f"{x:.4f}" for x in measured["losses"]))


def _report_interrupted(exc: Any, warmup: int, json_out: bool, inputs: dict[str, Any]
                        ) -> None:
    """What rank 0 finished before SIGINT / SIGTERM: steps, their times and losses."""
    import statistics

    rows = exc.progress
    timed = [r["time_s"] for r in rows[warmup:]] or [r["time_s"] for r in rows]
    so_far: dict[str, Any] = {"steps_done": len(rows), "step_times_s": [r["time_s"] for r in rows],
              "losses": [r["loss"] for r in rows],
              "step_time_s": statistics.median(timed) if timed else None}
    name = str(exc).split()[-1]
    if json_out:
        print_json(envelope("run", inputs, {"interrupted": name, "measured_so_far": so_far}))
    msg = f"interrupted by {name} after {len(rows)} step(s); every rank stopped"
    if timed:
        msg += (f"; median step so far {so_far['step_time_s'] * 1e3:.1f} ms (rank 0), loss "
                + " ".join(f"{x:.4f}" for x in so_far["losses"]))
    print(msg, file=sys.stderr)


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
        compare_to: Annotated[str | None, typer.Option(
            "--compare-to", help="Compare with the prediction for this --cluster although it "
                                 "is not this machine (its name)")] = None,
        json_out: JsonFlag = False) -> None:
    """Run a plan on torch.distributed, measure it and compare with the prediction."""
    echo = {**inputs.to_json(), "steps": steps, "warmup": warmup, "nproc": nproc,
            "nnodes": nnodes, "seed": seed, "optimizer": optimizer, "threads_per_rank": threads,
            "compare_to": compare_to}
    try:
        result = api.run(inputs.model, inputs.cluster, inputs.job, inputs.plan(), steps=steps,
                         warmup=warmup, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                         rdzv_endpoint=rdzv_endpoint, seed=seed, optimizer=optimizer,
                         threads_per_rank=threads, compare_to=compare_to,
                         notify=lambda msg: print(msg, file=sys.stderr))
    except MeshplanError:  # user errors: one line, exit 2 (cli.main)
        raise
    except Exception as exc:  # the launch's Interrupted (torch is imported by then)
        from meshplan.execute.launch import Interrupted

        if not isinstance(exc, Interrupted):
            raise
        _report_interrupted(exc, warmup, json_out, echo)
        # sys.exit, not typer.Exit: under standalone_mode=False click returns an Exit's code
        # from app() instead of raising it, and cli.main would exit 0
        sys.exit(exc.exit_code)
    if result is None:  # a node without rank 0: rank 0's node reports
        return
    if json_out:
        print_json(envelope("run", echo, result.to_json()))
        return
    _report(inputs, result, nnodes)


def register(app: typer.Typer) -> None:
    """Add `run` to the meshplan app."""
    app.command("run")(_local_inputs(run))
