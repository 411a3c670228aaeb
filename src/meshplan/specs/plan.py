"""Plan: how one job is split across the cluster.

`Plan` is one layout (typed, validated); `PlanArrays` is many layouts as a struct of numpy
arrays, which is what the vectorised cost model consumes. `estimate` turns one `Plan` into a
one-element `PlanArrays`, so a single plan and a whole search share one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from meshplan.schedules.registry import SCHEDULE_NAMES, schedule_code, schedule_spec
from meshplan.specs._base import Spec

AXES = ("tp", "cp", "ep", "dp", "pp")
"""Mesh axis names. `ep` is carved out of dp x cp for the expert layers (as Megatron-Core does)."""

DEFAULT_AXIS_ORDER: tuple[str, ...] = ("tp", "cp", "ep", "dp", "pp")
"""Innermost (fastest-varying rank) first: Megatron-Core's default `--order tp-cp-ep-dp-pp`."""

SCHEDULES: tuple[str, ...] = SCHEDULE_NAMES
"""Pipeline schedules, by their CLI names; a schedule's code is its index here."""

RECOMPUTE = ("none", "selective", "full")
RecomputeModule = Literal["core_attn", "layernorm", "mla_up_proj", "moe_act", "mlp", "moe",
                          "shared_experts"]
RECOMPUTE_MODULES: tuple[str, ...] = ("core_attn", "layernorm", "mla_up_proj", "moe_act", "mlp",
                                      "moe", "shared_experts")
"""Megatron-Core's --recompute-modules names (TransformerConfig.recompute_modules), in the bit
order of `PlanArrays.recompute_modules`."""


def recompute_mask(modules: tuple[str, ...] | None) -> int:
    """Bit mask of a module list (bit i: RECOMPUTE_MODULES[i]); 0 for None (the default
    selective policy, `cost.train.recompute`)."""
    return sum(1 << RECOMPUTE_MODULES.index(m) for m in set(modules or ()))

Schedule = Literal[SCHEDULES]  # type: ignore[valid-type]

MOE_DISPATCHERS = ("alltoall", "allgather", "flex-deepep", "hybridep")
"""Megatron-Core token dispatchers (`--moe-token-dispatcher-type alltoall | allgather | flex`,
the flex one with `--moe-flex-dispatcher-backend deepep | hybridep`), in the code order of
`PlanArrays.dispatcher`; what each costs: `cost.moe.dispatch_tier_shares`."""
MoeDispatcher = Literal["alltoall", "allgather", "flex-deepep", "hybridep"]


_DERIVED = ("sequence_parallel", "etp", "dp_shard", "vpp")
"""Fields whose None means "the default", resolved by `Plan` when built."""


