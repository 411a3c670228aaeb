"""`run`: prove a plan on torch.distributed (launched with torchrun) and compare the
measurement with the prediction. torch is imported only once the inputs are checked."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshplan.api.predict import ClusterRef, ModelRef, estimate
from meshplan.errors import MeshplanError
from meshplan.estimate import GIB, Estimate
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef, load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.plan import Plan


@dataclass(frozen=True)
class RunResult:
    """Measured next to predicted; `error` = (predicted - measured) / measured step time."""

    measured: dict[str, Any]
    """step_time_s, peak_memory_gib, losses, step_times_s, peak_memory_gib_per_rank,
    peak_memory_measures (what the peak is: reserved on a GPU, max RSS on the CPU), device."""
    predicted: Estimate
    error: float

    @property
    def memory_error(self) -> float:
        """(predicted - measured) / measured peak memory (the busiest rank's; on a GPU the
        allocator's reserved peak, which is what meshplan predicts)."""
        return signed_error(self.predicted.memory_bytes["peak"] / GIB,
                            self.measured["peak_memory_gib"])

    def to_json(self) -> dict[str, Any]:
        return {"measured": self.measured, "predicted": self.predicted.to_json(),
                "error": self.error, "memory_error": self.memory_error}


def signed_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured; NaN for a zero measurement."""
    return (predicted - measured) / measured if measured else float("nan")


def _check(job: Job, plan: Plan, steps: int, warmup: int, nproc: int | None, nnodes: int,
           optimizer: str, threads_per_rank: int) -> None:
    if nnodes < 1:
        raise MeshplanError(f"--nnodes={nnodes}: must be >= 1")
    if nproc is not None and nproc < 1:
        raise MeshplanError(f"--nproc={nproc}: must be >= 1")
    if plan.num_gpus % nnodes:
        raise MeshplanError(f"--nnodes={nnodes}: must divide the plan's {plan.num_gpus} ranks")
    capacity = (nproc if nproc is not None else plan.num_gpus // nnodes) * nnodes
    if plan.num_gpus > capacity:
        raise MeshplanError(f"plan {plan.describe()} needs {plan.num_gpus} ranks; --nproc "
                            f"{nproc} x --nnodes {nnodes} gives {capacity}")
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


LOCAL_SOURCE = re.compile(r"meshplan calibrate --local on (?:host=)?(?P<host>[^\s(]+)"
                          r"(?:.*?\bdevice=(?P<device>\w+))?")
"""How `calibrate --local` records, in the cluster's `source`, the host (and device) it
measured: `meshplan calibrate --local on host=NAME (... device=cpu ...)`; files written
before the device was recorded read `... --local on NAME (...)`."""


def measured_host(cluster: Cluster) -> tuple[str, str | None] | None:
    """(host, device type or None) a `calibrate --local` cluster file was measured on, or
    None for any other cluster (a preset, a hand-written file)."""
    match = LOCAL_SOURCE.search(cluster.source)
    return (match["host"], match["device"]) if match else None


def this_host() -> str:
    return os.uname().nodename


def check_machine(cluster: Cluster, compare_to: str | None, device_type: str,
                  notify: Callable[[str], None] | None = None) -> None:
    """A run is compared with the prediction for the machine it runs on: a cluster measured
    here by `calibrate --local` (this host, this device type). Any other cluster is refused
    unless `compare_to` names it, on purpose (then `notify` says what is compared)."""
    measured = measured_host(cluster)
    here = this_host()
    if measured is not None and measured[0] == here and measured[1] in (None, device_type):
        if compare_to is not None and compare_to != cluster.name:
            raise MeshplanError(f"--compare-to={compare_to!r}: the cluster is {cluster.name!r} "
                                f"(this machine, measured by calibrate --local); drop the flag")
        return
    if measured is not None:
        what = (f"measured on host {measured[0]!r}" + (f" ({measured[1]})" if measured[1]
                                                       else ""))
    else:
        what = f"{cluster.accelerator.name} x {cluster.gpus_per_node} per node"
    if compare_to != cluster.name:
        raise MeshplanError(
            f"--cluster={cluster.name!r} ({what}) is not this machine ({here}, {device_type}): "
            "the run would be compared with another machine's prediction; run `meshplan "
            f"calibrate --local` here, or pass --compare-to {cluster.name} to compare on "
            "purpose")
    if notify is not None:
        notify(f"note: comparing this machine ({here}, {device_type}) with the prediction for "
               f"{cluster.name!r} ({what}), as --compare-to asks")


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
        calibration: CalibrationRef = CALIBRATION_FILE, compare_to: str | None = None,
        notify: Callable[[str], None] | None = None) -> RunResult | None:
    """Train `plan` for `steps` steps on synthetic tokens (fixed `seed`), timing all but the
    first `warmup`, and compare with `estimate`.

    `nproc` ranks per node (default: what the plan needs) on `nnodes` nodes; more than one
    node needs `node_rank` and `rdzv_endpoint` (torchrun's flags). `notify` receives a
    warning before launch when ranks time-share the CPU. Returns None on a node that does
    not hold rank 0 (rank 0's node reports). Needs the torch extra.

    The cluster must be this machine (a `calibrate --local` file measured on this host and
    device type) unless `compare_to` names the cluster: comparing a CPU run with an H100
    prediction is refused, not reported as -99.9 %. Every check runs before the launch; a
    SIGINT / SIGTERM during the run stops every rank and raises
    `meshplan.execute.launch.Interrupted` with the steps finished so far.
    """
    model, cluster = load_model(model), load_cluster(cluster, calibration)
    _check(job, plan, steps, warmup, nproc, nnodes, optimizer, threads_per_rank)
    args = _torchrun_args(nnodes, node_rank, rdzv_endpoint)
    from meshplan.execute.launch import launch  # raises MeshplanError without torch
    from meshplan.execute.parallelize import check_supported
    from meshplan.execute.runtime import PEAK_MEMORY_KIND, RunConfig, default_device_type

    device_type = default_device_type()
    check_supported(model, plan, device_type)
    check_machine(cluster, compare_to, device_type, notify)
    predicted = estimate(model, cluster, job, plan)
    cfg = RunConfig(model=model.model_dump(mode="json"), plan=plan.model_dump(mode="json"),
                    global_batch_size=job.global_batch_size, seq_len=job.seq_len,
                    steps=steps, warmup=warmup, seed=seed, dtype=job.precision,
                    optimizer=optimizer, threads_per_rank=threads_per_rank)
    local_ranks = plan.num_gpus // nnodes
    cores = os.cpu_count() or 1
    oversubscribed = device_type == "cpu" and local_ranks * threads_per_rank > cores
    if oversubscribed and notify is not None:
        notify(f"warning: {local_ranks} rank(s) x {threads_per_rank} thread(s) on {cores} "
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
                "peak_memory_measures": PEAK_MEMORY_KIND.get(result["device"], "?"),
                "device": result["device"], "oversubscribed": oversubscribed}
    return RunResult(measured, predicted,
                     signed_error(predicted.step_time_s, measured["step_time_s"]))
