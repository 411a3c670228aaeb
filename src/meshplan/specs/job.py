"""Job: what is trained, independent of how it is split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from meshplan.specs._base import Spec


class Job(Spec):
    """The training job: batch, sequence, precision, optimizer, budget."""

    global_batch_size: int = Field(gt=0)
    """Sequences per optimizer step."""
    seq_len: int = Field(gt=0)
    precision: Literal["bf16", "fp16", "fp8"] = "bf16"
    """Compute precision of the GEMMs (fp8: FP8 GEMMs with bf16 everywhere else)."""
    optimizer: Literal["adam"] = "adam"
    """Mixed-precision Adam(W): fp32 master weights and two fp32 moments."""
    grad_bytes: Literal[2, 4] = 4
    """Bytes per gradient element (Megatron accumulates in fp32; FSDP bf16 reduce gives 2)."""
    flash_attention: bool = True
    """Fused attention kernel (FlashAttention); False models the unfused softmax of 2021."""
    loss_kernel: Literal["upcast", "vocab_parallel", "fused"] = "vocab_parallel"
    """How the loss runs at the vocabulary size (`cost.train.allocator.LOSS_BYTES`): upcast:
    F.cross_entropy on the fp32 upcast (torchtitan, Hugging Face); vocab_parallel: Megatron's
    vocab-parallel cross-entropy on the fp32 upcast, exp in place; fused: a fused kernel on the
    bf16 logits (flash-attn CrossEntropyLoss, llm-foundry's fused_crossentropy)."""
    expandable_segments: bool = False
    """PyTorch's caching allocator runs with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    (less fragmentation: `cost.train.allocator.EXPANDABLE_SHARE`)."""
    zero3_collectives: tuple[int, int] = Field(default=(1, 1), strict=False)
    """(all-gathers, reduce-scatters) one layer's ZeRO-3 / FSDP traffic is issued as, per
    pass: (1, 1) for an FSDP unit or a coalesced bucket; DeepSpeed ZeRO-3 before v0.5.5 issued
    one per parameter tensor (`validate.rules.deepspeed_per_parameter_zero3`)."""
    zero3_list_collectives: bool = False
    """ZeRO-3 collectives go through torch.distributed's list API (one output / input view
    per rank), whose NCCL backend copies each rank's slice by its own kernel: host time per
    rank and collective (`cost.train.comm.PER_RANK_HOST_S`)."""
    token_budget: float | None = Field(default=None, ge=1, le=1e18)
    """Tokens to train on, for time-to-train and GPU-hours (at most 1e18: ~30,000x the
    largest pre-training corpora today, ~3.6e13 tokens)."""

    @field_validator("zero3_collectives")
    @classmethod
    def _counts(cls, v: tuple[int, int]) -> tuple[int, int]:
        if len(v) != 2 or any(not 1 <= k <= 10_000 for k in v):
            raise ValueError(f"must be two counts in [1, 10000], got {v!r}")
        return v

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len
