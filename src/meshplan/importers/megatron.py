"""Megatron-LM: the `pretrain_gpt.py` arguments of a job, as a launch script or an args file.

Reads what `export.megatron` writes (the torchrun script) and plain argument files (flags
separated by spaces or newlines, `#` comments, `--flag=value` too). Flags meshplan does not
model (data, tokenizer, optimizer, logging) are ignored. Defaults are Megatron-LM's
(`megatron/training/arguments.py`, core_v0.16.1): no sequence parallelism, no distributed
optimizer, no gradient-reduce overlap, fp32 unless --bf16/--fp16, expert TP = TP.
"""

from __future__ import annotations

import re
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.export.megatron import FSDP_STRATEGY, ORDERS
from meshplan.importers._common import (
    ImportedJob,
    Values,
    divide,
    parse_flags,
    read_text,
    split_arguments,
)
from meshplan.specs.model import Model

FLAG = "--from-megatron"
WHAT = "Megatron-LM pretrain_gpt.py arguments file or launch script"
STRATEGIES = {"no_shard": 0, "optim": 1, **{v: k for k, v in FSDP_STRATEGY.items()}}
"""--data-parallel-sharding-strategy -> ZeRO stage (Megatron-FSDP)."""
TP_PP_DP = next(order for order, flag in ORDERS.items() if flag == "--use-tp-pp-dp-mapping")


def read(path: str, model: Model) -> ImportedJob:
    text = read_text(path, FLAG)
    where = f"{FLAG}={path!r}"
    flags = parse_flags(_arguments(text, where), where)
    v = Values(where)
    job = ImportedJob("Megatron-LM", path, num_gpus=_world(text, where))
    out = job.values

    def num(name: str, minimum: int = 1) -> int | None:
        return v.integer(flags, name, minimum)

    tp, pp, cp = num("tensor-model-parallel-size") or 1, num("pipeline-model-parallel-size") \
        or 1, num("context-parallel-size") or 1
    out.update(tp=tp, pp=pp, cp=cp, sequence_parallel=tp > 1 and "sequence-parallel" in flags)
    moe = "num-experts" in flags or (num("expert-model-parallel-size") or 1) > 1
    if moe:
        out["ep"] = num("expert-model-parallel-size") or 1
        out["etp"] = num("expert-tensor-parallel-size") or tp  # arguments.py: None -> tp
        out["moe_dispatcher"] = _dispatcher(flags, v)
        out["moe_force_balanced"] = "moe-router-force-load-balancing" in flags
        out["ep_comm_overlap"] = "overlap-moe-expert-parallel-comm" in flags
    _pipeline(flags, v, model, out, where)
    for key, name in (("micro_batch_size", "micro-batch-size"),
                      ("global_batch_size", "global-batch-size"), ("seq_len", "seq-length")):
        if (value := num(name)) is not None:
            out[key] = value
    _precision(flags, out, where)
    _zero(flags, v, job)
    granularity = v.text(flags, "recompute-granularity", ("full", "selective"))
    out["recompute"] = granularity or "none"
    if granularity == "full":
        _recompute_method(flags, v, job)
    out["offload_optimizer"] = "optimizer-cpu-offload" in flags
    out["overlap_grad_reduce"] = "overlap-grad-reduce" in flags
    out["tp_comm_overlap"] = "tp-comm-overlap" in flags
    if "use-tp-pp-dp-mapping" in flags:
        out["axis_order"] = TP_PP_DP
    if flags.get("attention-backend") == "unfused":
        out["flash_attention"] = False
    samples = num("train-samples")
    if samples is not None and "seq_len" in out:
        out["token_budget"] = float(samples * out["seq_len"])
    job.notes += _model_notes(flags, v, model)
    return job


def _recompute_method(flags: dict[str, Any], v: Values, job: ImportedJob) -> None:
    """--recompute-method block --recompute-num-layers N: the first N layers of each stage's
    model chunk recomputed (`Plan.recompute_num_layers`); uniform (or no method) recomputes
    every layer, in groups of N whose inputs alone are kept, costed as per-layer full
    recompute (arguments.py: --recompute-num-layers defaults to 1)."""
    method = v.text(flags, "recompute-method", ("uniform", "block"))
    layers = v.integer(flags, "recompute-num-layers", 0)
    if method == "block" and layers:
        job.values["recompute_num_layers"] = layers
    elif method == "block":
        job.values["recompute"] = "none"
        job.notes.append("--recompute-method block with 0 layers: no layer recomputed")
    elif layers and layers > 1:
        job.notes.append(f"--recompute-method uniform in groups of {layers} layers costed as "
                         "per-layer full recompute (the group inputs' memory is not modelled)")


