"""Simulate a plan: the cost model's stage costs -> schedule -> timeline -> Estimate.

The pipeline part of the step comes from the timeline (unequal end stages, transfers on their
own stream, split backward, the gradient reduction on each rank's comm stream), and so does
its breakdown: the busiest rank's compute and exposed TP/CP/EP time (its actions' durations,
split as the cost model composed them), its stalls on pipeline transfers, and its idle time
until the pipeline drains (the bubble). The ZeRO traffic per micro-batch and the optimizer
step are added as the cost model gives them. Memory: the static part of each rank plus the
activation peak the timeline reached on that rank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from meshplan.cost.train.stages import PASS_TERMS, StageCosts, StageTimes
from meshplan.cost.train.step import CostArrays, utilisation
from meshplan.estimate import Estimate
from meshplan.schedules.ir import Schedule
from meshplan.schedules.registry import generate, schedule_spec
from meshplan.sim.engine import SimResult, simulate_schedule
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan


@dataclass(frozen=True)
class Simulation:
    estimate: Estimate
    result: SimResult
    schedule: Schedule
    costs: StageCosts


def transfer_stalls(schedule: Schedule, costs: StageCosts) -> list[float]:
    """Per rank, the time its sends stall its compute stream (`p2p_blocking` of each transfer
    to a stage on another rank), in rank order: every micro-batch's forward of stage s sends
    to stage s + 1 and its backward to stage s - 1."""
    where, S = schedule.stage_to_rank, schedule.num_stages
    per_send = costs.p2p_blocking * costs.p2p_time * schedule.num_microbatches
    stalls = dict.fromkeys(schedule.actions, 0.0)
    for s, r in enumerate(where):
        crossings = (s + 1 < S and where[s + 1] != r) + (s > 0 and where[s - 1] != r)
        stalls[r] += crossings * per_send
    return [stalls[r] for r in sorted(stalls)]


def timeline_breakdown(result: SimResult, stalls: list[float], stages: StageTimes, i: int,
                       plan: Plan, schedule: Schedule, pipeline: float) -> dict[str, float]:
    """compute, tp/cp/ep/pp comm and bubble of the pipeline, read off the busiest rank."""
    load = [b + s for b, s in zip(result.busy, stalls, strict=True)]
    r = int(np.argmax(load))
    terms = stages.rank_terms(i, r, plan.pp, schedule.stage_to_rank[-1])
    out = {t: schedule.num_microbatches * terms[t] for t in PASS_TERMS if t != "compute"}
    out["compute"] = result.busy[r] - sum(out.values())
    out["pp_comm"] = stalls[r]
    out["bubble"] = max(pipeline - load[r], 0.0)
    return out


def simulate_estimate(analytic: Estimate, costs: CostArrays, i: int, cluster: Cluster,
                      trace: bool = False) -> Simulation:
    """Refine the analytic estimate of plan i of `costs` with the event simulation of its
    schedule."""
    plan = analytic.plan
    m = analytic.num_microbatches
    schedule = generate(plan.schedule, plan.pp, m, plan.vpp)
    stages = costs.stages
    sc = stages.stage_costs(i, schedule.stage_to_rank, plan.pp)
    result = simulate_schedule(schedule, sc, trace=trace)
    # Zero Bubble's post-validated optimizer step lets iterations overlap (Qi et al. 2024
    # Sec. 4): the step is the longest rank span, not the makespan.
    staggered = schedule_spec(plan.schedule).staggered
    compute_end = max(result.compute_span) if staggered else result.compute_end
    with_grad = result.staggered_step if staggered else result.makespan
    t = timeline_breakdown(result, transfer_stalls(schedule, sc), stages, i, plan, schedule,
                           compute_end)
    # The gradient reduction runs on the simulated comm streams: what sticks out past the
    # compute replaces the analytic estimate of its exposed part.
    analytic_t = analytic.time_breakdown_s
    t["dp_comm"] = (with_grad - compute_end) + analytic_t["dp_comm"] \
        - float(stages.grad_reduce_exposed[i])
    t["optimizer"] = analytic_t["optimizer"]
    t = {k: t[k] for k in analytic_t}
    step = sum(t.values())
    per_rank = []
    for r, held in enumerate(result.peak_activation_bytes):
        per_rank.append(stages.rank_memory(i, r, plan.pp, held))
    totals = [sum(terms.values()) for terms in per_rank]
    worst = int(np.argmax(totals))
    context = analytic.memory_bytes["cuda_context"]
    mem = {**per_rank[worst], "cuda_context": context, "peak": totals[worst] + context}
    mem = {k: mem[k] for k in analytic.memory_bytes}
    peak = cluster.accelerator.rated_peak("bf16")
    sim_estimate = replace(
        analytic,
        step_time_s=step,
        tokens_per_s=analytic.tokens_per_s * analytic.step_time_s / step,
        mfu=float(utilisation(analytic.model_flops_per_step, step, plan.num_gpus, peak)),
        hfu=float(utilisation(analytic.hardware_flops_per_step, step, plan.num_gpus, peak)),
        time_breakdown_s=t,
        memory_bytes=mem,
        peak_memory_rank=worst,
        fits=mem["peak"] <= analytic.memory_capacity_bytes,
        source="simulated",
        extra={**analytic.extra,
               "simulated": {"pipeline_s": compute_end, "makespan_s": result.makespan,
                             "bubble_fraction": result.bubble_fraction,
                             "busy_s": result.busy, "idle_s": result.idle,
                             "peak_activation_gib": [x / 2**30
                                                     for x in result.peak_activation_bytes]},
               "analytic_step_time_s": analytic.step_time_s},
    )
    return Simulation(sim_estimate, result, schedule, sc)


def simulate_plan(model: Model, cluster: Cluster, job: Job, plan: Plan,
                  num_gpus: int | None = None, trace: bool = False) -> Simulation:
    """Cost one plan and simulate its schedule (a single-stage plan is simulated too)."""
    from meshplan.analytic import analytic_estimate

    analytic, costs = analytic_estimate(model, cluster, job, plan, num_gpus)
    return simulate_estimate(analytic, costs, 0, cluster, trace=trace)
