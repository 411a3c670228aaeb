"""Parameter counts of a Model, per layer and in total.

Sources: Megatron-LM 2021 (Narayanan et al., arXiv:2104.04473, Sec. 5.1):
P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12lh)) for GPT with biases and learned positions;
Llama 2/3 and DeepSeek-V3 totals are checked in the tests against their papers.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplan.specs.model import Model


def attention_params(model: Model) -> int:
    """Weights of one attention block (projections, biases, q/k norms)."""
    h, a, k, d = model.hidden_size, model.num_attention_heads, model.kv_heads, model.head_size
    if model.mla is not None:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            q = h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * a * qk
        else:
            q = h * a * qk
        kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
        kv += m.kv_lora_rank * a * (m.qk_nope_head_dim + m.v_head_dim)
        return q + kv + a * m.v_head_dim * h
    weights = h * a * d + 2 * h * k * d + a * d * h
    bias = 0
    if model.linear_bias:
        bias = a * d + 2 * k * d + h
    elif model.qkv_bias:
        bias = a * d + 2 * k * d
    return weights + bias + (2 * d if model.qk_norm else 0)


def mlp_params(model: Model, ffn: int) -> int:
    """Weights of one MLP of intermediate size `ffn` (gated: three matrices, plain: two)."""
    h = model.hidden_size
    mats = 3 if model.gated else 2
    bias = (ffn * (mats - 1) + h) if model.linear_bias else 0
    return mats * h * ffn + bias


def norm_params(model: Model) -> int:
    """Both pre-norms of one layer (LayerNorm has a bias, RMSNorm does not)."""
    return 2 * model.hidden_size * (2 if model.norm == "layernorm" else 1)


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by part; `expert` is all routed experts of one MoE layer."""

    attention: int
    """Per layer."""
    norms: int
    """Per layer."""
    dense_mlp: int
    """Per dense layer."""
    expert: int
    """Routed experts of one MoE layer (all E of them)."""
    shared_and_router: int
    """Shared experts and the router of one MoE layer."""
    num_dense_layers: int
    num_moe_layers: int
    embedding: int
    """Token (and learned position) embeddings."""
    head: int
    """LM head (0 when tied) plus the final norm."""
    active_expert: int
    """Routed-expert weights one token uses in one MoE layer (top-k of them)."""

    @property
    def per_dense_layer(self) -> int:
        return self.attention + self.norms + self.dense_mlp

    @property
    def per_moe_layer_non_expert(self) -> int:
        return self.attention + self.norms + self.shared_and_router

    @property
    def total(self) -> int:
        return (
            self.num_dense_layers * self.per_dense_layer
            + self.num_moe_layers * (self.per_moe_layer_non_expert + self.expert)
            + self.embedding
            + self.head
        )

    @property
    def active(self) -> int:
        """Parameters one token touches (MoE: top-k routed experts only)."""
        return self.total - self.num_moe_layers * (self.expert - self.active_expert)


def count_params(model: Model) -> ParamCounts:
    """Count every weight of the model."""
    h, V = model.hidden_size, model.vocab_size
    embedding = V * h
    if model.position_embedding == "learned":
        embedding += (model.max_seq_len or 2048) * h
    final_norm = h * (2 if model.norm == "layernorm" else 1)
    head = final_norm + (0 if model.tied_embeddings else V * h)
    expert = shared_and_router = active_expert = 0
    if model.moe is not None:
        moe = model.moe
        one_expert = mlp_params(model, moe.expert_ffn_hidden_size)
        expert = moe.num_experts * one_expert
        active_expert = moe.top_k * one_expert
        shared = moe.num_shared_experts * mlp_params(model, moe.shared_expert_ffn_hidden_size)
        shared_and_router = shared + h * moe.num_experts
    return ParamCounts(
        attention=attention_params(model),
        norms=norm_params(model),
        dense_mlp=mlp_params(model, model.ffn_hidden_size),
        expert=expert,
        shared_and_router=shared_and_router,
        num_dense_layers=model.num_layers - model.num_moe_layers,
        num_moe_layers=model.num_moe_layers,
        embedding=embedding,
        head=head,
        active_expert=active_expert,
    )
