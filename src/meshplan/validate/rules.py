"""Rebuild rules: what a published run's engine does for a field its source leaves null.

Every default is a `Rule` keyed by what the row says about itself (engine and version in
`framework` / `source_version`, model family and name, hardware, era, and the text of
`activation_recompute`, `pipeline_schedule`, `optimizations`, `precision`, `notes`), never by
which source it came from, so a new table from the same engine is rebuilt the same way. Each
table is tried in order; the first rule whose every condition matches (case-insensitive regex
search) gives the value, and its reason goes into the row's `assumptions`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshplan.validate.fields import text_field


@dataclass(frozen=True)
class Rule:
    value: Any
    why: str
    """Recorded in the row's assumptions ("" records nothing: the row stated the value)."""
    when: Mapping[str, str] = field(default_factory=dict)
    """Field (or pseudo-field `era`, `engine_text`) -> regex that must match."""
    unless: Mapping[str, str] = field(default_factory=dict)
    """Field -> regex that must not match."""


def year(row: dict[str, Any]) -> int | None:
    """The year of the software the run used, from `source_version` (a date or a container
    tag such as 24.07); None when the row gives none."""
    text = text_field(row, "source_version")
    if m := re.search(r"(?<![\w.])(20[12]\d)(?![\w])", text):
        return int(m.group(1))
    if m := re.search(r"\b(2\d)\.(0[1-9]|1[0-2])\b", text):  # NGC container tag YY.MM
        return 2000 + int(m.group(1))
    return None


HOPPER_OR_LATER = r"H100|H200|H800|H20\b|GH200|B200|B300|GB200|GB300|MI3\d\d"
"""Accelerators launched from 2022-23 on: a run on them cannot use 2021-22 software."""


def era(row: dict[str, Any]) -> str:
    """'legacy' for 2021-22 software (stated year <= 2022, or no year and pre-Hopper
    hardware), 'modern' otherwise."""
    y = year(row)
    if y is not None:
        return "legacy" if y <= 2022 else "modern"
    hopper = re.search(HOPPER_OR_LATER, text_field(row, "gpu_type"), re.IGNORECASE)
    return "modern" if hopper else "legacy"


def _field(row: dict[str, Any], key: str) -> str:
    if key == "era":
        return era(row)
    if key == "year":  # the software's year, "" when the row gives none
        y = year(row)
        return "" if y is None else str(y)
    if key == "fp8_text":  # where a run names its FP8 recipe
        return " ".join(text_field(row, k) for k in ("precision", "framework", "optimizations",
                                                     "notes"))
    if key == "engine_text":  # everything the row says about how it ran
        return " ".join(text_field(row, k) for k in ("framework", "optimizations", "notes",
                                                     "activation_recompute"))
    v = row.get(key)
    return v if isinstance(v, str) else ("" if v is None else str(v))


def matches(rule: Rule, row: dict[str, Any]) -> bool:
    return all(re.search(p, _field(row, k), re.IGNORECASE) for k, p in rule.when.items()) \
        and not any(re.search(p, _field(row, k), re.IGNORECASE) for k, p in rule.unless.items())


def first(table: tuple[Rule, ...], row: dict[str, Any]) -> Rule | None:
    return next((r for r in table if matches(r, row)), None)


def apply(table: tuple[Rule, ...], row: dict[str, Any], notes: list[str], **fmt: Any) -> Any:
    """The value of the first matching rule (its reason appended to `notes`), or None."""
    rule = first(table, row)
    if rule is None:
        return None
    if rule.why:
        notes.append(rule.why.format(**fmt))
    return rule.value


# --- engine families (regexes on `framework`) ---------------------------------------------

