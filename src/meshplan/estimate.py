"""The typed result of costing one training plan, and its JSON form (the CLI/API contract).

A pure result type: it imports no cost code (`meshplan.analytic` builds it from the cost
model's arrays, `meshplan.sim.plan` refines it with the simulated timeline)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from meshplan.specs.cluster import Cluster
from meshplan.specs.plan import Plan

GIB = 1024**3
MEMORY_BOUND_HEADROOM = 0.05
"""A plan with less free memory than this share of the GPU's is reported as memory-bound: a
few percent is what allocator fragmentation and workspaces take beyond the modelled peak."""
OVERHEAD_BINDS = 0.10
"""A non-compute term (bubble, an axis's exposed communication, optimizer) this share of the
step or more is what binds the plan; below it, compute does."""


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
    hardware_flops_per_step: float = 0.0
    """FLOPs the kernels execute, recomputation included (the HFU numerator)."""
    peak_memory_rank: int = 0
    """The pipeline rank whose memory is the peak; `memory_bytes` is its breakdown."""
    equivalent_plans: int = 1
    """Plans with the same degrees within 0.5 % of this one's step time that it stands for in
    a ranking (`search.rank.group_equivalents`)."""
    source: str = "analytic"
    """'analytic' (closed-form pipeline) or 'simulated' (event simulation of the schedule)."""
    calibration: dict[str, Any] | None = None
    """The calibration in use (`calibration_info`): file, the accelerator's key, whether a
    table of the file was applied, and the factors; None: not recorded."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_s / self.num_gpus

    @property
    def fit_reason(self) -> str:
        if self.fits:
            return "fits"
        peak, cap = self.memory_bytes["peak"] / GIB, self.memory_capacity_bytes / GIB
        terms = [k for k in self.memory_bytes if k != "peak"]
        top = max(terms, key=lambda k: self.memory_bytes[k])
        return f"needs {peak:.1f} GiB of {cap:.1f} GiB (largest: {top})"

    @property
    def headroom_bytes(self) -> float:
        """Free memory on the peak rank (negative when the plan does not fit)."""
        return self.memory_capacity_bytes - self.memory_bytes["peak"]

    @property
    def binding(self) -> str:
        """What limits the plan: 'memory' when almost full, else the largest non-compute term
        of the step if it takes at least OVERHEAD_BINDS of it, else 'compute'."""
        if self.headroom_bytes < MEMORY_BOUND_HEADROOM * self.memory_capacity_bytes:
            return "memory"
        others = {k: v for k, v in self.time_breakdown_s.items() if k != "compute"}
        term = max(others, key=lambda k: others[k])
        return term if others[term] >= OVERHEAD_BINDS * self.step_time_s else "compute"

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
            "peak_memory_rank": self.peak_memory_rank,
            "fits": self.fits,
            "fit_reason": self.fit_reason,
            "time_breakdown_s": dict(self.time_breakdown_s),
            "axis_tiers": dict(self.axis_tiers),
            "source": self.source,
            "binds": self.binding,
            "headroom_gib": self.headroom_bytes / GIB,
            "equivalent_plans": self.equivalent_plans,
            **({} if self.calibration is None else {"calibration": self.calibration}),
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


def with_calibration_info(e: Estimate, info: dict[str, Any]) -> Estimate:
    """The estimate naming the calibration it was costed with (`calibration_info`)."""
    return replace(e, calibration=info)


def calibration_info(cluster: Cluster) -> dict[str, Any]:
    """The calibration a cluster was loaded with: `file` ("shipped", "none", a path; "" for a
    cluster built directly), `key` (the table its accelerator reads: its silicon), `table`
    (the table applied, None when the file has none for it) and the factors in use."""
    cal = cluster.calibration
    return {"file": cal.file, "key": cluster.accelerator.calibration_key, "table": cal.key,
            "factors": {"gemm_scale": cal.gemm_scale, "attention_scale": cal.attention_scale,
                        "kernel_overhead": cluster.kernel_overhead,
                        "pp_overlap": cluster.overlap.pp}}


def calibration_line(info: dict[str, Any]) -> str:
    """One line naming the calibration in use, for the table output."""
    f, key = info["factors"], info["key"]
    where = {"shipped": "the shipped presets/calibration.toml", "": "the cluster as given"
             }.get(info["file"], info["file"])
    if info["table"] is None:
        why = ("--calibration none" if info["file"] == "none"
               else f"no [{key}] table in {where}")
        return (f"calibration: none for {key} ({why}): the cluster's own efficiency curves, "
                f"gemm x{f['gemm_scale']:.3g}, attention x{f['attention_scale']:.3g}")
    return (f"calibration: [{info['table']}] from {where}: gemm x{f['gemm_scale']:.3g}, "
            f"attention x{f['attention_scale']:.3g}, kernel overhead "
            f"{f['kernel_overhead'] * 1e6:.3g} us/layer/pass, pp overlap {f['pp_overlap']:.2f}")
