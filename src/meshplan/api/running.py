"""`run`: prove a plan on torch.distributed (launched with torchrun) and compare the
measurement with the prediction. torch is imported only once the inputs are checked."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshplan.api.predict import ClusterRef, ModelRef, estimate
from meshplan.errors import MeshplanError
from meshplan.estimate import GIB, Estimate
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef, load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.plan import Plan


@dataclass(frozen=True)
class RunResult:
    """Measured next to predicted; `error` = (predicted - measured) / measured step time."""

    measured: dict[str, Any]
    """step_time_s, peak_memory_gib, losses, step_times_s, peak_memory_gib_per_rank, device."""
    predicted: Estimate
    error: float

    def to_json(self) -> dict[str, Any]:
        return {"measured": self.measured, "predicted": self.predicted.to_json(),
                "error": self.error}


def signed_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured; NaN for a zero measurement."""
    return (predicted - measured) / measured if measured else float("nan")


def _check(job: Job, plan: Plan, steps: int, warmup: int, nproc: int | None, nnodes: int,
           optimizer: str, threads_per_rank: int) -> None:
    capacity = (nproc if nproc is not None else plan.num_gpus // max(nnodes, 1)) * nnodes
    if plan.num_gpus > capacity:
        raise MeshplanError(f"plan {plan.describe()} needs {plan.num_gpus} ranks; --nproc "
                            f"{nproc} x --nnodes {nnodes} gives {capacity}")
    if plan.num_gpus % nnodes:
        raise MeshplanError(f"--nnodes={nnodes}: must divide the plan's {plan.num_gpus} ranks")
    for name, value, low in (("--steps", steps, 1), ("--warmup", warmup, 0),
                             ("--threads-per-rank", threads_per_rank, 1)):
        if value < low:
            raise MeshplanError(f"{name}={value}: must be >= {low}")
    if warmup >= steps:
        raise MeshplanError(f"--warmup={warmup}: must be below --steps ({steps})")
    if optimizer not in ("adamw", "sgd"):
        raise MeshplanError(f"--optimizer={optimizer!r}: adamw or sgd")
    if job.precision == "fp8":
        raise MeshplanError("--precision=fp8: meshplan run computes in bf16 or fp16 "
                            "(torch autocast has no fp8)")


def _torchrun_args(nnodes: int, node_rank: int | None, rdzv_endpoint: str | None) -> list[str]:
    if nnodes <= 1:
        return []
    if rdzv_endpoint is None or node_rank is None:
        raise MeshplanError("--nnodes > 1 needs --rdzv-endpoint and --node-rank")
    return [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}"]


def run(model: ModelRef, cluster: ClusterRef, job: Job, plan: Plan, *, steps: int = 10,
        warmup: int = 3, nproc: int | None = None, nnodes: int = 1,
        node_rank: int | None = None, rdzv_endpoint: str | None = None, seed: int = 0,
        optimizer: str = "adamw", threads_per_rank: int = 1,
        calibration: CalibrationRef = CALIBRATION_FILE,
        notify: Callable[[str], None] | None = None) -> RunResult | None:
    """Train `plan` for `steps` steps on synthetic tokens (fixed `seed`), timing all but the
    first `warmup`, and compare with `estimate`.

    `nproc` ranks per node (default: what the plan needs) on `nnodes` nodes; more than one
    node needs `node_rank` and `rdzv_endpoint` (torchrun's flags). `notify` receives a
    warning before launch when ranks time-share the CPU. Returns None on a node that does
    not hold rank 0 (rank 0's node reports). Needs the torch extra.
    """
    model, cluster = load_model(model), load_cluster(cluster, calibration)
    _check(job, plan, steps, warmup, nproc, nnodes, optimizer, threads_per_rank)
    from meshplan.execute.launch import launch  # raises MeshplanError without torch
    from meshplan.execute.parallelize import check_supported
    from meshplan.execute.runtime import RunConfig, default_device_type

    check_supported(model, plan, default_device_type())
    predicted = estimate(model, cluster, job, plan)
    cfg = RunConfig(model=model.model_dump(mode="json"), plan=plan.model_dump(mode="json"),
                    global_batch_size=job.global_batch_size, seq_len=job.seq_len,
                    steps=steps, warmup=warmup, seed=seed, dtype=job.precision,
                    optimizer=optimizer, threads_per_rank=threads_per_rank)
    args = _torchrun_args(nnodes, node_rank, rdzv_endpoint)
    local_ranks = plan.num_gpus // nnodes
    cores = os.cpu_count() or 1
    if local_ranks * threads_per_rank > cores and notify is not None:
        notify(f"note: {local_ranks} rank(s) x {threads_per_rank} thread(s) on {cores} "
               "core(s): ranks time-share the CPU, so the measured step is slower than the "
               "prediction, which assumes each rank has its own device")
    result = launch(cfg, local_ranks, args)
    if result is None:
        return None
    measured = {"step_time_s": result["step_time_s"],
                "peak_memory_gib": result["peak_memory_bytes"] / GIB,
                "losses": result["losses"], "step_times_s": result["step_times_s"],
                "peak_memory_gib_per_rank": [b / GIB for b in
                                             result["peak_memory_bytes_per_rank"]],
                "device": result["device"]}
    return RunResult(measured, predicted,
                     signed_error(predicted.step_time_s, measured["step_time_s"]))
