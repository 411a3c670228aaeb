"""One published run (a row of `published_training_runs.json`) rebuilt as meshplan specs.

`build_case(row)` returns a `Case` (Model, Cluster, Job, Plan, GPU count and the list of every
default it had to apply) or a `Skip` with a one-line reason. Per-source knowledge lives in
tables: `arch` (model conventions, tokenizers), `layout` (engine defaults for the plan),
`hardware` (GPU presets and networks).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from meshplan.cost.flops import model_flops_per_step
from meshplan.errors import MeshplanError, from_validation_error
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef, parse_json, read_text
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan
from meshplan.validate import rules
from meshplan.validate.arch import build_model
from meshplan.validate.fields import (
    SCHEMA_KEYS,
    TEXT_KEYS,
    Unbuildable,
    check_figures,
    int_field,
    need,
    text_field,
)
from meshplan.validate.hardware import build_cluster
from meshplan.validate.layout import (
    block_recompute,
    micro_and_global,
    pipeline_schedule,
    recompute,
    recompute_modules,
    sequence_parallel,
    zero_stage,
)

__all__ = ["SCHEMA_KEYS", "Case", "Skip", "build_case", "load_runs"]


@dataclass(frozen=True)
class Case:
    """A run rebuilt as meshplan inputs."""

    row: dict[str, Any]
    model: Model
    """The model as estimated (layers padded to whole pipeline stages when the source splits
    unevenly)."""
    source_model: Model
    """The model as published, for the source's own FLOP accounting."""
    cluster: Cluster
    job: Job
    plan: Plan
    num_gpus: int
    gpu: str
    assumptions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Skip:
    id: str
    reason: str


def load_runs(path: Path | None = None) -> list[dict[str, Any]]:
    """Rows of a runs file (default: the shipped dataset); malformed input is a MeshplanError."""
    if path is None:
        from importlib.resources import files

        text = (files("meshplan") / "data" / "published_training_runs.json").read_text()
        where = "published_training_runs.json"
    else:
        text, where = read_text(Path(path)), str(path)
    rows = parse_json(text, where)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise MeshplanError(f"{where}: expected a JSON list of run objects")
    if not rows:
        raise MeshplanError(f"{where}: no runs")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        name = f"{where}: run {i} ({row.get('id', '?')!r})"
        missing = [k for k in SCHEMA_KEYS if k not in row]
        if missing:
            raise MeshplanError(f"{name}: missing keys {', '.join(map(repr, missing))}")
        extra = sorted(set(row) - set(SCHEMA_KEYS))
        if extra:
            raise MeshplanError(f"{name}: unknown keys {', '.join(map(repr, extra))}")
        if not isinstance(row["id"], str) or not isinstance(row["source_id"], str):
            raise MeshplanError(f"{name}: id and source_id must be strings")
        bad = next((k for k in TEXT_KEYS if not isinstance(row[k], str | None)), None)
        if bad is not None:
            raise MeshplanError(f"{name}: {bad}={row[bad]!r}: must be a string or null")
        if row["id"] in seen:
            raise MeshplanError(f"{name}: duplicate id")
        seen.add(row["id"])
    return rows


REQUIRED = ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "num_gpus", "tp",
            "pp")
"""Fields without which no run can be rebuilt (no engine default exists for them)."""


def gradient_bytes(row: dict[str, Any], notes: list[str]) -> Literal[2, 4]:
    """Bytes per gradient element the engine keeps (`rules.GRAD_BYTES`)."""
    return 2 if rules.apply(rules.GRAD_BYTES, row, notes) == 2 else 4


def lighter_ends(row: dict[str, Any], layers: int, pp: int, vpp: int,
                 notes: list[str]) -> tuple[int, int]:
    """(first, last) rank layer counts when the engine takes the gap of an uneven split from
    the end stages (`rules.STAGE_SPLIT`): of the g layers short of a multiple of the stages,
    the last stage loses ceil(g / 2) and the first floor(g / 2) (the Zero Bubble fork's padding
    for g <= 2; Megatron-Core's DeepSeek-V3 layout 'Et|(tt|)*30mL' for g = 3 on 32 stages of 2;
    account_for_embedding/loss_in_pipeline_split for g = 2). (0, 0) when no rule applies or an
    end stage would lose more than it holds."""
    chunks = pp * vpp
    per_chunk = math.ceil(layers / chunks)
    gap = per_chunk * chunks - layers
    if pp < 2 or math.ceil(gap / 2) > per_chunk or rules.first(rules.STAGE_SPLIT, row) is None:
        return 0, 0
    rules.apply(rules.STAGE_SPLIT, row, notes)
    full = per_chunk * vpp
    return full - gap // 2, full - math.ceil(gap / 2)


