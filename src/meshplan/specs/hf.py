"""Hugging Face `config.json` -> `Model`.

A config.json names the same shape with different keys per family (`n_layer` in GPT-2,
`num_hidden_layers` elsewhere) and leaves out what its modelling code hard-wires (Qwen2's QKV
bias, Qwen3's QK-norm, GPT-2's learned positions). So each supported `model_type` is one row of
`FAMILIES`: which keys to read and what the code fixes. The numerics an engine needs to rebuild
the same network are read too (RoPE base and scaling, from `rope_theta`/`rope_scaling` or
transformers 5's `rope_parameters`; norm epsilon; DeepSeek's router settings; MTP depth). What
else a config carries (torch_dtype, token ids, quantization) is ignored.

Defaults follow the `transformers` config classes, so a key missing from the file means what it
means to `transformers` (e.g. GPT-2 ties embeddings by default, Llama does not).

Files as transformers 5.x writes them load too: renamed keys are read under both spellings
(Qwen3-MoE's `num_experts` / `num_local_experts`), and the multimodal wrappers (Gemma 3, Llama 4)
are read through their nested `text_config`. What a family's network has and `Model` cannot say
(sliding windows, logit soft-capping, attention sinks, sandwich norms, a vision tower) is not
dropped silently: `read_hf_config` returns it as one-line `assumptions`, with the number of
parameters not counted where there are any. An expert-count key that a family does not read is an
error, so a mixture-of-experts file never loads as a dense model.

Every user mistake is one `MeshplanError` line naming the file, the key and the value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from pydantic import ValidationError

from meshplan.errors import MeshplanError, from_validation_error, invalid
from meshplan.specs.model import MlpType, Model

_REQUIRED: Any = object()


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class _Reader:
    """Typed access to a config dict; a bad value becomes a one-line error naming file and key.

    A key that is absent or null (HF writes null for "unset") takes the default; the default is
    returned as is, so `None` can mean "not given" for optional fields.
    """

    def __init__(self, data: dict[str, Any], where: str, model_type: str) -> None:
        self.data, self.where, self.model_type = data, where, model_type

    def _get(self, key: str, default: Any, ok: Callable[[Any], bool], allowed: str) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise MeshplanError(
                    f"{self.where}: missing key {key!r} (required for model_type "
                    f"{self.model_type!r})"
                )
            return default
        if not ok(value):
            raise invalid(f"{self.where}: {key}", value, allowed)
        return value

    def integer(self, key: str, default: Any = _REQUIRED, minimum: int = 1) -> Any:
        allowed = (
            f"expected an integer >= {minimum}" if minimum != 1 else "expected a positive integer"
        )
        return self._get(key, default, lambda v: _is_int(v) and v >= minimum, allowed)

    def flag(self, key: str, default: Any = _REQUIRED) -> Any:
        return self._get(key, default, lambda v: isinstance(v, bool), "expected true or false")

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        return self._get(key, default, lambda v: isinstance(v, str), "expected a string")

    def number(self, key: str, default: Any = _REQUIRED) -> Any:
        ok = lambda v: _is_int(v) or isinstance(v, float)  # noqa: E731
        return self._get(key, default, ok, "expected a number")

    def integers(self, key: str, default: Any = _REQUIRED) -> Any:
        ok = lambda v: isinstance(v, list) and all(_is_int(i) for i in v)  # noqa: E731
        return self._get(key, default, ok, "expected a list of integers")


# ----------------------------------------------------------------------------------------------
# Activation -> MLP type
# ----------------------------------------------------------------------------------------------

_GATED_ACTS: dict[str, MlpType] = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_new": "geglu",
    "gelu_fast": "geglu",
    "gelu_pytorch_tanh": "geglu",
}
"""Gated families (Llama-style gate/up/down): the activation names the gate."""

_PLAIN_ACTS: dict[str, MlpType] = {
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_fast": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
}
"""Two-matrix families (GPT-2, GPT-NeoX)."""


# ----------------------------------------------------------------------------------------------
# Mixture-of-experts readers: one per routing convention, each returns MoE kwargs or None
# ----------------------------------------------------------------------------------------------


def _leading_dense(cfg: _Reader, num_layers: int, is_moe: Callable[[int], bool], keys: str) -> int:
    """Number of leading dense layers; `Model` cannot express dense layers after an MoE one."""
    dense = [i for i in range(num_layers) if not is_moe(i)]
    if dense != list(range(len(dense))):
        raise MeshplanError(
            f"{cfg.where}: {keys} give dense layers {dense} among MoE layers; meshplan supports "
            "only leading dense layers"
        )
    return len(dense)


def _num_experts(cfg: _Reader, *keys: str) -> int:
    """Routed experts under any of `keys` (transformers renamed some: Qwen3-MoE's `num_experts` is
    `num_local_experts` since 5.0); 0 when none is given, an error when two disagree."""
    given = {key: cfg.integer(key, default=0, minimum=0) for key in keys}
    values = {v for v in given.values() if v}
    if len(values) > 1:
        shown = ", ".join(f"{k}={v}" for k, v in given.items() if v)
        raise MeshplanError(f"{cfg.where}: {shown} disagree on the number of experts")
    return values.pop() if values else 0


def _mixtral_moe(cfg: _Reader, num_layers: int) -> dict[str, Any] | None:
    """Mixtral: every layer is MoE and each expert is `intermediate_size` wide."""
    return {
        "num_experts": cfg.integer("num_local_experts"),
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": cfg.integer("intermediate_size"),
    }


def _qwen_moe(cfg: _Reader, num_layers: int) -> dict[str, Any] | None:
    """Qwen2-MoE / Qwen3-MoE: layer i is MoE when (i+1) % decoder_sparse_step == 0 and i is not
    in mlp_only_layers (transformers' Qwen3MoeDecoderLayer)."""
    num_experts = _num_experts(cfg, "num_local_experts", "num_experts")
    if not num_experts:
        return None
    step = cfg.integer("decoder_sparse_step", default=1)
    mlp_only = set(cfg.integers("mlp_only_layers", default=[]))
    shared = cfg.integer("shared_expert_intermediate_size", default=0, minimum=0)  # Qwen2-MoE only
    return {
        "num_experts": num_experts,
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": cfg.integer("moe_intermediate_size"),
        "normalize_top_k": cfg.flag("norm_topk_prob", default=False),
        "num_shared_experts": 1 if shared else 0,
        "shared_expert_ffn_hidden_size": shared,
        "num_dense_layers": _leading_dense(
            cfg,
            num_layers,
            lambda i: (i + 1) % step == 0 and i not in mlp_only,
            "decoder_sparse_step/mlp_only_layers",
        ),
    }


def _deepseek_moe(cfg: _Reader, num_layers: int) -> dict[str, Any] | None:
    """DeepSeek-V2/V3: layer i is MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0
    (modeling_deepseek.py). The shared experts run as one MLP of n_shared * moe_intermediate."""
    num_experts = cfg.integer("n_routed_experts", default=0, minimum=0)
    if not num_experts:
        return None
    first_dense = cfg.integer("first_k_dense_replace", default=0, minimum=0)
    freq = cfg.integer("moe_layer_freq", default=1)
    expert_ffn = cfg.integer("moe_intermediate_size")
    num_shared = cfg.integer("n_shared_experts", default=0, minimum=0)
    return {
        "num_experts": num_experts,
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": expert_ffn,
        "num_shared_experts": num_shared,
        "shared_expert_ffn_hidden_size": expert_ffn if num_shared else 0,
        "num_dense_layers": _leading_dense(
            cfg,
            num_layers,
            lambda i: i >= first_dense and i % freq == 0,
            "first_k_dense_replace/moe_layer_freq",
        ),
        **_deepseek_router(cfg),
    }


def _deepseek_router(cfg: _Reader) -> dict[str, Any]:
    """DeepSeek-V3 / GLM-4-MoE routing (modeling_deepseek.py MoEGate): `scoring_func`,
    `norm_topk_prob`, group-limited top-k (`n_group`, `topk_group`), `routed_scaling_factor`,
    and `topk_method` noaux_tc (the score-correction bias). V2's defaults are softmax, greedy."""
    score = cfg.text("scoring_func", default="softmax")
    if score not in ("softmax", "sigmoid"):
        raise invalid(f"{cfg.where}: scoring_func", score, "supported: softmax, sigmoid")
    method = cfg.text("topk_method", default="greedy")
    groups = cfg.integer("n_group", default=1) if method != "greedy" else 1
    return {
        "router_score": score,
        "normalize_top_k": cfg.flag("norm_topk_prob", default=False),
        "router_groups": groups if groups > 1 else 0,
        "router_group_top_k": cfg.integer("topk_group", default=1) if groups > 1 else 0,
        "router_scaling": float(cfg.number("routed_scaling_factor", default=1.0)),
        "router_expert_bias": method == "noaux_tc",
    }


def _deepseek_mla(cfg: _Reader) -> dict[str, Any]:
    """MLA ranks; V2-Lite has q_lora_rank null, meaning queries are projected directly."""
    return {
        "q_lora_rank": cfg.integer("q_lora_rank", default=0, minimum=0),
        "kv_lora_rank": cfg.integer("kv_lora_rank"),
        "qk_nope_head_dim": cfg.integer("qk_nope_head_dim"),
        "qk_rope_head_dim": cfg.integer("qk_rope_head_dim"),
        "v_head_dim": cfg.integer("v_head_dim"),
    }


def _every_layer_moe(cfg: _Reader, num_layers: int) -> dict[str, Any] | None:
    """GPT-OSS: every layer is MoE, `num_local_experts` experts of `intermediate_size`."""
    return {
        "num_experts": cfg.integer("num_local_experts"),
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": cfg.integer("intermediate_size"),
    }


def _llama4_moe(cfg: _Reader, num_layers: int) -> dict[str, Any] | None:
    """Llama 4: layer i is MoE when i is in `moe_layers` (transformers' default: every
    `interleave_moe_layer_step`-th layer, ending each step). An MoE layer has `num_local_experts`
    routed experts and one shared expert, all `intermediate_size` wide; dense layers are
    `intermediate_size_mlp` wide."""
    step = cfg.integer("interleave_moe_layer_step", default=1)
    default_layers = list(range(step - 1, num_layers, step))
    moe_layers = set(cfg.integers("moe_layers", default=default_layers))
    ffn = cfg.integer("intermediate_size")
    return {
        "num_experts": cfg.integer("num_local_experts"),
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": ffn,
        "num_shared_experts": 1,
        "shared_expert_ffn_hidden_size": ffn,
        # Llama4TextMoe: sigmoid of the top-k logits, not renormalised.
        "router_score": "sigmoid",
        "normalize_top_k": False,
        "num_dense_layers": _leading_dense(
            cfg, num_layers, lambda i: i in moe_layers, "moe_layers/interleave_moe_layer_step"
        ),
    }


# ----------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Keys:
    """Where a family keeps each shape number."""

    num_layers: str = "num_hidden_layers"
    hidden_size: str = "hidden_size"
    ffn_hidden_size: str = "intermediate_size"
    ffn_default_multiple: int = 0
    """When > 0 the FFN key may be absent or null, meaning this multiple of hidden (GPT-2)."""
    num_heads: str = "num_attention_heads"
    max_seq_len: str = "max_position_embeddings"
    activation: str = "hidden_act"
    activation_alt: str = ""
    """Read when `activation` is absent (Gemma: `hidden_activation`, else older `hidden_act`)."""


_LLAMA_KEYS = _Keys()
_GEMMA_KEYS = _Keys(activation="hidden_activation", activation_alt="hidden_act")
_LLAMA4_KEYS = _Keys(ffn_hidden_size="intermediate_size_mlp")
_GPT2_KEYS = _Keys(
    num_layers="n_layer",
    hidden_size="n_embd",
    ffn_hidden_size="n_inner",
    ffn_default_multiple=4,
    num_heads="n_head",
    max_seq_len="n_positions",
    activation="activation_function",
)


@dataclass(frozen=True)
class _Family:
    """What a model_type's modelling code fixes, and how to read the rest of its config."""

    keys: _Keys = _LLAMA_KEYS
    gated: bool = True
    default_act: str = "silu"
    position_embedding: str = "rope"
    norm: str = "rmsnorm"
    tied_default: bool = False
    linear_bias: bool = False  # every linear layer has a bias (GPT-2, GPT-NeoX)
    qkv_bias: bool = False  # hard-wired QKV bias (Qwen2)
    qk_norm: bool = False  # hard-wired per-head RMSNorm on Q and K (Qwen3)
    gqa: bool = True  # reads num_key_value_heads
    mla: bool = False
    qk_norm_key: str = ""  # config flag for a weighted per-head Q/K RMSNorm (GLM-4-MoE)
    all_bias_key: str = ""  # this flag puts a bias on every linear layer (GPT-OSS)
    moe: Callable[[_Reader, int], dict[str, Any] | None] | None = None
    expert_keys: tuple[str, ...] = ()
    """The routed-expert keys `moe` reads; any other one in the file is an error (never dense)."""
    notes: Callable[[_Reader, Model], list[str]] | None = None
    """What the modelling code has that `Model` does not express (see `assumptions`)."""
    defaults: tuple[tuple[str, Any], ...] = ()
    """Config-class defaults for keys a sparse nested `text_config` leaves out (Gemma 3)."""
    sliding_every: int = 0
    """Without `layer_types`: every this-many-th layer is global, the others sliding-window."""
    eps_key: str = "rms_norm_eps"
    eps_default: float = 1e-6
    """The config class's norm-epsilon key and default (LlamaConfig 1e-6, GPT-2 1e-5...)."""


def _sandwich_norm_notes(cfg: _Reader, model: Model) -> list[str]:
    missing = 2 * model.hidden_size * model.num_layers
    return [
        f"post-attention and post-MLP RMSNorms (2 per layer) are not in meshplan's Model: "
        f"{missing:,} parameters (2 x hidden x layers) are not counted"
    ]


def _gpt_oss_notes(cfg: _Reader, model: Model) -> list[str]:
    assert model.moe is not None
    per_layer = model.moe.num_experts + model.num_attention_heads
    return [
        f"router biases and attention sinks (experts + heads = {per_layer} per layer, "
        f"{per_layer * model.num_layers:,} in all) are not counted",
        "clamped SwiGLU (swiglu_limit) modelled as a plain SwiGLU",
    ]


def _llama4_notes(cfg: _Reader, model: Model) -> list[str]:
    notes = []
    if cfg.flag("use_qk_norm", default=True):
        notes.append("QK-norm is a weightless L2 norm: no parameters, its FLOPs are ignored")
    if cfg.data.get("no_rope_layers"):
        notes.append("layers without RoPE (no_rope_layers) cost the same as RoPE layers here")
    return notes


_QWEN_EXPERT_KEYS = ("num_local_experts", "num_experts")

FAMILIES: dict[str, _Family] = {
    "llama": _Family(),
    "mistral": _Family(),
    "mixtral": _Family(moe=_mixtral_moe, expert_keys=("num_local_experts",), eps_default=1e-5),
    "qwen2": _Family(qkv_bias=True),
    "qwen2_moe": _Family(qkv_bias=True, moe=_qwen_moe, expert_keys=_QWEN_EXPERT_KEYS),
    "qwen3": _Family(qk_norm=True),
    "qwen3_moe": _Family(qk_norm=True, moe=_qwen_moe, expert_keys=_QWEN_EXPERT_KEYS),
    "deepseek_v2": _Family(mla=True, moe=_deepseek_moe, expert_keys=("n_routed_experts",)),
    "deepseek_v3": _Family(mla=True, moe=_deepseek_moe, expert_keys=("n_routed_experts",)),
    "gemma": _Family(keys=_GEMMA_KEYS, default_act="gelu_pytorch_tanh", tied_default=True),
    "gemma2": _Family(
        keys=_GEMMA_KEYS,
        default_act="gelu_pytorch_tanh",
        tied_default=True,
        notes=_sandwich_norm_notes,
        sliding_every=2,
    ),
    "gemma3_text": _Family(
        keys=_GEMMA_KEYS,
        default_act="gelu_pytorch_tanh",
        tied_default=True,
        qk_norm=True,
        notes=_sandwich_norm_notes,
        defaults=(
            ("vocab_size", 262208),
            ("max_position_embeddings", 131072),
            ("sliding_window", 4096),
        ),
        sliding_every=6,  # transformers' sliding_window_pattern
    ),
    "phi3": _Family(eps_default=1e-5),
    "gpt_oss": _Family(
        all_bias_key="attention_bias",
        moe=_every_layer_moe,
        expert_keys=("num_local_experts",),
        notes=_gpt_oss_notes,
        sliding_every=2,
        eps_default=1e-5,
    ),
    "llama4_text": _Family(
        keys=_LLAMA4_KEYS,
        moe=_llama4_moe,
        expert_keys=("num_local_experts",),
        notes=_llama4_notes,
        eps_default=1e-5,
    ),
    "glm4_moe": _Family(
        qk_norm_key="use_qk_norm", moe=_deepseek_moe, expert_keys=("n_routed_experts",),
        eps_default=1e-5,
        # Glm4MoeTopkRouter: sigmoid scores with an e_score_correction_bias, not in the config.
        defaults=(("scoring_func", "sigmoid"), ("topk_method", "noaux_tc")),
    ),
    "gpt2": _Family(
        keys=_GPT2_KEYS,
        gated=False,
        default_act="gelu_new",
        position_embedding="learned",
        norm="layernorm",
        tied_default=True,  # PretrainedConfig default; gpt2's config.json does not say
        linear_bias=True,
        gqa=False,
        eps_key="layer_norm_epsilon",
        eps_default=1e-5,
    ),
    "gpt_neox": _Family(
        gated=False,
        default_act="gelu",
        norm="layernorm",
        linear_bias=True,
        gqa=False,
        eps_key="layer_norm_eps",
        eps_default=1e-5,
    ),
}
"""Supported `model_type`s. Sources: the transformers `configuration_*.py` / `modeling_*.py` of
each family (defaults and hard-wired features), DeepSeek's `modeling_deepseek.py`."""

WRAPPERS: dict[str, str] = {"gemma3": "gemma3_text", "llama4": "llama4_text"}
"""Multimodal `model_type`s whose decoder is the nested `text_config` (of this type when the
nested dict does not say)."""

_EXPERT_KEYS = (
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "moe_num_experts",
    "num_routed_experts",
    "n_experts",
)
"""Keys that make a config mixture-of-experts in some family: one a family does not read is an
error, so an MoE file is never loaded as a dense model."""

_DROPOUT_KEYS = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout",
    "hidden_dropout_prob",
    "attention_dropout",
    "attention_probs_dropout_prob",
)
"""Any positive rate among these means activation memory carries dropout masks."""


