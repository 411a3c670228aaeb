"""Step time, memory and utilisation of many plans at once (the analytic estimate).

Composition (all per optimizer step, one GPU):
    step = pipeline(F, B per micro-batch and rank, with exposed TP/CP/EP/PP communication)
           + exposed data-parallel / ZeRO traffic + optimizer step
Each term's formula and source sits in its module (compute, comm, memory, pipeline); this one
only adds them up. MFU follows PaLM (model FLOPs / (time x GPUs x dense bf16 peak)); HFU adds
the recomputed forward FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost import comm, memory
from meshplan.cost import flops as F
from meshplan.cost.compute import (
    Kernels,
    PassTimes,
    attention_times,
    embedding_times,
    head_times,
    mlp_times,
)
from meshplan.cost.layout import axis_tier_index, tier_members
from meshplan.cost.params import ParamCounts, count_params
from meshplan.cost.pipeline import in_flight_microbatches, pipeline_time
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import PlanArrays
from meshplan.specs.stages import rank_layers

ADAM_STEP_BYTES = 30.0
"""HBM traffic per parameter of a fused Adam step: read fp32 grad, master, m, v (16 bytes),
write master, m, v (12) and the bf16 weight (2)."""
HOST_COPY_BYTES = 6.0
"""Offloaded optimizer: fp32 gradient down (4) and bf16 weight back up (2) per parameter."""

TIME_TERMS = ("compute", "tp_comm", "cp_comm", "ep_comm", "pp_comm", "bubble", "dp_comm",
              "optimizer")
MEMORY_TERMS = ("weights", "gradients", "optimizer", "activations", "buffers", "reserved")


@dataclass(frozen=True)
class CostArrays:
    """Per-plan results; every field is an array with one entry per plan."""

    step_time: np.ndarray
    time: dict[str, np.ndarray]
    """Breakdown of step_time by TIME_TERMS (they add up to step_time)."""
    memory: dict[str, np.ndarray]
    """Peak-rank memory by MEMORY_TERMS plus 'peak'."""
    num_microbatches: np.ndarray
    model_flops: float
    hardware_flops: np.ndarray
    mfu: np.ndarray
    hfu: np.ndarray
    tokens_per_s: np.ndarray
    fits: np.ndarray
    stage_times: dict[str, np.ndarray]
    """Per micro-batch F, I, W of a middle rank and F+B of first/middle/last ranks (for the
    simulator), and per-transfer p2p time."""


def _layer_mix(model: Model, P: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
    """Dense and MoE layers per pipeline rank (MoE layers spread evenly)."""
    per_rank = model.num_layers / P.pp
    moe = per_rank * model.num_moe_layers / model.num_layers
    return per_rank - moe, moe


def _tp_comm(model: Model, cluster: Cluster, job: Job, P: PlanArrays,
             moe_layers: np.ndarray, dense_layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exposed TP collective time per micro-batch on one rank: (forward, backward).

    Megatron: 2 all-reduces per layer per pass without sequence parallelism, 2 all-gathers +
    2 reduce-scatters with it (Korthikanti et al. 2022 Sec. 4.2.2), of b s h / c activations.
    MoE layers whose experts are not tensor-split keep only the attention half.
    """
    members = tier_members(cluster, ("tp",), P)
    act = 2.0 * P.mbs * job.seq_len / P.cp * model.hidden_size
    ar = comm.all_reduce_time(cluster, members, act)
    ag = comm.all_gather_time(cluster, members, act)
    per_block = np.where(P.sp, ag + ag, ar)  # AG + RS with SP; AR without
    moe_blocks = np.where(P.etp == P.tp, 2.0, 1.0)
    blocks = 2.0 * dense_layers + moe_blocks * moe_layers
    total = blocks * per_block
    ov = cluster.overlap
    fwd = total * np.where(P.tp_overlap, 1 - ov.tp_overlapped, 1.0)
    bwd = total * np.where(P.tp_overlap, 1 - ov.tp_overlapped, 1 - ov.tp_backward)
    return fwd, bwd


