"""Apply a meshplan `Plan` to the executor's model with PyTorch's own machinery.

The order and the APIs mirror torchtitan's `parallelize_llama` / `pipeline_llama`:
1. `DeviceMesh` over the plan's axes, laid out in `plan.axis_order` (innermost first, so the
   first axis gets consecutive ranks, as Megatron-Core's RankGenerator does);
2. pipeline split (`torch.distributed.pipelining.PipelineStage`), the schedule taken from
   meshplan's own IR (`meshplan.schedules.generate`) through the CSV that torch's
   `_PipelineScheduleRuntime._load_csv` reads, so the executed order is the simulated one;
3. tensor parallel (`parallelize_module` with Colwise/Rowwise/SequenceParallel/
   PrepareModuleInput: Megatron's f/g operators, Korthikanti et al. 2022 for SP);
4. activation checkpointing (`checkpoint_wrapper` per block = full; the attention core
   only = selective);
5. data parallel on FSDP2: `replicate` for ZeRO-0 (DDP semantics, composes with DTensor and
   pipelining), `fully_shard` for ZeRO-1/2 (`reshard_after_forward=False`: weights stay
   gathered between forward and backward, gradients reduce-scattered, optimizer state
   sharded; ZeRO-1 additionally skips the gradient sync until the last micro-batch, so
   full gradients accumulate locally) and ZeRO-3 (`reshard_after_forward=True`).
   `dp_shard < dp` builds a 2-D (replicate, shard) mesh: FSDP2's hybrid sharding.

What torch cannot run here raises `MeshplanError` naming the feature (`check_supported`);
nothing falls back silently.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed._composable.replicate_with_fsdp import replicate
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from meshplan.errors import MeshplanError
from meshplan.execute.model import Attention, Transformer, build_model, check_model, loss_fn
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan


def check_supported(spec: Model, plan: Plan, device_type: str = "cpu") -> None:
    """Raise MeshplanError for a plan feature this executor (or torch on this device) lacks."""
    check_model(spec)
    if plan.cp > 1:
        why = ("torch's ring attention (context_parallel) dispatches only the CUDA SDPA "
               "kernels (flash, efficient, cuDNN)" if device_type == "cpu"
               else "not wired into meshplan run yet")
        raise MeshplanError(f"cp={plan.cp}: context parallelism is not supported on "
                            f"{device_type}: {why}")
    if plan.ep > 1 or plan.etp > 1:
        raise MeshplanError(f"ep={plan.ep}, etp={plan.etp}: expert parallelism is not "
                            "supported by meshplan run (torch has no expert-parallel API; "
                            "use ep=1, experts then follow the data-parallel sharding)")
    if spec.is_moe and plan.tp > 1:
        raise MeshplanError(f"tp={plan.tp}: tensor parallelism of MoE layers is not supported "
                            "by meshplan run")
    if plan.tp > spec.kv_heads or spec.kv_heads % plan.tp:
        raise MeshplanError(f"tp={plan.tp}: meshplan run splits whole KV heads, so tp must "
                            f"divide num_kv_heads ({spec.kv_heads})")
    if plan.tp > 1 and (spec.qk_norm or spec.tied_embeddings
                        or spec.position_embedding == "learned"):
        raise MeshplanError(f"tp={plan.tp}: tensor parallelism with qk_norm, tied embeddings "
                            "or learned positions is not supported by meshplan run")
    if plan.pp > 1 and spec.tied_embeddings:
        raise MeshplanError(f"pp={plan.pp}: tied embeddings across pipeline stages are not "
                            "supported by meshplan run")
    if getattr(plan, "ep_comm_overlap", False):
        raise MeshplanError("ep_comm_overlap=True: expert parallelism is not supported by "
                            "meshplan run")
    if plan.tp_comm_overlap:
        raise MeshplanError("tp_comm_overlap=True: torch's async TP needs CUDA symmetric "
                            "memory; not supported by meshplan run")
    if plan.offload_optimizer:
        raise MeshplanError("offload_optimizer=True: torch has no optimizer-only offload "
                            "(FSDP2's CPUOffloadPolicy moves weights too); not supported by "
                            "meshplan run")
    if not plan.overlap_grad_reduce:
        raise MeshplanError("overlap_grad_reduce=False: FSDP2 always overlaps the gradient "
                            "reduction; not supported by meshplan run")


def _hybrid(plan: Plan) -> bool:
    return plan.zero_stage >= 1 and plan.dp_shard < plan.dp


def mesh_dims(plan: Plan) -> list[tuple[str, int]]:
    """(name, size) of the mesh dimensions, outermost first (DeviceMesh's row-major order)."""
    dims: list[tuple[str, int]] = []
    for axis in reversed(plan.axis_order):
        if axis == "ep":
            continue  # carved out of dp x cp for expert layers; not a dense mesh axis
        if axis == "dp" and _hybrid(plan):
            dims += [("dp_replicate", plan.dp // plan.dp_shard),
                     ("dp_shard", plan.dp_shard)]
        else:
            dims.append((axis, getattr(plan, axis)))
    return dims


def build_mesh(plan: Plan, device_type: str) -> DeviceMesh:
    dims = mesh_dims(plan)
    return init_device_mesh(device_type, tuple(n for _, n in dims),
                            mesh_dim_names=tuple(name for name, _ in dims))


def dp_coordinate(plan: Plan, mesh: DeviceMesh) -> int:
    """This rank's data-parallel index (which slice of the global batch it reads)."""
    if _hybrid(plan):
        return (mesh["dp_replicate"].get_local_rank() * plan.dp_shard
                + mesh["dp_shard"].get_local_rank())
    return mesh["dp"].get_local_rank()


def apply_tp(part: Transformer, tp_mesh: DeviceMesh, sp: bool) -> None:
    """Megatron tensor parallelism, as torchtitan's `apply_tp` for Llama."""
    seq = Shard(1) if sp else Replicate()
    top: dict[str, object] = {}
    if part.tok_embeddings is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if part.norm is not None and sp:
        top["norm"] = SequenceParallel()
    if part.output is not None:
        top["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate(),
                                        use_local_output=True)
    if top:
        parallelize_module(part, tp_mesh, top)  # type: ignore[arg-type]
    for block in part.layers.values():
        styles: dict[str, object] = {
            "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
            "feed_forward.w1": ColwiseParallel(), "feed_forward.w2":
                RowwiseParallel(output_layouts=seq),
        }
        if getattr(block.feed_forward, "w3", None) is not None:
            styles["feed_forward.w3"] = ColwiseParallel()
        if sp:
            gather = PrepareModuleInput(input_layouts=(Shard(1),),
                                        desired_input_layouts=(Replicate(),),
                                        use_local_output=True)
            styles.update({"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
                           "attention": gather, "feed_forward": gather})
        parallelize_module(block, tp_mesh, styles)  # type: ignore[arg-type]


def apply_ac(part: Transformer, mode: str) -> None:
    """Full: checkpoint every block (recompute its forward in backward). Selective: recompute
    only the attention core, Megatron's `--recompute-granularity selective`."""
    for name, block in list(part.layers.items()):
        if mode == "full":
            part.layers[name] = checkpoint_wrapper(block)
        else:
            for m in block.modules():
                if isinstance(m, Attention):
                    m.recompute_core = True


def apply_dp(part: Transformer, mesh: DeviceMesh, plan: Plan) -> None:
    """FSDP2 per block, then the root (torchtitan's `apply_fsdp` / `apply_ddp`).

    With a low-precision compute dtype, FSDP2's MixedPrecisionPolicy gathers weights in that
    dtype and reduces gradients in fp32 (torchtitan's default; the cost model's 2-byte
    all-gather and 4-byte reduce-scatter)."""
    if plan.dp == 1:
        return
    dtype = part.compute_dtype
    mp = (MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
          if dtype is not None else MixedPrecisionPolicy())
    if plan.zero_stage == 0:
        replicate(part, mesh=mesh["dp"], mp_policy=mp)
        return
    dp_mesh = mesh["dp_replicate", "dp_shard"] if _hybrid(plan) else mesh["dp"]
    reshard = plan.zero_stage == 3
    for block in part.layers.values():
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp)
    fully_shard(part, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp)


def parallelize_part(part: Transformer, mesh: DeviceMesh, plan: Plan) -> Transformer:
    if plan.tp > 1:
        apply_tp(part, mesh["tp"], plan.sequence_parallel)
    if plan.recompute != "none":
        apply_ac(part, plan.recompute)
    apply_dp(part, mesh, plan)
    return part


@dataclass
class Parallelized:
    """What one rank runs: its model parts, and the pipeline schedule when pp > 1."""

    mesh: DeviceMesh
    parts: list[Transformer]
    schedule: object | None
    """torch `_PipelineScheduleRuntime` loaded from meshplan's IR, or None without pp."""
    has_first: bool
    has_last: bool
    dp_index: int


def parallelize(spec: Model, plan: Plan, num_microbatches: int, *, seed: int, seq_len: int,
                device: torch.device, compute_dtype: torch.dtype | None) -> Parallelized:
    """Build this rank's share of the model with `plan` applied."""
    check_supported(spec, plan, device.type)
    mesh = build_mesh(plan, device.type)
    dp_index = dp_coordinate(plan, mesh)

    def make(layer_ids: list[int] | None, first: bool, last: bool) -> Transformer:
        part = build_model(spec, seed, seq_len, layer_ids, first, last).to(device)
        part.compute_dtype = compute_dtype
        return parallelize_part(part, mesh, plan)

    if plan.pp == 1:
        return Parallelized(mesh, [make(None, True, True)], None, True, True, dp_index)
    schedule, parts = _pipeline(spec, plan, num_microbatches, mesh, device, make)
    num_stages = plan.pp * plan.vpp
    return Parallelized(mesh, [p.submod for p in parts], schedule,
                        any(p.stage_index == 0 for p in parts),
                        any(p.stage_index == num_stages - 1 for p in parts), dp_index)


def _pipeline(spec: Model, plan: Plan, m: int, mesh: DeviceMesh, device: torch.device,
              make: Callable[[list[int], bool, bool], Transformer]) -> tuple[object, list]:
    """Stages for this rank and torch's schedule runtime, fed meshplan's action lists."""
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime

    from meshplan.schedules.ir import compute_only, to_csv
    from meshplan.schedules.registry import generate
    from meshplan.specs.stages import stage_layer_ranges

    sched = generate(plan.schedule, plan.pp, m, plan.vpp)
    num_stages = sched.num_stages
    layer_ranges = stage_layer_ranges(spec.num_layers, num_stages, sched.stage_to_rank, plan.pp,
                                      plan.first_stage_layers, plan.last_stage_layers)
    pp_mesh = mesh["pp"]
    rank = pp_mesh.get_local_rank()
    stages = []
    for s, owner in enumerate(sched.stage_to_rank):
        if owner != rank:
            continue
        part = make(list(layer_ranges[s]), s == 0, s == num_stages - 1)
        stages.append(PipelineStage(part, s, num_stages, device, group=pp_mesh.get_group()))
    runtime = _PipelineScheduleRuntime(stages, n_microbatches=m, loss_fn=loss_fn,
                                       scale_grads=True)
    fd, path = tempfile.mkstemp(suffix=".csv", prefix=f"meshplan-{plan.schedule}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(to_csv(compute_only(sched)))
        runtime._load_csv(path)
    finally:
        os.unlink(path)
    return runtime, stages


def model_parameters(parts: Sequence[nn.Module]) -> list[nn.Parameter]:
    return [p for part in parts for p in part.parameters()]