def _mlp_type(cfg: _Reader, family: _Family) -> MlpType:
    key = family.keys.activation
    if family.keys.activation_alt and cfg.data.get(key) is None:
        key = family.keys.activation_alt
    act = cfg.text(key, default=family.default_act)
    table = _GATED_ACTS if family.gated else _PLAIN_ACTS
    if act not in table:
        raise invalid(f"{cfg.where}: {key}", act, f"supported: {', '.join(sorted(table))}")
    return table[act]


def _biases(cfg: _Reader, family: _Family) -> tuple[bool, bool]:
    """(linear_bias, qkv_bias). Llama-style configs opt in with attention_bias / mlp_bias."""
    if family.linear_bias:
        return True, False
    if family.all_bias_key:
        return cfg.flag(family.all_bias_key, default=True), False
    attention_bias = cfg.flag("attention_bias", default=False)
    if attention_bias and cfg.flag("mlp_bias", default=False):
        return True, False
    return False, family.qkv_bias or attention_bias


def _dropout(cfg: _Reader) -> bool:
    return any(cfg.number(key, default=0.0) > 0 for key in _DROPOUT_KEYS)


def _fields(cfg: _Reader, family: _Family, name: str) -> dict[str, Any]:
    """The `Model` fields, before validation."""
    keys = family.keys
    num_layers = cfg.integer(keys.num_layers)
    hidden = cfg.integer(keys.hidden_size)
    ffn_default = keys.ffn_default_multiple * hidden or _REQUIRED
    ffn = cfg.integer(keys.ffn_hidden_size, default=ffn_default)
    linear_bias, qkv_bias = _biases(cfg, family)
    fields: dict[str, Any] = {
        "name": name,
        "num_layers": num_layers,
        "hidden_size": hidden,
        "ffn_hidden_size": ffn,
        "mlp_type": _mlp_type(cfg, family),
        "num_attention_heads": cfg.integer(keys.num_heads),
        "vocab_size": cfg.integer("vocab_size"),
        "tied_embeddings": cfg.flag("tie_word_embeddings", default=family.tied_default),
        "position_embedding": family.position_embedding,
        "norm": family.norm,
        "qk_norm": family.qk_norm
        or (bool(family.qk_norm_key) and cfg.flag(family.qk_norm_key, default=False)),
        "linear_bias": linear_bias,
        "qkv_bias": qkv_bias,
        "dropout": _dropout(cfg),
        "max_seq_len": cfg.integer(keys.max_seq_len, default=None),
        "norm_eps": float(cfg.number(family.eps_key, default=family.eps_default)),
        "mtp_layers": cfg.integer("num_nextn_predict_layers", default=0, minimum=0),
        **_rope(cfg),
        "source": f"Hugging Face config.json ({cfg.model_type}): {cfg.where}",
    }
    if family.mla:
        # MLA has no separate K/V heads and no single head_dim (newer transformers write
        # head_dim = qk_rope_head_dim): the MLA block carries those shapes.
        fields["mla"] = _deepseek_mla(cfg)
    else:
        if family.gqa:
            fields["num_kv_heads"] = cfg.integer("num_key_value_heads", default=None)
        fields["head_dim"] = cfg.integer("head_dim", default=None)
    if family.moe is not None:
        fields["moe"] = family.moe(cfg, num_layers)
    return fields


