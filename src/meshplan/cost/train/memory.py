"""Training memory per GPU: model states under ZeRO/FSDP, activations, buffers, per rank.

Sources:
- Model states: ZeRO (Rajbhandari et al., SC20, Sec. 3.1 and Fig. 1): mixed-precision Adam
  keeps 2 bytes of weights, 2-4 of gradients and 12 of optimizer state (fp32 master, m, v) per
  parameter; stage 1 shards the 12, stage 2 also the gradients, stage 3 also the weights.
- Activations: Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
  Models" (MLSys 2023, arXiv:2205.05198), Sec. 4: per layer s b h (34 + 5 a s / h) bytes,
  with tensor + sequence parallelism s b h / t (34 + 5 a s / h), selective recompute
  34 s b h / t, full recompute 2 s b h / t. meshplan counts the same tensors one by one so that
  GQA, gated MLPs, FlashAttention (no s^2 terms; a fp32 log-sum-exp instead), no-dropout models
  and MoE fall out of the same sum; with GPT-3 settings it reduces to the paper's formula.
- In-flight micro-batches per schedule: see `cost.train.pipeline.in_flight_microbatches`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.params import ParamCounts
from meshplan.cost.train import allocator as alloc
from meshplan.cost.train.pipeline import head_in_flight, head_rank, in_flight_microbatches
from meshplan.cost.train.recompute import full_share, module_masks, rebuilds
from meshplan.mesh import Mesh
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import PlanArrays
from meshplan.specs.stages import rank_layers

WEIGHT_BYTES = 2.0
"""bf16 working copy of the weights."""
OPTIMIZER_BYTES = 12.0
"""fp32 master weights + Adam m and v (ZeRO paper, K = 12)."""


def attention_activation_bytes(model: Model, job: Job, mesh: Mesh) -> np.ndarray:
    """Bytes the attention block keeps for backward, one micro-batch, one GPU, under the plan's
    recompute modules (`cost.train.recompute`)."""
    P, s, h = mesh.plans, job.seq_len, model.hidden_size
    t, T, sp = P.tp, mesh.tokens_per_microbatch(s), mesh.seq_shard
    a, d = model.num_attention_heads, model.head_size
    kv_split = np.minimum(t, model.kv_heads)
    dv = model.mla.v_head_dim if model.mla is not None else d
    gemm_in = _gemm_input_bytes(job)
    mods = module_masks(P, job)
    # norm input, QKV input, out-proj dropout mask (replicated across tp without SP); the
    # layernorm module rebuilds the QKV input from the norm input
    qkv_in = np.where(rebuilds(mods, "layernorm"), 0.0, gemm_in)
    replicated = (2 + qkv_in + (1 if model.dropout else 0)) * T * h / sp
    heads = 2 * T * a * d / t + 2 * T * model.kv_heads * (d + dv) / kv_split
    if model.mla is not None:
        # MLA keeps its latents (the up-projections' inputs, replicated across tp in
        # Megatron-Core); mla_up_proj drops the per-head Q, K, V they expand to.
        m = model.mla
        latents = gemm_in * T * (m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim)
        heads = np.where(rebuilds(mods, "mla_up_proj"), 0.0, heads) + latents
    split = heads + gemm_in * T * a * dv / t  # + out-proj input
    if job.flash_attention:
        scores = 4.0 * T * a / t  # fp32 log-sum-exp per row
    else:
        scores = (2 + (3 if model.dropout else 0)) * a / t * T * s
    scores = np.where(rebuilds(mods, "core_attn"), 0.0, scores)
    return replicated + split + scores


def _gemm_input_bytes(job: Job) -> float:
    """Bytes per saved GEMM input: FP8 training keeps the FP8 cast (Transformer Engine's
    Linear / LayerNormLinear / GroupedLinear save their quantised input for the weight
    gradient; a 1-byte element, its scales aside)."""
    return 1.0 if job.precision == "fp8" else 2.0


def mlp_activation_bytes(model: Model, job: Job, mesh: Mesh, moe: bool) -> np.ndarray:
    """Bytes the MLP (or MoE) block keeps for backward, one micro-batch, one GPU, under the
    plan's recompute modules (`cost.train.recompute`).

    Per token: the norm input and the norm output (the fc1 / router input); per expert
    assignment (Megatron-Core TEGroupedMLP): the fc1 input at GEMM-input precision, fc1's
    output (the activation's input) and fc2's input. The routing probabilities are applied in
    the activation function (Megatron-Core >= 0.13, "memory efficient token permutation"), so
    the combine keeps no expert output. `layernorm` drops the norm output, `moe_act` (and, in
    the default policy, the dense activation) fc2's input (Megatron-Core makes fc2 save the
    discarded original input, `set_save_original_input`, in FP8 too); `mlp`, `moe` and
    `shared_experts` keep only their module's input.
    """
    P, h = mesh.plans, model.hidden_size
    t, T, sp = P.tp, mesh.tokens_per_microbatch(job.seq_len), mesh.seq_shard
    gemm_in = _gemm_input_bytes(job)
    mods = module_masks(P, job)
    fc1_out = 4.0 if model.gated else 2.0
    norm_out = np.where(rebuilds(mods, "layernorm"), 0.0, gemm_in)
    replicated = (2 + norm_out + (1 if model.dropout else 0)) * T * h / sp
    block_input = 2.0 * T * h / sp  # what a checkpointed mlp / moe / shared_experts keeps
    if not moe:
        per_f = fc1_out + np.where(rebuilds(mods, "dense_act"), 0.0, gemm_in)
        dense = per_f * T * model.ffn_hidden_size / t
        return replicated + np.where(rebuilds(mods, "mlp"), block_input - norm_out * T * h / sp,
                                     dense)
    assert model.moe is not None
    m = model.moe
    per_f = fc1_out + np.where(rebuilds(mods, "moe_act"), 0.0, gemm_in)
    assignments = T * P.etp / t * m.top_k
    routed = assignments * (gemm_in * h + per_f * m.expert_ffn_hidden_size / P.etp)
    shared_f = fc1_out + np.where(rebuilds(mods, "dense_act"), 0.0, gemm_in)
    shared = shared_f * T * m.num_shared_experts * m.shared_expert_ffn_hidden_size / t
    shared = np.where(rebuilds(mods, "shared_experts"), 0.0, shared)
    router = 4.0 * T / sp * m.num_experts
    whole = np.where(rebuilds(mods, "moe"), block_input - norm_out * T * h / sp,
                     routed + shared + router)
    return replicated + whole


def layer_activation_bytes(model: Model, job: Job, mesh: Mesh, moe: bool) -> np.ndarray:
    """Korthikanti-style per-layer activation memory under the plan's recompute policy."""
    full = attention_activation_bytes(model, job, mesh) \
        + mlp_activation_bytes(model, job, mesh, moe)
    T = mesh.tokens_per_microbatch(job.seq_len)
    layer_input = 2.0 * T * model.hidden_size / mesh.seq_shard
    # Full recompute keeps only the input of each recomputed layer; under block recompute
    # the other layers keep everything (`recompute.full_share`, averaged over the layers).
    share = full_share(mesh.plans, model.num_layers)
    return share * layer_input + (1.0 - share) * full