MCORE = r"Megatron-Core|Megatron-Bridge|NeMo|MCore"
"""Megatron-Core based engines (NeMo 1.x/2.x, Megatron-Bridge, Megatron-LM core_r*)."""
ZB_FORK = r"zero-bubble"
"""sail-sg/zero-bubble-pipeline-parallelism: a 2023 fork of Megatron-LM (no distributed
optimizer unless asked)."""
ZB_PAPER_CODE = {"framework": ZB_FORK}
ZB_LATER_CODE = {"year": r"^20(2[4-9]|[3-9]\d)$"}
"""The Zero Bubble fork as of its paper (branch `arxiv`, 2023-11-29; rows giving no year, or
2023) and as rebased onto 2024 Megatron-LM (examples/pretrain_zero_bubble.sh of main adds
--use-flash-attn --sequence-parallel --use-distributed-optimizer)."""
MEGATRON = r"Megatron|DeepSpeed|NeMo"
"""The Megatron-LM family (Megatron-LM, Megatron-DeepSpeed, Megatron-Core, NeMo) and DeepSpeed."""
LEGACY_MEGATRON = {"framework": r"Megatron-LM|Megatron-DeepSpeed|DeepSpeed|metaseq|\bOPT\b",
                   "era": "legacy"}
"""Megatron-LM / Megatron-DeepSpeed / DeepSpeed / metaseq as of 2021-22."""
NOT_MCORE = {"framework": MCORE + "|" + ZB_FORK}


# --- the tables ------------------------------------------------------------------------------

FLASH_ATTENTION: tuple[Rule, ...] = (
    Rule(True, "", {"engine_text": r"flash|FA[23]\b|cuDNN attention|SDPA"}),
    Rule(False, "attention kernel not stated: unfused softmax attention (Megatron-LM / "
                "DeepSpeed / metaseq of 2021-22 predate FlashAttention, added to Megatron-LM "
                "in 2023 as --use-flash-attn)", LEGACY_MEGATRON, NOT_MCORE),
    Rule(False, "attention kernel not stated: unfused softmax attention (the Zero Bubble fork's "
                "paper code, branch arxiv of 2023-11: examples/pretrain_zero_bubble.sh runs "
                "Megatron-LM's local transformer without --use-flash-attn, which is off by "
                "default)", ZB_PAPER_CODE, ZB_LATER_CODE),
    Rule(True, "attention kernel not stated: fused (flash) attention, the default of every "
               "engine since 2023 (Transformer Engine, torch SDPA)"),
)

FP8_RECIPE: tuple[Rule, ...] = (
    # Stated recipes first (names as the engines spell them: TE recipe classes, torchao
    # Float8LinearConfig recipes, Megatron-LM --fp8-recipe choices).
    Rule("mxfp8", "", {"fp8_text": r"MXFP8|MXFP8BlockScaling"}),
    Rule("fp8_blockwise", "", {"fp8_text": r"block[- ]?wise|1x128|128x128|Float8BlockScaling"}),
    Rule("fp8_rowwise", "", {"fp8_text": r"row[- ]?wise"}),
    Rule("fp8_tensorwise", "", {"fp8_text": r"tensor[- ]?wise|per[- ]tensor|delayed scaling|"
                                            r"current scaling"}),
    Rule("fp8_tensorwise", "FP8 recipe not stated: Megatron-Core's --fp8-recipe default "
                           "'delayed' (one scale per tensor; megatron/training/arguments.py)",
         {"framework": MCORE}),
    Rule("fp8_tensorwise", "FP8 recipe not stated: Transformer Engine's default DelayedScaling "
                           "(one scale per tensor; transformer_engine/common/recipe)",
         {"fp8_text": r"Transformer Engine|\bTE\b"}),
    Rule("fp8_tensorwise", "FP8 recipe not stated: torchao Float8Linear's default tensorwise "
                           "dynamic scaling (torchao/float8 README)",
         {"fp8_text": r"torchao|Float8Linear|torchtitan"}),
    Rule(None, "FP8 recipe not stated and no engine default known: the generic FP8 factor"),
)
"""The FP8 scaling recipe of an FP8 run (`specs.cluster.FP8_RECIPES`), keyed by the words
the engines use and, when the row names none, the engine's default."""

