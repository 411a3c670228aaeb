"""The layer-cost core on serving shapes: decode is bound by weight reads, prefill by FLOPs,
and the q x kv attention form reduces to training's square causal one."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost import flops as F
from meshplan.cost.kernels import Kernels
from meshplan.cost.layer import (
    BatchShape,
    LayerDegrees,
    attention_core_flops,
    head_parts,
    kv_cache_bytes_per_token,
    layer_forward_time,
)
from meshplan.cost.params import count_params
from meshplan.specs.io import load_cluster, load_model


@pytest.fixture(scope="module")
def h100():
    return load_cluster("dgx-h100")


def forward_time(model, K, shape, deg, head_tokens):
    kv = kv_cache_bytes_per_token(model, deg.tp)
    layers = model.num_layers * layer_forward_time(model, K, shape, deg, moe=False,
                                                   kv_bytes_per_token=kv)
    return float(layers + head_parts(model, K, head_tokens, deg).time(K))


def test_decode_step_of_a_dense_70b_is_bound_by_reading_the_weights(h100):
    """Batch 64 decode on 8 H100s (tp=8): every step reads all weights from HBM, so it takes
    at least weights / (tp x HBM bandwidth) (Williams et al. 2009 roofline)."""
    model = load_model("llama3-70b")
    K = Kernels(h100, "bf16")
    shape = BatchShape.requests(np.ones(64), np.full(64, 2047.0))
    t = forward_time(model, K, shape, LayerDegrees(tp=8), head_tokens=64)
    weight_bytes = 2.0 * count_params(model).total
    bound = weight_bytes / (8 * h100.accelerator.memory_bandwidth)
    assert t >= bound
    assert t < 2.0 * bound  # bandwidth-bound: not far above the weight read


def test_prefill_of_8k_tokens_is_bound_by_flops(h100):
    """A 8192-token prefill does at least its causal forward FLOPs at the dense peak."""
    model = load_model("llama3-70b")
    K = Kernels(h100, "bf16")
    s = 8192
    shape = BatchShape.requests(np.array([s], float), np.zeros(1))
    t = forward_time(model, K, shape, LayerDegrees(tp=8), head_tokens=1)
    linear = F.forward_flops(model, 1, s) - model.num_layers * F.attention_core_flops(model, 1, s)
    causal_core = model.num_layers * 0.5 * F.attention_core_flops(model, 1, s)
    bound = (linear + causal_core) / (8 * h100.accelerator.peak("bf16"))
    assert t >= bound
    assert t < 3.0 * bound  # compute-bound: the weight read is a small share


def test_query_by_key_pairs_reduce_to_the_square_causal_training_form():
    """A training micro-batch (b sequences of s, cp-way split) attends to 0.5 b s^2 / cp pairs
    under the causal mask; a request with no cache, to q^2 / 2."""
    train = BatchShape.training(4, 2048, 2)
    assert train.tokens == 4 * 2048 / 2
    assert train.causal_pairs == pytest.approx(0.5 * 4 * 2048 * 2048 / 2)
    assert train.dense_pairs == pytest.approx(4 * 2048 * 2048 / 2)
    chunk = BatchShape.requests(np.array([512.0]), np.array([1536.0]))
    assert chunk.causal_pairs == pytest.approx(512 * 1536 + 512**2 / 2)
    assert chunk.kv_tokens == 2048
    decode = BatchShape.requests(np.ones(3), np.array([99.0, 199.0, 299.0]))
    assert decode.tokens == 3 and decode.kv_tokens == 600


def test_attention_flops_count_each_pair_once_per_head():
    model = load_model("llama3-8b")
    pairs = 1000.0
    want = 2 * pairs * model.num_attention_heads * 2 * model.head_size
    assert attention_core_flops(model, pairs, 1) == pytest.approx(want)
    assert attention_core_flops(model, pairs, 4) == pytest.approx(want / 4)


def test_kv_cache_bytes_per_token():
    """Llama-3-70B (GQA, 8 KV heads of 128): 2 x 8 x 128 x 2 bytes per layer = 320 KiB per
    token over 80 layers; DeepSeek-V2/V3 MLA caches d_c + d_h^R = 512 + 64 elements per layer
    (DeepSeek-V2 Table 1: 4.5 d_h with d_h = 128)."""
    llama = load_model("llama3-70b")
    per_layer = kv_cache_bytes_per_token(llama)
    assert per_layer == 4096
    assert llama.num_layers * per_layer == 320 * 1024
    assert kv_cache_bytes_per_token(llama, tp=8) == 512  # one KV head per rank
    assert kv_cache_bytes_per_token(llama, tp=16) == 512  # replicated past 8 ranks
    ds = load_model("deepseek-v3")
    assert float(kv_cache_bytes_per_token(ds, dtype_bytes=1.0)) == 4.5 * 128
    assert float(kv_cache_bytes_per_token(ds, tp=8)) == 2 * 576  # latent kept whole per rank


def test_gemm_is_floored_by_its_bytes(h100):
    K = Kernels(h100, "bf16")
    flops, nbytes = 1e9, 1e9
    t = float(K.gemm(flops, 1.0, nbytes))
    assert t == pytest.approx(nbytes / K.mem_bw)
    assert float(K.gemm(flops)) < t


def test_a_moe_decode_step_reads_only_the_experts_its_tokens_reach(h100):
    """Qwen3-30B-A3B (128 experts, top 8): one decode token reaches 8 experts, so its MoE
    block reads ~8 experts' weights, not 128 (the byte floor); a training micro-batch of
    4,096 tokens reaches every expert, its time as if all were read."""
    from meshplan.cost.layer import experts_touched, mlp_parts

    m = load_model("qwen3-30b-a3b")
    e = m.moe
    assert experts_touched(e.num_experts, e.top_k) == pytest.approx(1 - (127 / 128) ** 8)
    assert experts_touched(e.num_experts, 4096 * e.top_k) == pytest.approx(1.0)
    K = Kernels(h100, "bf16")
    one = float(np.asarray(mlp_parts(m, K, BatchShape(1, 1, 0.5, 1, 1), LayerDegrees(),
                                     moe=True).gemm))
    expert_bytes = 2 * 3 * m.hidden_size * e.expert_ffn_hidden_size
    floor = e.top_k * (1 - 1 / 128) * expert_bytes / K.mem_bw  # ~8 distinct experts
    assert floor * 0.9 < one < 2 * floor
    big = float(np.asarray(mlp_parts(m, K, BatchShape(1, 4096, 4096 * 2048.5, 4096**2, 4096),
                                     LayerDegrees(), moe=True).gemm))
    assert big > e.num_experts * expert_bytes / K.mem_bw