def _dispatcher(flags: dict[str, Any], v: Values) -> str:
    """`Plan.moe_dispatcher` of --moe-token-dispatcher-type (default allgather) with
    --moe-flex-dispatcher-backend (default deepep) or the older --moe-enable-deepep."""
    kind = v.text(flags, "moe-token-dispatcher-type", ("allgather", "alltoall", "flex"))
    if kind == "flex" or "moe-enable-deepep" in flags:
        backend = v.text(flags, "moe-flex-dispatcher-backend", ("deepep", "hybridep"))
        return "hybridep" if backend == "hybridep" else "flex-deepep"
    return kind or "allgather"


def _arguments(text: str, where: str) -> list[str]:
    """The tokens after the training script in a launch line, else the whole args file."""
    tokens = split_arguments(text, where)
    script = next((i for i, t in enumerate(tokens) if t.endswith(".py")), None)
    return tokens if script is None else tokens[script + 1:]


def _world(text: str, where: str) -> int | None:
    """GPUs of a torchrun line: --nproc-per-node x --nnodes (literal, or the `${VAR:-N}`
    default meshplan writes)."""
    def launch(name: str) -> int | None:
        m = re.search(rf"--{name}[ =]\"?(?:\$\{{\w+:-)?(\d+)", text)
        return None if m is None else int(m[1])

    per_node, nodes = launch("nproc[-_]per[-_]node"), launch("nnodes")
    return None if per_node is None else per_node * (nodes or 1)


def _pipeline(flags: dict[str, Any], v: Values, model: Model, out: dict[str, Any],
              where: str) -> None:
    pp = out["pp"]
    vpp = v.integer(flags, "num-virtual-stages-per-pipeline-rank")
    per_stage = v.integer(flags, "num-layers-per-virtual-pipeline-stage")
    if vpp is None and per_stage is not None:  # the older spelling: layers per virtual stage
        layers = v.integer(flags, "num-layers") or model.num_layers
        vpp = divide(where, "--num-layers-per-virtual-pipeline-stage", layers // pp, per_stage)
    if pp > 1:
        out["vpp"] = vpp or 1
        out["schedule"] = "interleaved-1f1b" if (vpp or 1) > 1 else "1f1b"
    for key, name in (("first_stage_layers", "decoder-first-pipeline-num-layers"),
                      ("last_stage_layers", "decoder-last-pipeline-num-layers")):
        if (value := v.integer(flags, name)) is not None:
            out[key] = value


def _precision(flags: dict[str, Any], out: dict[str, Any], where: str) -> None:
    """--fp16 / --bf16 (+ --fp8-format); gradient bytes as `export.megatron._precision` says."""
    if "fp16" in flags:
        out["precision"] = "fp16"
        out["grad_bytes"] = 4 if "accumulate-allreduce-grads-in-fp32" in flags else 2
        return
    if "bf16" not in flags:
        raise MeshplanError(f"{where}: neither --bf16 nor --fp16: Megatron-LM then trains in "
                            "fp32, which meshplan does not model")
    out["precision"] = "fp8" if "fp8-format" in flags else "bf16"
    out["grad_bytes"] = 2 if "grad-reduce-in-bf16" in flags else 4


def _zero(flags: dict[str, Any], v: Values, job: ImportedJob) -> None:
    """DDP (0), distributed optimizer (1) or Megatron-FSDP's sharding strategy; k instances of
    the distributed optimizer shard over dp / k ranks each (HSDP-like replicas)."""
    if "use-megatron-fsdp" in flags:
        strategy = v.text(flags, "data-parallel-sharding-strategy", tuple(STRATEGIES))
        job.values["zero_stage"] = STRATEGIES[strategy or "no_shard"]
    else:
        job.values["zero_stage"] = 1 if "use-distributed-optimizer" in flags else 0
    job.dp_replicas = v.integer(flags, "num-distributed-optimizer-instances") or 1


def _model_notes(flags: dict[str, Any], v: Values, model: Model) -> list[str]:
    """Where the file builds another shape than --model (the prediction is for --model)."""
    notes = []
    for name, mine in (("num-layers", model.num_layers), ("hidden-size", model.hidden_size),
                       ("num-attention-heads", model.num_attention_heads),
                       ("ffn-hidden-size", model.ffn_hidden_size),
                       ("num-experts", model.moe.num_experts if model.moe else None)):
        theirs = v.integer(flags, name)
        if theirs is not None and theirs != mine:
            notes.append(f"the file builds --{name} {theirs}, --model {model.name} has {mine}: "
                         "the prediction is for --model")
    return notes
