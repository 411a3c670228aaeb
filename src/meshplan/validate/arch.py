"""The Model of a published run: its architecture fields, the family's layer conventions
(`STYLES`) and, for a missing vocabulary, the documented tokenizer of that model
(`rules.VOCAB`).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from meshplan.specs.io import load_model
from meshplan.specs.model import MLA, Model, MoE
from meshplan.validate.fields import Unbuildable, int_field, need, text_field
from meshplan.validate.rules import FFN_WIDTH, VOCAB, apply, first

LLAMA = {"position_embedding": "rope", "norm": "rmsnorm", "linear_bias": False,
         "tied_embeddings": False, "dropout": False}
GPT = {"position_embedding": "learned", "norm": "layernorm", "linear_bias": True,
       "tied_embeddings": True, "dropout": True}
STYLES: tuple[tuple[str, dict[str, Any], str], ...] = (
    # (regex on model_family, Model fields, default mlp_type)
    (r"ALiBi", {**GPT, "position_embedding": "alibi", "dropout": False}, "gelu"),  # BLOOM
    (r"^MPT", {**GPT, "linear_bias": False, "dropout": False}, "gelu"),  # llm-foundry yamls
    (r"Nemotron", {**LLAMA, "norm": "layernorm"}, "relu"),
    (r"GPT", GPT, "gelu"),  # Megatron GPT: GeLU, learned positions, biases, dropout 0.1
    (r"Llama|MoE|Qwen|DeepSeek|Mistral", LLAMA, "swiglu"),
)
MLP_TYPES: tuple[tuple[str, str, str], ...] = (
    (r"swiglu", "swiglu", ""),
    (r"geglu", "geglu", ""),
    (r"squared\s*relu", "relu", "squared ReLU modelled as ReLU (same two GEMMs)"),
    (r"relu", "relu", ""),
    (r"gelu", "gelu", ""),
)


def _vocab(row: dict[str, Any], tp: int, notes: list[str]) -> int:
    if (v := int_field(row, "vocab_size")) is not None:
        return v
    rule = first(VOCAB, row)
    if rule is None:
        raise Unbuildable("vocab_size not given and no documented default for this model")
    v = rule.value(tp) if callable(rule.value) else int(rule.value)
    notes.append(rule.why.format(v=f"{v:,}"))
    return v


def build_model(row: dict[str, Any], tp: int, notes: list[str]) -> Model:
    layers, hidden, heads, _ = need(row, "num_layers", "hidden_size", "num_attention_heads",
                                     "seq_length")
    family = text_field(row, "model_family")
    style, default_mlp = next(((s, d) for p, s, d in STYLES if re.search(p, family)),
                              (None, None))
    raw_mlp = text_field(row, "mlp_type").lower()
    mlp = next(((t, n) for p, t, n in MLP_TYPES if re.search(p, raw_mlp)), None)
    if mlp is None:
        if default_mlp is None:
            raise Unbuildable(f"mlp_type {row['mlp_type']!r} unknown")
        mlp = (default_mlp, f"mlp_type not given: {default_mlp} ({family} default)")
    if style is None:
        style = LLAMA if mlp[0] in ("swiglu", "geglu") else GPT
        notes.append(f"model family {family!r} unknown: "
                     f"{'Llama' if style is LLAMA else 'GPT'}-style layers assumed")
    if mlp[1]:
        notes.append(mlp[1])
    ffn = int_field(row, "ffn_hidden_size")
    if ffn is None:
        factor = apply(FFN_WIDTH, {**row, "mlp_type": mlp[0]}, notes)
        if factor is None:
            raise Unbuildable("ffn_hidden_size not given (no engine default for a gated MLP)")
        ffn = int(factor) * hidden
    elif ffn <= 0:
        raise Unbuildable(f"ffn_hidden_size={ffn}: must be positive")
    arch = text_field(row, "arch_notes")
    kwargs: dict[str, Any] = dict(style)
    if m := re.search(r"head dim (\d+)", arch):
        kwargs["head_dim"] = int(m.group(1))
    if re.search(r"QK-?(Layer|RMS)?Norm", arch, re.IGNORECASE):
        kwargs["qk_norm"] = True
    if "MLA" in arch:
        kwargs["mla"] = _mla(arch, notes)
    if re.search(r"MTP", arch + text_field(row, "model_name")):
        m = re.search(r"(\d+) MTP", arch)
        kwargs["mtp_layers"] = int(m.group(1)) if m else 1
        if not m:
            notes.append("multi-token-prediction modules not counted: 1 (DeepSeek-V3 "
                         "num_nextn_predict_layers = 1), on the last pipeline stage")
    if (experts := int_field(row, "moe_num_experts")) is not None:
        top_k, e_ffn = need(row, "moe_top_k", "moe_ffn_hidden_size")
        shared = int_field(row, "moe_shared_expert_ffn") or 0
        kwargs["moe"] = MoE(num_experts=experts, top_k=top_k, expert_ffn_hidden_size=e_ffn,
                            num_shared_experts=1 if shared else 0,
                            shared_expert_ffn_hidden_size=shared,
                            num_dense_layers=int_field(row, "moe_dense_layers") or 0)
    return Model(name=text_field(row, "model_name") or row["id"], num_layers=layers,
                 hidden_size=hidden, ffn_hidden_size=ffn,
                 mlp_type=mlp[0],  # type: ignore[arg-type]
                 num_attention_heads=heads, num_kv_heads=int_field(row, "num_kv_heads"),
                 vocab_size=_vocab(row, tp, notes), max_seq_len=None,
                 source=f"published run {row['id']}", **kwargs)


def _mla(arch: str, notes: list[str]) -> MLA:
    m = re.search(r"q_lora (\d+), kv_lora (\d+), qk_head (\d+) \+ rope (\d+), v_head (\d+)", arch)
    if m:
        q, kv, nope, rope, v = map(int, m.groups())
        return MLA(q_lora_rank=q, kv_lora_rank=kv, qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                   v_head_dim=v)
    notes.append("MLA dimensions from the deepseek-v3 preset")
    mla = _deepseek_mla()
    assert mla is not None
    return mla


@cache
def _deepseek_mla() -> MLA | None:
    return load_model("deepseek-v3").mla
