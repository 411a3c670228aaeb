"""torchtitan: a 0.2.x TOML job config (`--job.config_file`) or a 0.3 launch line
(`--module M --config C` and `--section.key value` overrides), told apart by content, as
`export.torchtitan` / `export.torchtitan_03` write them.

A 0.3 line's overrides become the same sections as the TOML's, so one reading serves both; keys a
0.3 line leaves out take torchtitan's dataclass defaults (the config function may set others:
that is noted), and `activation_checkpoint:none|selective|full` is the recompute.

Sections and defaults mirror torchtitan 0.2.2 `torchtitan/config/job_config.py`:
data_parallel_shard_degree -1 fills the GPUs left over; FSDP2 shards whenever the shard degree
(or cp) exceeds 1, reshard_after_forward "never" keeping weights gathered (ZeRO-2-like);
sequence parallelism always comes with TP; local_batch_size is one forward's batch per DP rank,
split into pipeline micro-batches with pp > 1. The world size is not in the file (torchrun
sets it): it comes from a meshplan header or --num-gpus.
"""

from __future__ import annotations

import math
import re
import tomllib
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.export.torchtitan import FLAVORS, model_shape
from meshplan.importers._common import (
    ImportedJob,
    Values,
    divide,
    header_sizes,
    parse_flags,
    read_text,
    schedule_named,
    split_arguments,
)
from meshplan.schedules.registry import schedule_spec
from meshplan.specs.model import Model

FLAG = "--from-torchtitan"
WHAT = "torchtitan 0.2 TOML job config or 0.3 launch script (--module/--config)"
PRECISIONS = {"bfloat16": "bf16"}
REDUCE_BYTES = {"float32": 4, "bfloat16": 2}


def read(path: str, model: Model) -> ImportedJob:
    text = read_text(path, FLAG)
    where = f"{FLAG}={path!r}"
    launch = re.search(r"(^|\s)--module[ =]", text) and re.search(r"(^|\s)--config[ =]", text)
    data, engine, notes = _from_launch(text, where) if launch else (_toml(text, where),
                                                                    "torchtitan 0.2", [])
    v = Values(where)
    par, train = v.section(data, "parallelism"), v.section(data, "training")
    if not par and not train:
        raise MeshplanError(f"{where}: no [parallelism] or [training] settings: not a "
                            "torchtitan job config")
    sizes = header_sizes(text)
    job = ImportedJob(engine, path, num_gpus=sizes[0] if sizes else None,
                      notes=[] if sizes else notes)  # meshplan's exports state every key
    out = job.values
    tp, pp = v.integer(par, "tensor_parallel_degree") or 1, \
        v.integer(par, "pipeline_parallel_degree") or 1
    cp = v.integer(par, "context_parallel_degree") or 1
    replicate = v.integer(par, "data_parallel_replicate_degree") or 1
    shard = par.get("data_parallel_shard_degree", -1)
    if shard != -1:
        shard = v.integer(par, "data_parallel_shard_degree")
    # Async TP: [parallelism] in 0.2, [compile] in 0.3.
    async_tp = v.flag(par, "enable_async_tensor_parallel") or v.flag(
        v.section(data, "compile"), "enable_async_tensor_parallel")
    out.update(tp=tp, pp=pp, cp=cp, sequence_parallel=tp > 1, tp_comm_overlap=bool(async_tp))
    if model.moe is not None:
        out["ep"] = v.integer(par, "expert_parallel_degree") or 1
        out["etp"] = v.integer(par, "expert_tensor_parallel_degree") or 1
    reshard = v.text(par, "fsdp_reshard_after_forward", ("default", "always", "never"))
    sharded = shard == -1 or shard > 1 or cp > 1
    out["zero_stage"] = (2 if reshard == "never" else 3) if sharded else \
        (0 if replicate > 1 else 3)
    job.dp_replicas = replicate if sharded else 1
    if shard not in (-1, None) and job.num_gpus is None:
        job.num_gpus = replicate * shard * tp * pp * cp
    _batch(train, par, v, job, where, sizes)
    _pipeline(par, v, model, out, where)
    _precision(data, train, v, out, where)
    mode = v.text(v.section(data, "activation_checkpoint"), "mode", ("none", "selective",
                                                                   "full"))
    out["recompute"] = mode or "selective"  # job_config.py ActivationCheckpoint default
    option = v.section(data, "activation_checkpoint").get("selective_ac_option", "op")
    if out["recompute"] == "selective" and str(option).isdigit():
        _layer_sac(int(option), model, out, job)
    elif mode == "selective":
        job.notes.append("selective activation checkpointing modelled as meshplan's selective "
                         "recompute (attention)")
    out["offload_optimizer"] = bool(v.flag(train, "enable_cpu_offload"))
    job.notes += _model_notes(data, v, model)
    return job


def _layer_sac(every: int, model: Model, out: dict[str, Any], job: ImportedJob) -> None:
    """selective_ac_option = k: every k-th block checkpointed whole
    (activation_checkpoint.py _apply_ac_to_transformer_block), i.e. full recompute of one
    layer in k (`Plan.recompute_num_layers` per stage chunk; k = 0 or 1: every layer)."""
    out["recompute"] = "full"
    chunk = model.num_layers // (out.get("pp", 1) * out.get("vpp", 1))
    if every > 1 and every < chunk:
        out["recompute_num_layers"] = max(1, round(chunk / every))
        if chunk % every:
            job.notes.append(f"layer SAC of every {every}th block: about "
                             f"{out['recompute_num_layers']} of each stage's {chunk} layers "
                             "recomputed")
    elif every > 1:
        out["recompute_num_layers"] = 1


