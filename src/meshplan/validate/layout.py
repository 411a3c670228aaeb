"""Plan fields of a published run that the source leaves null: each engine's documented
default, per source, with the reason recorded in the row's assumptions."""

from __future__ import annotations

import math
import re
from typing import Any

from meshplan.validate.fields import MEGATRON_2021, NVIDIA, Unbuildable, int_field, text_field

# Per-source defaults for fields the source leaves null, with the reason (engine defaults).
RECOMPUTE_DEFAULT = {
    "megatron2021": ("full", "recompute not stated: full (the paper's Eq. 3 FLOPs count the "
                             "recomputation forward pass, as the dataset infers for Table 1)"),
    "mtnlg2022": ("full", "recompute not stated: full (this 530B layout does not fit in 80 GB "
                          "without it)"),
}
ZERO_DEFAULT = {
    "megatron2021": (0, "ZeRO not used: Megatron-LM 2021 data parallelism (no distributed "
                        "optimizer)"),
    "mtnlg2022": (0, "ZeRO stage not stated: plain data parallelism assumed"),
    "zerobubble2024": (0, "ZeRO not stated: Megatron-LM default (no distributed optimizer); "
                          "dp=1"),
    **{s: (1, "ZeRO not stated: Megatron-Core recipes default to the distributed optimizer "
              "(ZeRO-1)") for s in NVIDIA},
}
SP_DEFAULT = {
    **{s: (False, "sequence parallelism did not exist yet (2021-22)") for s in MEGATRON_2021},
    "hagemann2024": (False, "sequence parallelism not in this data sheet: off (the paper "
                            "sweeps it in separate sheets)"),
    **{s: (True, "sequence parallelism not stated: on with TP (Megatron-Core recipes)")
       for s in NVIDIA},
}
MBS_DEFAULT = {
    "megatron2021": "micro-batch not given (Table 1): 1 assumed (Megatron-LM "
                    "--micro-batch-size has no default)",
    "mtnlg2022": "micro-batch not given: 1 assumed (Megatron-DeepSpeed has no default)",
}


def recompute(row: dict[str, Any], notes: list[str]) -> str:
    text = text_field(row, "activation_recompute").lower()
    if text.startswith("full"):
        if "inferred" in text:
            notes.append("full recompute inferred by the dataset, not stated by the source")
        return "full"
    if text.startswith("selective"):
        if "every n" in text:
            notes.append("source checkpoints every n-th block; modelled as selective "
                         "(attention-core) recompute")
        return "selective"
    if text.startswith("none"):
        return "none"
    if text:
        raise Unbuildable(f"activation_recompute {row['activation_recompute']!r} unknown")
    mode, why = RECOMPUTE_DEFAULT.get(row["source_id"], ("none", "recompute not stated: none"))
    if row["source_id"] in NVIDIA and "recompute" in text_field(row, "notes"):
        notes.append("partial recompute of modules named in the notes (moe_act, layernorm, "
                     "mla_up_proj): modelled as selective")
        return "selective"
    notes.append(why)
    return mode


def zero_stage(row: dict[str, Any], notes: list[str]) -> int:
    z = row["zero_stage"]
    if isinstance(z, int) and not isinstance(z, bool):
        return z
    text = z if isinstance(z, str) else ""
    if m := re.search(r"ZeRO-?(\d)", text):
        return int(m.group(1))
    if "FSDP" in text or row["fsdp"] is True:
        return 3
    if text:
        raise Unbuildable(f"zero_stage {z!r} unknown")
    stage, why = ZERO_DEFAULT.get(row["source_id"], (0, "ZeRO not stated: 0 assumed"))
    notes.append(why)
    return stage


def pipeline_schedule(row: dict[str, Any], pp: int, layers: int,
              notes: list[str]) -> tuple[str, int | None]:
    if pp == 1:
        return "1f1b", None
    text = text_field(row, "pipeline_schedule").lower()
    vpp = int_field(row, "vpp")
    if "zero bubble" in text:
        return ("zb-h2" if "2p" in text else "zb-h1"), None
    if "interleaved" in text or (vpp or 1) > 1:
        if vpp is None and "one transformer layer per chunk" in text:
            vpp = math.ceil(layers / pp)
        elif vpp is None:
            vpp = 2
            notes.append("interleaved stages per rank not given: 2 (torchtitan and "
                         "Megatron default)")
        return "interleaved-1f1b", vpp
    if "gpipe" in text:
        return "gpipe", None
    if not text:
        notes.append("pipeline schedule not stated: non-interleaved 1F1B assumed")
    elif "1f1b" not in text:
        raise Unbuildable(f"pipeline_schedule {row['pipeline_schedule']!r} unknown")
    return "1f1b", None


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
    if mbs is None and row["source_id"] == "torchtitan_bench_2412":
        per_rank = gbs // dp
        mbs = max(per_rank // (pp * vpp), 1)
        notes.append(f"micro-batch not given: {mbs} (torchtitan default: pp x stages-per-rank "
                     f"= {pp * vpp} micro-batches of the local batch {per_rank})")
    elif mbs is None and row["source_id"] in MBS_DEFAULT:
        mbs = 1
        notes.append(MBS_DEFAULT[row["source_id"]])
    elif mbs is None:
        raise Unbuildable("micro_batch_size not given and no documented engine default")
    return mbs, gbs