def implied_flops_per_gpu(case: Case) -> dict[str, float]:
    """FLOP/s per GPU that each measured throughput of the row implies, counting the model
    FLOPs meshplan reports (causal attention: a lower bound of what any engine executes)."""
    row, g, seq = case.row, case.num_gpus, case.job.seq_len
    per_token = float(model_flops_per_step(case.source_model, 1, seq, causal=True)) / seq
    step_tokens = case.job.global_batch_size * seq
    rates = {"tflops_per_gpu": 1e12, "aggregate_pflops": 1e15 / g,
             "tokens_per_sec_per_gpu": per_token, "tokens_per_sec_total": per_token / g,
             "samples_per_sec_per_gpu": per_token * seq}
    out = {k: float(row[k]) * scale for k, scale in rates.items() if row[k] is not None}
    if row["iteration_time_s"] is not None:
        out["iteration_time_s"] = step_tokens * per_token / g / float(row["iteration_time_s"])
    return out


def _beyond_peak(case: Case) -> str | None:
    """Why the row's measured throughput is impossible on its accelerator, or None."""
    peak = max(case.cluster.accelerator.peak_flops.values())
    for key, flops in implied_flops_per_gpu(case).items():
        if flops > peak:
            return (f"{key}={case.row[key]!r}: implies more FLOP/s per GPU than {case.gpu}'s "
                    f"peak of {peak / 1e12:,.0f} TFLOP/s")
    return None


NARROWED = ("notes", "optimizations", "activation_recompute")
"""Text fields read for the row's own hardware where they give a value per accelerator
(`rules.for_hardware`)."""


def _for_own_hardware(row: dict[str, Any]) -> dict[str, Any]:
    gpu = text_field(row, "gpu_type")
    return {**row, **{k: rules.for_hardware(row[k], gpu) for k in NARROWED
                      if isinstance(row[k], str)}}


