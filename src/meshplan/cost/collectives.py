"""Communication of one transformer layer's forward pass across its mesh groups.

The per-layer collectives that training and serving share; `meshplan.cost.comm` prices each
collective on the tiered network, and `members` / `tier` come from `meshplan.mesh.Mesh`.
Overlap with computation is the caller's (training: `cost.train.comm`).
"""

from __future__ import annotations

import numpy as np

from meshplan.cost import comm
from meshplan.cost import moe as moe_cost
from meshplan.cost.kernels import attention_key_efficiency
from meshplan.specs.cluster import Cluster
from meshplan.specs.model import Model
from meshplan.specs.plan import MOE_DISPATCHERS

Num = float | np.ndarray

ACTIVATION_BYTES = 2.0


def tp_block_bytes(tokens: Num, hidden: int, sequence_parallel: np.ndarray | bool) -> Num:
    """Bytes one tensor-parallel block's forward collectives carry: the b s h / c activation
    once (all-reduce), or twice with sequence parallelism (all-gather + reduce-scatter)."""
    return ACTIVATION_BYTES * tokens * hidden * (1 + sequence_parallel)


def tp_block_time(cluster: Cluster, members: list[np.ndarray], tokens: Num, hidden: int,
                  sequence_parallel: np.ndarray | bool) -> np.ndarray:
    """One tensor-parallel block's forward collective on `tokens` tokens of width `hidden`.

    Megatron: an all-reduce after each row-parallel GEMM without sequence parallelism, an
    all-gather before and a reduce-scatter after with it (Korthikanti et al. 2022 Sec. 4.2.2),
    of the b s h / c activations. A layer has two blocks (attention, MLP).
    """
    act = tp_block_bytes(tokens, hidden, False)
    ar = comm.all_reduce_time(cluster, members, act)
    ag = comm.all_gather_time(cluster, members, act)
    return np.where(sequence_parallel, ag + ag, ar)


def tp_blocks_per_layer(moe: bool, experts_tensor_split: np.ndarray | bool) -> Num:
    """TP blocks with a collective in one layer: attention and MLP; a MoE layer whose experts
    are not tensor-split (etp < tp) keeps only the attention's."""
    if not moe:
        return 2.0
    return np.where(experts_tensor_split, 2.0, 1.0)


def ep_dispatch_combine_time(cluster: Cluster, members: list[np.ndarray], model: Model,
                             tokens: Num, plateau: bool = False,
                             dispatcher: np.ndarray | None = None) -> np.ndarray:
    """Token dispatch + combine of one MoE layer's forward (GShard, Lepikhin et al. 2021):
    each rank sends its `tokens` x top-k hidden vectors, and receives them back. `plateau` as
    in `comm.all_to_all_time` (training's large exchanges).

    `dispatcher` (per plan, `specs.plan.MOE_DISPATCHERS` codes; None: alltoall): a
    deduplicating one (DeepEP, HybridEP) sends fewer copies across each tier
    (`moe.dispatch_tier_shares`); the allgather dispatcher gathers every rank's `tokens`
    hidden states over the group and reduce-scatters the outputs back (Megatron-Core
    `MoEAllGatherTokenDispatcher`: `gather_from_sequence_parallel_region` over the TP x EP
    group, then a local permutation), whatever the top-k."""
    nbytes = ep_all_to_all_bytes(model, tokens)
    if dispatcher is None or not np.any(dispatcher):  # every plan alltoall (code 0)
        return 2 * comm.all_to_all_time(cluster, members, nbytes, plateau)
    assert model.moe is not None
    shares = moe_cost.dispatch_tier_shares(model.moe, members, dispatcher)
    a2a = comm.all_to_all_time(cluster, members, nbytes, plateau, tier_scale=shares)
    gathered = ACTIVATION_BYTES * tokens * model.hidden_size * members[-1]
    allgather = comm.all_gather_time(cluster, members, gathered)
    return 2 * np.where(dispatcher == MOE_DISPATCHERS.index("allgather"), allgather, a2a)


def ep_all_to_all_bytes(model: Model, tokens: Num) -> Num:
    """One of the two all-to-alls (dispatch or combine): `tokens` x top-k hidden vectors."""
    assert model.moe is not None
    return ACTIVATION_BYTES * tokens * model.moe.top_k * model.hidden_size


def cp_kv_bytes(model: Model, tokens: Num, tp: Num) -> Num:
    """K and V of one rank's `tokens` (bf16), its tensor-parallel share of the KV heads."""
    kv_local = model.kv_heads / np.minimum(tp, model.kv_heads)
    return 2 * ACTIVATION_BYTES * tokens * kv_local * model.head_size


def cp_ring_steps(cp: Num) -> Num:
    """K/V exchanges of one ring-attention pass over `cp` ranks: each rank computes cp blocks,
    its own first, and receives the next block's K/V while it computes the current one
    (Liu et al. 2023, ring attention; Transformer Engine `AttnFuncWithCPAndKVP2P`, which
    Megatron-Core context parallelism runs): cp - 1 exchanges, cp - 1 extra blocks."""
    return cp - 1


def cp_block_keys(seq_len: Num, cp: Num) -> Num:
    """Mean key loop of one ring step's attention kernel.

    meshplan assumes the load-balanced causal split of Megatron-Core / Transformer Engine (the
    sequence cut into 2 cp chunks, rank i holding chunks i and 2cp - 1 - i) and of PyTorch's
    `context_parallel` (load balancing on, its head-tail shuffle): every step then computes
    half of an (s/cp) x (s/cp) block (TE: all of Q against the first half of K/V, or the
    second half of Q against all of K/V; the diagonal step two causal chunks and one full
    one), so the ranks are balanced and no imbalance term is needed. Each step loops over
    s / (2 cp) keys on average; at cp = 1 the causal kernel's mean key loop is s / 2, the
    same formula.
    """
    return seq_len / (2 * cp)


def cp_block_efficiency(seq_len: Num, cp: Num) -> np.ndarray:
    """A ring step's attention rate over the unsplit sequence's (the calibrated one): the key
    loop shrinks from s/2 to s/(2 cp) (`kernels.attention_key_efficiency`); 1 at cp = 1."""
    ratio = attention_key_efficiency(cp_block_keys(seq_len, cp)) \
        / attention_key_efficiency(cp_block_keys(seq_len, 1))
    return np.where(np.asarray(cp) > 1, ratio, 1.0)


MERGE_BYTES = 3 * ACTIVATION_BYTES
"""Bytes per element to merge one ring step's partial result into the running one: read the
step's output, read and write the running output (TE `flash_attn_fwd_out_correction`,
`out.add_(out_per_step * scale)`; backward: `dq.add_(dq_)` and the dK/dV accumulation)."""


def cp_merge_bytes(model: Model, tokens: Num, tp: Num, backward: bool) -> Num:
    """HBM bytes of one ring step's merge on a rank with `tokens` queries: its output rows
    (forward), or its dQ rows and the received block's dK/dV (backward). A single fused kernel
    keeps these in registers; the ring writes each step's partial result out."""
    heads = model.num_attention_heads / tp
    out = tokens * heads * model.head_size
    if not backward:
        return MERGE_BYTES * out
    kv_local = model.kv_heads / np.minimum(tp, model.kv_heads)
    return MERGE_BYTES * (out + 2 * tokens * kv_local * model.head_size)