SEQUENCE_PARALLEL: tuple[Rule, ...] = (
    Rule(False, "sequence parallelism not stated: off (Megatron-LM / Megatron-DeepSpeed of "
                "2021-22 have none; --sequence-parallel came with Korthikanti et al. 2022)",
         LEGACY_MEGATRON, NOT_MCORE),
    Rule(False, "sequence parallelism not stated: off (the Aleph Alpha framework sweeps it as "
                "a separate option; Hagemann et al. 2024 data sheets)",
         {"framework": r"Aleph Alpha"}),
    Rule(True, "sequence parallelism not stated: on with TP (Megatron-Core recipes set "
               "sequence_parallel with tensor_model_parallel_size > 1)", {"framework": MCORE}),
    Rule(True, "sequence parallelism not stated: on with TP"),
)

ZERO_STAGE: tuple[Rule, ...] = (
    Rule(1, "ZeRO not stated: Megatron-Core recipes default to the distributed optimizer "
            "(ZeRO-1, use_distributed_optimizer=True)", {"framework": MCORE}),
    Rule(0, "ZeRO not stated: 0 (Megatron-LM --use-distributed-optimizer is off by default; "
            "no distributed optimizer before 2022)", {"framework": r"Megatron-LM|" + ZB_FORK}),
    Rule(0, "ZeRO stage not stated: 0 (DeepSpeed zero_optimization.stage defaults to 0)",
         {"framework": r"DeepSpeed"}),
    Rule(0, "ZeRO not stated: 0 assumed"),
)

ZERO_NAMES: tuple[Rule, ...] = (
    # Text of `zero_stage` -> stage (FSDP FULL_SHARD and FSDP2 shard parameters: ZeRO-3).
    Rule(1, "", {"zero_stage": r"distributed optimi[sz]er"}),
    Rule(2, "", {"zero_stage": r"SHARD_GRAD_OP|hybrid_shard_zero2"}),
    Rule(3, "", {"zero_stage": r"FSDP|FULL_SHARD|HYBRID_SHARD"}),
)

MICRO_BATCH: tuple[Rule, ...] = (
    Rule("torchtitan", "micro-batch not given: {mbs} (torchtitan default: pp x stages-per-rank "
                       "= {chunks} micro-batches of the local batch {per_rank})",
         {"framework": r"torchtitan"}),
    Rule(1, "micro-batch not given: 1 assumed (Megatron-LM --micro-batch-size has no "
            "default; 1 in its and Megatron-DeepSpeed's large-model scripts)",
         {"framework": MEGATRON}),
)

RECOMPUTE_NAMES: tuple[Rule, ...] = (
    # Text of `activation_recompute` as engines name it -> Plan.recompute.
    Rule("blocks", "source checkpoints whole blocks, every n-th: full recompute of that "
                   "share of the layers (fms-fsdp selective_checkpointing, torchtitan "
                   "selective_ac_option = n; `BLOCK_EVERY`)",
         {"activation_recompute": r"selective.*every\s*n|every\s*n.*selective|selective.*"
                                  r"layer|ac_freq|selective_ac_option\s*=?\s*\d"}),
    Rule("selective", "", {"activation_recompute": r"selective|core_attn"}),
    Rule("selective", "partial recompute of named modules ({text})",
         {"activation_recompute": r"recompute-modules|mlp|moe_act|layernorm|up_proj|moe\b|"
                                  r"shared_experts|mla"}),
    Rule("full", "", {"activation_recompute": r"full|checkpoint-activations|activation "
                                              r"checkpointing|every layer|per block|uniform|"
                                              r"\bblock\b|recompute-method"}),
    Rule("none", "", {"activation_recompute": r"^\s*(none|no|off|false|disabled)\b"}),
)