def head_activation_bytes(model: Model, job: Job, mesh: Mesh) -> np.ndarray:
    """Last stage: LM-head input and the logits the loss keeps (`allocator.LOSS_BYTES`), one
    micro-batch."""
    T = mesh.tokens_per_microbatch(job.seq_len)
    saved = alloc.LOSS_BYTES[job.loss_kernel][0]
    return 2 * T * model.hidden_size / mesh.seq_shard + saved * T * model.vocab_size \
        / mesh.plans.tp


def model_state_bytes(params: np.ndarray, P: PlanArrays, shard: np.ndarray,
                      job: Job) -> dict[str, np.ndarray]:
    """Weights, gradients and optimizer states of `params` parameters on one GPU.

    `shard` is the ZeRO/FSDP sharding group these parameters are split over (dp_shard x cp for
    dense weights, the expert data-parallel group for experts).
    """
    z = P.zero
    weights = WEIGHT_BYTES * params / np.where(z >= 3, shard, 1)
    grads = job.grad_bytes * params / np.where(z >= 2, shard, 1)
    optimizer = OPTIMIZER_BYTES * params / np.where(z >= 1, shard, 1)
    optimizer = np.where(P.offload, 0.0, optimizer)
    return {"weights": weights, "gradients": grads, "optimizer": optimizer}


