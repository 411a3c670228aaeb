"""Communication of one transformer layer's forward pass across its mesh groups.

The per-layer collectives that training and serving share; `meshplan.cost.comm` prices each
collective on the tiered network, and `members` / `tier` come from `meshplan.mesh.Mesh`.
Overlap with computation is the caller's (training: `cost.train.comm`).
"""

from __future__ import annotations

import numpy as np

from meshplan.cost import comm
from meshplan.specs.cluster import Cluster
from meshplan.specs.model import Model

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
                             tokens: Num) -> np.ndarray:
    """Token dispatch + combine all-to-alls of one MoE layer's forward (GShard, Lepikhin et
    al. 2021): each rank sends its `tokens` x top-k hidden vectors, and receives them back."""
    return 2 * comm.all_to_all_time(cluster, members, ep_all_to_all_bytes(model, tokens))


def ep_all_to_all_bytes(model: Model, tokens: Num) -> Num:
    """One of the two all-to-alls (dispatch or combine): `tokens` x top-k hidden vectors."""
    assert model.moe is not None
    return ACTIVATION_BYTES * tokens * model.moe.top_k * model.hidden_size


def cp_kv_bytes(model: Model, tokens: Num, tp: Num) -> Num:
    """K and V of one rank's `tokens` (bf16), its tensor-parallel share of the KV heads."""
    kv_local = model.kv_heads / np.minimum(tp, model.kv_heads)
    return 2 * ACTIVATION_BYTES * tokens * kv_local * model.head_size


def cp_ring_time(cluster: Cluster, tier: np.ndarray, cp: Num, nbytes: Num) -> np.ndarray:
    """Ring attention's exchange (Liu et al. 2023; Megatron context parallel): cp - 1
    point-to-point steps of `nbytes`, before any overlap with the attention chunks."""
    return (cp - 1) * comm.p2p_time(cluster, tier, nbytes)