def _ep_comm(model: Model, cluster: Cluster, job: Job, P: PlanArrays,
             moe_layers: np.ndarray) -> np.ndarray:
    """Token dispatch + combine all-to-all per MoE layer, per pass (GShard, Lepikhin et al.
    2021): each rank sends its tokens x top-k hidden vectors."""
    if model.moe is None:
        return np.zeros(len(P))
    members = tier_members(cluster, ("ep",), P, expert=True)
    tokens = P.mbs * job.seq_len / P.cp / np.where(P.sp, P.tp, 1)
    nbytes = 2.0 * tokens * model.moe.top_k * model.hidden_size
    exposed = np.where(P.ep_overlap, 1 - cluster.overlap.ep_overlapped, 1.0)
    return moe_layers * 2 * comm.all_to_all_time(cluster, members, nbytes) * exposed


def _cp_comm(model: Model, cluster: Cluster, job: Job, P: PlanArrays, layers: np.ndarray,
             attn: PassTimes) -> tuple[np.ndarray, np.ndarray]:
    """Ring attention (Liu et al. 2023; Megatron context parallel): c - 1 K/V exchanges per
    layer, overlapped with the attention chunks; backward sends K/V and their gradients."""
    tier = axis_tier_index(cluster, ("cp",), P)
    kv_local = model.kv_heads / np.minimum(P.tp, model.kv_heads)
    kv_bytes = 2 * 2.0 * P.mbs * job.seq_len / P.cp * kv_local * model.head_size
    steps = P.cp - 1
    hide = cluster.overlap.cp
    fwd = np.maximum(steps * comm.p2p_time(cluster, tier, kv_bytes) - hide * attn.forward, 0.0)
    bwd = np.maximum(steps * comm.p2p_time(cluster, tier, 2 * kv_bytes)
                     - hide * attn.backward_input, 0.0)
    return layers * fwd, layers * bwd


