"""Hugging Face config.json loading: real files give the published shapes, bad files one error line.

The fixtures are real config.json files (provenance in tests/fixtures/hf/SOURCES.md); the bad
inputs are small edits of them, so each test shows exactly which key breaks what.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from meshplan.errors import MeshplanError
from meshplan.specs.hf import read_hf_config
from meshplan.specs.io import load_model
from meshplan.specs.model import Model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"


def fixture(folder: str) -> dict[str, Any]:
    return json.loads((FIXTURES / folder / "config.json").read_text())


def write_config(tmp_path: Path, data: dict[str, Any], folder: str = "model") -> Path:
    path = tmp_path / folder / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def architecture(model: Model) -> dict[str, Any]:
    """Every shape-bearing field, with implicit defaults resolved (kv heads, head size)."""
    fields = model.model_dump(exclude={"name", "source", "num_kv_heads", "head_dim"})
    return {**fields, "kv_heads": model.kv_heads, "head_size": model.head_size}


# -- real files ------------------------------------------------------------------------------

EXPECTED: dict[str, dict[str, Any]] = {
    "Meta-Llama-3-8B": dict(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        kv_heads=8,
        head_size=128,
        vocab_size=128256,
        mlp_type="swiglu",
        tied_embeddings=False,
        position_embedding="rope",
        norm="rmsnorm",
        max_seq_len=8192,
    ),
    "Mistral-7B-v0.1": dict(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        kv_heads=8,
        vocab_size=32000,
        mlp_type="swiglu",
        max_seq_len=32768,
    ),
    "Mixtral-8x7B-v0.1": dict(
        num_layers=32,
        hidden_size=4096,
        kv_heads=8,
        vocab_size=32000,
        num_moe_layers=32,
        moe=dict(
            num_experts=8,
            top_k=2,
            expert_ffn_hidden_size=14336,
            num_shared_experts=0,
            shared_expert_ffn_hidden_size=0,
            num_dense_layers=0,
        ),
    ),
    "Qwen2-7B": dict(
        num_layers=28,
        hidden_size=3584,
        ffn_hidden_size=18944,
        num_attention_heads=28,
        kv_heads=4,
        head_size=128,
        vocab_size=152064,
        qkv_bias=True,
        linear_bias=False,
        qk_norm=False,
    ),
    "Qwen3-8B": dict(
        num_layers=36,
        hidden_size=4096,
        ffn_hidden_size=12288,
        kv_heads=8,
        head_size=128,
        vocab_size=151936,
        qk_norm=True,
        qkv_bias=False,
        tied_embeddings=False,
    ),
    "Qwen3-30B-A3B": dict(
        num_layers=48,
        hidden_size=2048,
        num_attention_heads=32,
        kv_heads=4,
        head_size=128,
        qk_norm=True,
        num_moe_layers=48,
        moe=dict(
            num_experts=128,
            top_k=8,
            expert_ffn_hidden_size=768,
            num_shared_experts=0,
            shared_expert_ffn_hidden_size=0,
            num_dense_layers=0,
        ),
    ),
    "DeepSeek-V3": dict(
        num_layers=61,
        hidden_size=7168,
        ffn_hidden_size=18432,
        num_attention_heads=128,
        num_kv_heads=None,
        head_dim=None,
        head_size=192,
        vocab_size=129280,
        tied_embeddings=False,
        num_moe_layers=58,
        rope_theta=10000.0,
        rope_scaling=dict(type="yarn", factor=40.0, original_max_position_embeddings=4096,
                          beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0),
        norm_eps=1e-6,
        mtp_layers=1,
        moe=dict(
            num_experts=256,
            top_k=8,
            expert_ffn_hidden_size=2048,
            num_shared_experts=1,
            shared_expert_ffn_hidden_size=2048,
            num_dense_layers=3,
            router_score="sigmoid",
            normalize_top_k=True,
            router_groups=8,
            router_group_top_k=4,
            router_scaling=2.5,
            router_expert_bias=True,
        ),
        mla=dict(
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
        ),
    ),
    "gpt2": dict(
        num_layers=12,
        hidden_size=768,
        ffn_hidden_size=3072,
        num_attention_heads=12,
        kv_heads=12,
        vocab_size=50257,
        mlp_type="gelu",
        tied_embeddings=True,
        position_embedding="learned",
        norm="layernorm",
        linear_bias=True,
        dropout=True,
        max_seq_len=1024,
    ),
    "gpt-neox-20b": dict(
        num_layers=44,
        hidden_size=6144,
        ffn_hidden_size=24576,
        num_attention_heads=64,
        head_size=96,
        vocab_size=50432,
        mlp_type="gelu",
        tied_embeddings=False,
        position_embedding="rope",
        norm="layernorm",
        linear_bias=True,
        dropout=False,
    ),
    # -- transformers 5.x spellings and the families added for them (tests/unit/test_hf_families.py
    # checks their parameter counts)
    "Qwen3-30B-A3B-transformers5": dict(
        num_layers=48,
        hidden_size=2048,
        kv_heads=4,
        qk_norm=True,
        num_moe_layers=48,
        moe=dict(
            num_experts=128,
            top_k=8,
            expert_ffn_hidden_size=768,
            num_shared_experts=0,
            shared_expert_ffn_hidden_size=0,
            num_dense_layers=0,
        ),
    ),
    "gemma-2-9b": dict(
        num_layers=42,
        hidden_size=3584,
        ffn_hidden_size=14336,
        num_attention_heads=16,
        kv_heads=8,
        head_size=256,
        vocab_size=256000,
        mlp_type="geglu",
        tied_embeddings=True,
        qk_norm=False,
        max_seq_len=8192,
    ),
    "gemma-3-27b-it": dict(
        num_layers=62,
        hidden_size=5376,
        ffn_hidden_size=21504,
        num_attention_heads=32,
        kv_heads=16,
        head_size=128,
        vocab_size=262208,
        mlp_type="geglu",
        tied_embeddings=True,
        qk_norm=True,
        max_seq_len=131072,
    ),
    "Phi-3-mini-4k-instruct": dict(
        num_layers=32,
        hidden_size=3072,
        ffn_hidden_size=8192,
        num_attention_heads=32,
        kv_heads=32,
        head_size=96,
        vocab_size=32064,
        mlp_type="swiglu",
        tied_embeddings=False,
    ),
    "gpt-oss-20b": dict(
        num_layers=24,
        hidden_size=2880,
        num_attention_heads=64,
        kv_heads=8,
        head_size=64,
        vocab_size=201088,
        linear_bias=True,
        num_moe_layers=24,
        moe=dict(
            num_experts=32,
            top_k=4,
            expert_ffn_hidden_size=2880,
            num_shared_experts=0,
            shared_expert_ffn_hidden_size=0,
            num_dense_layers=0,
        ),
    ),
    "gpt-oss-120b": dict(
        num_layers=36,
        hidden_size=2880,
        kv_heads=8,
        linear_bias=True,
        num_moe_layers=36,
        moe=dict(
            num_experts=128,
            top_k=4,
            expert_ffn_hidden_size=2880,
            num_shared_experts=0,
            shared_expert_ffn_hidden_size=0,
            num_dense_layers=0,
        ),
    ),
    "Llama-4-Scout-17B-16E": dict(
        num_layers=48,
        hidden_size=5120,
        ffn_hidden_size=16384,
        num_attention_heads=40,
        kv_heads=8,
        head_size=128,
        vocab_size=202048,
        qk_norm=False,
        tied_embeddings=False,
        num_moe_layers=48,
        moe=dict(
            num_experts=16,
            top_k=1,
            expert_ffn_hidden_size=8192,
            num_shared_experts=1,
            shared_expert_ffn_hidden_size=8192,
            num_dense_layers=0,
        ),
    ),
    "GLM-4.5-Air": dict(
        num_layers=46,
        hidden_size=4096,
        ffn_hidden_size=10944,
        num_attention_heads=96,
        kv_heads=8,
        head_size=128,
        vocab_size=151552,
        qkv_bias=True,
        linear_bias=False,
        qk_norm=False,
        num_moe_layers=45,
        moe=dict(
            num_experts=128,
            top_k=8,
            expert_ffn_hidden_size=1408,
            num_shared_experts=1,
            shared_expert_ffn_hidden_size=1408,
            num_dense_layers=1,
        ),
    ),
}

PRESET_OF = {
    "Meta-Llama-3-8B": "llama3-8b",
    "Mistral-7B-v0.1": "mistral-7b",
    "Mixtral-8x7B-v0.1": "mixtral-8x7b",
    "Qwen2-7B": "qwen2-7b",
    "Qwen3-8B": "qwen3-8b",
    "Qwen3-30B-A3B": "qwen3-30b-a3b",
    "DeepSeek-V3": "deepseek-v3",
}


def test_every_fixture_is_covered() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(EXPECTED)


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_fixture_gives_published_shape(folder: str) -> None:
    model = load_model(FIXTURES / folder / "config.json")
    assert model.name == folder
    assert str(FIXTURES / folder) in model.source
    for attr, want in EXPECTED[folder].items():
        got = getattr(model, attr)
        if hasattr(got, "model_dump"):
            got = {k: v for k, v in got.model_dump().items() if k in want}  # the keys stated
        assert got == want, f"{folder}.{attr}"


def test_a_folder_loads_its_config_json() -> None:
    assert load_model(str(FIXTURES / "gpt2")) == load_model(FIXTURES / "gpt2" / "config.json")


def test_llama3_8b_config_equals_preset_on_every_field() -> None:
    """The strictest check: not only the same shape, the same field values (name/source aside)."""
    loaded = load_model(FIXTURES / "Meta-Llama-3-8B" / "config.json")
    preset = load_model("llama3-8b")
    skip = {"name", "source"}
    assert loaded.model_dump(exclude=skip) == preset.model_dump(exclude=skip)


@pytest.mark.parametrize("folder", sorted(PRESET_OF))
def test_config_matches_its_preset(folder: str) -> None:
    loaded = load_model(FIXTURES / folder / "config.json")
    assert architecture(loaded) == architecture(load_model(PRESET_OF[folder]))


# -- mappings the fixtures do not exercise ----------------------------------------------------


def test_transformers5_rope_parameters_carry_theta_and_scaling(tmp_path: Path) -> None:
    """transformers 5 writes `rope_parameters` (theta inside) instead of rope_theta /
    rope_scaling; Llama 3.1's values (config.json of meta-llama/Llama-3.1-8B)."""
    data = {**fixture("Meta-Llama-3-8B"), "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    del data["rope_theta"]
    model = load_model(write_config(tmp_path, data))
    assert model.rope_theta == 500000.0
    assert model.rope_scaling is not None and model.rope_scaling.model_dump() == load_model(
        "llama3.1-8b").rope_scaling.model_dump()  # type: ignore[union-attr]


def test_unknown_rope_scaling_is_an_assumption(tmp_path: Path) -> None:
    data = {**fixture("Phi-3-mini-4k-instruct"), "rope_scaling": {"type": "longrope",
                                                                 "short_factor": [1.0]}}
    loaded = read_hf_config(data, name="phi", where="x")
    assert loaded.model.rope_scaling is None
    assert any("'longrope' is not carried" in a for a in loaded.assumptions)


def test_gpt2_null_n_inner_means_four_times_hidden(tmp_path: Path) -> None:
    data = {**fixture("gpt2"), "n_inner": None, "n_embd": 1024, "n_head": 16}
    assert load_model(write_config(tmp_path, data)).ffn_hidden_size == 4096


def test_gpt2_explicit_n_inner_and_untied(tmp_path: Path) -> None:
    data = {**fixture("gpt2"), "n_inner": 2048, "tie_word_embeddings": False}
    model = load_model(write_config(tmp_path, data))
    assert (model.ffn_hidden_size, model.tied_embeddings) == (2048, False)


def test_llama_biases_on_attention_and_mlp_mean_all_linear_biases(tmp_path: Path) -> None:
    data = {**fixture("Meta-Llama-3-8B"), "attention_bias": True, "mlp_bias": True}
    model = load_model(write_config(tmp_path, data))
    assert (model.linear_bias, model.qkv_bias) == (True, False)


def test_llama_attention_bias_alone_is_a_qkv_bias(tmp_path: Path) -> None:
    data = {**fixture("Meta-Llama-3-8B"), "attention_bias": True}
    model = load_model(write_config(tmp_path, data))
    assert (model.linear_bias, model.qkv_bias) == (False, True)


def test_gelu_gated_llama_style_is_geglu(tmp_path: Path) -> None:
    data = {**fixture("Meta-Llama-3-8B"), "hidden_act": "gelu_pytorch_tanh"}
    assert load_model(write_config(tmp_path, data)).mlp_type == "geglu"


def test_deepseek_null_q_lora_rank_means_direct_queries(tmp_path: Path) -> None:
    """DeepSeek-V2-Lite writes q_lora_rank: null."""
    data = {**fixture("DeepSeek-V3"), "model_type": "deepseek_v2", "q_lora_rank": None}
    model = load_model(write_config(tmp_path, data))
    assert model.mla is not None and model.mla.q_lora_rank == 0


def test_deepseek_without_routed_experts_is_dense(tmp_path: Path) -> None:
    data = {**fixture("DeepSeek-V3"), "n_routed_experts": None}
    assert load_model(write_config(tmp_path, data)).moe is None


def test_qwen3_moe_leading_mlp_only_layers_are_dense(tmp_path: Path) -> None:
    data = {**fixture("Qwen3-30B-A3B"), "mlp_only_layers": [0, 1]}
    model = load_model(write_config(tmp_path, data))
    assert model.moe is not None and model.moe.num_dense_layers == 2


def test_qwen2_moe_shared_expert(tmp_path: Path) -> None:
    data = {
        **fixture("Qwen3-30B-A3B"),
        "model_type": "qwen2_moe",
        "shared_expert_intermediate_size": 5632,
    }
    model = load_model(write_config(tmp_path, data))
    assert model.moe is not None
    assert (model.moe.num_shared_experts, model.moe.shared_expert_ffn_hidden_size) == (1, 5632)
    assert (model.qkv_bias, model.qk_norm) == (True, False)


# -- bad input: one MeshplanError line naming the file, the key and the value ----------------


def _edit(base: str, **changes: Any) -> dict[str, Any]:
    """A fixture with keys changed; a value of `...` deletes the key."""
    data = copy.deepcopy(fixture(base))
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return data


BAD: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("unsupported-model-type", _edit("gpt2", model_type="bert"), ("model_type", "'bert'")),
    ("model-type-not-a-string", _edit("gpt2", model_type=["gpt2"]), ("model_type", "['gpt2']")),
    ("no-model-type", _edit("Meta-Llama-3-8B", model_type=...), ("'model_type'",)),
    ("missing-layers", _edit("Meta-Llama-3-8B", num_hidden_layers=...), ("'num_hidden_layers'",)),
    ("null-required", _edit("Qwen2-7B", hidden_size=None), ("'hidden_size'",)),
    ("missing-gpt2-key", _edit("gpt2", n_embd=...), ("'n_embd'",)),
    ("string-for-int", _edit("Meta-Llama-3-8B", hidden_size="4096"), ("hidden_size", "'4096'")),
    ("float-for-int", _edit("Mistral-7B-v0.1", intermediate_size=14336.0), ("intermediate_size",)),
    ("bool-for-int", _edit("Qwen3-8B", num_attention_heads=True), ("num_attention_heads", "True")),
    ("zero-vocab", _edit("Qwen3-8B", vocab_size=0), ("vocab_size", "0")),
    ("negative-head-dim", _edit("Qwen3-8B", head_dim=-128), ("head_dim", "-128")),
    ("string-for-bool", _edit("Qwen2-7B", tie_word_embeddings="no"), ("tie_word_embeddings",)),
    ("unknown-activation", _edit("Meta-Llama-3-8B", hidden_act="tanh"), ("hidden_act", "'tanh'")),
    ("gated-act-on-gpt2", _edit("gpt2", activation_function="silu"), ("activation_function",)),
    ("string-dropout", _edit("gpt2", resid_pdrop="0.1"), ("resid_pdrop", "'0.1'")),
    (
        "missing-expert-count",
        _edit("Mixtral-8x7B-v0.1", num_local_experts=...),
        ("'num_local_experts'",),
    ),
    (
        "missing-expert-size",
        _edit("DeepSeek-V3", moe_intermediate_size=...),
        ("'moe_intermediate_size'",),
    ),
    ("missing-mla-rank", _edit("DeepSeek-V3", kv_lora_rank=...), ("'kv_lora_rank'",)),
    ("bad-layer-list", _edit("Qwen3-30B-A3B", mlp_only_layers="0,1"), ("mlp_only_layers",)),
    (
        "interleaved-dense",
        _edit("Qwen3-30B-A3B", mlp_only_layers=[0, 5]),
        ("mlp_only_layers", "[0, 5]"),
    ),
    ("sparse-step", _edit("Qwen3-30B-A3B", decoder_sparse_step=2), ("decoder_sparse_step",)),
    ("moe-freq", _edit("DeepSeek-V3", moe_layer_freq=2), ("moe_layer_freq",)),
    ("top-k-above-experts", _edit("Mixtral-8x7B-v0.1", num_experts_per_tok=9), ("top_k", "9")),
    (
        "heads-not-dividing",
        _edit("Meta-Llama-3-8B", num_attention_heads=30),
        ("num_attention_heads",),
    ),
]


@pytest.mark.parametrize(("data", "mentions"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_one_line_naming_file_key_and_value(
    tmp_path: Path, data: dict[str, Any], mentions: tuple[str, ...]
) -> None:
    path = write_config(tmp_path, data)
    with pytest.raises(MeshplanError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for text in mentions:
        assert text in message, message


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    """HF configs grow keys every release; none of them should break loading."""
    data = {**fixture("Meta-Llama-3-8B"), "some_future_key": {"x": 1}, "rope_scaling": {"a": 1}}
    assert architecture(load_model(write_config(tmp_path, data))) == architecture(
        load_model(FIXTURES / "Meta-Llama-3-8B" / "config.json")
    )
