"""The typed result of costing one plan, and its JSON form (the CLI/API contract)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from meshplan.cost.layout import axis_tier_index
from meshplan.cost.step import MEMORY_TERMS, TIME_TERMS, CostArrays, evaluate
from meshplan.errors import MeshplanError
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan, PlanArrays
from meshplan.specs.rules import check_plan

GIB = 1024**3


@dataclass(frozen=True)
class Estimate:
    """Predicted step time, throughput, utilisation and memory of one plan on one GPU."""

    plan: Plan
    num_gpus: int
    step_time_s: float
    tokens_per_s: float
    mfu: float
    hfu: float
    num_microbatches: int
    time_breakdown_s: dict[str, float]
    """compute, exposed communication per axis, bubble, optimizer: they sum to step_time_s."""
    memory_bytes: dict[str, float]
    """weights, gradients, optimizer, activations, buffers, reserved and peak (peak rank)."""
    memory_capacity_bytes: float
    fits: bool
    axis_tiers: dict[str, str]
    """Network tier each mesh axis's collectives run on."""
    model_flops_per_step: float
    source: str = "analytic"
    """'analytic' (closed-form pipeline) or 'simulated' (event simulation of the schedule)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_s / self.num_gpus

    @property
    def fit_reason(self) -> str:
        if self.fits:
            return "fits"
        peak, cap = self.memory_bytes["peak"] / GIB, self.memory_capacity_bytes / GIB
        top = max(MEMORY_TERMS, key=lambda k: self.memory_bytes[k])
        return f"needs {peak:.1f} GiB of {cap:.1f} GiB (largest: {top})"

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.model_dump(mode="json"),
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "num_microbatches": self.num_microbatches,
            "memory_gib": {k: v / GIB for k, v in self.memory_bytes.items()},
            "fits": self.fits,
            "fit_reason": self.fit_reason,
            "time_breakdown_s": dict(self.time_breakdown_s),
            "axis_tiers": dict(self.axis_tiers),
            "source": self.source,
            **self.extra,
        }


def with_budget(e: Estimate, token_budget: float | None) -> Estimate:
    """Add time-to-train and GPU-hours for a token budget: steps = budget / tokens per step."""
    if token_budget is None:
        return e
    seconds = token_budget / e.tokens_per_s
    budget = {"token_budget": token_budget, "time_to_train_days": seconds / 86400,
              "gpu_hours": seconds * e.num_gpus / 3600}
    return replace(e, extra={**e.extra, **budget})


def estimate_from_arrays(costs: CostArrays, i: int, plan: Plan, capacity: float,
                         axis_tiers: dict[str, str]) -> Estimate:
    """Pick entry i of a vectorised cost result as an Estimate."""
    return Estimate(
        plan=plan,
        num_gpus=plan.num_gpus,
        step_time_s=float(costs.step_time[i]),
        tokens_per_s=float(costs.tokens_per_s[i]),
        mfu=float(costs.mfu[i]),
        hfu=float(costs.hfu[i]),
        num_microbatches=int(costs.num_microbatches[i]),
        time_breakdown_s={k: float(costs.time[k][i]) for k in TIME_TERMS},
        memory_bytes={k: float(costs.memory[k][i]) for k in (*MEMORY_TERMS, "peak")},
        memory_capacity_bytes=capacity,
        fits=bool(costs.fits[i]),
        axis_tiers=axis_tiers,
        model_flops_per_step=costs.model_flops,
    )


AXIS_GROUPS = {"tp": ("tp",), "cp": ("cp",), "dp": ("cp", "dp"), "pp": ("pp",)}


def axis_tiers(cluster: Cluster, P: PlanArrays, i: int = 0) -> dict[str, str]:
    """Network tier each mesh axis lands on for plan i (only axes of degree > 1)."""
    out = {}
    sizes = {"tp": P.tp, "cp": P.cp, "dp": P.dp * P.cp, "pp": P.pp}
    for axis, axes in AXIS_GROUPS.items():
        if sizes[axis][i] > 1:
            out[axis] = cluster.network[int(axis_tier_index(cluster, axes, P)[i])].name
    if P.ep[i] > 1:
        idx = axis_tier_index(cluster, ("ep",), P, expert=True)
        out["ep"] = cluster.network[int(idx[i])].name
    return out


def analytic_estimate(model: Model, cluster: Cluster, job: Job, plan: Plan,
                      num_gpus: int | None = None) -> tuple[Estimate, CostArrays]:
    """Check one plan and cost it with the closed-form pipeline; also return the raw arrays
    (the simulator refines the estimate from them)."""
    P = PlanArrays.from_plans([plan])
    check_plan(model, job, num_gpus or plan.num_gpus, P)
    if cluster.num_gpus is not None and plan.num_gpus > cluster.num_gpus:
        raise MeshplanError(
            f"num_gpus={plan.num_gpus}: cluster {cluster.name} has only {cluster.num_gpus}")
    costs = evaluate(model, cluster, job, P)
    est = estimate_from_arrays(costs, 0, plan, cluster.accelerator.memory_bytes,
                               axis_tiers(cluster, P))
    return est, costs
