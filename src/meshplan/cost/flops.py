"""Floating-point operations of the forward pass, per layer and per model.

A multiply-add is 2 FLOPs. Backward = 2 x forward for every matmul (grad of the input and of
the weight). Sources:
- Megatron-LM 2021 (Narayanan et al., arXiv:2104.04473), Eq. 3: one layer's forward is
  24 B s h^2 (1 + s/(6h)) and an iteration with full recompute is
  96 B s l h^2 (1 + s/(6h) + V/(16 l h)).
- PaLM (Chowdhery et al. 2022, Appendix B): model FLOPs per token 6N + 12 L H Q T, i.e.
  attention counted over the full (non-causal) s x s score matrix, as Megatron's Eq. 3 does.
  meshplan's MFU counts the causal half instead (6N + 6 L H Q T), the work a causal model
  needs and the work its time is costed for, so MFU cannot exceed 1 at long sequences;
  `causal=False` gives the PaLM / Megatron count.
- DeepSeek-V2 (arXiv:2405.04434) for the MLA projections.
"""

from __future__ import annotations

import numpy as np

from meshplan.specs.model import Model

Num = float | np.ndarray


def qkv_flops(model: Model, tokens: Num) -> Num:
    """Q, K, V projections (MLA: down- and up-projections of queries and the latent KV)."""
    h, a = model.hidden_size, model.num_attention_heads
    if model.mla is not None:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = (h * m.q_lora_rank + m.q_lora_rank * a * qk) if m.q_lora_rank else h * a * qk
        kv = h * (m.kv_lora_rank + m.qk_rope_head_dim)
        kv += m.kv_lora_rank * a * (m.qk_nope_head_dim + m.v_head_dim)
        return 2 * tokens * (q + kv)
    d = model.head_size
    return 2 * tokens * h * (a * d + 2 * model.kv_heads * d)


def value_head_dim(model: Model) -> int:
    return model.mla.v_head_dim if model.mla is not None else model.head_size


def attention_core_flops(model: Model, batch: Num, seq_len: Num) -> Num:
    """Scores (Q K^T) and weighted values (A V) over the full s x s matrix (no causal saving)."""
    a = model.num_attention_heads
    return 2 * batch * seq_len * seq_len * a * (model.head_size + value_head_dim(model))


def out_proj_flops(model: Model, tokens: Num) -> Num:
    return 2 * tokens * model.num_attention_heads * value_head_dim(model) * model.hidden_size


def mlp_flops(model: Model, tokens: Num, ffn: int) -> Num:
    """One MLP of intermediate size `ffn`: 2 matrices (plain) or 3 (gated)."""
    return 2 * tokens * model.hidden_size * ffn * (3 if model.gated else 2)


def moe_flops(model: Model, tokens: Num) -> Num:
    """Router, top-k routed experts and shared experts of one MoE layer."""
    assert model.moe is not None
    moe = model.moe
    router = 2 * tokens * model.hidden_size * moe.num_experts
    routed = moe.top_k * mlp_flops(model, tokens, moe.expert_ffn_hidden_size)
    shared = moe.num_shared_experts * mlp_flops(model, tokens, moe.shared_expert_ffn_hidden_size)
    return router + routed + shared


def mtp_projection_flops(model: Model, tokens: Num) -> Num:
    """One multi-token-prediction module's 2h -> h input projection (DeepSeek-V3,
    arXiv:2412.19437, Sec. 2.2, Eq. 21)."""
    h = model.hidden_size
    return 2 * tokens * 2 * h * h


def mtp_flops(model: Model, batch: Num, seq_len: Num, causal: bool = False) -> Num:
    """Forward FLOPs of the multi-token-prediction modules: each is one more transformer
    layer (a MoE layer in a MoE model: DeepSeek-V3's MTP block has the main layers'
    experts), its input projection and another pass through the shared LM head
    (arXiv:2412.19437 Sec. 2.2; Megatron-Core counts them in its FLOPs when
    `--mtp-num-layers` is set)."""
    tokens = batch * seq_len
    core = attention_core_flops(model, batch, seq_len) * (0.5 if causal else 1.0)
    layer = qkv_flops(model, tokens) + core + out_proj_flops(model, tokens)
    layer = layer + (moe_flops(model, tokens) if model.moe is not None
                     else mlp_flops(model, tokens, model.ffn_hidden_size))
    return model.mtp_layers * (layer + mtp_projection_flops(model, tokens)
                               + head_flops(model, tokens))