class Plan(Spec):
    """One hybrid-parallel layout. Degrees multiply to the GPU count: dp * tp * pp * cp.

    Fields a caller leaves out (or sets to None) that default from other fields hold their
    resolved value once built: `sequence_parallel`, `etp`, `dp_shard` and `vpp` (their
    `default=None` is never seen: `_resolve_defaults` fills them first).
    """

    dp: int = Field(default=1, gt=0)
    """Data-parallel degree (replicas or ZeRO/FSDP shards)."""
    tp: int = Field(default=1, gt=0)
    """Tensor-parallel degree (Megatron-style column/row split)."""
    pp: int = Field(default=1, gt=0)
    """Pipeline-parallel degree (ranks in one pipeline)."""
    cp: int = Field(default=1, gt=0)
    """Context-parallel degree (sequence split for attention, ring exchange of K/V)."""
    ep: int = Field(default=1, gt=0)
    """Expert-parallel degree (MoE only), carved out of dp * cp."""
    etp: int = Field(default=1, gt=0)
    """Expert tensor-parallel degree; defaults to 1 (Megatron-Core's usual setting for MoE)."""
    sequence_parallel: bool = Field(default=None)  # type: ignore[assignment]  # resolved
    """Megatron sequence parallelism; defaults to on whenever tp > 1."""
    zero_stage: Literal[0, 1, 2, 3] = 1
    """0: plain DDP; 1: optimizer states sharded (Megatron distributed optimizer); 2: + grads;
    3: + weights (FSDP full shard)."""
    dp_shard: int = Field(default=None, gt=0)  # type: ignore[assignment]  # resolved
    """ZeRO/FSDP sharding group size for hybrid sharding (HSDP); defaults to dp."""
    micro_batch_size: int = Field(default=1, gt=0)
    schedule: Schedule = "1f1b"
    vpp: int = Field(default=None, gt=0)  # type: ignore[assignment]  # resolved
    """Model chunks (virtual stages) per pipeline rank; defaults to the schedule's own
    (`ScheduleSpec.default_chunks`: 2 for interleaved and V-shaped schedules, 1 otherwise)."""
    first_stage_layers: int | None = Field(default=None, gt=0)
    """Layers on the first pipeline rank when the split is uneven (Megatron-LM
    --decoder-first-pipeline-num-layers); the other ranks share the rest evenly."""
    last_stage_layers: int | None = Field(default=None, gt=0)
    """Layers on the last pipeline rank when the split is uneven."""
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_modules: tuple[RecomputeModule, ...] | None = Field(default=None, strict=False)
    """With selective recompute, the modules recomputed (Megatron-Core --recompute-modules);
    None: meshplan's default selective policy (`cost.train.recompute`)."""
    recompute_num_layers: int | None = Field(default=None, gt=0)
    """With full recompute, the layers recomputed at the start of each pipeline stage's model
    chunk, the others keeping their activations (Megatron-LM --recompute-method block
    --recompute-num-layers N); None: every layer (`cost.train.recompute.full_share`)."""
    offload_optimizer: bool = False
    """Optimizer states and step on the host (ZeRO-Offload)."""
    overlap_grad_reduce: bool = True
    """Overlap the data-parallel gradient reduction with the backward pass."""
    tp_comm_overlap: bool = False
    """Overlap tensor-parallel collectives with GEMMs (Megatron --tp-comm-overlap / async TP)."""
    ep_comm_overlap: bool = False
    """Overlap the expert all-to-all with computation of another micro-batch."""
    moe_dispatcher: MoeDispatcher = "alltoall"
    """How a MoE layer moves its tokens to the experts (`MOE_DISPATCHERS`)."""
    moe_force_balanced: bool = False
    """Routing forced even across experts (Megatron-Core --moe-router-force-load-balancing,
    a benchmarking option): no load imbalance (`cost.moe.load_imbalance`)."""
    axis_order: tuple[str, ...] = Field(default=DEFAULT_AXIS_ORDER, strict=False)
    """Rank order of the mesh axes, innermost first."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        """Fill the fields whose default depends on another field (left out or None). Where
        that field is itself invalid, leave them: its own error is the one to report."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None or k not in _DERIVED}
        tp, dp, schedule = data.get("tp", 1), data.get("dp", 1), data.get("schedule", "1f1b")
        if isinstance(tp, int):
            data.setdefault("sequence_parallel", tp > 1)
        if isinstance(dp, int):
            data.setdefault("dp_shard", dp)
        if schedule in SCHEDULE_NAMES:
            data.setdefault("vpp", schedule_spec(schedule).default_chunks)
        return data

    @field_validator("recompute_modules")
    @classmethod
    def _module_order(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """One order for a module set (RECOMPUTE_MODULES'), so equal sets are equal plans."""
        return None if v is None else tuple(m for m in RECOMPUTE_MODULES if m in v)

    @model_validator(mode="after")
    def _check(self) -> Plan:
        if sorted(self.axis_order) != sorted(AXES):
            raise ValueError(f"axis_order must be a permutation of {AXES}, got {self.axis_order}")
        spec = schedule_spec(self.schedule)
        if not spec.allows_chunks(self.vpp):
            raise ValueError(f"schedule {self.schedule} runs {spec.chunk_rule()} chunks per "
                             f"rank, got vpp={self.vpp}")
        if self.dp % self.dp_shard:
            raise ValueError(f"dp_shard ({self.dp_shard}) must divide dp ({self.dp})")
        if self.recompute_modules is not None and (self.recompute != "selective"
                                                   or not self.recompute_modules):
            raise ValueError("recompute_modules needs recompute='selective' and at least one "
                             f"module of {', '.join(RECOMPUTE_MODULES)}")
        if self.recompute_num_layers is not None and self.recompute != "full":
            raise ValueError("recompute_num_layers needs recompute='full' (it counts the "
                             "layers of each model chunk recomputed whole)")
        return self

    @property
    def num_gpus(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    def describe(self) -> str:
        """Compact one-line summary, e.g. `tp8 pp12 dp16 mbs1 1f1b zero1 rc=full`."""
        parts = [f"{a}{getattr(self, a)}" for a in ("tp", "cp", "pp", "dp", "ep")
                 if getattr(self, a) > 1]
        if self.first_stage_layers or self.last_stage_layers:
            parts.append(f"L{self.first_stage_layers or '='}/{self.last_stage_layers or '='}")
        parts.append(f"mbs{self.micro_batch_size}")
        if self.pp > 1:
            parts.append(schedule_label(self.pp, self.schedule, self.vpp))
        parts.append(f"zero{self.zero_stage}")
        if self.moe_dispatcher != "alltoall":
            parts.append(self.moe_dispatcher)
        parts.append(f"rc={self.recompute}" + (f"({'+'.join(self.recompute_modules)})"
                                                 if self.recompute_modules else "")
                     + (f"({self.recompute_num_layers}/chunk)" if self.recompute_num_layers
                        else ""))
        return " ".join(parts)


def schedule_label(pp: int, schedule: str, vpp: int) -> str:
    """A plan's schedule as tables show it: '-' without pipelining, '/vN' for N virtual
    stages per rank."""
    if pp == 1:
        return "-"
    return schedule + (f"/v{vpp}" if vpp > 1 else "")


@dataclass(frozen=True)
class PlanArrays:
    """Many plans as parallel numpy arrays (one entry per plan), sharing one axis order."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray
    sp: np.ndarray
    zero: np.ndarray
    dp_shard: np.ndarray
    mbs: np.ndarray
    vpp: np.ndarray
    schedule: np.ndarray
    """Index into SCHEDULES."""
    recompute: np.ndarray
    """Index into RECOMPUTE."""
    offload: np.ndarray
    overlap_grad: np.ndarray
    tp_overlap: np.ndarray
    ep_overlap: np.ndarray
    first_layers: np.ndarray
    """Layers on the first pipeline rank, 0 for an even split."""
    last_layers: np.ndarray
    axis_order: tuple[str, ...] = Field(default=DEFAULT_AXIS_ORDER, strict=False)
    recompute_modules: np.ndarray | None = None
    """`recompute_mask` of each plan's module list; None: every plan's is the default."""
    dispatcher: np.ndarray | None = None
    """Index into MOE_DISPATCHERS; None: every plan's is alltoall."""
    force_balanced: np.ndarray | None = None
    """`Plan.moe_force_balanced`; None: no plan's is."""
    recompute_layers: np.ndarray | None = None
    """`Plan.recompute_num_layers`, 0 for every layer; None: every plan's is every layer."""

    def __len__(self) -> int:
        return len(self.dp)

    @classmethod
    def from_plans(cls, plans: list[Plan]) -> PlanArrays:
        assert plans, "need at least one plan"
        order = plans[0].axis_order
        assert all(p.axis_order == order for p in plans), "one axis order per batch"

        def col(get: object, dtype: type = np.int64) -> np.ndarray:
            return np.array([get(p) for p in plans], dtype=dtype)  # type: ignore[operator]

        return cls(
            dp=col(lambda p: p.dp),
            tp=col(lambda p: p.tp),
            pp=col(lambda p: p.pp),
            cp=col(lambda p: p.cp),
            ep=col(lambda p: p.ep),
            etp=col(lambda p: p.etp),
            sp=col(lambda p: p.sequence_parallel, bool),
            zero=col(lambda p: p.zero_stage),
            dp_shard=col(lambda p: p.dp_shard),
            mbs=col(lambda p: p.micro_batch_size),
            vpp=col(lambda p: p.vpp),
            schedule=col(lambda p: schedule_code(p.schedule)),
            recompute=col(lambda p: RECOMPUTE.index(p.recompute)),
            offload=col(lambda p: p.offload_optimizer, bool),
            overlap_grad=col(lambda p: p.overlap_grad_reduce, bool),
            tp_overlap=col(lambda p: p.tp_comm_overlap, bool),
            ep_overlap=col(lambda p: p.ep_comm_overlap, bool),
            first_layers=col(lambda p: p.first_stage_layers or 0),
            last_layers=col(lambda p: p.last_stage_layers or 0),
            axis_order=order,
            recompute_modules=col(lambda p: recompute_mask(p.recompute_modules)),
            dispatcher=col(lambda p: MOE_DISPATCHERS.index(p.moe_dispatcher)),
            force_balanced=col(lambda p: p.moe_force_balanced, bool),
            recompute_layers=col(lambda p: p.recompute_num_layers or 0),
        )

    def select(self, mask_or_index: np.ndarray) -> PlanArrays:
        """The subset of plans picked by a boolean mask or an index array."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "axis_order"}
        picked: dict[str, Any] = {k: None if v is None else v[mask_or_index]
                                  for k, v in values.items()}
        return PlanArrays(**picked, axis_order=self.axis_order)

    def plan(self, i: int) -> Plan:
        """Plan number i, as a typed Plan."""
        return Plan(
            dp=int(self.dp[i]), tp=int(self.tp[i]), pp=int(self.pp[i]), cp=int(self.cp[i]),
            ep=int(self.ep[i]), etp=int(self.etp[i]), sequence_parallel=bool(self.sp[i]),
            zero_stage=int(self.zero[i]),  # type: ignore[arg-type]
            dp_shard=int(self.dp_shard[i]), micro_batch_size=int(self.mbs[i]),
            schedule=SCHEDULES[int(self.schedule[i])],  # type: ignore[arg-type]
            vpp=int(self.vpp[i]),
            recompute=RECOMPUTE[int(self.recompute[i])],  # type: ignore[arg-type]
            offload_optimizer=bool(self.offload[i]),
            overlap_grad_reduce=bool(self.overlap_grad[i]),
            tp_comm_overlap=bool(self.tp_overlap[i]), ep_comm_overlap=bool(self.ep_overlap[i]),
            first_stage_layers=int(self.first_layers[i]) or None,
            last_stage_layers=int(self.last_layers[i]) or None,
            axis_order=self.axis_order,
            recompute_modules=self.modules_of(i),  # type: ignore[arg-type]
            moe_dispatcher=MOE_DISPATCHERS[0 if self.dispatcher is None  # type: ignore[arg-type]
                                           else int(self.dispatcher[i])],
            moe_force_balanced=self.force_balanced is not None and bool(self.force_balanced[i]),
            recompute_num_layers=None if self.recompute_layers is None
            else int(self.recompute_layers[i]) or None,
        )

    def dispatchers(self) -> np.ndarray:
        """Each plan's MOE_DISPATCHERS index (0, alltoall, where none is set)."""
        return np.zeros(len(self), np.int64) if self.dispatcher is None else self.dispatcher

    def balanced(self) -> np.ndarray:
        """Each plan's `moe_force_balanced`."""
        return np.zeros(len(self), bool) if self.force_balanced is None else self.force_balanced

    def modules_of(self, i: int) -> tuple[str, ...] | None:
        """Plan i's recompute module list (None: the default policy)."""
        mask = 0 if self.recompute_modules is None else int(self.recompute_modules[i])
        return tuple(m for b, m in enumerate(RECOMPUTE_MODULES) if mask >> b & 1) or None
