"""DeepSpeed: the JSON config of `deepspeed.initialize`, as `export.deepspeed` writes it.

Keys and defaults mirror DeepSpeed 0.19.8 `runtime/config.py` and `runtime/zero/config.py`:
train_batch_size = micro batch x gradient accumulation x data-parallel size (any two give the
third once the world size is known), ZeRO stage 0 and no communication overlap by default,
AutoTP (`tensor_parallel.autotp_size`), AutoEP (`expert_parallel`), `pipeline.stages`. A
DeepSpeed config holds no sequence length: it comes from a meshplan header or --seq-len.
"""

from __future__ import annotations

import json
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.importers._common import ImportedJob, Values, divide, header_sizes, read_text
from meshplan.specs.model import Model

FLAG = "--from-deepspeed"
WHAT = "DeepSpeed JSON config"
ACCUM_BYTES = {"fp32": 4, "bf16": 2, "bfp16": 2, "fp16": 2}


def read(path: str, model: Model) -> ImportedJob:
    text = read_text(path, FLAG)
    where = f"{FLAG}={path!r}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MeshplanError(f"{where}: not JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise MeshplanError(f"{where}: expected a JSON object (a DeepSpeed config)")
    v = Values(where)
    meta = data.get("_meshplan", {})
    sizes = header_sizes("\n".join(meta.get("header", []))) if isinstance(meta, dict) else None
    job = ImportedJob("DeepSpeed", path)
    out = job.values
    tp = v.integer(v.section(data, "tensor_parallel"), "autotp_size", 0) or 1
    pp = v.integer(v.section(data, "pipeline"), "stages") or 1
    out.update(tp=tp, pp=pp, cp=1, sequence_parallel=False,
               tp_comm_overlap=bool(v.flag(v.section(data, "tensor_parallel"),
                                           "tp_overlap_comm")))
    ep = v.section(data, "expert_parallel")
    if model.moe is not None:
        enabled = v.flag(ep, "enabled")
        out["ep"] = (v.integer(ep, "autoep_size") or 1) if enabled else 1
        out["etp"] = v.integer(ep, "expert_tensor_parallel_size") or 1
    _batch(data, v, job, where, sizes)
    _precision(data, v, job, where)
    zero = v.section(data, "zero_optimization")
    out["zero_stage"] = v.integer(zero, "stage", 0) or 0
    out["overlap_grad_reduce"] = bool(v.flag(zero, "overlap_comm"))
    offload = v.section(zero, "offload_optimizer")
    out["offload_optimizer"] = v.text(offload, "device", ("cpu", "nvme", "none")) in ("cpu",
                                                                                     "nvme")
    if "activation_checkpointing" in data:
        out["recompute"] = "full"
        job.notes.append("activation_checkpointing present: read as full recompute (the model "
                         "code decides what deepspeed.checkpointing wraps)")
    else:
        out["recompute"] = "none"
    if sizes is not None:
        out["seq_len"] = sizes[2]
    else:
        job.notes.append("a DeepSpeed config has no sequence length: --seq-len is used")
    return job


def _batch(data: dict[str, Any], v: Values, job: ImportedJob, where: str,
           sizes: tuple[int, int, int] | None) -> None:
    """The batch triple; with all three the data-parallel size and so the GPU count follow."""
    out = job.values
    glob = v.integer(data, "train_batch_size")
    micro = v.integer(data, "train_micro_batch_size_per_gpu")
    accum = v.integer(data, "gradient_accumulation_steps")
    if micro is not None:
        out["micro_batch_size"] = micro
    if glob is not None:
        out["global_batch_size"] = glob
    if glob is not None and micro is not None and accum is not None:
        dp = divide(where, "train_batch_size / (micro batch x gradient accumulation)", glob,
                    micro * accum)
        job.num_gpus = dp * out["tp"] * out["pp"]
    elif sizes is not None:
        job.num_gpus = sizes[0]
    if glob is None:
        job.notes.append("train_batch_size absent: --global-batch-size is used")


def _precision(data: dict[str, Any], v: Values, job: ImportedJob, where: str) -> None:
    bf16, fp16 = v.section(data, "bf16"), v.section(data, "fp16")
    if v.flag(bf16, "enabled"):
        job.values["precision"] = "bf16"
    elif v.flag(fp16, "enabled"):
        job.values["precision"] = "fp16"
    else:
        raise MeshplanError(f"{where}: neither bf16.enabled nor fp16.enabled: DeepSpeed then "
                            "trains in fp32, which meshplan does not model")
    accum = v.text(v.section(data, "data_types"), "grad_accum_dtype", tuple(ACCUM_BYTES))
    if accum is None:
        job.notes.append("data_types.grad_accum_dtype absent: fp32 gradient accumulation "
                         "assumed")
    job.values["grad_bytes"] = ACCUM_BYTES[accum or "fp32"]