_ROPE_TYPES = {"llama3": "llama3", "yarn": "yarn", "linear": "linear"}
_ROPE_KEYS = ("factor", "original_max_position_embeddings", "low_freq_factor",
              "high_freq_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")


def _rope_parameters(cfg: _Reader) -> tuple[dict[str, Any], Any]:
    """(scaling dict, theta): transformers 5's `rope_parameters` (one dict, or one per layer
    type, of which full attention's is the model's), else 4.x's `rope_scaling` and `rope_theta`."""
    params = cfg.data.get("rope_parameters")
    if isinstance(params, dict):
        if isinstance(params.get("full_attention"), dict):
            params = params["full_attention"]
        return params, params.get("rope_theta", cfg.data.get("rope_theta"))
    scaling = cfg.data.get("rope_scaling")
    return (scaling if isinstance(scaling, dict) else {}), cfg.data.get("rope_theta")


def _rope(cfg: _Reader) -> dict[str, Any]:
    """`rope_theta` and `rope_scaling` fields. A scaling type meshplan does not carry (dynamic
    NTK, LongRoPE) is left out here and named in the assumptions (`_generic_notes`)."""
    params, theta = _rope_parameters(cfg)
    if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float))):
        raise invalid(f"{cfg.where}: rope_theta", theta, "expected a number")
    out: dict[str, Any] = {"rope_theta": float(theta)} if theta is not None else {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return out
    if kind not in _ROPE_TYPES:
        return out
    out["rope_scaling"] = {"type": _ROPE_TYPES[kind],
                           **{k: params[k] for k in _ROPE_KEYS if params.get(k) is not None}}
    return out


def _layer_kinds(cfg: _Reader, kind: str, num_layers: int) -> str:
    """'on N of L layers' from `layer_types` (or the family's pattern), else 'on every layer'."""
    types = cfg.data.get("layer_types")
    if isinstance(types, list) and types:
        count = sum(t == kind for t in types)
    elif kind == "chunked_attention" and isinstance(cfg.data.get("no_rope_layers"), list):
        count = sum(bool(i) for i in cfg.data["no_rope_layers"])  # Llama 4: RoPE layers chunk
    elif kind == "sliding_attention" and FAMILIES[cfg.model_type].sliding_every:
        every = FAMILIES[cfg.model_type].sliding_every
        every = cfg.data.get("sliding_window_pattern") or every
        count = sum((i + 1) % every != 0 for i in range(num_layers)) if _is_int(every) else 0
    else:
        return "on every layer"
    return f"on {count} of {num_layers} layers"


def _generic_notes(cfg: _Reader, model: Model) -> list[str]:
    """Features any family may switch on that meshplan's cost model does not have."""
    notes = []
    window = cfg.data.get("sliding_window")
    if _is_int(window) and window > 0 and cfg.data.get("use_sliding_window") is not False:
        where = _layer_kinds(cfg, "sliding_attention", model.num_layers)
        notes.append(
            f"sliding-window attention ({window} tokens) {where}: meshplan models full causal "
            "attention, so long-sequence attention FLOPs and KV cache are over-estimated"
        )
    chunk = cfg.data.get("attention_chunk_size")
    if _is_int(chunk) and chunk > 0:
        where = _layer_kinds(cfg, "chunked_attention", model.num_layers)
        notes.append(
            f"chunked local attention ({chunk} tokens) {where}: meshplan models full causal "
            "attention there"
        )
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        cap = cfg.data.get(key)
        if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0:
            notes.append(f"{key} ({cap}) is not modelled (no parameters, elementwise cost)")
    mtp = cfg.data.get("num_nextn_predict_layers")
    if _is_int(mtp) and mtp > 0:
        notes.append(
            f"{mtp} multi-token-prediction layer(s) not counted (transformers does not build "
            "them either); Megatron-LM exports build them (--mtp-num-layers)"
        )
    kind = _rope_parameters(cfg)[0].get("rope_type", _rope_parameters(cfg)[0].get("type"))
    if kind not in (None, "default", *_ROPE_TYPES):
        notes.append(f"RoPE scaling {kind!r} is not carried: exports train unscaled RoPE "
                     "(scale the context after training)")
    return notes


def _check_expert_keys(cfg: _Reader, family: _Family) -> None:
    """An expert count the family does not read would silently give a dense model: refuse it."""
    for key in _EXPERT_KEYS:
        value = cfg.data.get(key)
        if key in family.expert_keys or value in (None, 0, False, [], {}):
            continue
        read = f"; it reads {', '.join(family.expert_keys)}" if family.expert_keys else ""
        raise MeshplanError(
            f"{cfg.where}: {key} = {value!r} makes this a mixture-of-experts model, but meshplan "
            f"does not read {key!r} for model_type {cfg.model_type!r}{read}"
        )


@dataclass(frozen=True)
class HfConfig:
    """A loaded config.json: the `Model`, and what of the file it does not express."""

    model: Model
    assumptions: tuple[str, ...]
    """One line each: a feature of the network that meshplan does not model, and what that
    means for the estimate (parameters not counted, attention cost over-estimated...)."""


def _text_config(data: dict[str, Any], where: str) -> tuple[dict[str, Any], str, list[str]]:
    """The decoder's dict: `text_config` for the multimodal wrappers (Gemma 3, Llama 4), or the
    file itself. Keys the wrapper keeps at the top (tie_word_embeddings) fill gaps below."""
    model_type = data.get("model_type")
    nested = data.get("text_config")
    if nested is None:
        return data, where, []
    if not isinstance(nested, dict):
        raise invalid(f"{where}: text_config", nested, "expected an object")
    inner = dict(nested)
    inner.setdefault("model_type", WRAPPERS.get(str(model_type), model_type))
    if inner.get("tie_word_embeddings") is None and "tie_word_embeddings" in data:
        inner["tie_word_embeddings"] = data["tie_word_embeddings"]
    notes = []
    if any(data.get(k) is not None for k in ("vision_config", "audio_config")):
        notes.append(
            f"{model_type}: only the text decoder (text_config) is planned; the vision/audio "
            "encoder and projector are not counted"
        )
    return inner, f"{where} (text_config)", notes


def read_hf_config(data: dict[str, Any], *, name: str, where: str) -> HfConfig:
    """A Hugging Face config.json dict -> `HfConfig`, or one `MeshplanError` line saying why not.

    `where` (the file) prefixes every message so a user with many configs knows which one broke.
    """
    data, where, notes = _text_config(data, where)
    model_type = data.get("model_type")
    if model_type is None:
        raise MeshplanError(f"{where}: missing key 'model_type'")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        supported = [*FAMILIES, *WRAPPERS]
        raise invalid(f"{where}: model_type", model_type, f"supported: {', '.join(supported)}")
    family = FAMILIES[model_type]
    if family.defaults:
        data = {**dict(family.defaults), **{k: v for k, v in data.items() if v is not None}}
    cfg = _Reader(data, where, model_type)
    _check_expert_keys(cfg, family)
    fields = _fields(cfg, family, name)
    try:
        model = Model.model_validate(fields)
    except ValidationError as err:
        raise from_validation_error(err, where) from None
    notes += family.notes(cfg, model) if family.notes is not None else []
    notes += _generic_notes(cfg, model)
    return HfConfig(model=model, assumptions=tuple(notes))


def model_from_hf_config(data: dict[str, Any], *, name: str, where: str) -> Model:
    """The `Model` of `read_hf_config` (its assumptions dropped: use that to report them)."""
    return read_hf_config(data, name=name, where=where).model