BLOCK_EVERY: tuple[Rule, ...] = (
    # Every n-th block recomputed whole, n not stated and no HFU / MFU pair to derive it from
    # (`layout.block_recompute`).
    Rule(2, "every 2nd block assumed recomputed (fms-fsdp selective_checkpointing is the share "
            "of blocks, default 1 = every block; a partial share not stated: one half)",
         {"framework": r"fms-fsdp|Foundation Model Stack"}),
    Rule(2, "every 2nd block assumed recomputed (the share not stated: one half)"),
)

RECOMPUTE_DEFAULT: tuple[Rule, ...] = (
    # `activation_recompute` is null: what the rest of the row says, then the engine's default.
    Rule("selective", "recompute read from the row's text: selective",
         {"engine_text": r"recompute-granularity[= ]selective|selective (activation )?"
                         r"(checkpointing|recompute)"}),
    Rule("full", "recompute read from the row's text: full",
         {"engine_text": r"recompute-granularity[= ]full|checkpoint-activations|"
                         r"activation checkpointing|full (activation )?(checkpointing|recompute)"}),
    Rule("none", "recompute read from the row's text: none",
         {"notes": r"recompute[:= ]\s*(none|off)\b"}),
    Rule("selective", "partial recompute of modules named in the notes",
         {"notes": r"recompute[^.;]*\b(mlp|moe_act|layernorm|up_proj|mla_up_proj|core_attn|"
                   r"moe|shared_experts)\b"}),
    Rule("full", "recompute not stated: full (Megatron-LM / DeepSpeed of 2021-22 offer only "
                 "whole-layer --checkpoint-activations, used by their large-model scripts)",
         LEGACY_MEGATRON, NOT_MCORE),
    Rule("none", "recompute not stated: none"),
)

SCHEDULES: tuple[Rule, ...] = (
    # Text of `pipeline_schedule` -> meshplan schedule (torchtitan / Megatron / DeepSpeed names).
    Rule("dualpipe-v", "DualPipe modelled as its V-shaped variant (DualPipeV)",
         {"pipeline_schedule": r"dual\s*pipe"}),
    Rule("zb-v", "", {"pipeline_schedule": r"zbv|zb-v|zero\s*bubble\s*v\b|v-?shape"}),
    Rule("zb-h2", "", {"pipeline_schedule": r"zb-?h2|(zero\s*bubble|zb).*\b2p"}),
    Rule("zb-h1", "", {"pipeline_schedule": r"zb-?h1|zero\s*bubble|zerobubble|\bzb\b"}),
    Rule("looped-bfs", "", {"pipeline_schedule": r"looped\s*-?bfs|breadth"}),
    Rule("interleaved-1f1b", "", {"pipeline_schedule": r"interleav|virtual"}),
    Rule("gpipe", "", {"pipeline_schedule": r"gpipe|fill.?drain|all.?forward"}),
    Rule("1f1b", "", {"pipeline_schedule": r"1f1b|one.?forward.?one.?backward|pipedream.?flush|"
                                           r"deepspeed pipeline"}),
)

STAGE_SPLIT: tuple[Rule, ...] = (
    # Layers that do not divide into the pipeline's stages: where the engine puts the gap.
    # "ends": the first and last stages hold one layer fewer than the others. No rule: every
    # stage modelled as the fullest (the layer count padded).
    Rule("ends", "layers split as the row says: the first and last stages one layer fewer",
         {"notes": r"(stage 0|first stage)[^.]*last stage[^.]*(one|1) fewer"}),
    Rule("ends", "layers split unevenly: the Zero Bubble fork's --allow-padding-num-layers pads "
                 "to a multiple of pp and takes the padding from the last stage, then the first "
                 "(branch arxiv: megatron/arguments.py, megatron/model/transformer.py "
                 "get_offset)", ZB_PAPER_CODE, ZB_LATER_CODE),
    Rule("ends", "layers split unevenly: Megatron-Bridge's Qwen3-235B-A22B recipe sets "
                 "account_for_embedding_in_pipeline_split and account_for_loss_in_pipeline_split "
                 "(the embedding and the loss each take a layer's place on the first and last "
                 "stage; recipes/qwen/qwen3_moe.py)",
         {"framework": MCORE, "model_name": r"Qwen3[-_ ]?235B"}),
    Rule("ends", "layers split unevenly: Megatron-Core's DeepSeek-V3 layout puts the embedding "
                 "with one layer on the first stage and the MTP layer with the loss on the last "
                 "(Megatron-Bridge scripts/performance deepseek_v3 "
                 "pipeline_model_parallel_layout 'Et|(tt|)*30mL'; the MTP module is costed "
                 "with the head, step._with_mtp)",
         {"framework": MCORE, "model_name": r"DeepSeek[-_ ]?V3"}),
)


