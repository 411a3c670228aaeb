"""DeepSpeed: the JSON config passed to `deepspeed.initialize(config=...)`.

Keys mirror DeepSpeed 0.19.8: `runtime/config.py` (batch triple, bf16/fp16, data_types,
pipeline, removed keys such as MiCS), `runtime/zero/config.py` (zero_optimization, extra keys
forbidden), `runtime/tensor_parallel/config.py` (AutoTP training: tensor_parallel.autotp_size),
`module_inject/auto_ep_config.py` and `auto_ep_folding.py` (AutoEP: expert_parallel), and
`runtime/pipe/engine.py` (the pipeline engine runs a 1F1B TrainSchedule and refuses ZeRO-2/3).
DeepSpeed has no JSON switch for recompute (the model calls deepspeed.checkpointing), FP8 GEMMs
or ring context parallelism, so those are noted or refused.
"""

from __future__ import annotations

import json
from typing import Any

from meshplan.export._common import (
    DEFAULT_AXIS_ORDER,
    engine_schedule,
    header,
    match_order,
    microbatches,
    refuse,
)
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan

ENGINE = "DeepSpeed 0.19"
SOURCE = "DeepSpeed 0.19.8 deepspeed/runtime/config.py"
BUCKET_BYTES = 500_000_000
"""zero_optimization.reduce_bucket_size default (runtime/zero/config.py), stated explicitly."""


def render(model: Model, job: Job, plan: Plan, cluster: Cluster | None = None) -> str:
    """The JSON config; `_meshplan` (ignored by DeepSpeed) carries the plan and the caveats."""
    _check(model, job, plan)
    config: dict[str, Any] = {
        "_meshplan": {"header": header(ENGINE, SOURCE, model, job, plan),
                      "notes": _notes(plan)},
        "train_batch_size": job.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": microbatches(job, plan),
        **_precision(job),
        "zero_optimization": _zero(plan),
    }
    if plan.tp > 1:
        config["tensor_parallel"] = {"autotp_size": plan.tp,
                                     "tp_overlap_comm": plan.tp_comm_overlap}
    if plan.ep > 1:
        config["expert_parallel"] = {"enabled": True, "autoep_size": plan.ep,
                                     "expert_tensor_parallel_size": plan.etp}
    if plan.pp > 1:
        config["pipeline"] = {"stages": plan.pp}
    if plan.recompute == "full":
        config["activation_checkpointing"] = {"partition_activations": False,
                                              "cpu_checkpointing": False,
                                              "contiguous_memory_optimization": False}
    return json.dumps(config, indent=2) + "\n"


def _check(model: Model, job: Job, plan: Plan) -> None:
    """Refuse what a DeepSpeed config cannot express."""
    match_order(plan, ENGINE, {DEFAULT_AXIS_ORDER: None})
    if job.precision == "fp8":
        raise refuse(ENGINE, "precision", "fp8", "has no FP8 GEMM setting in its config (FP8 "
                     "lives in the model code, e.g. Transformer Engine)")
    if plan.cp > 1:
        raise refuse(ENGINE, "cp", plan.cp, "splits sequences with Ulysses all-to-all, not ring "
                     "context parallelism")
    if plan.tp > 1 and plan.sequence_parallel:
        raise refuse(ENGINE, "sequence_parallel", True, "AutoTP has no Megatron-style sequence "
                     "parallelism; plan with sequence_parallel=False (--no-sp)")
    if plan.tp == 1 and plan.tp_comm_overlap:
        raise refuse(ENGINE, "tp_comm_overlap", True, "overlaps only AutoTP's all-reduce, which "
                     "needs tp > 1")
    if plan.recompute == "selective":
        raise refuse(ENGINE, "recompute", "selective", "checkpoints whole layers "
                     "(deepspeed.checkpointing); it has no attention-only recompute")
    if plan.zero_stage >= 1 and plan.dp_shard < plan.dp:
        raise refuse(ENGINE, "dp_shard", plan.dp_shard, "shards ZeRO states over the whole "
                     "data-parallel group (MiCS was removed; ZeRO++ hpZ shards only a weight "
                     "copy)")
    _check_experts(plan)
    _check_pipeline(plan)


def _check_experts(plan: Plan) -> None:
    """AutoEP (module_inject/auto_ep_folding.py)."""
    if plan.ep > 1 and plan.etp != 1:
        raise refuse(ENGINE, "etp", plan.etp, "AutoEP reserves expert tensor parallelism "
                     "(expert_tensor_parallel_size must be 1)")
    if plan.ep > 1 and plan.tp > 1 and plan.offload_optimizer:
        raise refuse(ENGINE, "offload_optimizer", True, "does not validate ZeRO offload with "
                     "AutoEP+AutoTP folding")


def _check_pipeline(plan: Plan) -> None:
    """The pipeline engine (runtime/pipe/engine.py): a PipelineModule, 1F1B, ZeRO <= 1."""
    if plan.first_stage_layers or plan.last_stage_layers:
        raise refuse(ENGINE, "first_stage_layers", plan.first_stage_layers or
                     plan.last_stage_layers, "partitions layers inside PipelineModule "
                     "(partition_method), which this config cannot set")
    # ScheduleSpec.deepspeed: runtime/pipe/schedule.py's TrainSchedule (1F1B) only.
    if engine_schedule(plan, ENGINE, "deepspeed", "its pipeline engine has one schedule, "
                       "TrainSchedule (runtime/pipe/schedule.py)") is None:
        return
    if plan.zero_stage >= 2:
        raise refuse(ENGINE, "zero_stage", plan.zero_stage, "pipeline engine refuses ZeRO-2 "
                     "and ZeRO-3 (\"incompatible with pipeline parallelism\")")
    if plan.tp > 1 or plan.ep > 1:
        field, value = ("tp", plan.tp) if plan.tp > 1 else ("ep", plan.ep)
        raise refuse(ENGINE, field, value, "AutoTP/AutoEP shard Hugging Face models, while its "
                     "pipeline engine runs a PipelineModule; use pp=1 or Megatron-LM")


def _precision(job: Job) -> dict[str, Any]:
    """bf16/fp16 sections; grad_accum_dtype fp32 for 4-byte gradients (runtime/config.py)."""
    dtype = "bf16" if job.precision == "bf16" else "fp16"
    section: dict[str, Any] = {"enabled": True}
    if dtype == "fp16":
        section["loss_scale"] = 0
    return {dtype: section,
            "data_types": {"grad_accum_dtype": "fp32" if job.grad_bytes == 4 else dtype}}


def _zero(plan: Plan) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": plan.zero_stage,
                            "overlap_comm": plan.overlap_grad_reduce,
                            "contiguous_gradients": True,
                            "reduce_bucket_size": BUCKET_BYTES}
    if plan.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return zero


def _notes(plan: Plan) -> list[str]:
    notes = []
    if plan.recompute == "full":
        notes.append("recompute full: wrap each transformer layer in "
                     "deepspeed.checkpointing.checkpoint (activation_checkpointing configures it)")
    if plan.pp > 1:
        notes.append(f"pipeline: build the model as deepspeed.pipe.PipelineModule("
                     f"num_stages={plan.pp}); pipeline.stages records it")
    if plan.offload_optimizer:
        notes.append("offload_optimizer: DeepSpeed steps on the host with DeepSpeedCPUAdam; "
                     "add an optimizer block or pass that optimizer")
    return notes
