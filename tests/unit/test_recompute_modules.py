"""Selective recompute by module (Megatron-Core --recompute-modules): what each module drops
from a layer's saved activations, what it adds to the backward, and FP8 expert inputs."""

from __future__ import annotations

import pydantic
import pytest

from meshplan.cost.kernels import Kernels
from meshplan.cost.train import memory, passes
from meshplan.mesh import Mesh
from meshplan.specs import Job, Plan
from meshplan.specs.io import load_model
from tests.conftest import arrays, scalar

S = 4096


@pytest.fixture(scope="module")
def qwen3():
    return load_model("qwen3-235b-a22b")


@pytest.fixture(scope="module")
def dsv3():
    return load_model("deepseek-v3")


def _job(precision="bf16", flash=True):
    return Job(global_batch_size=8, seq_len=S, precision=precision, flash_attention=flash)


def _moe_layer(model, job, **plan):
    mesh = Mesh(arrays(micro_batch_size=1, **plan))
    return scalar(memory.attention_activation_bytes(model, job, mesh)), \
        scalar(memory.mlp_activation_bytes(model, job, mesh, moe=True))


def test_each_moe_module_drops_its_tensors(qwen3):
    """Against the tensors TEGroupedMLP saves: moe_act drops fc2's input (f bytes per
    assignment in bf16), layernorm the norm output of both blocks (2 bytes x h per token
    each), moe keeps only the layer's input."""
    job = _job()
    T, h, f, k = S, qwen3.hidden_size, qwen3.moe.expert_ffn_hidden_size, qwen3.moe.top_k
    att0, moe0 = _moe_layer(qwen3, job, recompute="none")
    att, act = _moe_layer(qwen3, job, recompute="selective", recompute_modules=("moe_act",))
    assert att == att0 and moe0 - act == pytest.approx(2.0 * T * k * f)
    att_n, norm = _moe_layer(qwen3, job, recompute="selective",
                             recompute_modules=("layernorm",))
    assert att0 - att_n == pytest.approx(2.0 * T * h)
    assert moe0 - norm == pytest.approx(2.0 * T * h)
    _, whole = _moe_layer(qwen3, job, recompute="selective", recompute_modules=("moe",))
    assert whole == pytest.approx(2.0 * T * h + 2.0 * T * h)  # norm input + the block input


def test_default_fused_policy_is_layernorm_plus_moe_act(qwen3):
    job = _job()
    named = _moe_layer(qwen3, job, recompute="selective",
                       recompute_modules=("layernorm", "moe_act"))
    assert _moe_layer(qwen3, job, recompute="selective") == pytest.approx(named)


def test_fp8_keeps_the_experts_fc1_input_in_one_byte(qwen3):
    """Transformer Engine's GroupedLinear saves its quantised input: 1 byte per element of
    each assignment's fc1 input (and of fc2's) instead of 2."""
    T, h, f, k = S, qwen3.hidden_size, qwen3.moe.expert_ffn_hidden_size, qwen3.moe.top_k
    _, bf16 = _moe_layer(qwen3, _job(), recompute="none")
    _, fp8 = _moe_layer(qwen3, _job("fp8"), recompute="none")
    assert bf16 - fp8 == pytest.approx(T * h + T * k * h + T * k * f)


def test_mla_up_proj_keeps_the_latents_only(dsv3):
    """DeepSeek-V3 (q_lora 1536, kv_lora 512, rope 64): mla_up_proj drops the per-head Q, K
    and V (128 heads x (192 + 192 + 128)) and keeps the latents."""
    job = _job()
    mesh0 = Mesh(arrays(micro_batch_size=1))
    mesh1 = Mesh(arrays(micro_batch_size=1, recompute="selective",
                        recompute_modules=("mla_up_proj",)))
    drop = scalar(memory.attention_activation_bytes(dsv3, job, mesh0)) \
        - scalar(memory.attention_activation_bytes(dsv3, job, mesh1))
    assert drop == pytest.approx(2.0 * S * 128 * (192 + 192 + 128))


def test_module_recompute_adds_backward_time(qwen3, h100):
    job = _job()
    K = Kernels(h100, "bf16")
    none = passes.mlp_times(qwen3, job, K, Mesh(arrays(micro_batch_size=1)), moe=True)
    act = passes.mlp_times(qwen3, job, K, Mesh(arrays(micro_batch_size=1, recompute="selective",
                                                      recompute_modules=("moe_act",))), True)
    whole = passes.mlp_times(qwen3, job, K, Mesh(arrays(micro_batch_size=1,
                                                        recompute="selective",
                                                        recompute_modules=("moe",))), True)
    assert scalar(none.recompute) == 0.0
    assert 0.0 < scalar(act.recompute) < scalar(whole.recompute)
    assert scalar(whole.recompute) == pytest.approx(scalar(whole.forward))


def test_modules_need_selective_recompute():
    with pytest.raises(pydantic.ValidationError, match="recompute_modules needs"):
        Plan(recompute="full", recompute_modules=("mlp",))
    p = Plan(recompute="selective", recompute_modules=("moe_act", "layernorm"))
    assert p.recompute_modules == ("layernorm", "moe_act")  # one order per set
    assert arrays(**p.model_dump()).plan(0) == p


def test_megatron_export_names_the_modules():
    """The launch script passes the module list as --recompute-modules' separate words."""
    import shlex

    from meshplan.export.megatron import render

    model = load_model("qwen3-235b-a22b")
    job = Job(global_batch_size=64, seq_len=4096, precision="bf16")
    plan = Plan(tp=1, pp=4, dp=2, ep=2, recompute="selective",
                recompute_modules=("moe_act", "layernorm"))
    words = shlex.split(render(model, job, plan).replace("\\\n", " "), comments=True)
    i = words.index("--recompute-modules")
    assert words[i + 1:i + 3] == ["layernorm", "moe_act"] and words[i + 3].startswith("--")
