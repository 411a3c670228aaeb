"""The families and spellings added for transformers 5.x configs, without transformers installed.

Each fixture (tests/fixtures/hf, provenance in SOURCES.md) loads to a parameter count equal to the
one transformers 5.24.0's own model has (recorded here; tests/unit/test_hf_transformers.py
recomputes it when transformers is installed), less exactly the weights that meshplan's `Model`
does not have and the loader lists as assumptions; and it is within 1% of the model card's total.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from meshplan.cost.params import count_params
from meshplan.errors import MeshplanError
from meshplan.specs.hf import read_hf_config
from meshplan.specs.io import load_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"


def fixture(folder: str) -> dict[str, Any]:
    return json.loads((FIXTURES / folder / "config.json").read_text())


def read(data: dict[str, Any], name: str = "model"):
    return read_hf_config(data, name=name, where=f"{name}/config.json")


# folder: (transformers' parameter count, weights meshplan does not count, model card total)
COUNTS: dict[str, tuple[int, int, float]] = {
    # 2 extra RMSNorms per layer (post-attention, post-feed-forward): 2 * 3584 * 42
    "gemma-2-9b": (9_241_705_984, 2 * 3584 * 42, 9.24e9),
    # text decoder only; card: 27B (the SigLIP tower is not in either count)
    "gemma-3-27b-it": (27_009_346_304, 2 * 5376 * 62, 27e9),
    "Phi-3-mini-4k-instruct": (3_821_079_552, 0, 3.8e9),
    # router bias (experts) and attention sinks (heads) per layer: (32 + 64) * 24
    "gpt-oss-20b": (20_914_757_184, (32 + 64) * 24, 20.91e9),
    "gpt-oss-120b": (116_829_156_672, (128 + 64) * 36, 116.83e9),
    # text decoder; card: 109B with the vision tower, 17B active
    "Llama-4-Scout-17B-16E": (107_769_861_120, 0, 109e9),
    "GLM-4.5-Air": (106_852_245_504, 0, 106e9),
    "Qwen3-30B-A3B-transformers5": (30_532_122_624, 0, 30.5e9),
}


@pytest.mark.parametrize("folder", sorted(COUNTS))
def test_parameter_count_is_transformers_less_the_listed_weights(folder: str) -> None:
    hf_total, uncounted, card = COUNTS[folder]
    loaded = read(fixture(folder), folder)
    total = count_params(loaded.model).total
    assert total + uncounted == hf_total
    assert abs(total - card) / card < 0.015, (folder, total)
    if uncounted:  # the difference is said, with its size
        assert any(f"{uncounted:,}" in note for note in loaded.assumptions), loaded.assumptions


def test_active_parameters_of_the_moe_cards() -> None:
    """Active counts include embeddings and head (as the Llama 4 and Qwen3 cards do)."""
    scout = count_params(read(fixture("Llama-4-Scout-17B-16E")).model)
    assert abs(scout.active - 17e9) / 17e9 < 0.02
    qwen = count_params(read(fixture("Qwen3-30B-A3B-transformers5")).model)
    assert abs(qwen.active - 3.3e9) / 3.3e9 < 0.02


def test_transformers5_spelling_loads_the_same_model_as_the_old_one() -> None:
    """transformers 5.x writes num_local_experts for Qwen3-MoE; that is not a dense model."""
    new = load_model(FIXTURES / "Qwen3-30B-A3B-transformers5" / "config.json")
    old = load_model(FIXTURES / "Qwen3-30B-A3B" / "config.json")
    skip = {"name", "source"}
    assert new.moe is not None
    assert new.model_dump(exclude=skip) == old.model_dump(exclude=skip)


def test_both_expert_spellings_must_agree() -> None:
    data = {**fixture("Qwen3-30B-A3B-transformers5"), "num_experts": 64}
    with pytest.raises(MeshplanError, match="num_local_experts=128, num_experts=64 disagree"):
        read(data)
    same = {**fixture("Qwen3-30B-A3B-transformers5"), "num_experts": 128}
    assert read(same).model.moe is not None


@pytest.mark.parametrize(
    ("base", "key", "value"),
    [
        ("Meta-Llama-3-8B", "num_local_experts", 8),  # llama does not read experts
        ("Qwen3-8B", "num_experts", 128),
        ("Phi-3-mini-4k-instruct", "num_local_experts", 16),  # the phimoe key on phi3
        ("Mixtral-8x7B-v0.1", "num_experts", 8),  # mixtral reads num_local_experts only
        ("GLM-4.5-Air", "num_local_experts", 128),
        ("gpt-oss-20b", "n_routed_experts", 32),
    ],
)
def test_an_expert_key_the_family_does_not_read_is_an_error(
    base: str, key: str, value: int
) -> None:
    data = {**fixture(base), key: value}
    with pytest.raises(MeshplanError) as info:
        read(data)
    message = str(info.value)
    assert "\n" not in message
    assert key in message and "mixture-of-experts" in message and "model/config.json" in message


def test_zero_or_null_expert_keys_are_not_moe() -> None:
    data = {**fixture("Meta-Llama-3-8B"), "num_experts": 0, "num_local_experts": None}
    assert read(data).model.moe is None


def test_nested_text_config_is_the_decoder() -> None:
    gemma = read(fixture("gemma-3-27b-it"), "gemma-3-27b-it")
    assert (gemma.model.num_layers, gemma.model.hidden_size) == (62, 5376)
    assert "(text_config)" in gemma.model.source
    assert any("vision" in note for note in gemma.assumptions)


def test_text_config_inherits_the_wrappers_tie_flag() -> None:
    data = copy.deepcopy(fixture("gemma-3-27b-it"))
    data["tie_word_embeddings"] = False
    assert read(data).model.tied_embeddings is False
    data["text_config"]["tie_word_embeddings"] = True  # the decoder's own flag wins
    assert read(data).model.tied_embeddings is True


def test_text_config_not_an_object_is_one_line() -> None:
    data = {**fixture("gemma-3-27b-it"), "text_config": "gemma3_text"}
    with pytest.raises(MeshplanError, match="text_config"):
        read(data)


def test_unsupported_text_config_type_names_the_nesting() -> None:
    data = copy.deepcopy(fixture("Llama-4-Scout-17B-16E"))
    data["text_config"]["model_type"] = "bert"
    with pytest.raises(MeshplanError, match=r"\(text_config\): model_type"):
        read(data)


def test_llama4_maverick_dense_moe_interleave_is_refused() -> None:
    """Maverick alternates dense and MoE layers (interleave_moe_layer_step 2); `Model` has only
    leading dense layers, so the loader refuses rather than miscount."""
    data = copy.deepcopy(fixture("Llama-4-Scout-17B-16E"))
    text = data["text_config"]
    text.update(interleave_moe_layer_step=2, num_local_experts=128)
    text.pop("moe_layers", None)
    with pytest.raises(MeshplanError) as info:
        read(data)
    message = str(info.value)
    assert "\n" not in message and "only leading dense layers" in message


def test_llama4_explicit_moe_layers_win_over_the_step() -> None:
    data = copy.deepcopy(fixture("Llama-4-Scout-17B-16E"))
    data["text_config"].update(interleave_moe_layer_step=2, moe_layers=list(range(2, 48)))
    moe = read(data).model.moe
    assert moe is not None and moe.num_dense_layers == 2


def test_gemma_activation_keys() -> None:
    """Gemma 2/3 name the activation hidden_activation; Gemma 1 files often only hidden_act."""
    data = {**fixture("gemma-2-9b"), "hidden_activation": None, "hidden_act": "gelu"}
    assert read(data).model.mlp_type == "geglu"
    bad = {**fixture("gemma-2-9b"), "hidden_activation": "tanh"}
    with pytest.raises(MeshplanError, match="hidden_activation"):
        read(bad)


def test_gemma1_is_gemma2_without_the_extra_norms() -> None:
    data = {**fixture("gemma-2-9b"), "model_type": "gemma"}
    gemma1, gemma2 = read(data), read(fixture("gemma-2-9b"))
    assert count_params(gemma1.model).total == count_params(gemma2.model).total
    assert not any("RMSNorms" in note for note in gemma1.assumptions)


def test_gpt_oss_without_attention_bias_has_no_biases() -> None:
    data = {**fixture("gpt-oss-20b"), "attention_bias": False}
    assert read(data).model.linear_bias is False


def test_glm4_moe_qk_norm_flag() -> None:
    data = {**fixture("GLM-4.5-Air"), "use_qk_norm": True}
    assert read(data).model.qk_norm is True
    assert read(fixture("GLM-4.5-Air")).model.qk_norm is False


# -- assumptions: what the file has and the Model does not -----------------------------------

NOTES: dict[str, tuple[str, ...]] = {
    "gemma-2-9b": (
        "sliding-window attention (4096 tokens) on 21 of 42 layers",
        "attn_logit_softcapping (50.0)",
        "final_logit_softcapping (30.0)",
        "RMSNorms",
    ),
    "gemma-3-27b-it": ("sliding-window attention (1024 tokens) on 52 of 62 layers", "vision"),
    "Phi-3-mini-4k-instruct": ("sliding-window attention (2047 tokens) on every layer",),
    "gpt-oss-20b": (
        "sliding-window attention (128 tokens) on 12 of 24 layers",
        "attention sinks",
        "swiglu_limit",
    ),
    "Llama-4-Scout-17B-16E": (
        "chunked local attention (8192 tokens) on 36 of 48 layers",
        "weightless L2 norm",
        "no_rope_layers",
        "vision",
    ),
    "GLM-4.5-Air": ("1 multi-token-prediction layer(s) not counted",),
    "Qwen3-30B-A3B-transformers5": (),  # use_sliding_window: false
    "Meta-Llama-3-8B": (),
}


@pytest.mark.parametrize("folder", sorted(NOTES))
def test_unmodelled_features_are_listed(folder: str) -> None:
    notes = read(fixture(folder)).assumptions
    for text in NOTES[folder]:
        assert any(text in note for note in notes), (text, notes)
    if not NOTES[folder]:
        assert notes == ()
    assert all("\n" not in note for note in notes)


def test_gemma2_without_layer_types_alternates() -> None:
    """Older Gemma 2 files have no layer_types: even layers slide (transformers' default)."""
    data = {**fixture("gemma-2-9b"), "num_hidden_layers": 4}
    assert any("on 2 of 4 layers" in note for note in read(data).assumptions)
