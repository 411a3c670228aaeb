"""Executor probes: what `meshplan run` actually does, measured and fitted into the cluster.

The microbenchmarks of `kernels.py` and `collectives.py` time kernels and collectives alone.
A run does more: DTensor dispatches every op of a tensor-parallel layer and issues its
sequence-parallel all-gathers and reduce-scatters from Python, FSDP2 gathers and
reduce-scatters each block's weights, torch's pipeline runtime sends and receives between
stages, and on a CPU every gloo collective shares the cores with the other ranks' compute.
The probes run those executor paths themselves (the debug model, bf16, on a smaller batch
than `benchmarks/run_vs_predict.py` uses, so that benchmark stays a held-out check):

    single       one rank                  -> kernel_overhead (per layer and pass)
    dp2 zero1    FSDP2, gradients once     \
    fsdp2 zero3  FSDP2 gathers per block    |-> network latency and bandwidth (the one
    tp2 sp       DTensor TP + SP           |   loopback tier every group lands on; the bus
                                           |   efficiency from 1 MiB up gets its own factor)
    pp2 1f1b     pipelining send / recv    /

each repeated (`repeats`, interleaved so load drifts hit every probe alike) with the median
kept and the spread reported (a warning above 15 %: the machine is busy and the file will
move with it). The fit changes data only, the cost model's existing fields: it minimises the
squared log error of `meshplan.api.estimate` against the probes by coordinate search, starting
from the microbenchmark figures. Peak memory: `reserved_memory_bytes` becomes what the executor
reports (max RSS) beyond the model's own bytes as the cost model counts them, the median over
the probes that ran first in their launch (later ones see a running maximum).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from meshplan.execute.launch import launch
from meshplan.execute.runtime import RunConfig

PROBE_PLANS: dict[str, dict[str, Any]] = {
    "single": {},
    "dp2 zero1": {"dp": 2, "zero_stage": 1},
    "fsdp2 zero3": {"dp": 2, "zero_stage": 3},
    "tp2 sp": {"tp": 2, "sequence_parallel": True},
    "pp2 1f1b": {"pp": 2, "micro_batch_size": 1, "schedule": "1f1b"},
}
PROBE_BATCH, PROBE_SEQ_LEN, PROBE_STEPS, PROBE_WARMUP = 4, 128, 6, 2
SPREAD_WARN = 0.15
"""Repeats of one probe disagreeing by more than this (max - min over the median) warn."""


def probe_job() -> Any:
    from meshplan.specs.job import Job

    return Job(global_batch_size=PROBE_BATCH, seq_len=PROBE_SEQ_LEN, precision="bf16")


def _plans(max_ranks: int) -> dict[str, Any]:
    from meshplan.specs.plan import Plan

    plans = {name: Plan(**kw) for name, kw in PROBE_PLANS.items()}
    return {k: p for k, p in plans.items() if p.num_gpus <= max_ranks}


def run_probes(max_ranks: int, threads: int = 1, repeats: int = 3,
               timeout_s: float = 600.0) -> dict[str, dict[str, Any]]:
    """name -> {"plan", "times_s" (median step of each repeat), "step_time_s" (their median),
    "spread", "memory_bytes" (None where a running maximum would mislead)}."""
    from meshplan.specs.io import load_model

    model = load_model("debug").model_dump(mode="json")
    plans = _plans(max_ranks)
    out: dict[str, dict[str, Any]] = {}
    for world in sorted({p.num_gpus for p in plans.values()}):
        names = [k for k, p in plans.items() if p.num_gpus == world]
        order = [k for _ in range(repeats) for k in names]
        cfgs = [RunConfig(model=model, plan=plans[k].model_dump(mode="json"),
                          global_batch_size=PROBE_BATCH, seq_len=PROBE_SEQ_LEN,
                          steps=PROBE_STEPS, warmup=PROBE_WARMUP, dtype="bf16",
                          threads_per_rank=threads) for k in order]
        results = launch(cfgs, world, timeout_s=timeout_s)
        for i, (name, res) in enumerate(zip(order, results, strict=True)):
            row = out.setdefault(name, {"plan": plans[name], "times_s": [],
                                        "memory_bytes": None})
            row["times_s"].append(res["step_time_s"])
            if i == 0:
                row["memory_bytes"] = res["peak_memory_bytes"]
    for row in out.values():
        t = row["times_s"]
        row["step_time_s"] = statistics.median(t)
        row["spread"] = (max(t) - min(t)) / row["step_time_s"]
    return out


LARGE_MESSAGE = 1 << 20
"""Bytes from which the bus-efficiency curve gets its own fitted factor: data-parallel and
FSDP2 traffic (whole blocks' weights and gradients) against the tens of KiB of TP and PP."""


def _with(data: dict[str, Any], fitted: Sequence[float], base: dict[str, Any]) -> dict[str, Any]:
    """The cluster data with (kernel overhead, latency, bandwidth scale, large-message bus
    efficiency scale) applied to `base`, the measured network tier."""
    overhead, latency, bw_scale, large_scale = fitted
    curve = base["bus_efficiency"]
    ys = [round(min(1.0, max(1e-4, y * (large_scale if x >= LARGE_MESSAGE else 1.0))), 4)
          for x, y in zip(curve["x"], curve["y"], strict=True)]
    net = dict(base, latency=float(f"{latency:.4g}"),
               bandwidth=float(f"{base['bandwidth'] * bw_scale:.4g}"),
               bus_efficiency={"x": list(curve["x"]), "y": ys})
    return {**data, "kernel_overhead": float(f"{overhead:.4g}"),
            "network": [net, *data["network"][1:]]}


def predict(data: dict[str, Any], probes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """name -> the cost model's Estimate for each probe on the cluster `data`."""
    from meshplan.api import estimate
    from meshplan.specs.cluster import Cluster
    from meshplan.specs.io import load_model

    cluster, model, job = Cluster.model_validate(data), load_model("debug"), probe_job()
    return {k: estimate(model, cluster, job, r["plan"]) for k, r in probes.items()}


def _loss(data: dict[str, Any], probes: dict[str, dict[str, Any]]) -> float:
    est = predict(data, probes)
    return sum(math.log(est[k].step_time_s / r["step_time_s"]) ** 2 for k, r in probes.items())


def fit_to_probes(data: dict[str, Any], probes: dict[str, dict[str, Any]],
                  rounds: int = 7) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster `data` with kernel_overhead, the first tier's latency, bandwidth and
    large-message bus efficiency, and reserved_memory_bytes fitted to the probes; and a
    report (errors before / after)."""
    base = data["network"][0]
    before = {k: e.step_time_s for k, e in predict(data, probes).items()}
    x = [max(data["kernel_overhead"], 1e-6), max(base["latency"], 1e-6), 1.0, 1.0]
    multi = any(r["plan"].num_gpus > 1 for r in probes.values())
    free = [0, 1, 2, 3] if multi else [0]
    best = _loss(_with(data, x, base), probes)
    for r in range(rounds):
        span = 4.0 ** (0.6 ** r)  # search x / span .. x * span, narrowing
        for i in free:
            grid = [x[i] * span ** (j / 6.0) for j in range(-6, 7)]
            if i >= 2:  # bandwidth at most 4x the microbenchmark's; efficiency <= 1
                grid = [min(g, 4.0 if i == 2 else 1.0) for g in grid]
            for g in grid:
                trial = list(x)
                trial[i] = g
                loss = _loss(_with(data, trial, base), probes)
                if loss < best:
                    best, x = loss, trial
    fitted = _with(data, x, base)
    est = predict(fitted, probes)
    reserved = fitted["accelerator"]["reserved_memory_bytes"]
    extra = [r["memory_bytes"] - (est[k].memory_bytes["peak"] - reserved)
             for k, r in probes.items() if r["memory_bytes"] is not None]
    if extra:
        fitted["accelerator"] = dict(fitted["accelerator"],
                                     reserved_memory_bytes=float(f"{statistics.median(extra):.4g}"))
    est = predict(fitted, probes)
    report = {k: {"measured_s": r["step_time_s"], "spread": r["spread"],
                  "before_s": before[k], "after_s": est[k].step_time_s,
                  "measured_memory_bytes": r["memory_bytes"],
                  "predicted_memory_bytes": est[k].memory_bytes["peak"]}
              for k, r in probes.items()}
    return fitted, report


def report_lines(report: dict[str, Any]) -> list[str]:
    """The probe table as TOML comments."""
    lines = [f"# executor probes (debug model, bf16, batch {PROBE_BATCH} x {PROBE_SEQ_LEN}, "
             "median of repeats): measured / microbenchmarks only / fitted, spread"]
    for k, r in report.items():
        lines.append(f"#   {k:12} {r['measured_s'] * 1e3:8.1f} ms / {r['before_s'] * 1e3:8.1f}"
                     f" / {r['after_s'] * 1e3:8.1f} ms, spread {r['spread']:.0%}")
    return lines


def load_warnings(report: dict[str, Any], notify: Callable[[str], None] | None) -> list[str]:
    """One line per probe whose repeats disagree by more than SPREAD_WARN."""
    noisy = {k: r["spread"] for k, r in report.items() if r["spread"] > SPREAD_WARN}
    lines = []
    if noisy:
        lines.append("warning: calibration repeats disagree by more than "
                     f"{SPREAD_WARN:.0%} (" + ", ".join(f"{k} {s:.0%}" for k, s in noisy.items())
                     + "): the machine is busy; the figures will move with its load")
    if notify is not None:
        for line in lines:
            notify(line)
    return lines
