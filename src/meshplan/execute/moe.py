"""Mixture-of-experts feed-forward layer for the executor's model (see `model.py`).

Routing follows Mixtral (softmax over the top-k router logits of each token) with optional
always-active shared experts (DeepSeek). Expert weights are stacked on a leading expert
dimension so FSDP (dim-0 sharding) splits whole experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meshplan.specs.model import Model


def activation(mlp_type: str, x: torch.Tensor) -> torch.Tensor:
    if mlp_type in ("swiglu",):
        return F.silu(x)
    if mlp_type in ("geglu", "gelu"):
        return F.gelu(x)
    return F.relu(x)


class MoE(nn.Module):
    """Top-k routed experts (softmax over the k chosen logits, as Mixtral) plus shared experts.

    Expert weights are stacked (num_experts, ...) so FSDP shards whole experts; each expert runs
    on the tokens routed to it (a loop over experts, like a grouped GEMM without the kernel).
    """

    def __init__(self, spec: Model, shared: nn.Module | None = None) -> None:
        super().__init__()
        assert spec.moe is not None
        m, h = spec.moe, spec.hidden_size
        self.top_k, self.mlp_type = m.top_k, spec.mlp_type
        self.router = nn.Linear(h, m.num_experts, bias=False)
        f = m.expert_ffn_hidden_size
        self.w1 = nn.Parameter(torch.empty(m.num_experts, h, f))
        self.w3 = nn.Parameter(torch.empty(m.num_experts, h, f)) if spec.gated else None
        self.w2 = nn.Parameter(torch.empty(m.num_experts, f, h))
        self.shared = shared
        """Always-active shared experts (DeepSeek), a dense FeedForward built by the caller."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self.router(flat).float()
        top, idx = logits.topk(self.top_k, dim=-1)
        weights = top.softmax(dim=-1).to(flat.dtype)
        out = torch.zeros_like(flat)
        for e in range(self.w1.shape[0]):
            token, slot = (idx == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            xe = flat[token]
            a = activation(self.mlp_type, xe @ self.w1[e].to(xe.dtype))
            if self.w3 is not None:
                a = a * (xe @ self.w3[e].to(xe.dtype))
            ye = (a @ self.w2[e].to(xe.dtype)) * weights[token, slot, None]
            out = out.index_add(0, token, ye.to(out.dtype))
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(shape)