def head_flops(model: Model, tokens: Num) -> Num:
    """LM head (logits) projection."""
    return 2 * tokens * model.hidden_size * model.vocab_size


def forward_flops(model: Model, batch: Num, seq_len: Num, causal: bool = False) -> Num:
    """Forward FLOPs of the whole model for `batch` sequences; attention over the full s x s
    matrix, or its causal half."""
    tokens = batch * seq_len
    core = attention_core_flops(model, batch, seq_len) * (0.5 if causal else 1.0)
    attn = qkv_flops(model, tokens) + core
    attn = attn + out_proj_flops(model, tokens)
    dense = model.num_layers - model.num_moe_layers
    total = model.num_layers * attn + dense * mlp_flops(model, tokens, model.ffn_hidden_size)
    if model.moe is not None:
        total = total + model.num_moe_layers * moe_flops(model, tokens)
    if model.mtp_layers:
        total = total + mtp_flops(model, batch, seq_len, causal)
    return total + head_flops(model, tokens)


def model_flops_per_step(model: Model, global_batch: Num, seq_len: Num,
                         causal: bool = False) -> Num:
    """Model FLOPs of one training step: 3 x forward (PaLM Appendix B; `causal`: attention's
    causal half, the MFU numerator meshplan reports)."""
    return 3 * forward_flops(model, global_batch, seq_len, causal)


def recompute_flops_per_step(model: Model, global_batch: Num, seq_len: Num,
                             recompute: np.ndarray, causal: bool = False,
                             full_share: np.ndarray | float = 1.0) -> Num:
    """Extra forward FLOPs spent on activation recomputation (HFU numerator minus model FLOPs).

    recompute: 0 none, 1 selective (attention core only, Korthikanti et al. 2022 Sec. 4.2),
    2 full (every layer's forward, the multi-token-prediction layers' included, not the LM
    head), times `full_share`, the share of layers recomputed (`train.recompute.full_share`).
    """
    full = forward_flops(model, global_batch, seq_len, causal) \
        - (1 + model.mtp_layers) * head_flops(model, global_batch * seq_len)
    core = attention_core_flops(model, global_batch, seq_len) * (0.5 if causal else 1.0)
    selective = model.num_layers * core
    return np.where(recompute == 2, full_share * full, np.where(recompute == 1, selective, 0.0))


def step_flops(model: Model, global_batch: int, seq_len: int, recompute: np.ndarray,
               fused_attention: bool, full_share: np.ndarray | float = 1.0
               ) -> tuple[float, np.ndarray]:
    """(model FLOPs, hardware FLOPs) of one training step, counted as the time is costed: the
    model needs attention's causal half; a fused kernel executes only that half, an unfused one
    the whole score matrix (and the recomputation's forward FLOPs on top)."""
    model_flops = float(model_flops_per_step(model, global_batch, seq_len, causal=True))
    executed = 3 * forward_flops(model, global_batch, seq_len, causal=fused_attention)
    hardware = executed + recompute_flops_per_step(model, global_batch, seq_len, recompute,
                                                   causal=fused_attention,
                                                   full_share=full_share)
    return model_flops, np.asarray(hardware, dtype=float)


def megatron_eq3_flops(model: Model, global_batch: int, seq_len: int) -> float:
    """Megatron-LM 2021 Eq. 3 (GPT, full recompute): 96 B s l h^2 (1 + s/6h + V/16lh)."""
    h, L, V = model.hidden_size, model.num_layers, model.vocab_size
    return 96 * global_batch * seq_len * L * h**2 * (1 + seq_len / (6 * h) + V / (16 * L * h))
