"""Parameter counts against transformers' own models, from configs its config classes write.

Each case builds a config with the family's transformers config class, saves it as config.json
(`save_pretrained`, so the file has the key names of the installed transformers), loads it with
meshplan, and compares `count_params(model).total` with the parameters of
`AutoModelForCausalLM.from_config` built on the meta device (no memory, no weights). The two are
equal, except for the weights meshplan's `Model` does not have, which the loader lists as
assumptions with their number (Gemma 2/3 sandwich norms, GPT-OSS router biases and sinks).

Needs transformers and torch (scripts/install-engines.sh installs transformers without
dependencies, so it cannot pull another torch). Without them these tests skip, except under
CI=true, where a missing transformers fails them: CI must not go green without this check.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshplan.cost.params import count_params
from meshplan.specs.hf import read_hf_config
from meshplan.specs.io import load_model

pytestmark = pytest.mark.engines


def _transformers() -> Any:
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {err.name} is missing (scripts/install-engines.sh)")
        pytest.skip(f"{err.name} not installed (scripts/install-engines.sh)")
    return transformers


def _meta_count(config: Any) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _sandwich_norms(cfg: Any) -> int:
    return 2 * cfg.hidden_size * cfg.num_hidden_layers


def _router_bias_and_sinks(cfg: Any) -> int:
    return (cfg.num_local_experts + cfg.num_attention_heads) * cfg.num_hidden_layers


SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, vocab_size=1024)
"""Small but real: several layers, GQA, head_dim that is not hidden / heads where allowed."""

# id: (config class name, kwargs, wrapper class name or None, uncounted weights of the decoder)
CASES: dict[str, tuple[str, dict[str, Any], str | None, Callable[[Any], int] | None]] = {
    # -- the families added for transformers 5.x, small shapes
    "gemma2": (
        "Gemma2Config",
        dict(SMALL, intermediate_size=512, num_key_value_heads=2, head_dim=48),
        None,
        _sandwich_norms,
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(SMALL, num_hidden_layers=7, intermediate_size=512, num_key_value_heads=4, head_dim=32),
        None,
        _sandwich_norms,
    ),
    "gemma3-wrapper": (
        "Gemma3TextConfig",
        dict(SMALL, intermediate_size=512, num_key_value_heads=2, head_dim=64),
        "Gemma3Config",
        _sandwich_norms,
    ),
    "phi3": (
        "Phi3Config",
        dict(SMALL, intermediate_size=640, num_key_value_heads=4, pad_token_id=0, eos_token_id=1),
        None,
        None,
    ),
    "gpt_oss": (
        "GptOssConfig",
        dict(
            SMALL,
            intermediate_size=192,
            num_key_value_heads=2,
            head_dim=48,
            num_local_experts=8,
            num_experts_per_tok=2,
        ),
        None,
        _router_bias_and_sinks,
    ),
    "llama4_text": (
        "Llama4TextConfig",
        dict(
            SMALL,
            intermediate_size=128,
            intermediate_size_mlp=512,
            num_key_value_heads=2,
            head_dim=48,
            num_local_experts=4,
            num_experts_per_tok=1,
            pad_token_id=0,
        ),
        None,
        None,
    ),
    "llama4-wrapper-leading-dense": (
        "Llama4TextConfig",
        dict(
            SMALL,
            intermediate_size=128,
            intermediate_size_mlp=512,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            moe_layers=[1, 2, 3],
            pad_token_id=0,
        ),
        "Llama4Config",
        None,
    ),
    "glm4_moe": (
        "Glm4MoeConfig",
        dict(
            SMALL,
            intermediate_size=512,
            moe_intermediate_size=64,
            num_key_value_heads=2,
            head_dim=48,
            n_routed_experts=8,
            n_shared_experts=2,
            num_experts_per_tok=2,
            first_k_dense_replace=2,
            attention_bias=True,
            use_qk_norm=True,
        ),
        None,
        None,
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(
            SMALL,
            intermediate_size=512,
            moe_intermediate_size=64,
            num_key_value_heads=2,
            head_dim=48,
            num_experts=8,
            num_experts_per_tok=2,
            mlp_only_layers=[0],
        ),
        None,
        None,
    ),
    # -- the families meshplan read before, written by transformers 5.x
    "llama": ("LlamaConfig", dict(SMALL, intermediate_size=512, num_key_value_heads=2), None, None),
    "mistral": (
        "MistralConfig",
        dict(SMALL, intermediate_size=512, num_key_value_heads=2),
        None,
        None,
    ),
    "mixtral": (
        "MixtralConfig",
        dict(
            SMALL,
            intermediate_size=128,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
        None,
        None,
    ),
    "qwen2": ("Qwen2Config", dict(SMALL, intermediate_size=512, num_key_value_heads=2), None, None),
    "qwen3": (
        "Qwen3Config",
        dict(SMALL, intermediate_size=512, num_key_value_heads=2, head_dim=48),
        None,
        None,
    ),
    # -- published sizes (meta device: no memory)
    "Qwen3-30B-A3B": (
        "Qwen3MoeConfig",
        dict(
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            vocab_size=151936,
            max_position_embeddings=40960,
        ),
        None,
        None,
    ),
    "gpt-oss-20b": (
        "GptOssConfig",
        dict(num_hidden_layers=24, num_local_experts=32),
        None,
        _router_bias_and_sinks,
    ),
    "gemma-2-2b": ("Gemma2Config", {}, None, _sandwich_norms),  # the class defaults
    "Phi-3-mini": ("Phi3Config", {}, None, None),
    "Llama-4-Scout": ("Llama4TextConfig", {}, "Llama4Config", None),
    "GLM-4.5-Air": ("Glm4MoeConfig", dict(head_dim=128), None, None),  # as the Hub file
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameter_count_equals_transformers(case: str, tmp_path: Path) -> None:
    transformers = _transformers()
    class_name, kwargs, wrapper, uncounted = CASES[case]
    text = getattr(transformers, class_name)(**kwargs)
    saved = getattr(transformers, wrapper)(text_config=text.to_dict()) if wrapper else text
    saved.save_pretrained(tmp_path / case)

    model = load_model(tmp_path / case / "config.json")
    theirs = _meta_count(text)
    missing = uncounted(text) if uncounted else 0
    assert count_params(model).total + missing == theirs
    if missing:
        data = saved.to_dict()
        notes = read_hf_config(data, name=case, where=case).assumptions
        assert any(f"{missing:,}" in note for note in notes), notes


def test_qwen3_moe_saved_by_transformers5_is_not_dense(tmp_path: Path) -> None:
    """The bug this was built for: 5.x writes num_local_experts, and the model must be MoE."""
    transformers = _transformers()
    transformers.Qwen3MoeConfig(num_experts=16).save_pretrained(tmp_path)
    model = load_model(tmp_path / "config.json")
    assert model.moe is not None and model.moe.num_experts == 16
