"""Plan fields of a published run that the source leaves null or names in its own words:
each engine's documented default or name mapping (`rules`), with the reason recorded in the
row's assumptions."""

from __future__ import annotations

import math
import re
from typing import Any

from meshplan.schedules.registry import schedule_spec
from meshplan.specs.plan import RECOMPUTE_MODULES
from meshplan.validate import rules
from meshplan.validate.fields import Unbuildable, int_field, text_field


def recompute(row: dict[str, Any], notes: list[str]) -> str:
    text = text_field(row, "activation_recompute")
    if text:
        mode = rules.apply(rules.RECOMPUTE_NAMES, row, notes, text=text)
        if mode is None:
            raise Unbuildable(f"activation_recompute {row['activation_recompute']!r} unknown")
        if "inferred" in text.lower():
            notes.append(f"{mode} recompute inferred by the dataset, not stated by the source")
        return str(mode)
    return str(rules.apply(rules.RECOMPUTE_DEFAULT, row, notes))


def block_recompute(row: dict[str, Any], chunk_layers: int, notes: list[str]) -> int:
    """`Plan.recompute_num_layers` of a row whose source recomputes every n-th block whole.

    With both HFU and MFU reported, n follows from their ratio: a recomputed forward is 2N of
    the 6N per token, so HFU / MFU = 1 + f / 3 for full recompute of a share f of the layers
    (the same rows' full-recompute runs read 1.32-1.38); n = round(1 / f). A number the text
    states wins; else the engine's default (`rules.BLOCK_EVERY`). The count per stage chunk
    is chunk / n, at least 1."""
    mfu, hfu = row.get("mfu"), row.get("hfu")
    derived = row["derived"] if isinstance(row.get("derived"), dict) else {}
    stated = re.search(r"(?:ac_freq|selective_ac_option|every)\s*=?\s*(\d+)",
                       text_field(row, "activation_recompute"), re.IGNORECASE)
    if stated and int(stated.group(1)) > 0:
        every = int(stated.group(1))
    elif isinstance(mfu, int | float) and isinstance(hfu, int | float) and 0 < mfu < hfu \
            and not {"mfu", "hfu"} & set(derived):
        share = min(1.0, 3.0 * (hfu / mfu - 1.0))
        every = max(1, round(1.0 / share))
        notes.append(f"one block in {every} recomputed whole: HFU / MFU = {hfu / mfu:.3f} "
                     f"= 1 + f/3 (f = {share:.2f} of the layers' forward redone, 6N "
                     "accounting)")
    else:
        every = int(rules.apply(rules.BLOCK_EVERY, row, notes))
    return max(1, round(chunk_layers / every))


MODULE_WORDS = {"core_attn": "core_attn", "layernorm": "layernorm", "norm": "layernorm",
                "mla_up_proj": "mla_up_proj", "up_proj": "mla_up_proj", "moe_act": "moe_act",
                "act": "moe_act", "mlp": "mlp", "moe": "moe", "shared_experts": "shared_experts",
                "shared_expert": "shared_experts"}
"""Megatron-Core --recompute-modules names and the short forms of its MoE report's tables
("norm, act", "up_proj"), lower case as the engine spells them (so the word "MoE" is no
module)."""
_MODULE_RE = re.compile(r"(?<![\w-])(" + "|".join(sorted(MODULE_WORDS, key=len, reverse=True))
                        + r")(?![\w-])")


def recompute_modules(row: dict[str, Any], mode: str, notes: list[str]
                      ) -> tuple[str, ...] | None:
    """The modules a selective recompute names (`activation_recompute`, else the notes'
    clause from "recompute" to the next ";"); None when it names none (the default policy).
    Where the row gives alternatives, their union (the most recomputed) is used."""
    if mode != "selective":
        return None
    text = text_field(row, "activation_recompute")
    if not _MODULE_RE.search(text):
        m = re.search(r"recompute[^;]*", text_field(row, "notes"), re.IGNORECASE)
        text = m.group(0) if m else ""
    named = {MODULE_WORDS[w] for w in _MODULE_RE.findall(text)}
    found = [m for m in RECOMPUTE_MODULES if m in named]
    if not found:
        return None
    notes.append(f"selective recompute of the modules named: {', '.join(found)} "
                 "(Megatron-Core --recompute-modules)")
    return tuple(found)