def _toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise MeshplanError(f"{where}: not a TOML job config, nor a 0.3 launch line with "
                            f"--module/--config ({err})") from None


def _from_launch(text: str, where: str) -> tuple[dict[str, Any], str, list[str]]:
    """A 0.3 launch line as 0.2 sections: `--a.b v` -> data[a][b] = v; `--a.no_b` -> False;
    `activation_checkpoint:X` -> [activation_checkpoint] mode = X; --module/--config -> the
    flavor whose config function it is."""
    from meshplan.export.torchtitan_03 import CONFIGS

    tokens = split_arguments(text, where)
    if "-m" in tokens and "torchtitan.train" in tokens:
        tokens = tokens[tokens.index("torchtitan.train") + 1:]
    data: dict[str, Any] = {}
    for token in tokens:
        if token.startswith("activation_checkpoint:"):
            data["activation_checkpoint"] = {"mode": token.split(":", 1)[1]}
    words = [t for t in tokens if not t.startswith("activation_checkpoint:")]  # no flag values
    for name, value in parse_flags(words, where).items():
        section, dot, key = name.replace("-", "_").partition(".")
        if not dot:
            data[section] = value
            continue
        if key.startswith("no_") and value is True:
            key, value = key[3:], False
        data.setdefault(section, {})[key] = _scalar(value)
    function = (data.get("module"), data.get("config"))
    flavor = next((k for k, f in CONFIGS.items() if (k[0], f) == function), None)
    if flavor is not None:
        data.setdefault("model", {}).update(name=flavor[0], flavor=flavor[1])
    notes = [f"0.3 launch line: keys it does not override take torchtitan's dataclass defaults "
             f"here; {function[1]} may set others"]
    return data, "torchtitan 0.3", notes


def _scalar(value: Any) -> Any:
    """A command-line word as TOML would have typed it (ints, floats, true/false)."""
    if not isinstance(value, str):
        return value
    if value in ("True", "true", "False", "false"):
        return value in ("True", "true")
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _batch(train: dict[str, Any], par: dict[str, Any], v: Values, job: ImportedJob,
           where: str, sizes: tuple[int, int, int] | None) -> None:
    out = job.values
    local = v.integer(train, "local_batch_size") or 8  # job_config.py default
    if (seq := v.integer(train, "seq_len")) is not None:
        out["seq_len"] = seq
    glob = train.get("global_batch_size", -1)
    if glob != -1:
        out["global_batch_size"] = v.integer(train, "global_batch_size")
    elif sizes is not None:
        out["global_batch_size"] = sizes[1]
    else:
        job.notes.append("training.global_batch_size -1 (local x dp): --global-batch-size "
                         "must say it")
    if out["pp"] > 1:
        micro = v.integer(par, "pipeline_parallel_microbatch_size") or 1
        divide(where, "training.local_batch_size / pipeline_parallel_microbatch_size", local,
               micro)
        out["micro_batch_size"] = micro
    else:
        out["micro_batch_size"] = local


def _pipeline(par: dict[str, Any], v: Values, model: Model, out: dict[str, Any],
              where: str) -> None:
    """Stages per rank: ceil((layers + less-layers counts) / layers_per_stage) / pp
    (distributed/pipeline_parallel.py); without layers_per_stage, 1 or 2 by schedule."""
    if out["pp"] == 1:
        return
    name = v.text(par, "pipeline_parallel_schedule") or "1F1B"
    schedule = schedule_named("torchtitan", name, where)
    out["schedule"] = schedule
    per_stage = v.integer(par, "pipeline_parallel_layers_per_stage")
    if per_stage is None:
        out["vpp"] = 2 if schedule_spec(schedule).takes_chunks else 1
        return
    first = v.integer(par, "pipeline_parallel_first_stage_less_layers", 0) or 0
    last = v.integer(par, "pipeline_parallel_last_stage_less_layers", 0) or 0
    stages = math.ceil((model.num_layers + first + last) / per_stage)
    out["vpp"] = divide(where, "pipeline stages per pipeline rank", stages, out["pp"])
    if first or last:
        raise MeshplanError(f"{where}: pipeline_parallel_first/last_stage_less_layers: meshplan "
                            "models uneven splits by end-rank layer counts only")


def _precision(data: dict[str, Any], train: dict[str, Any], v: Values, out: dict[str, Any],
               where: str) -> None:
    param = v.text(train, "mixed_precision_param") or "bfloat16"
    if param not in PRECISIONS:
        raise MeshplanError(f"{where}: training.mixed_precision_param={param!r}: meshplan models "
                            "bfloat16 (with float8 GEMMs for fp8) training")
    converters = v.section(data, "model").get("converters", [])
    fp8 = any("float8" in str(c) for c in converters)
    out["precision"] = "fp8" if fp8 else PRECISIONS[param]
    reduce = v.text(train, "mixed_precision_reduce", tuple(REDUCE_BYTES)) or "float32"
    out["grad_bytes"] = REDUCE_BYTES[reduce]


def _model_notes(data: dict[str, Any], v: Values, model: Model) -> list[str]:
    section = v.section(data, "model")
    name, flavor = section.get("name"), section.get("flavor")
    known = next((f for f in FLAVORS if (f.name, f.flavor) == (name, flavor)), None)
    if known is not None and known.shape != model_shape(model):
        return [f"the file trains {name}/{flavor}, whose shape is not --model {model.name}'s: "
                "the prediction is for --model"]
    return []
