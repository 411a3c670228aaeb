"""Parameter counts and FLOPs against the numbers their sources print."""

from __future__ import annotations

import pytest

from meshplan.cost import flops as F
from meshplan.cost.params import count_params
from meshplan.specs.io import load_model
from tests.conftest import arrays, scalar


def megatron_params(L: int, h: int, V: int, s: int) -> float:
    """Narayanan et al. 2021, Sec. 5.1: P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12lh))."""
    return 12 * L * h**2 * (1 + 13 / (12 * h) + (V + s) / (12 * L * h))


@pytest.mark.parametrize("name", ["gpt-1.7b", "gpt-18b", "gpt-145b", "gpt3-175b", "gpt-1t"])
def test_gpt_params_match_megatron_formula(name):
    m = load_model(name)
    expected = megatron_params(m.num_layers, m.hidden_size, m.vocab_size, m.max_seq_len or 2048)
    # The formula leaves out the final layernorm (2h); everything else must agree exactly.
    assert count_params(m).total - 2 * m.hidden_size == pytest.approx(expected, rel=1e-12)


def test_gpt3_175b_is_174_6b_as_in_table_2():
    assert count_params(load_model("gpt3-175b")).total / 1e9 == pytest.approx(174.6, abs=0.05)


@pytest.mark.parametrize(
    ("name", "total_b", "active_b", "tol"),
    [
        ("llama2-7b", 6.74, None, 0.01),      # Llama 2 paper / HF card: 6,738,415,616
        ("llama2-13b", 13.02, None, 0.01),
        ("llama2-70b", 68.98, None, 0.01),
        ("llama3-8b", 8.03, None, 0.01),      # Llama 3 paper Table 3 (8B), HF: 8,030,261,248
        ("llama3.1-405b", 405.85, None, 0.2),  # 405B
        ("mixtral-8x7b", 46.70, 12.88, 0.05),  # Mixtral paper: 47B total, 13B active
        ("deepseek-v3", 671.0, 37.5, 1.0),     # DeepSeek-V3 report: 671B total, 37B activated
        ("qwen3-235b-a22b", 235.1, 22.2, 0.5),  # Qwen3 report Table 2
        ("qwen3-30b-a3b", 30.5, 3.3, 0.1),
    ],
)
def test_published_parameter_counts(name, total_b, active_b, tol):
    c = count_params(load_model(name))
    assert c.total / 1e9 == pytest.approx(total_b, abs=tol)
    if active_b is not None:
        assert c.active / 1e9 == pytest.approx(active_b, abs=max(tol, 0.5))


def test_eq3_equals_model_plus_full_recompute_flops(gpt3):
    """Megatron Eq. 3 counts fwd + recompute + 2 x bwd; ours: 3 x fwd + recomputed layers."""
    B, s = 1536, 2048
    ours = F.model_flops_per_step(gpt3, B, s) + scalar(
        F.recompute_flops_per_step(gpt3, B, s, arrays(recompute="full").recompute))
    assert ours == pytest.approx(F.megatron_eq3_flops(gpt3, B, s), rel=1e-12)


def test_layer_forward_is_24bsh2_times_1_plus_s_over_6h(gpt3):
    """Megatron 2021, Sec. 5.1: one layer's forward is 24 B s h^2 (1 + s/(6h))."""
    b, s, h = 4, 2048, gpt3.hidden_size
    layer = (F.qkv_flops(gpt3, b * s) + F.attention_core_flops(gpt3, b, s)
             + F.out_proj_flops(gpt3, b * s) + F.mlp_flops(gpt3, b * s, gpt3.ffn_hidden_size))
    assert layer == pytest.approx(24 * b * s * h**2 * (1 + s / (6 * h)), rel=1e-12)


def test_moe_counts_only_active_experts():
    m = load_model("mixtral-8x7b")
    dense_equiv = 2 * m.hidden_size * m.moe.expert_ffn_hidden_size * 3 * m.moe.top_k
    router = 2 * m.hidden_size * m.moe.num_experts
    assert F.moe_flops(m, 1) == pytest.approx(dense_equiv + router)