def evaluate(model: Model, cluster: Cluster, job: Job, P: PlanArrays) -> CostArrays:
    """Cost every plan in P (degrees already legal: see `meshplan.search.rules`)."""
    K = Kernels(cluster, job)
    counts = count_params(model)
    m = job.global_batch_size // (P.dp * P.mbs)
    dense_layers, moe_layers = _layer_mix(model, P)
    layers = dense_layers + moe_layers

    attn = attention_times(model, job, K, P)
    mlp_d = mlp_times(model, job, K, P, moe=False)
    mlp_m = mlp_times(model, job, K, P, moe=True) if model.is_moe else mlp_d

    def per_rank(pick: str) -> np.ndarray:
        return (layers * getattr(attn, pick) + dense_layers * getattr(mlp_d, pick)
                + moe_layers * getattr(mlp_m, pick))

    fwd_c, bwd_i_c, bwd_w_c, rec_c = (per_rank(x) for x in
                                      ("forward", "backward_input", "backward_weight",
                                       "recompute"))
    tp_f, tp_b = _tp_comm(model, cluster, job, P, moe_layers, dense_layers)
    ep_one = _ep_comm(model, cluster, job, P, moe_layers)
    cp_f, cp_b = _cp_comm(model, cluster, job, P, layers, attn)
    full_rc = P.recompute == 2
    fwd_comm = tp_f + ep_one + cp_f
    bwd_comm = tp_b + ep_one + cp_b + np.where(full_rc, fwd_comm, 0.0)

    pp_tier = axis_tier_index(cluster, ("pp",), P)
    # Megatron's scatter/gather optimisation (Narayanan et al. 2021 Sec. 4.1): each of the t
    # ranks sends 1/t of the activation over its own NIC, then an NVLink all-gather.
    act_bytes = 2.0 * P.mbs * job.seq_len / P.cp * model.hidden_size / P.tp
    p2p = comm.p2p_time(cluster, pp_tier, act_bytes)
    pp_exposed = np.where(P.pp > 1, 2 * P.vpp * p2p * (1 - cluster.overlap.pp), 0.0)

    # Everything above is for a rank holding L / p layers; uneven splits scale it per rank.
    l_first, l_mid, l_last = rank_layers(model.num_layers, P)
    even = model.num_layers / P.pp
    s_first, s_mid, s_last = l_first / even, l_mid / even, l_last / even
    unit_f, unit_i, unit_w = fwd_c + fwd_comm, bwd_i_c + rec_c + bwd_comm, bwd_w_c
    unit = unit_f + unit_i + unit_w
    F_mid, I_mid, W_mid = unit_f * s_mid, unit_i * s_mid, unit_w * s_mid
    mid = unit * s_mid + pp_exposed
    emb, head = embedding_times(model, job, K, P), head_times(model, job, K, P)
    first = unit * s_first + pp_exposed + emb.forward + emb.backward
    last = unit * s_last + pp_exposed + head.forward + head.backward
    single = unit + emb.forward + emb.backward + head.forward + head.backward
    first = np.where(P.pp > 1, first, single)
    pipe = pipeline_time(P.schedule, P.pp, m, P.vpp, first, mid, last, F_mid, I_mid, W_mid)

    # Data parallel, ZeRO and optimizer, on the rank holding the most parameters.
    dense_first, expert_first = memory.stage_params(counts, model, P, l_first, first=True,
                                                    last=P.pp == 1)
    dense_last, expert_last = memory.stage_params(counts, model, P, l_last,
                                                  first=P.pp == 1, last=True)
    dense_p = np.maximum(dense_first, dense_last)
    expert_p = np.maximum(expert_first, expert_last)
    dp = _dp_comm(model, cluster, job, P, dense_p, expert_p, unit_f, unit_i + unit_w)
    dp_exposed = dp.per_step + m * dp.per_microbatch
    opt = _optimizer_time(cluster, P, dense_p, expert_p)

    step = pipe + dp_exposed + opt
    slowest = np.maximum(np.maximum(first, last), mid)
    compute_share = m * (fwd_c + bwd_i_c + bwd_w_c + rec_c) * s_mid
    time = {
        "compute": compute_share + m * (slowest - mid),
        "tp_comm": m * (tp_f + tp_b + np.where(full_rc, tp_f, 0.0)) * s_mid,
        "cp_comm": m * (cp_f + cp_b + np.where(full_rc, cp_f, 0.0)) * s_mid,
        "ep_comm": m * (ep_one * np.where(full_rc, 3.0, 2.0)) * s_mid,
        "pp_comm": m * pp_exposed,
        "bubble": pipe - m * slowest,
        "dp_comm": dp_exposed,
        "optimizer": opt,
    }

    mem = _memory(model, cluster, job, P, counts, m, dense_first, dense_last,
                  expert_first, expert_last, s_first, s_last)
    model_flops = float(F.model_flops_per_step(model, job.global_batch_size, job.seq_len))
    hw_flops = model_flops + F.recompute_flops_per_step(
        model, job.global_batch_size, job.seq_len, P.recompute)
    n_gpus = P.dp * P.tp * P.pp * P.cp
    peak = cluster.accelerator.peak("bf16")
    return CostArrays(
        step_time=step,
        time=time,
        memory=mem,
        num_microbatches=m,
        model_flops=model_flops,
        hardware_flops=np.asarray(hw_flops, dtype=float),
        mfu=model_flops / (step * n_gpus * peak),
        hfu=hw_flops / (step * n_gpus * peak),
        tokens_per_s=job.tokens_per_step / step,
        fits=mem["peak"] <= cluster.accelerator.memory_bytes,
        stage_times={"forward": F_mid, "backward_input": I_mid, "backward_weight": W_mid,
                     "first": first, "middle": mid, "last": last, "p2p": p2p,
                     "embedding_f": emb.forward, "embedding_i": emb.backward_input,
                     "embedding_w": emb.backward_weight, "head_f": head.forward,
                     "head_i": head.backward_input, "head_w": head.backward_weight,
                     "slowest": slowest, "dp_grad": dp.grad, "dp_grad_exposed": dp.grad_exposed,
                     "unit_f": unit_f, "unit_i": unit_i, "unit_w": unit_w,
                     "scale_first": s_first, "scale_mid": s_mid, "scale_last": s_last},
    )


