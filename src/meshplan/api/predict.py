"""Predict one plan: `estimate` (analytic, pipeline simulated) and `simulate` (the event
simulation itself, with its timeline)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from meshplan.analytic import analytic_estimate
from meshplan.estimate import Estimate, calibration_info, with_budget, with_calibration_info
from meshplan.sim.plan import Simulation, simulate_estimate, simulate_plan
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef, load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan
from meshplan.specs.rules import check_inputs

ModelRef = str | Path | Model
ClusterRef = str | Path | Cluster

__all__ = ["ClusterRef", "ModelRef", "Simulation", "estimate", "simulate"]


def estimate(model: ModelRef, cluster: ClusterRef, job: Job, plan: Plan,
             num_gpus: int | None = None, simulate: bool = True,
             calibration: CalibrationRef = CALIBRATION_FILE) -> Estimate:
    """Predict step time, throughput and memory of one plan (raises MeshplanError if illegal).

    `num_gpus`, when given, must equal the plan's dp * tp * pp * cp. With `simulate` (the
    default) the pipeline part comes from the event simulation of the plan's schedule;
    otherwise from the closed form.
    """
    model, cluster = load_model(model), load_cluster(cluster, calibration)
    check_inputs(model, cluster, job, num_gpus or plan.num_gpus)
    analytic, costs = analytic_estimate(model, cluster, job, plan, num_gpus)
    if simulate and plan.pp > 1:
        analytic = simulate_estimate(analytic, costs, 0, cluster).estimate
    return with_calibration_info(with_budget(analytic, job.token_budget),
                                 calibration_info(cluster))


def simulate(model: ModelRef, cluster: ClusterRef, job: Job, plan: Plan,
             num_gpus: int | None = None, trace: bool = False,
             calibration: CalibrationRef = CALIBRATION_FILE) -> Simulation:
    """Simulate the plan's schedule event by event (a single-stage plan too).

    The `Simulation` holds the simulated `estimate`, the engine's `result` (per-rank
    timeline, with the events kept for `meshplan.sim.trace.write_trace` when `trace`), the
    `schedule` and the per-stage `costs`.
    """
    model, cluster = load_model(model), load_cluster(cluster, calibration)
    check_inputs(model, cluster, job, num_gpus or plan.num_gpus)
    sim = simulate_plan(model, cluster, job, plan, num_gpus, trace=trace)
    est = with_budget(sim.estimate, job.token_budget)
    return replace(sim, estimate=with_calibration_info(est, calibration_info(cluster)))