TP_OVERLAP = r"async\s*-?tp|tp[-_ ]comm[-_ ]overlap|tp communication overlap|" \
             r"tensor[- ]parallel (communication )?overlap"
"""Text naming TP communication overlap (torchtitan AsyncTP, Megatron --tp-comm-overlap)."""
EP_OVERLAP = r"all-to-all overlap on|overlap[-_ ]moe[-_ ]expert[-_ ]parallel[-_ ]comm|" \
             r"ep[-_ ]comm[-_ ]overlap|a2a overlap"
"""Text naming expert-parallel all-to-all overlap (Megatron --overlap-moe-expert-parallel-comm)."""


MOE_DISPATCHER: tuple[Rule, ...] = (
    # The token dispatcher a MoE run used, as Megatron-Core names it (`Plan.moe_dispatcher`):
    # --moe-token-dispatcher-type alltoall | allgather | flex, the flex one with
    # --moe-flex-dispatcher-backend deepep | hybridep (older: --moe-enable-deepep).
    Rule("hybridep", "", {"engine_text": r"hybrid[-_ ]?ep"}),
    Rule("flex-deepep", "", {"engine_text": r"deep[-_ ]?ep|dispatcher[-_ ]type[= ]flex|"
                                            r"flex (token )?dispatcher"}),
    Rule("allgather", "", {"engine_text": r"all-?gather (token )?dispatcher|"
                                          r"dispatcher[-_ ]type[= ]allgather"}),
    Rule("alltoall", "MoE token dispatcher not stated: alltoall (Megatron-Core MoE recipes "
                     "set moe_token_dispatcher_type='alltoall')", {"framework": MCORE}),
    Rule("alltoall", ""),
)
"""Only rows with expert parallelism read it (a single rank dispatches nothing)."""

FORCE_BALANCED = r"force[-_ ]?balanc|force[-_ ]load[-_ ]balancing|forced? (even|uniform) routing"
"""Text naming forced-even routing (Megatron-Core --moe-router-force-load-balancing; NVIDIA's
MoE benchmark tables: "MoE benchmarks force-balance tokens across experts")."""


ALTERNATIVE = re.compile(r"([\w+.-]+)\s*\(([^()]*)\)\s*/\s*([\w+.-]+)\s*\(([^()]*)\)")
"""'X (hardware A) / Y (hardware B)': a value given per hardware inside a row's text."""


def _names(tag: str, gpu: str) -> bool:
    """Whether a parenthesised tag ("GB", "GB300", "H100") names the row's accelerator: one
    of its hardware words (capitals, then digits) starts a word of `gpu_type`."""
    return any(re.search(r"(?<![\w])" + re.escape(w), gpu, re.IGNORECASE)
               for w in re.findall(r"\b[A-Z]{1,4}\d*\b", tag) if len(w) > 1)


ONLY_ON = re.compile(r"([\w+.-]+) on ((?:[A-Z]{1,4}\d+)(?:(?:,\s*|\s+and\s+|\s+or\s+)"
                     r"[A-Z]{1,4}\d+)*)\b")
"""'X on A and B': a value that holds on the hardware named only."""