def stage_params(counts: ParamCounts, model: Model, P: PlanArrays, layers: np.ndarray,
                 first: np.ndarray | bool, last: np.ndarray | bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(dense, expert) parameters held by one GPU of a pipeline rank holding `layers` layers.

    The embedding sits on the first rank and the LM head on the last (Megatron's layout; tied
    embeddings keep a copy on both ends); MoE layers are spread in proportion.
    """
    L = model.num_layers
    per_rank = np.where(P.pp > 1, layers, L)
    non_expert = (counts.num_dense_layers * counts.per_dense_layer
                  + counts.num_moe_layers * counts.per_moe_layer_non_expert) / L
    dense = per_rank * non_expert / P.tp
    dense = dense + np.where(first, counts.embedding, 0) / P.tp
    tied_copy = np.where(np.logical_and(model.tied_embeddings, np.logical_not(first)),
                         counts.embedding, 0)
    dense = dense + np.where(last, counts.head + tied_copy, 0) / P.tp
    expert = per_rank * (counts.num_moe_layers / L) * counts.expert / (P.ep * P.etp)
    return dense, expert


def layer_mix(model: Model, P: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
    """Dense and MoE layers on an evenly split pipeline rank (MoE layers spread evenly)."""
    per_rank = model.num_layers / P.pp
    moe = per_rank * model.num_moe_layers / model.num_layers
    return per_rank - moe, moe


RANK_POSITIONS = ("first", "second", "last")
"""The pipeline ranks whose memory can be the step's peak: the first (embedding, the most
micro-batches in flight), the second (the most loaded middle rank: middle ranks hold equal
layers and no schedule's in-flight count grows over them) and the last; ranks 0,
min(1, p - 1) and p - 1. The LM head sits on the rank of the last stage (`head_rank`)."""


@dataclass(frozen=True)
class RankLayout:
    """Per rank position (RANK_POSITIONS) and plan: what that rank holds."""

    index: tuple[np.ndarray, ...]
    """The rank's index in the pipeline."""
    layers: tuple[np.ndarray, ...]
    scale: tuple[np.ndarray, ...]
    """Its layers over an evenly split rank's L / pp."""
    embedding: tuple[np.ndarray, ...]
    head: tuple[np.ndarray, ...]
    dense: tuple[np.ndarray, ...]
    """Dense (non-expert) parameters on one of its GPUs."""
    expert: tuple[np.ndarray, ...]

    @property
    def dense_max(self) -> np.ndarray:
        """The most dense parameters any rank holds (the data-parallel and optimizer work)."""
        return np.maximum.reduce(self.dense)

    @property
    def expert_max(self) -> np.ndarray:
        return np.maximum.reduce(self.expert)


def rank_layout(counts: ParamCounts, model: Model, P: PlanArrays) -> RankLayout:
    """Layers, embedding/head placement and parameters of each rank position."""
    l_first, l_mid, l_last = rank_layers(model.num_layers, P)
    even = model.num_layers / P.pp
    last = P.pp - 1
    hr = head_rank(P.schedule, P.pp)
    index = (np.zeros_like(P.pp), np.minimum(1, last), last)
    layers = tuple(np.where(r == 0, l_first, np.where(r == last, l_last, l_mid)) for r in index)
    embedding = tuple(r == 0 for r in index)
    head = tuple(r == hr for r in index)
    params = [stage_params(counts, model, P, n, first=e, last=h)
              for n, e, h in zip(layers, embedding, head, strict=True)]
    return RankLayout(index, layers, tuple(n / even for n in layers), embedding, head,
                      tuple(d for d, _ in params), tuple(x for _, x in params))


def step_memory(model: Model, cluster: Cluster, job: Job, mesh: Mesh, counts: ParamCounts,
                m: np.ndarray, ranks: RankLayout) -> dict[str, np.ndarray]:
    """Memory of every pipeline rank that can hold the peak; the largest total is the peak,
    and the breakdown is that rank's (`peak_rank`)."""
    P = mesh.plans
    dense_layers, moe_layers = layer_mix(model, P)
    act_dense = layer_activation_bytes(model, job, mesh, moe=False)
    act_moe = layer_activation_bytes(model, job, mesh, moe=True) if model.is_moe else act_dense
    per_mb = dense_layers * act_dense + moe_layers * act_moe
    # Full recompute rebuilds one layer at a time: that layer's whole activations are live.
    working = np.where(P.recompute == 2, full_layer_bytes(model, job, P), 0.0)
    head_act = head_activation_bytes(model, job, mesh)
    heads_held = np.where(P.pp > 1, head_in_flight(P.schedule, m), 1.0)

    layer_params = (counts.per_dense_layer if not model.is_moe
                    else counts.per_moe_layer_non_expert + counts.expert / (P.ep * P.etp))
    T = mesh.tokens_per_microbatch(job.seq_len)
    # TP all-gather/reduce-scatter outputs and pipeline send/receive buffers (one of each way).
    comm_buf = 2 * 2.0 * T * model.hidden_size * (P.tp > 1) + 2 * 2.0 * T * model.hidden_size / \
        mesh.seq_shard * (P.pp > 1)
    gpu = cluster.accelerator.uses_caching_allocator
    loss = alloc.loss_transient_bytes(model, job, mesh)
    nccl = alloc.nccl_bytes(mesh) if gpu else np.zeros(len(P))
    workspace = alloc.workspace_bytes(len(P)) if gpu else np.zeros(len(P))
    share = alloc.fragmentation_share(job) if gpu else 0.0

    by_rank = []
    for k in range(len(RANK_POSITIONS)):
        in_flight = in_flight_microbatches(P.schedule, P.pp, m, P.vpp, ranks.index[k])
        acts = in_flight * per_mb * ranks.scale[k] + np.where(ranks.head[k], heads_held, 0.0) \
            * head_act
        st = model_state_bytes(ranks.dense[k], P, mesh.shard, job)
        e_states = model_state_bytes(ranks.expert[k], P, mesh.edp, job)
        one = {key: st[key] + e_states[key] for key in st}
        one["activations"] = acts + working
        one["buffers"] = comm_buf
        one["zero_buffers"] = alloc.zero_buffers(job, mesh, layer_params,
                                                 ranks.dense[k] + ranks.expert[k])
        one["logits"] = np.where(ranks.head[k], loss, 0.0)
        one["workspace"] = workspace
        one["fragmentation"] = alloc.fragmentation(one, share)
        one["nccl"] = nccl
        by_rank.append(one)
    totals = np.stack([sum(r.values()) for r in by_rank])
    worst = np.argmax(totals, axis=0)  # ties: the earlier position
    out = {key: np.choose(worst, [r[key] for r in by_rank]) for key in by_rank[0]}
    out["cuda_context"] = np.full(len(P), cluster.accelerator.training_context_bytes)
    out["peak"] = totals.max(axis=0) + out["cuda_context"]
    out["peak_rank"] = np.choose(worst, ranks.index)
    out["fragmentation_share"] = np.full(len(P), share)
    # For the simulator: memory that does not depend on the schedule, per rank position, and
    # the activations of one micro-batch on an evenly split rank (all its chunks) and of the head.
    for k, name in enumerate(RANK_POSITIONS):
        for key, value in by_rank[k].items():
            if key == "fragmentation":
                continue  # of the whole rank: the simulator adds it (`with_reserve`)
            out[f"static_{name}_{key}"] = working if key == "activations" else value
    out["activations_per_microbatch"] = per_mb
    out["head_activations"] = head_act
    return out


def full_layer_bytes(model: Model, job: Job, P: PlanArrays) -> np.ndarray:
    """One layer's activations without recompute (the working set while recomputing)."""
    no_rc = PlanArrays(**{**{f: getattr(P, f) for f in P.__dataclass_fields__},
                          "recompute": np.zeros_like(P.recompute)})
    mesh = Mesh(no_rc)
    return attention_activation_bytes(model, job, mesh) \
        + mlp_activation_bytes(model, job, mesh, moe=model.is_moe)