def _build(source_row: dict[str, Any], calibration: CalibrationRef) -> Case | Skip:
    notes: list[str] = []
    row = _for_own_hardware(source_row)
    check_figures(row)
    need(row, *REQUIRED)  # name every missing field at once
    hw = build_cluster(row, calibration)
    if isinstance(hw, str):
        return Skip(row["id"], hw)
    cluster, gpu, hw_notes = hw
    num_gpus, seq = need(row, "num_gpus", "seq_length")
    tp, pp = need(row, "tp", "pp")
    cp = int_field(row, "cp") or 1
    dp = int_field(row, "dp") or num_gpus // (tp * pp * cp)
    source_model = build_model(row, tp, notes)
    schedule, vpp = pipeline_schedule(row, pp, source_model.num_layers, notes)
    chunks = pp * (vpp or 1)
    model = source_model
    first_last = (0, 0)
    if source_model.num_layers % chunks:
        first_last = lighter_ends(row, source_model.num_layers, pp, vpp or 1, notes)
        if first_last == (0, 0):  # no engine rule: pad (docs/validation.md)
            # Multi-token-prediction modules fill a stage slot of their own (Megatron-Bridge's
            # and Megatron-MoE-ModelZoo's DeepSeek-V3 layouts end in an 'mtp' stage before the
            # loss): they are costed as padded layers (their second LM-head pass is not).
            mtp = source_model.mtp_layers
            padded = math.ceil((source_model.num_layers + mtp) / chunks) * chunks
            with_mtp = f" + {mtp} MTP module(s), costed as layers" if mtp else ""
            notes.append(f"{source_model.num_layers} layers{with_mtp} split unevenly over "
                         f"{chunks} stages: modelled as {padded} (every stage as the fullest one)")
            model = source_model.model_copy(update={"num_layers": padded, "mtp_layers": 0})

    precision_text = text_field(row, "precision")
    precision = "fp8" if re.search(r"fp8|float8", precision_text, re.IGNORECASE) else "bf16"
    if not precision_text:
        notes.append("precision not stated: bf16")
    if precision == "fp8" and "fp8" not in cluster.accelerator.peak_flops:
        raise Unbuildable(f"{gpu} has no FP8 peak in its preset")
    if precision == "fp8":  # the recipe selects its fitted GEMM factor (calibration)
        recipe = rules.apply(rules.FP8_RECIPE, row, notes)
        cluster = cluster.model_copy(update={"calibration": cluster.calibration.model_copy(
            update={"fp8_recipe": recipe})})
    mbs, gbs = micro_and_global(row, dp, pp, vpp or 1, seq, notes)
    job = Job(global_batch_size=gbs, seq_len=seq, precision=precision,  # type: ignore[arg-type]
              flash_attention=bool(rules.apply(rules.FLASH_ATTENTION, row, notes)),
              grad_bytes=gradient_bytes(row, notes))

    sp = sequence_parallel(row, tp, notes)
    ep = int_field(row, "ep") or 1
    zero = zero_stage(row, notes)
    legacy_z3 = rules.deepspeed_per_parameter_zero3(row) if zero == 3 else None
    if legacy_z3 is not None:
        k = rules.zero3_tensors_per_layer(model)
        job = job.model_copy(update={"zero3_collectives": k, "zero3_list_collectives": True})
        notes.append(f"ZeRO-3 as {legacy_z3}: synchronous per-parameter collectives ({k[0]} "
                     f"all-gathers, {k[1]} reduce-scatters per layer, list API), no overlap "
                     "(rules.DEEPSPEED_COALESCED_ZERO3)")
    rc = recompute(row, notes)
    rc_layers = None
    if rc == "blocks":
        rc, rc_layers = "full", block_recompute(row, model.num_layers // (pp * (vpp or 1)), notes)
    plan = Plan(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, etp=int_field(row, "expert_tp") or 1,
                sequence_parallel=bool(sp), zero_stage=zero,  # type: ignore[arg-type]
                overlap_grad_reduce=legacy_z3 is None,
                micro_batch_size=mbs, schedule=schedule, vpp=vpp,  # type: ignore[arg-type]
                recompute=rc,  # type: ignore[arg-type]
                recompute_modules=recompute_modules(row, rc, notes),  # type: ignore[arg-type]
                recompute_num_layers=rc_layers,
                tp_comm_overlap=_says(row, rules.TP_OVERLAP),
                ep_comm_overlap=_says(row, rules.EP_OVERLAP),
                moe_dispatcher=_dispatcher(row, ep, notes),  # type: ignore[arg-type]
                moe_force_balanced=ep > 1 and _says(row, rules.FORCE_BALANCED),
                first_stage_layers=first_last[0] or None,
                last_stage_layers=first_last[1] or None)
    return Case(source_row, model, source_model, cluster, job, plan, num_gpus, gpu,
                notes + hw_notes)


def _dispatcher(row: dict[str, Any], ep: int, notes: list[str]) -> str:
    """The MoE token dispatcher (`rules.MOE_DISPATCHER`); alltoall, unnoted, without EP."""
    if ep == 1:
        return "alltoall"
    return str(rules.apply(rules.MOE_DISPATCHER, row, notes))


def _says(row: dict[str, Any], pattern: str) -> bool:
    """Whether the row's optimizations or notes name an option (case-insensitive)."""
    text = text_field(row, "optimizations") + " " + text_field(row, "notes")
    return re.search(pattern, text, re.IGNORECASE) is not None


def build_case(row: dict[str, Any], calibration: CalibrationRef = CALIBRATION_FILE
               ) -> Case | Skip:
    """Rebuild one run (its preset calibrated from `calibration`), or say in one line why it
    cannot be rebuilt."""
    try:
        case = _build(row, calibration)
        why = None if isinstance(case, Skip) else _beyond_peak(case)
        return case if why is None else Skip(row["id"], why)
    except Unbuildable as why:
        return Skip(row["id"], str(why))
    except ValidationError as err:
        return Skip(row["id"], str(from_validation_error(err, "specs")))