@dataclass(frozen=True)
class DataParallelTimes:
    """Data-parallel / ZeRO traffic of one step (seconds, one GPU)."""

    grad: np.ndarray
    """Per-step gradient reduction, before any overlap (the simulator schedules it)."""
    grad_exposed: np.ndarray
    """The part of `grad` the analytic model leaves exposed after the last backward."""
    per_step: np.ndarray
    """Exposed per-step traffic: `grad_exposed` plus the weight all-gather."""
    per_microbatch: np.ndarray
    """Exposed ZeRO-2/3 traffic per micro-batch."""


def _dp_comm(model: Model, cluster: Cluster, job: Job, P: PlanArrays, dense_p: np.ndarray,
             expert_p: np.ndarray, fwd: np.ndarray, bwd: np.ndarray) -> DataParallelTimes:
    """Exposed data-parallel and ZeRO traffic.

    ZeRO-0 all-reduces gradients; ZeRO-1/2 reduce-scatter them and all-gather the updated
    bf16 weights (Megatron distributed optimizer); ZeRO-2 reduce-scatters every micro-batch;
    ZeRO-3/FSDP all-gathers weights for forward and backward and reduce-scatters gradients
    every micro-batch (Rajbhandari et al. 2020, Sec. 7; Zhao et al., PyTorch FSDP, VLDB 2023).
    Hybrid sharding adds an all-reduce of the shards across replicas.
    """
    full = tier_members(cluster, ("cp", "dp"), P)
    shard = tier_members(cluster, ("cp", "dps"), P)
    repl = tier_members(cluster, ("dpr",), P)
    exp_full = tier_members(cluster, ("dp",), P, expert=True)
    g = float(job.grad_bytes)
    z = P.zero
    ov = np.where(P.overlap_grad, cluster.overlap.dp, 0.0)

    def states(members: list[np.ndarray], params: np.ndarray) -> tuple[np.ndarray, ...]:
        rs = comm.reduce_scatter_time(cluster, members, g * params)
        ag = comm.all_gather_time(cluster, members, 2.0 * params)
        ar = comm.all_reduce_time(cluster, members, g * params)
        return rs, ag, ar

    rs_s, ag_s, _ = states(shard, dense_p)
    _, _, ar_f = states(full, dense_p)
    hybrid = comm.all_reduce_time(cluster, repl, g * dense_p / (P.dp_shard * P.cp))
    e_rs, e_ag, e_ar = states(exp_full, expert_p)
    grad = np.where(z == 0, ar_f + e_ar, np.where(z == 1, rs_s + e_rs, 0.0)) + hybrid
    gather = np.where((z == 1) | (z == 2), ag_s + e_ag, 0.0)
    grad_exposed = np.maximum(grad - ov * bwd, 0.0)
    per_step = grad_exposed + np.maximum(gather - ov * fwd, 0.0)
    zero2_mb = np.where(z == 2, np.maximum(rs_s + e_rs - ov * bwd, 0.0), 0.0)
    zero3_comm = 2 * (ag_s + e_ag) + rs_s + e_rs
    zero3_mb = np.where(z == 3, np.maximum(zero3_comm - ov * (fwd + bwd), 0.0), 0.0)
    return DataParallelTimes(grad, grad_exposed, per_step, zero2_mb + zero3_mb)


def _optimizer_time(cluster: Cluster, P: PlanArrays, dense_p: np.ndarray,
                    expert_p: np.ndarray) -> np.ndarray:
    """Fused Adam over this GPU's optimizer shard (memory-bound), or on the host if offloaded."""
    acc = cluster.accelerator
    shard = np.where(P.zero >= 1, P.dp_shard * P.cp, 1)
    edp = (P.dp * P.cp * P.tp) // (P.ep * P.etp)
    params = dense_p / shard + expert_p / np.where(P.zero >= 1, edp, 1)
    on_gpu = params * ADAM_STEP_BYTES / (acc.memory_bandwidth * acc.memory_efficiency)
    host = cluster.host
    offloaded = params * HOST_COPY_BYTES / host.bandwidth + params / host.cpu_adam_params_per_s
    return np.where(P.offload, offloaded, on_gpu)