def for_hardware(text: str, gpu: str) -> str:
    """`text` with every 'X (A) / Y (B)' alternative replaced by the value for `gpu` when
    exactly one tag names it (a shared table row: "recompute none (GB300) / mlp (GB200)"),
    and every 'X on A and B' that names other hardware only read as 'none' ("recompute
    moe_act+layernorm on GB200 and H100" on a GB300 row); left as it is otherwise."""
    def pick(m: re.Match[str]) -> str:
        a, b = _names(m.group(2), gpu), _names(m.group(4), gpu)
        return m.group(1) if a and not b else m.group(3) if b and not a else m.group(0)

    def only_on(m: re.Match[str]) -> str:
        return m.group(0) if _names(m.group(2), gpu) else f"none on {m.group(2)}"
    return ONLY_ON.sub(only_on, ALTERNATIVE.sub(pick, text))


FFN_WIDTH: tuple[Rule, ...] = (
    # A missing FFN width, for the plain (non-gated) GPT MLP only: a gated MLP's width is
    # rounded by each model (Llama's 8h/3 to a multiple), so it has no engine default.
    Rule(4, "ffn_hidden_size not given: 4 x hidden (Megatron-LM --ffn-hidden-size default; "
            "GPT-2/3 and OPT use 4h)", {"model_family": r"GPT|OPT|BLOOM|MPT"},
         {"mlp_type": r"glu"}),
)

GRAD_BYTES: tuple[Rule, ...] = (
    # Bytes per gradient element the engine keeps (4: fp32 gradients, torch AMP and FSDP's
    # default MixedPrecision keep them in the parameter dtype).
    Rule(2, "", {"optimizations": r"mode PURE|reduce_dtype\s*=?\s*bf16"}),
    Rule(2, "gradients bf16: Megatron-Core DistributedDataParallelConfig.grad_reduce_in_fp32 "
            "defaults to False", {"framework": MCORE}),
    Rule(2, "gradients fp16: Megatron-LM accumulates and all-reduces gradients in the fp16 "
            "parameter dtype unless --accumulate-allreduce-grads-in-fp32, which it forces only "
            "for --bf16 (megatron/arguments.py of 2021-23)",
         {"framework": r"Megatron-LM", "precision": r"fp16|float16"}, NOT_MCORE),
    Rule(2, "gradients fp16: the Zero Bubble fork's paper scripts train with --fp16 "
            "(examples/pretrain_zero_bubble.sh, branch arxiv) and Megatron-LM keeps fp16 "
            "gradients unless --accumulate-allreduce-grads-in-fp32 (forced only for --bf16)",
         ZB_PAPER_CODE, {"precision": r"bf16|fp32|fp8", **ZB_LATER_CODE}),
    Rule(2, "gradients bf16: fms-fsdp's mixed-precision policy bfSixteen reduces in bf16 "
            "(fms_fsdp/policies/mixed_precision.py reduce_dtype=torch.bfloat16, picked by "
            "train_utils.get_policies when mixed_precision is on, its default)",
         {"framework": r"fms-fsdp"}),
    Rule(2, "gradients bf16 (assumption: with fp32 gradients several of these measured runs "
            "could not fit)", {"framework": r"Aleph Alpha"}),
    Rule(4, ""),
)