def zero_stage(row: dict[str, Any], notes: list[str]) -> int:
    z = row["zero_stage"]
    if isinstance(z, int) and not isinstance(z, bool):
        return z
    text = z if isinstance(z, str) else ""
    if m := re.search(r"ZeRO[- ]?(?:stage[- ]?)?(\d)", text, re.IGNORECASE):
        return int(m.group(1))
    if text:
        stage = rules.apply(rules.ZERO_NAMES, row, notes)
        if stage is None and row["fsdp"] is True:
            stage = 3
        if stage is None:
            raise Unbuildable(f"zero_stage {z!r} unknown")
        return int(stage)
    if row["fsdp"] is True:
        return 3
    return int(rules.apply(rules.ZERO_STAGE, row, notes))


def sequence_parallel(row: dict[str, Any], tp: int, notes: list[str]) -> bool:
    sp = row["sequence_parallel"]
    if tp == 1:
        if sp:
            notes.append("sequence_parallel=true with tp=1 is a no-op: off")
        return False
    if sp is None:
        return bool(rules.apply(rules.SEQUENCE_PARALLEL, row, notes))
    return bool(sp)


def pipeline_schedule(row: dict[str, Any], pp: int, layers: int,
                      notes: list[str]) -> tuple[str, int | None]:
    """(schedule, model chunks per rank or None) from the row's schedule text and vpp."""
    if pp == 1:
        return "1f1b", None
    text = text_field(row, "pipeline_schedule")
    vpp = int_field(row, "vpp")
    name = rules.apply(rules.SCHEDULES, row, notes) if text else None
    if text and name is None:
        raise Unbuildable(f"pipeline_schedule {row['pipeline_schedule']!r} unknown")
    if name is None:
        if (vpp or 1) > 1:
            name = "interleaved-1f1b"
        else:
            notes.append("pipeline schedule not stated: non-interleaved 1F1B assumed")
            name = "1f1b"
    if name == "interleaved-1f1b":
        if vpp is None and re.search(r"one (transformer )?layer per (chunk|stage)", text,
                                     re.IGNORECASE):
            vpp = math.ceil(layers / pp)
        elif vpp is None:
            vpp = 2
            notes.append("interleaved stages per rank not given: 2 (torchtitan and "
                         "Megatron default)")
        return name, vpp
    chunks = schedule_spec(name).default_chunks  # looped and V-shaped: 2 per rank
    return name, (vpp or chunks) if chunks > 1 else None


def micro_and_global(row: dict[str, Any], dp: int, pp: int, vpp: int, seq: int,
                     notes: list[str]) -> tuple[int, int]:
    other = row["other_metrics"] if isinstance(row["other_metrics"], dict) else {}
    local = other.get("local_batch_size")
    gbs = int_field(row, "global_batch_size")
    if gbs is None and (tokens := int_field(row, "global_batch_tokens")) and tokens % seq == 0:
        gbs = tokens // seq
    if gbs is None and isinstance(local, int):
        gbs = local * dp
        notes.append(f"global batch = local batch {local} x dp {dp}")
    if gbs is None:
        raise Unbuildable("global batch not given")
    mbs = int_field(row, "micro_batch_size")
    if mbs is not None:
        return mbs, gbs
    rule = rules.first(rules.MICRO_BATCH, row)
    if rule is None:
        raise Unbuildable("micro_batch_size not given and no documented engine default")
    if rule.value == "torchtitan":
        per_rank = gbs // dp
        mbs = max(per_rank // (pp * vpp), 1)
        notes.append(rule.why.format(mbs=mbs, chunks=pp * vpp, per_rank=per_rank))
    else:
        mbs = int(rule.value)
        notes.append(rule.why)
    return mbs, gbs
