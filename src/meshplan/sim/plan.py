"""Simulate a plan: cost model durations per stage -> schedule -> timeline -> Estimate.

The closed-form pipeline term of the analytic estimate is replaced by the simulated makespan
(unequal end stages, transfers on their own stream, split backward); data-parallel traffic and
the optimizer step are added as in the analytic model. Memory: the static part of each rank
plus the activation peak the timeline reached on that rank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from meshplan.cost.step import CostArrays
from meshplan.estimate import Estimate
from meshplan.schedules.ir import Schedule
from meshplan.schedules.registry import generate
from meshplan.sim.engine import SimResult, StageCosts, simulate_schedule
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan

STAGGERED = ("zb-h1", "zb-h2", "zb-v")
"""Schedules whose reference implementation overlaps consecutive iterations by validating the
optimizer step after the fact (Zero Bubble, Qi et al. 2024, Sec. 4): the step is the longest
rank span, not the makespan."""


@dataclass(frozen=True)
class Simulation:
    estimate: Estimate
    result: SimResult
    schedule: Schedule
    costs: StageCosts


def stage_costs(costs: CostArrays, i: int, plan: Plan, stage_rank: tuple[int, ...],
                cluster: Cluster) -> StageCosts:
    """Per-stage F, I, W and activation bytes for plan i of a costed batch."""
    st, mem = costs.stage_times, costs.memory
    v = plan.virtual_stages

    def col(key: str) -> float:
        return float(st[key][i])

    # Per stage: the evenly split rank's work per chunk, scaled by its rank's share of layers
    # (uneven splits give the first and last ranks their own counts).
    by_rank = {0: col("scale_first"), plan.pp - 1: col("scale_last")}
    scale = [by_rank.get(r, col("scale_mid")) for r in stage_rank]
    unit = (col("unit_f") / v, col("unit_i") / v, col("unit_w") / v)
    act = float(mem["activations_per_microbatch"][i]) / v
    fw = [unit[0] * k for k in scale]
    bi = [unit[1] * k for k in scale]
    bw = [unit[2] * k for k in scale]
    acts = [act * k for k in scale]
    fw[0] += col("embedding_f")
    bi[0] += col("embedding_i")
    bw[0] += col("embedding_w")
    fw[-1] += col("head_f")
    bi[-1] += col("head_i")
    bw[-1] += col("head_w")
    acts[-1] += float(mem["head_activations"][i])
    return StageCosts(tuple(fw), tuple(bi), tuple(bw), tuple(acts), p2p_time=col("p2p"),
                      p2p_blocking=1.0 - cluster.overlap.pp, grad_reduce=col("dp_grad"),
                      grad_reduce_overlap=cluster.overlap.dp if plan.overlap_grad_reduce else 0.0)


def simulate_estimate(analytic: Estimate, costs: CostArrays, i: int, cluster: Cluster,
                      trace: bool = False) -> Simulation:
    """Refine an analytic estimate of plan i with the event simulation of its schedule."""
    plan = analytic.plan
    m = analytic.num_microbatches
    schedule = generate(plan.schedule, plan.pp, m, plan.virtual_stages)
    sc = stage_costs(costs, i, plan, schedule.stage_to_rank, cluster)
    result = simulate_schedule(schedule, sc, trace=trace)
    pipeline = result.staggered_step if plan.schedule in STAGGERED else result.makespan
    t = dict(analytic.time_breakdown_s)
    closed_pipe = sum(t[k] for k in ("compute", "tp_comm", "cp_comm", "ep_comm", "pp_comm",
                                     "bubble"))
    busy_part = closed_pipe - t["bubble"]
    # The gradient reduction now runs on the simulated comm streams: what sticks out past the
    # compute replaces the analytic estimate of its exposed part.
    compute_end = max(result.compute_span) if plan.schedule in STAGGERED else result.compute_end
    t["dp_comm"] += (pipeline - compute_end) - float(costs.stage_times["dp_grad_exposed"][i])
    pipeline = compute_end
    # Transfers now run on their own stream: the simulated bubble absorbs what they expose.
    t["bubble"] = max(pipeline - busy_part, 0.0)
    t["pp_comm"] = max(t["pp_comm"] + min(pipeline - busy_part, 0.0), 0.0)
    step = sum(t.values())
    mem = dict(analytic.memory_bytes)
    static = [float(costs.memory["static_last"][i]) if r == plan.pp - 1 and plan.pp > 1
              else float(costs.memory["static_first"][i]) for r in range(plan.pp)]
    per_rank = [s + a for s, a in zip(static, result.peak_activation_bytes, strict=True)]
    worst = int(np.argmax(per_rank))
    mem["activations"] = result.peak_activation_bytes[worst] + (
        mem["activations"] - float(costs.memory["activations"][i]))
    reserved = mem["reserved"]
    mem["peak"] = per_rank[worst] + reserved
    sim_estimate = replace(
        analytic,
        step_time_s=step,
        tokens_per_s=analytic.tokens_per_s * analytic.step_time_s / step,
        mfu=analytic.mfu * analytic.step_time_s / step,
        hfu=analytic.hfu * analytic.step_time_s / step,
        time_breakdown_s=t,
        memory_bytes=mem,
        fits=mem["peak"] <= analytic.memory_capacity_bytes,
        source="simulated",
        extra={**analytic.extra,
               "simulated": {"pipeline_s": pipeline, "makespan_s": result.makespan,
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
    from meshplan.estimate import analytic_estimate

    analytic, costs = analytic_estimate(model, cluster, job, plan, num_gpus)
    return simulate_estimate(analytic, costs, 0, cluster, trace=trace)