def _gpt2_bpe(tp: int) -> int:
    """GPT-2 BPE (50,257) padded by Megatron to a multiple of 128 x tp
    (--make-vocab-size-divisible-by 128)."""
    unit = 128 * tp
    return -(-50257 // unit) * unit


VOCAB: tuple[Rule, ...] = (
    Rule(256000, "vocab not stated: Nemotron tokenizer, 256,000 tokens (Nemotron-4 report)",
         {"model_name": r"Nemotron"}),
    Rule(128256, "vocab not stated: Llama 3 tokenizer, 128,256 tokens",
         {"model_name": r"Llama[- _]?3(\.\d+)?(?![\d.])"}),
    Rule(32000, "vocab not stated: Llama 2 tokenizer, 32,000 tokens",
         {"model_name": r"Llama[- _]?2(?![\d.])"}),
    Rule(128000, "vocab not in the data sheets: their MFU x step time at 4,194,304 "
                 "tokens/step imply ~128k (dataset caveat 4); 128,000 used",
         {"framework": r"Aleph Alpha"}),
    Rule(_gpt2_bpe, "vocab not stated: GPT-2 BPE (Megatron GPT scripts use gpt2-vocab.json), "
                    "padded by Megatron to {v}",
         {"model_family": r"GPT", "framework": MEGATRON}),
)


# --- DeepSpeed ZeRO-3 before its coalesced, asynchronous gathers ----------------------------

DEEPSPEED_COALESCED_ZERO3 = (0, 5, 5)
"""First DeepSpeed release with PR #1188 ("ZeRO3, improved parameter all-gather operation",
merged 2021-10-31): before it every parameter's all-gather was preceded by a device-wide
`torch.cuda.synchronize()` ("the async version is not async at all", the PR), so no gather
overlapped compute, and ZeRO-3 issued one all-gather and one reduce-scatter per parameter
tensor through torch.distributed's list API (partition_parameters.py `_allgather_param`,
`_reduce_scatter_gradients`, v0.3.15, April 2021). DeepSpeed issue #1174 (v0.3.16, 8 x A100,
5B BERT): forward 480 ms under ZeRO-3 against 60 ms under ZeRO-2."""
PERSISTENCE_THRESHOLD = 100_000
"""`stage3_param_persistence_threshold` default (elements): smaller parameters stay whole on
every rank and are never gathered (DeepSpeed v0.3.15 stage3.py)."""


def _deepspeed_version(row: dict[str, Any]) -> tuple[int, ...] | None:
    text = " ".join(text_field(row, k) for k in ("framework", "source_version", "notes"))
    m = re.search(r"DeepSpeed\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text, re.IGNORECASE)
    return tuple(int(g or 0) for g in m.groups()) if m else None


def deepspeed_per_parameter_zero3(row: dict[str, Any]) -> str | None:
    """Why the run's ZeRO-3 is DeepSpeed's per-parameter, synchronous one (None: it is not):
    framework DeepSpeed at a stated version before `DEEPSPEED_COALESCED_ZERO3`, or without a
    version from 2021 software (a stated year, else the era rule: pre-Hopper hardware)."""
    if not re.search(r"DeepSpeed", text_field(row, "framework"), re.IGNORECASE):
        return None
    version = _deepspeed_version(row)
    if version is not None:
        if version >= DEEPSPEED_COALESCED_ZERO3:
            return None
        return f"DeepSpeed {'.'.join(map(str, version))} < 0.5.5"
    y = year(row)
    if y is not None:
        return f"DeepSpeed of {y} (before 0.5.5, Nov 2021)" if y <= 2021 else None
    if era(row) == "legacy":
        return "DeepSpeed version not stated, 2021-22 era (pre-Hopper hardware): before 0.5.5"
    return None


def zero3_tensors_per_layer(model: Any) -> tuple[int, int]:
    """(gathered, reduced) parameter tensors of one transformer layer under DeepSpeed ZeRO-3:
    weights (fused QKV, output, the MLP's 2 or 3), biases and norm parameters with a
    LayerNorm model (GPT-style), each gathered only at >= `PERSISTENCE_THRESHOLD` elements;
    every tensor's gradient is reduce-scattered."""
    h, f = model.hidden_size, model.ffn_hidden_size
    gated = model.mlp_type in ("swiglu", "geglu")
    weights = 2 + (3 if gated else 2)
    bias = model.norm == "layernorm"
    sizes = ([3 * h, h] + [f] * (2 if gated else 1) + [h]) if bias else []
    norms = [h] * (4 if bias else 2)
    small = sizes + norms
    return weights + sum(n >= PERSISTENCE_THRESHOLD for n in small), weights + len(small)
