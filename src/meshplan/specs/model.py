"""Model: a decoder-only transformer, dense or mixture-of-experts, with GQA/MQA or MLA attention.

Shapes only; parameter counts and FLOPs live in `meshplan.cost`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshplan.specs._base import Spec

MlpType = Literal["swiglu", "geglu", "gelu", "relu"]
RouterScore = Literal["softmax", "sigmoid"]


class MoE(Spec):
    """Mixture-of-experts feed-forward layers (Mixtral, DeepSeek-V3, Qwen3-MoE)."""

    num_experts: int = Field(gt=0)
    """Routed experts per MoE layer."""
    top_k: int = Field(gt=0)
    """Routed experts each token is sent to."""
    expert_ffn_hidden_size: int = Field(gt=0)
    """Intermediate size of one routed expert."""
    num_shared_experts: int = Field(default=0, ge=0)
    """Always-active shared experts (DeepSeek), each of `shared_expert_ffn_hidden_size`."""
    shared_expert_ffn_hidden_size: int = Field(default=0, ge=0)
    num_dense_layers: int = Field(default=0, ge=0)
    """Leading layers that use the dense FFN (`Model.ffn_hidden_size`) instead of experts."""
    router_score: RouterScore = "softmax"
    """Router scoring function: softmax (Mixtral, Qwen) or sigmoid (DeepSeek-V3,
    HF `scoring_func`)."""
    normalize_top_k: bool = True
    """The top-k routing weights are renormalised to sum to 1 (HF `norm_topk_prob`; Mixtral's
    softmax over the top-k logits is the same thing)."""
    router_groups: int = Field(default=0, ge=0)
    """Group-limited routing (DeepSeek-V3 `n_group`): experts in this many groups; 0: off."""
    router_group_top_k: int = Field(default=0, ge=0)
    """Groups each token may pick from (DeepSeek-V3 `topk_group`)."""
    router_scaling: float = Field(default=1.0, gt=0)
    """Routed-output scale (DeepSeek-V3 `routed_scaling_factor` 2.5)."""
    router_expert_bias: bool = False
    """Auxiliary-loss-free balancing with a per-expert score bias (DeepSeek-V3 `noaux_tc`,
    arXiv:2412.19437 Sec. 2.1.2)."""
    capacity_factor: float | None = Field(default=None, gt=0)
    """Expert capacity (tokens dropped beyond capacity_factor * tokens * top_k / experts);
    None: dropless, which every model meshplan ships trains with."""

    @model_validator(mode="after")
    def _check(self) -> MoE:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
        if self.num_shared_experts and not self.shared_expert_ffn_hidden_size:
            raise ValueError("num_shared_experts > 0 needs shared_expert_ffn_hidden_size")
        if self.router_groups and (self.num_experts % self.router_groups
                                   or not 0 < self.router_group_top_k <= self.router_groups):
            raise ValueError(f"router_groups ({self.router_groups}) must divide num_experts and "
                             f"router_group_top_k ({self.router_group_top_k}) lie in 1..groups")
        return self


RopeType = Literal["llama3", "yarn", "linear"]


class RopeScaling(Spec):
    """RoPE frequency scaling for long contexts (HF `rope_scaling` / `rope_parameters`).

    llama3: Llama 3.1's band-wise scaling (factor, low/high_freq_factor, original length;
    transformers `_compute_llama3_parameters`); yarn: YaRN (arXiv:2309.00071; factor,
    original length, beta_fast/slow, mscale, mscale_all_dim as DeepSeek-V3 writes them);
    linear: position interpolation (positions divided by factor, arXiv:2306.15595).
    """

    type: RopeType
    factor: float = Field(gt=0)
    original_max_position_embeddings: int | None = Field(default=None, gt=0)
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


class MLA(Spec):
    """Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434 Sec. 2.1)."""

    q_lora_rank: int = Field(default=0, ge=0)
    """Rank of the query down-projection; 0 means queries are projected directly."""
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)


class Model(Spec):
    """Architecture of a decoder-only transformer."""

    name: str
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    ffn_hidden_size: int = Field(gt=0)
    """Dense MLP intermediate size (for MoE models: the size used by dense layers)."""
    mlp_type: MlpType = "swiglu"
    """Gated (swiglu, geglu: three matrices) or plain (gelu, relu: two matrices)."""
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int | None = Field(default=None, gt=0)
    """Key/value heads (GQA/MQA); defaults to `num_attention_heads` (MHA)."""
    head_dim: int | None = Field(default=None, gt=0)
    """Defaults to hidden_size / num_attention_heads."""
    vocab_size: int = Field(gt=0)
    tied_embeddings: bool = False
    position_embedding: Literal["rope", "learned", "alibi"] = "rope"
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys (Qwen3)."""
    linear_bias: bool = False
    """Biases on the linear layers (GPT-2/GPT-3/Megatron GPT)."""
    qkv_bias: bool = False
    """Bias on the QKV projection only (Qwen2)."""
    dropout: bool = False
    """Trained with dropout (GPT-3-era models): dropout masks add activation memory."""
    max_seq_len: int | None = Field(default=None, gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    """RoPE base (RoFormer arXiv:2104.09864 and transformers' default 10,000; Llama 3 500,000,
    Qwen and Mixtral 1,000,000). Ignored without rotary positions."""
    rope_scaling: RopeScaling | None = None
    norm_eps: float = Field(default=1e-5, gt=0)
    """Epsilon of every RMSNorm/LayerNorm (HF `rms_norm_eps`; torch's and Megatron's default
    1e-5)."""
    mtp_layers: int = Field(default=0, ge=0)
    """Multi-token-prediction modules after the last layer (DeepSeek-V3
    `num_nextn_predict_layers`). Exported so the engine builds them; not in meshplan's cost
    model (DeepSeek-V3's one module is ~2% of its parameters)."""
    moe: MoE | None = None
    mla: MLA | None = None
    source: str = ""
    """Where the numbers come from (paper table, config file and commit)."""

    @model_validator(mode="after")
    def _check(self) -> Model:
        heads = self.num_attention_heads
        if self.head_dim is None and self.mla is None and self.hidden_size % heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); set head_dim explicitly"
            )
        kv = self.kv_heads
        if self.num_attention_heads % kv:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_kv_heads ({kv})"
            )
        if self.moe is not None and self.moe.num_dense_layers > self.num_layers:
            raise ValueError(
                f"moe.num_dense_layers ({self.moe.num_dense_layers}) exceeds num_layers "
                f"({self.num_layers})"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        """Per-head dimension of Q and K (MLA: nope + rope part)."""
        if self.mla is not None:
            return self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def gated(self) -> bool:
        return self.mlp_type in ("swiglu", "geglu")

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def num_moe_layers(self) -> int:
        return 0 if self.moe is None else self.num_layers - self.moe.num_dense_layers
