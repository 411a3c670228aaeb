"""Activation and model-state memory against Korthikanti et al. 2022 and the ZeRO paper."""

from __future__ import annotations

import pytest

from meshplan.cost.train import memory
from meshplan.mesh import Mesh
from meshplan.specs import Job
from tests.conftest import arrays, scalar


@pytest.fixture
def job():
    return Job(global_batch_size=8, seq_len=2048, flash_attention=False)


def korthikanti(s, b, h, a, t, sp, recompute):
    """arXiv:2205.05198 Sec. 4 and Table 2 (bytes per layer)."""
    if recompute == "full":
        return 2 * s * b * h / t
    if recompute == "selective":
        return 34 * s * b * h / t
    if sp:
        return s * b * h / t * (34 + 5 * a * s / h)
    return s * b * h * (10 + 24 / t + 5 * a * s / (h * t))


@pytest.mark.parametrize("t", [1, 2, 8])
@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_gpt3_layer_activations_match_paper(gpt3, job, t, sp, recompute):
    if sp and t == 1 or recompute == "full" and not sp and t > 1:
        pytest.skip("paper formula given for these combinations only")
    if recompute == "selective" and not sp and t > 1:
        pytest.skip("paper's 34 sbh/t assumes sequence parallelism")
    P = arrays(tp=t, micro_batch_size=1, sequence_parallel=sp, recompute=recompute)
    got = scalar(memory.layer_activation_bytes(gpt3, job, Mesh(P), moe=False))
    h, a = gpt3.hidden_size, gpt3.num_attention_heads
    assert got == pytest.approx(korthikanti(2048, 1, h, a, t, sp, recompute), rel=1e-12)


def test_flash_attention_drops_the_s_squared_terms(gpt3, job):
    flash = job.model_copy(update={"flash_attention": True})
    P = arrays(tp=8, micro_batch_size=1)
    h = gpt3.hidden_size
    got = scalar(memory.layer_activation_bytes(gpt3, flash, Mesh(P), moe=False))
    lse = 4 * 2048 * gpt3.num_attention_heads / 8
    assert got == pytest.approx(34 * 2048 * h / 8 + lse, rel=1e-12)


@pytest.mark.parametrize(("zero", "per_param"), [(0, 2 + 4 + 12), (1, 2 + 4 + 12 / 8),
                                                 (2, 2 + (4 + 12) / 8), (3, (2 + 4 + 12) / 8)])
def test_zero_stages_shard_model_states(job, zero, per_param):
    """ZeRO (Rajbhandari et al. 2020) Fig. 1 with fp32 gradients (K = 12)."""
    P = arrays(dp=8, zero_stage=zero)
    states = memory.model_state_bytes(1e9, P, P.dp_shard, job)
    assert sum(scalar(v) for v in states.values()) == pytest.approx(per_param * 1e9)
