"""A small Llama-style decoder built from a meshplan `Model` spec, for proving plans.

Why its own model: a plan is proven on the same shapes the cost model prices (GQA heads, gated
MLP, MoE routing), and the module layout is what the parallelizer needs: every linear layer is
an `nn.Linear` named as torchtitan's Llama names them (wq/wk/wv/wo, w1/w2/w3), blocks sit in an
`nn.ModuleDict` keyed by their global index so a pipeline stage is the same model with other
blocks deleted, and the embedding / final norm / head may be `None` on inner stages.

Attention calls `F.scaled_dot_product_attention` (causal, `enable_gqa`) on however many heads
the local shard holds, so column-parallel Q/K/V projections need no code change. The init is a
pure function of the seed (one `torch.Generator` walked over the parameters by name), so every
rank and every plan starts from the same weights, which the loss-parity tests rely on.
Dropout is never applied: runs are deterministic.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from meshplan.errors import MeshplanError
from meshplan.execute.moe import MoE, activation
from meshplan.specs.model import Model

INIT_STD = 0.02
"""Normal init of every weight matrix (GPT-2 / Megatron `init_method_std`)."""
ROPE_THETA = 10000.0


def check_model(spec: Model) -> None:
    """Raise MeshplanError for architecture features this executor does not build."""
    if spec.mla is not None:
        raise MeshplanError(f"model {spec.name}: MLA attention is not implemented by meshplan run")
    if spec.position_embedding == "alibi":
        raise MeshplanError(f"model {spec.name}: ALiBi positions are not implemented by "
                            "meshplan run (rope and learned are)")


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (Zhang & Sennrich 2019; Llama)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight).type_as(x)


def make_norm(spec: Model, dim: int) -> nn.Module:
    return RMSNorm(dim) if spec.norm == "rmsnorm" else nn.LayerNorm(dim)


def rope_tables(head_dim: int, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (max_seq_len, head_dim / 2) (Su et al. 2021, RoFormer Eq. 34)."""
    inv = 1.0 / ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head (the Llama / HF `rotate_half` layout); x: (b,s,n,d)."""
    s = x.shape[1]
    c, si = cos[:s, None, :].to(x.dtype), sin[:s, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * si, x1 * si + x2 * c), dim=-1)


class Attention(nn.Module):
    """Causal GQA self-attention; head counts come from the projection widths, so a shard of
    heads (tensor parallel) runs the same code."""

    def __init__(self, spec: Model, max_seq_len: int) -> None:
        super().__init__()
        h, d, a, kv = spec.hidden_size, spec.head_size, spec.num_attention_heads, spec.kv_heads
        bias = spec.linear_bias or spec.qkv_bias
        self.head_dim = d
        self.wq = nn.Linear(h, a * d, bias=bias)
        self.wk = nn.Linear(h, kv * d, bias=bias)
        self.wv = nn.Linear(h, kv * d, bias=bias)
        self.wo = nn.Linear(a * d, h, bias=spec.linear_bias)
        self.q_norm = RMSNorm(d) if spec.qk_norm else None
        self.k_norm = RMSNorm(d) if spec.qk_norm else None
        self.rope = spec.position_embedding == "rope"
        self.max_seq_len = max_seq_len
        cos, sin = rope_tables(d, max_seq_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.recompute_core = False
        """Selective recompute: keep no attention-core activations (Korthikanti et al. 2022)."""

    def reset_buffers(self) -> None:
        """Recompute the RoPE tables (after `to_empty` from the meta device)."""
        self.cos, self.sin = rope_tables(self.head_dim, self.max_seq_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, -1, self.head_dim)
        k = self.wk(x).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.recompute_core:
            out = checkpoint(_core, q, k, v, use_reentrant=False)
        else:
            out = _core(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


def _core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                          enable_gqa=q.shape[1] != k.shape[1])


class FeedForward(nn.Module):
    """w2(act(w1 x) * w3 x) for gated MLPs (Shazeer 2020), w2(act(w1 x)) otherwise."""

    def __init__(self, spec: Model, ffn: int) -> None:
        super().__init__()
        h, bias = spec.hidden_size, spec.linear_bias
        self.mlp_type = spec.mlp_type
        self.w1 = nn.Linear(h, ffn, bias=bias)
        self.w3 = nn.Linear(h, ffn, bias=bias) if spec.gated else None
        self.w2 = nn.Linear(ffn, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = activation(self.mlp_type, self.w1(x))
        return self.w2(a * self.w3(x) if self.w3 is not None else a)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, spec: Model, layer_id: int, max_seq_len: int) -> None:
        super().__init__()
        self.attention_norm = make_norm(spec, spec.hidden_size)
        self.attention = Attention(spec, max_seq_len)
        self.ffn_norm = make_norm(spec, spec.hidden_size)
        dense = spec.moe is None or layer_id < spec.moe.num_dense_layers
        self.moe = not dense
        if dense:
            self.feed_forward: nn.Module = FeedForward(spec, spec.ffn_hidden_size)
        else:
            assert spec.moe is not None
            shared = spec.moe.num_shared_experts * spec.moe.shared_expert_ffn_hidden_size
            self.feed_forward = MoE(spec, FeedForward(spec, shared) if shared else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Embedding, blocks, final norm and LM head; inner pipeline stages drop the ends."""

    def __init__(self, spec: Model, max_seq_len: int) -> None:
        super().__init__()
        check_model(spec)
        h = spec.hidden_size
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(spec.vocab_size, h)
        self.pos_embeddings: nn.Embedding | None = (
            nn.Embedding(max_seq_len, h) if spec.position_embedding == "learned" else None)
        self.layers = nn.ModuleDict({str(i): Block(spec, i, max_seq_len)
                                     for i in range(spec.num_layers)})
        self.norm: nn.Module | None = make_norm(spec, h)
        self.output: nn.Linear | None = nn.Linear(h, spec.vocab_size, bias=False)
        if spec.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.compute_dtype: torch.dtype | None = None
        """Autocast dtype of the forward (None: run in the parameters' fp32). Kept on the
        module so the backward, which pipeline schedules run outside any caller context,
        never runs under autocast (torch.amp docs: backward under autocast is unsupported)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (b, s) in on the first stage, hidden states (b, s, h) elsewhere."""
        if self.compute_dtype is None:
            return self._forward(x)
        with torch.autocast(x.device.type, dtype=self.compute_dtype):
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tok_embeddings is not None:
            x = self.tok_embeddings(x)
            if self.pos_embeddings is not None:
                x = x + self.pos_embeddings.weight[: x.shape[1]]
            if self.compute_dtype is not None:
                # The residual stream in the compute dtype, as Megatron keeps it: what TP,
                # SP and pipeline stages exchange is then 2 bytes per element, as costed.
                x = x.to(self.compute_dtype)
        for layer in self.layers.values():
            x = layer(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.output(x) if self.output is not None else x


def init_weights(model: nn.Module, seed: int, num_layers: int) -> None:
    """Deterministic init: N(0, 0.02) weights, output projections scaled by 1/sqrt(2 L)
    (GPT-2 / Megatron `scaled_init_method`), zero biases, unit norms.

    Each parameter draws from its own generator seeded by (seed, parameter name), so a
    pipeline stage that holds only some blocks gets exactly the weights the whole model has.
    """
    out_std = INIT_STD / math.sqrt(2.0 * num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")
            if "norm" in name and p.dim() == 1:
                p.fill_(1.0 if parts[-1] == "weight" else 0.0)
            elif parts[-1] == "bias":
                p.zero_()
            else:
                scaled = "wo" in parts or "w2" in parts
                gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                std = out_std if scaled else INIT_STD
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)


def build_model(spec: Model, seed: int = 0, max_seq_len: int | None = None,
                layer_ids: list[int] | None = None, first: bool = True,
                last: bool = True) -> Transformer:
    """The model (or one pipeline stage of it: `layer_ids`, with the embedding if `first` and
    the head if `last`) on the CPU in fp32, initialised from `seed`.

    Built on the meta device and materialised after pruning (torchtitan's meta-init), so a
    stage never allocates the blocks it does not own.
    """
    seq = max_seq_len or spec.max_seq_len or 4096
    with torch.device("meta"):
        model = Transformer(spec, seq)
    if layer_ids is not None:
        keep_layers(model, layer_ids, first, last)
    model.to_empty(device="cpu")
    if spec.tied_embeddings and model.output is not None and model.tok_embeddings is not None:
        model.output.weight = model.tok_embeddings.weight
    for module in model.modules():
        if isinstance(module, Attention):
            module.reset_buffers()
    init_weights(model, seed, spec.num_layers)
    return model


def keep_layers(model: Transformer, layer_ids: list[int], first: bool, last: bool) -> Transformer:
    """Turn a whole model into one pipeline stage in place: keep only `layer_ids`, the
    embedding on the first stage and the norm + head on the last (torchtitan's
    `pipeline_module_split` does the same by deleting modules)."""
    for name in list(model.layers.keys()):
        if int(name) not in layer_ids:
            del model.layers[name]
    if not first:
        model.tok_embeddings = None
        model.pos_embeddings = None
    if not last:
        model.norm = None
        model.output = None
    return model


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, in fp32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
