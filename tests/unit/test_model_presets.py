"""Built-in model presets: every file loads strictly, says where its numbers come from, and the
families keep the invariants their sources state."""

from __future__ import annotations

import tomllib

import pytest

from meshplan.errors import MeshplanError
from meshplan.specs.io import PRESETS, load_model, preset_names

NAMES = preset_names("models")

REQUIRED = {
    "gpt-1.7b", "gpt-3.6b", "gpt-7.5b", "gpt-18b", "gpt-39b", "gpt-76b", "gpt-145b", "gpt-310b",
    "gpt-530b", "gpt-1t", "gpt3-175b",
    "llama2-7b", "llama2-13b", "llama2-70b",
    "llama3-8b", "llama3-70b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b",
    "mistral-7b", "mixtral-8x7b", "mixtral-8x22b",
    "deepseek-v3",
    "qwen3-8b", "qwen3-30b-a3b", "qwen3-235b-a22b", "qwen2-7b",
    "debug", "debug-moe",
}  # fmt: skip


def test_required_presets_exist() -> None:
    assert set(NAMES) >= REQUIRED, sorted(REQUIRED - set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_preset_loads_named_after_its_file_with_a_source(name: str) -> None:
    model = load_model(name)
    assert model.name == name
    assert model.source.strip()


@pytest.mark.parametrize("name", NAMES)
def test_preset_file_is_flat_keys_plus_moe_and_mla_tables(name: str) -> None:
    """Presets are hand-edited data: only `[moe]`, `[mla]` and `rope_scaling` may be tables."""
    data = tomllib.loads((PRESETS / "models" / f"{name}.toml").read_text())
    tables = {key for key, value in data.items() if isinstance(value, dict)}
    assert tables <= {"moe", "mla", "rope_scaling"}


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("gpt")])
def test_megatron_gpt_family_shape(name: str) -> None:
    """Narayanan et al. 2021 Sec. 5: 4h GeLU MLP, V=51200, s=2048, GPT-2-style blocks."""
    model = load_model(name)
    assert model.ffn_hidden_size == 4 * model.hidden_size
    assert (model.mlp_type, model.vocab_size, model.max_seq_len) == ("gelu", 51200, 2048)
    assert (model.position_embedding, model.norm) == ("learned", "layernorm")
    assert model.tied_embeddings and model.linear_bias and model.dropout
    assert model.kv_heads == model.num_attention_heads


def test_megatron_gpt_sizes_match_table_1() -> None:
    """Parameter count by the paper's Eq. 2 reproduces the Table 1 sizes (to the 0.1B shown)."""
    table_1 = {
        "gpt-1.7b": 1.7, "gpt-3.6b": 3.6, "gpt-7.5b": 7.5, "gpt-18b": 18.4, "gpt-39b": 39.1,
        "gpt-76b": 76.1, "gpt-145b": 145.6, "gpt-310b": 310.1, "gpt-530b": 529.6,
        "gpt-1t": 1008.0, "gpt3-175b": 174.6,
    }  # fmt: skip
    for name, billions in table_1.items():
        m = load_model(name)
        lyr, h, v, s = m.num_layers, m.hidden_size, m.vocab_size, m.max_seq_len
        assert s is not None
        params = 12 * lyr * h * h * (1 + 13 / (12 * h) + (v + s) / (12 * lyr * h))
        assert round(params / 1e9, 1) == pytest.approx(billions, abs=0.11), name


def test_debug_models_are_tiny_and_shard_evenly() -> None:
    for name in ("debug", "debug-moe"):
        model = load_model(name)
        assert model.hidden_size <= 256 and model.num_layers <= 4
        assert model.vocab_size % 8 == 0 and model.num_attention_heads % 8 == 0
        assert model.kv_heads < model.num_attention_heads  # exercises GQA
    moe = load_model("debug-moe").moe
    assert moe is not None and moe.num_dense_layers == 1 and moe.num_experts % 8 == 0


def test_unknown_preset_suggests_close_names() -> None:
    with pytest.raises(MeshplanError, match=r"unknown model 'llama3-9b'.*did you mean.*llama3-8b"):
        load_model("llama3-9b")


def test_unknown_preset_with_no_close_name_lists_known_ones() -> None:
    with pytest.raises(MeshplanError, match="known: .*debug"):
        load_model("zzzzzz")
