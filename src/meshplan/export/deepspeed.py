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
    Refusal,
    check,
    constant,
    field_value,
    header,
    microbatches,
    order_refusal,
    schedule_refusals,
    uneven,
    uneven_value,
)
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import RECOMPUTE, Plan

ENGINE = "DeepSpeed 0.19"
SOURCE = "DeepSpeed 0.19.8 deepspeed/runtime/config.py"
BUCKET_BYTES = 500_000_000
"""zero_optimization.reduce_bucket_size default (runtime/zero/config.py), stated explicitly."""


def render(model: Model, job: Job, plan: Plan, cluster: Cluster | None = None) -> str:
    """The JSON config; `_meshplan` (ignored by DeepSpeed) carries the plan and the caveats."""
    check(ENGINE, REFUSALS, model, job, plan)
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


_TP_OR_EP = "AutoTP/AutoEP shard Hugging Face models, while its pipeline engine runs a " \
    "PipelineModule; use pp=1 or Megatron-LM"

REFUSALS: tuple[Refusal, ...] = (
    order_refusal({DEFAULT_AXIS_ORDER: None}),
    Refusal("precision", lambda M, J, P: J.precision == "fp8", constant("fp8"),
            "has no FP8 GEMM setting in its config (FP8 lives in the model code, e.g. "
            "Transformer Engine)"),
    Refusal("cp", lambda M, J, P: P.cp > 1, field_value("cp"),
            "splits sequences with Ulysses all-to-all, not ring context parallelism"),
    Refusal("sequence_parallel", lambda M, J, P: (P.tp > 1) & P.sp, constant(True),
            "AutoTP has no Megatron-style sequence parallelism; plan with "
            "sequence_parallel=False (--no-sp)"),
    Refusal("tp_comm_overlap", lambda M, J, P: (P.tp == 1) & P.tp_overlap, constant(True),
            "overlaps only AutoTP's all-reduce, which needs tp > 1"),
    Refusal("recompute", lambda M, J, P: P.recompute == RECOMPUTE.index("selective"),
            constant("selective"), "checkpoints whole layers (deepspeed.checkpointing); it "
            "has no attention-only recompute"),
    Refusal("dp_shard", lambda M, J, P: (P.zero >= 1) & (P.dp_shard < P.dp),
            field_value("dp_shard"), "shards ZeRO states over the whole data-parallel group "
            "(MiCS was removed; ZeRO++ hpZ shards only a weight copy)"),
    # AutoEP (module_inject/auto_ep_folding.py).
    Refusal("etp", lambda M, J, P: (P.ep > 1) & (P.etp != 1), field_value("etp"),
            "AutoEP reserves expert tensor parallelism (expert_tensor_parallel_size must be 1)"),
    Refusal("offload_optimizer", lambda M, J, P: (P.ep > 1) & (P.tp > 1) & P.offload,
            constant(True), "does not validate ZeRO offload with AutoEP+AutoTP folding"),
    # The pipeline engine (runtime/pipe/engine.py): a PipelineModule, 1F1B, ZeRO <= 1.
    Refusal("first_stage_layers", lambda M, J, P: uneven(P), uneven_value,
            "partitions layers inside PipelineModule (partition_method), which this config "
            "cannot set"),
    # ScheduleSpec.deepspeed: runtime/pipe/schedule.py's TrainSchedule (1F1B) only.
    *schedule_refusals("deepspeed", "its pipeline engine has one schedule, TrainSchedule "
                       "(runtime/pipe/schedule.py)"),
    Refusal("zero_stage", lambda M, J, P: (P.pp > 1) & (P.zero >= 2), field_value("zero"),
            "pipeline engine refuses ZeRO-2 and ZeRO-3 (\"incompatible with pipeline "
            "parallelism\")"),
    Refusal("tp", lambda M, J, P: (P.pp > 1) & (P.tp > 1), field_value("tp"), _TP_OR_EP),
    Refusal("ep", lambda M, J, P: (P.pp > 1) & (P.ep > 1), field_value("ep"), _TP_OR_EP),
)
"""What a DeepSpeed 0.19 config cannot express."""


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
        which = (f"the first {plan.recompute_num_layers} transformer layers of each pipeline "
                 "stage" if plan.recompute_num_layers else "each transformer layer")
        notes.append(f"recompute full: wrap {which} in "
                     "deepspeed.checkpointing.checkpoint (activation_checkpointing configures it)")
    if plan.pp > 1:
        notes.append(f"pipeline: build the model as deepspeed.pipe.PipelineModule("
                     f"num_stages={plan.pp}); pipeline.stages records it")
    if plan.offload_optimizer:
        notes.append("offload_optimizer: DeepSpeed steps on the host with DeepSpeedCPUAdam; "
                     "add an optimizer block or pass that optimizer")
    return notes