def _memory(model: Model, cluster: Cluster, job: Job, P: PlanArrays, counts: ParamCounts,
            m: np.ndarray, dense_first: np.ndarray, dense_last: np.ndarray,
            expert_first: np.ndarray, expert_last: np.ndarray, s_first: np.ndarray,
            s_last: np.ndarray) -> dict[str, np.ndarray]:
    """Memory of the first and last pipeline ranks; the larger total is the peak."""
    dense_layers, moe_layers = _layer_mix(model, P)
    act_dense = memory.layer_activation_bytes(model, job, P, moe=False)
    act_moe = memory.layer_activation_bytes(model, job, P, moe=True) if model.is_moe else act_dense
    per_mb = dense_layers * act_dense + moe_layers * act_moe
    # Full recompute rebuilds one layer at a time: that layer's whole activations are live.
    working = np.where(P.recompute == 2, _full_layer_bytes(model, job, P), 0.0)
    in_flight = in_flight_microbatches(P.schedule, P.pp, m, P.vpp)
    head_act = memory.head_activation_bytes(model, job, P)

    shard = P.dp_shard * P.cp
    edp = (P.dp * P.cp * P.tp) // (P.ep * P.etp)
    layer_params = (counts.per_dense_layer if not model.is_moe
                    else counts.per_moe_layer_non_expert + counts.expert / (P.ep * P.etp))
    prefetch = np.where(P.zero >= 3, 2 * 2.0 * layer_params / P.tp, 0.0)
    T = P.mbs * job.seq_len / P.cp
    comm_buf = 2 * 2.0 * T * model.hidden_size * (P.tp > 1) + 2 * 2.0 * T * model.hidden_size / \
        np.where(P.sp, P.tp, 1) * (P.pp > 1)

    def rank(dense: np.ndarray, expert: np.ndarray, acts: np.ndarray) -> dict[str, np.ndarray]:
        st = memory.model_state_bytes(dense, P, shard, job)
        e_states = memory.model_state_bytes(expert, P, edp, job)
        out = {k: st[k] + e_states[k] for k in st}
        out["activations"] = acts + working
        out["buffers"] = prefetch + comm_buf
        return out

    first_acts = in_flight * per_mb * s_first + np.where(P.pp > 1, 0.0, head_act)
    last_acts = per_mb * s_last + head_act
    a = rank(dense_first, expert_first, first_acts)
    b = rank(dense_last, expert_last, last_acts)
    total_a = sum(a.values())
    total_b = sum(b.values())
    pick_a = total_a >= total_b
    out = {k: np.where(pick_a, a[k], b[k]) for k in a}
    out["reserved"] = np.full(len(P), cluster.accelerator.reserved_memory_bytes)
    out["peak"] = np.maximum(total_a, total_b) + out["reserved"]
    # For the simulator: memory that does not depend on the schedule, per rank kind, and the
    # activations of one micro-batch on an evenly split rank (all its chunks) and of the head.
    out["static_first"] = total_a - a["activations"] + working
    out["static_last"] = total_b - b["activations"] + working
    out["activations_per_microbatch"] = per_mb
    out["head_activations"] = head_act
    return out


def _full_layer_bytes(model: Model, job: Job, P: PlanArrays) -> np.ndarray:
    """One layer's activations without recompute (the working set while recomputing)."""
    no_rc = PlanArrays(**{**{f: getattr(P, f) for f in P.__dataclass_fields__},
                          "recompute": np.zeros_like(P.recompute)})
    attn = memory.attention_activation_bytes(model, job, no_rc)
    return attn + memory.mlp_activation_bytes(model, job, no_rc, moe=model.is_moe)
