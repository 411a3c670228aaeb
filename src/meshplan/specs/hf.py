"""Hugging Face `config.json` -> `Model`.

A config.json names the same shape with different keys per family (`n_layer` in GPT-2,
`num_hidden_layers` elsewhere) and leaves out what its modelling code hard-wires (Qwen2's QKV
bias, Qwen3's QK-norm, GPT-2's learned positions). So each supported `model_type` is one row of
`FAMILIES`: which keys to read and what the code fixes. Everything else a config carries
(torch_dtype, rope_scaling, token ids, quantization) does not change the shape and is ignored.

Defaults follow the `transformers` config classes, so a key missing from the file means what it
means to `transformers` (e.g. GPT-2 ties embeddings by default, Llama does not).

Every user mistake is one `MeshplanError` line naming the file, the key and the value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from meshplan.errors import MeshplanError, from_validation_error, invalid
from meshplan.specs.model import MlpType, Model

_REQUIRED: Any = object()


def _is_int(value: Any) -> bool:
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
    num_experts = cfg.integer("num_experts", default=0, minimum=0)
    if not num_experts:
        return None
    step = cfg.integer("decoder_sparse_step", default=1)
    mlp_only = set(cfg.integers("mlp_only_layers", default=[]))
    shared = cfg.integer("shared_expert_intermediate_size", default=0, minimum=0)  # Qwen2-MoE only
    return {
        "num_experts": num_experts,
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": cfg.integer("moe_intermediate_size"),
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


_LLAMA_KEYS = _Keys()
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
    moe: Callable[[_Reader, int], dict[str, Any] | None] | None = None


FAMILIES: dict[str, _Family] = {
    "llama": _Family(),
    "mistral": _Family(),
    "mixtral": _Family(moe=_mixtral_moe),
    "qwen2": _Family(qkv_bias=True),
    "qwen2_moe": _Family(qkv_bias=True, moe=_qwen_moe),
    "qwen3": _Family(qk_norm=True),
    "qwen3_moe": _Family(qk_norm=True, moe=_qwen_moe),
    "deepseek_v2": _Family(mla=True, moe=_deepseek_moe),
    "deepseek_v3": _Family(mla=True, moe=_deepseek_moe),
    "gpt2": _Family(
        keys=_GPT2_KEYS,
        gated=False,
        default_act="gelu_new",
        position_embedding="learned",
        norm="layernorm",
        tied_default=True,  # PretrainedConfig default; gpt2's config.json does not say
        linear_bias=True,
        gqa=False,
    ),
    "gpt_neox": _Family(
        gated=False,
        default_act="gelu",
        norm="layernorm",
        linear_bias=True,
        gqa=False,
    ),
}
"""Supported `model_type`s. Sources: the transformers `configuration_*.py` / `modeling_*.py` of
each family (defaults and hard-wired features), DeepSeek's `modeling_deepseek.py`."""

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
    act = cfg.text(key, default=family.default_act)
    table = _GATED_ACTS if family.gated else _PLAIN_ACTS
    if act not in table:
        raise invalid(f"{cfg.where}: {key}", act, f"supported: {', '.join(sorted(table))}")
    return table[act]


def _biases(cfg: _Reader, family: _Family) -> tuple[bool, bool]:
    """(linear_bias, qkv_bias). Llama-style configs opt in with attention_bias / mlp_bias."""
    if family.linear_bias:
        return True, False
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
        "qk_norm": family.qk_norm,
        "linear_bias": linear_bias,
        "qkv_bias": qkv_bias,
        "dropout": _dropout(cfg),
        "max_seq_len": cfg.integer(keys.max_seq_len, default=None),
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


def model_from_hf_config(data: dict[str, Any], *, name: str, where: str) -> Model:
    """A `Model` from a Hugging Face config.json dict, or one `MeshplanError` line saying why not.

    `where` (the file) prefixes every message so a user with many configs knows which one broke.
    """
    model_type = data.get("model_type")
    if model_type is None:
        raise MeshplanError(f"{where}: missing key 'model_type'")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise invalid(f"{where}: model_type", model_type, f"supported: {', '.join(FAMILIES)}")
    cfg = _Reader(data, where, model_type)
    fields = _fields(cfg, FAMILIES[model_type], name)
    try:
        return Model.model_validate(fields)
    except ValidationError as err:
        raise from_validation_error(err, where) from None
