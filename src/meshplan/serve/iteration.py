"""Time of one engine iteration and the KV-cache capacity of one instance, from the layer core.

An iteration runs the scheduled tokens of every request in the batch (prefill chunks after
their cached prefixes, one token per decoding request) through the model once: the embedding,
every layer (`cost.layer.layer_forward_time` on the batch's shape, with the KV cache's own
layout), the TP all-reduces after the attention and MLP blocks (`cost.collectives`, no
sequence parallelism in serving engines), the LM head over the positions that sample a
token, and the engine's host overhead per step (engine profile data).

Layouts (`Deployment`): pipeline stages run their share of the layers (`stage_times`, the
first with the embedding, the last with the LM head) and hand the hidden state and residual to
the next stage (`send_time`, vLLM's `IntermediateTensors`); a MoE layer with expert parallelism
adds the token dispatch and combine all-to-alls (`cost.collectives.ep_dispatch_combine_time`),
and data-parallel attention runs each attention rank on its share of the batch before the
experts see every rank's tokens, the step waiting for the busiest rank (`rank_share`: an even
split of the decodes, a prompt's chunk on its own request's rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost import comm
from meshplan.cost.collectives import (
    ep_dispatch_combine_time,
    tp_block_time,
    tp_blocks_per_layer,
)
from meshplan.cost.kernels import ACTIVATION_BYTES, Kernels
from meshplan.cost.layer import (
    BatchShape,
    LayerDegrees,
    attention_core_flops,
    attention_io_bytes,
    attention_parts,
    embedding_bytes,
    head_parts,
    kv_cache_bytes_per_token,
    layer_forward_time,
    mlp_parts,
)
from meshplan.cost.params import count_params
from meshplan.mesh import Group, Mesh
from meshplan.serve.deployment import DTYPE_BYTES, Deployment
from meshplan.specs.cluster import Cluster
from meshplan.specs.plan import Plan, PlanArrays

SAMPLER_BYTES_PER_LOGIT = 4.0
"""fp32 logits the sampler holds per vocabulary entry (vLLM upcasts before sampling)."""


@dataclass(frozen=True)
class KVCapacity:
    """How an instance's GPU memory divides (bytes per GPU) and the KV blocks left."""

    budget_bytes: float
    """What the engine's memory fraction grants it (`kv_capacity`)."""
    weights_bytes: float
    workspace_bytes: float
    """Peak activations of the engine's profiling run (max_num_batched_tokens dummy tokens)."""
    reserved_bytes: float
    """CUDA context, NCCL and CUDA-graph memory outside the allocator."""
    block_bytes: float
    """One KV block of every layer a GPU holds (its pipeline stage's)."""
    num_blocks: int
    """Blocks of the whole instance (every data-parallel attention rank's pool together)."""
    attention_ranks: int = 1
    """Data-parallel attention ranks, each with num_blocks / attention_ranks of them."""

    @property
    def blocks_per_rank(self) -> int:
        """The most blocks one request can hold (its rank's pool)."""
        return self.num_blocks // self.attention_ranks

    @property
    def fits(self) -> bool:
        return self.num_blocks > 0

    def to_json(self) -> dict[str, float]:
        gib = 2**30
        return {"budget_gib": self.budget_bytes / gib, "weights_gib": self.weights_bytes / gib,
                "workspace_gib": self.workspace_bytes / gib,
                "reserved_gib": self.reserved_bytes / gib, "kv_blocks": self.num_blocks,
                "kv_cache_gib": self.blocks_per_rank * self.block_bytes / gib}


def stage_counts(d: Deployment) -> list[tuple[int, int]]:
    """(dense, MoE) layers of each pipeline stage (the dense ones lead the model)."""
    dense = d.model.num_layers - d.model.num_moe_layers
    out, start = [], 0
    for n in d.stage_layers:
        nd = max(0, min(dense, start + n) - start)
        out.append((nd, n - nd))
        start += n
    return out


def weights_bytes_per_gpu(d: Deployment) -> float:
    """Weights on the fullest GPU: each stage's layers (the first also the embedding, the last
    the LM head), everything but the routed experts split over the attention's TP size, the
    experts over the stage's tp GPUs (ep ranks x tp / ep tensor slices)."""
    c = count_params(d.model)
    counts = stage_counts(d)
    worst = 0.0
    for s, (nd, nm) in enumerate(counts):
        other = nd * c.per_dense_layer + nm * c.per_moe_layer_non_expert \
            + (c.embedding if s == 0 else 0) + (c.head if s == len(counts) - 1 else 0)
        experts = nm * c.expert
        if d.tp_attention == d.tp:
            n = (other + experts) / d.tp
        else:
            n = other / d.tp_attention + experts / d.tp
        worst = max(worst, n)
    return DTYPE_BYTES[d.spec.weights_dtype] * worst


def kv_bytes_per_token_per_gpu(d: Deployment) -> float:
    """KV bytes one token adds on one GPU of the fullest stage (its layers, its attention
    rank's share of the KV heads, replicated where the heads are fewer than the TP size)."""
    per_layer = kv_cache_bytes_per_token(d.model, d.tp_attention,
                                         DTYPE_BYTES[d.spec.kv_cache_dtype])
    return float(max(d.stage_layers) * per_layer)


def kv_capacity(d: Deployment) -> KVCapacity:
    """The KV blocks of one instance's GPU, as each engine counts its memory fraction f
    (`EngineProfile.memory_fraction_of`):

    * `hbm` (vLLM, worker `determine_available_memory`): KV = f x HBM - weights - the
      profiled peak activations - the non-torch memory;
    * `free` (TensorRT-LLM, `KvCacheConfig.free_gpu_memory_fraction`): KV = f x (HBM -
      weights - activations - non-torch memory), the memory left after loading and
      profiling;
    * `weights_and_kv` (SGLang, `ModelRunner.profile_max_num_token`): KV = f x (HBM -
      non-torch memory) - weights, the activations living in the 1 - f left over.

    The profiled peak is meshplan's estimate: per token the hidden state, the QKV output and
    the gated MLP input (bf16), plus the sampler's fp32 logits of max_num_seqs sequences.
    Per GPU of the layout (`weights_bytes_per_gpu`, `kv_bytes_per_token_per_gpu`); a block
    holds block_size tokens of every layer of a stage, and each data-parallel attention rank
    has its own."""
    m, acc, t, ta = d.model, d.cluster.accelerator, d.tp, d.tp_attention
    f = d.gpu_memory_utilization
    weights = weights_bytes_per_gpu(d)
    qkv = (m.num_attention_heads + 2 * m.kv_heads) * m.head_size / ta
    ffn = m.ffn_hidden_size if m.moe is None else m.moe.expert_ffn_hidden_size * m.moe.top_k
    per_token = 2.0 * (2 * m.hidden_size + qkv + 2 * ffn / t)
    # (each GPU profiles its own attention rank's budget where the ranks schedule apart)
    seqs, budget_tokens = d.max_num_seqs / d.limit_ranks, d.max_num_batched_tokens / d.limit_ranks
    logits = min(seqs, budget_tokens) * m.vocab_size / ta
    workspace = budget_tokens * per_token + SAMPLER_BYTES_PER_LOGIT * logits
    reserved = acc.reserved_memory_bytes
    block = float(d.block_size * kv_bytes_per_token_per_gpu(d))
    hbm = acc.memory_bytes
    kind = d.engine.memory_fraction_of
    if kind == "hbm":
        budget = f * hbm
        free = budget - weights - workspace - reserved
    elif kind == "free":
        free = f * (hbm - weights - workspace - reserved)
        budget = hbm - (1 - f) * max(hbm - weights - workspace - reserved, 0.0)
    else:  # weights_and_kv
        workspace = 0.0
        budget = f * (hbm - reserved) + reserved
        free = budget - weights - reserved
    blocks = max(int(free // block), 0) if d.spec.num_gpu_blocks is None \
        else d.spec.num_gpu_blocks
    return KVCapacity(budget, weights, workspace, reserved, block,
                      blocks * d.dp_attention, d.dp_attention)


def group_members(cluster: Cluster, size: int) -> list[np.ndarray]:
    """Members per network tier of `size` consecutive GPUs (a TP or EP group of a stage)."""
    return Mesh(PlanArrays.from_plans([Plan(tp=size)])).members(cluster, Group.TP)


class IterationCost:
    """Seconds of one iteration of one instance, for a batch given by its sums.

    `time_reference` runs the layer core on the batch's shape; `time` gives the same seconds
    (to rounding) from a split of that sum: every term but the fused attention core depends
    on the query tokens alone (cached per token count), the LM head on the sampled positions
    alone (cached), and the core is max(FLOPs / peak, bytes / bandwidth) with FLOPs linear in
    the causal pairs and bytes linear in the tokens and the keys read (coefficients taken from
    the cost core's own functions). `decode_times` times consecutive decode-only steps at once.
    """

    def __init__(self, d: Deployment):
        m = d.model
        self.model = m
        precision = "fp8" if d.spec.weights_dtype == "fp8" else "bf16"
        # The engine's fixed cost per block stands in for training's per-layer overhead.
        self.K = Kernels(d.cluster.model_copy(
            update={"kernel_overhead": d.engine.block_overhead_s}), precision)
        t = d.tp_attention
        self.tp, self.dpa, self.ep = d.tp, d.dp_attention, d.ep
        # Without expert parallelism every expert is split over the TP group (vLLM's fused
        # MoE layer shards each expert's weights by tp).
        self.deg = LayerDegrees(tp=t, etp=t)
        self.moe_deg = LayerDegrees(tp=d.tp, ep=d.ep, etp=d.tp // d.ep)
        self.moe_split = d.ep > 1 or d.dp_attention > 1
        """Experts laid out apart from the attention (else the plain-TP layer of the core)."""
        self.kv_bytes = kv_cache_bytes_per_token(m, t, DTYPE_BYTES[d.spec.kv_cache_dtype])
        self.tp_members = group_members(d.cluster, t)
        self.stage_members = group_members(d.cluster, d.tp)
        self.ep_members = group_members(d.cluster, d.ep)
        self.cluster = d.cluster
        self.dense_layers = m.num_layers - m.num_moe_layers
        self.moe_layers = m.num_moe_layers
        self.overhead = d.iteration_overhead_s
        """Host time of a decode-only step (a multi-step group's share)."""
        e = d.engine
        self.prompt_overhead = e.iteration_overhead_eager_s
        """Host time of a step with prompt tokens outside the graphs: eager, never grouped."""
        self.graph_overhead = e.iteration_overhead_s
        self.graph_prompt_tokens = 0.0
        if d.cuda_graphs and e.cuda_graph_prefill:
            self.graph_prompt_tokens = float(
                e.graph_max_bs(d.cluster.accelerator, d.tp) or float("inf"))
        self.layers = m.num_layers
        self.stages = stage_counts(d)
        # The attention core's two linear pieces (the cost core's formulas at unit inputs),
        # per instance token: each attention rank runs 1 / dp_attention of the batch.
        attn_rate = self.K.attn_peak * self.K.attn_eff
        share = 1.0 / d.dp_attention
        self._core_flop = float(attention_core_flops(m, 1.0, t)) / attn_rate * share
        unit_q = BatchShape(1.0, 1.0, 0.0, 0.0, 0.0)
        unit_kv = BatchShape(0.0, 0.0, 0.0, 0.0, 1.0)
        self._core_q = float(attention_io_bytes(m, unit_q, t, self.kv_bytes)) / self.K.mem_bw \
            * share
        self._core_kv = float(attention_io_bytes(m, unit_kv, t, self.kv_bytes)) \
            / self.K.mem_bw * share
        self._base: dict[int | tuple[int, float], float] = {}
        self._head: dict[int, float] = {}
        self._layer_base: dict[int | tuple[int, float], tuple[float, float, float]] = {}
        self._send: dict[tuple[int, int], float] = {}

    def step_overhead(self, num_seqs: int, tokens: float, gpu_s: float) -> float:
        """Host time a step of `tokens` tokens over `num_seqs` sequences adds to its `gpu_s`
        of GPU work: a decode-only step the graph figure (its multi-step group's share); a
        step with prompt tokens the whole graph figure (never grouped), plus — where the
        engine's graphs do not capture it (`EngineProfile.cuda_graph_prefill`, up to
        `cuda_graph_max_bs` tokens) — the eager figure's excess of kernel launches, less the
        GPU work they overlap: launches run ahead of a long step's kernels and hide behind
        them, and stall a short one."""
        if tokens <= num_seqs:
            return self.overhead
        graph = self.graph_overhead
        if tokens <= self.graph_prompt_tokens:
            return graph
        return graph + max(0.0, self.prompt_overhead - graph - gpu_s)

    def _core(self, tokens: float, pairs: float, kv_tokens: float) -> float:
        return max(self._core_flop * pairs, self._core_q * tokens + self._core_kv * kv_tokens)

    def rank_share(self, tokens: float, query_squares: float) -> float:
        """Share of the batch's query tokens on the busiest data-parallel attention rank,
        whose attention the others wait for at each MoE layer's dispatch: a prompt's chunk
        runs on its own request's rank, so the busiest rank holds about an even share plus
        the rest of a typical chunk, T / R + c (1 - 1 / R) with c = sum(q^2) / T the
        token-weighted mean chunk (1 for decodes: T / R + 1 - 1 / R, one sequence of the
        remainder; one lone prompt: all of it). 1 without data-parallel attention."""
        R = self.dpa
        if R == 1 or tokens <= 0:
            return 1.0
        chunk = query_squares / tokens
        return min(1.0, 1.0 / R + chunk / tokens * (1.0 - 1.0 / R))

    def _rank_gain(self, share: float) -> float:
        """The attention core's factor on the busiest rank (its coefficients are per even
        share, 1 / dp_attention)."""
        return share * self.dpa

    def _head_time(self, sampled: int) -> float:
        h = self._head.get(sampled)
        if h is None:
            h = float(np.asarray(head_parts(self.model, self.K, max(sampled, 1) / self.dpa,
                                            self.deg).time(self.K)))
            self._head[sampled] = h
        return h

    def _base_time(self, tokens: int, share: float = 1.0) -> float:
        """Everything but the attention core, the head and the host overhead (`share`: the
        busiest attention rank's, `rank_share`)."""
        key = tokens if self.dpa == 1 else (tokens, share)
        b = self._base.get(key)
        if b is None:
            full = self.gpu_reference(1, tokens, 0.0, 0.0, 0.0, 1, share=share)
            b = full - self._head_time(1) \
                - self.layers * self._core(tokens, 0.0, 0.0) * self._rank_gain(share)
            self._base[key] = b
        return b

    def time(self, num_seqs: int, tokens: float, query_prefix: float, query_squares: float,
             kv_tokens: float, sampled: int) -> float:
        """As `time_reference` (equal to ~1e-12 relative), from cached parts."""
        T = int(tokens)
        if tokens != T:
            return self.time_reference(num_seqs, tokens, query_prefix, query_squares,
                                       kv_tokens, sampled)
        share = self.rank_share(tokens, query_squares)
        core = self._core(tokens, query_prefix + 0.5 * query_squares, kv_tokens) \
            * self._rank_gain(share)
        gpu = self._base_time(T, share) + self.layers * core + self._head_time(sampled)
        return gpu + self.step_overhead(num_seqs, tokens, gpu)

    def decode_terms(self, num_seqs: int) -> tuple[float, float, float, float, float, float,
                                                    float]:
        """(base, layers, head, overhead, core per pair, core per query token, core per key)
        of a decode-only step of `num_seqs` sequences: its seconds at a prefix sum P are
        base + layers x max(pair x (P + B / 2), query x B + key x (P + B)) + head + overhead,
        in that order (the same floats as `time` and `decode_times`)."""
        share = self.rank_share(num_seqs, num_seqs)
        g = self._rank_gain(share)
        return (self._base_time(num_seqs, share), float(self.layers), self._head_time(num_seqs),
                self.overhead, self._core_flop * g, self._core_q * g, self._core_kv * g)

    def decode_times(self, num_seqs: int, prefix_sum: float, steps: int) -> np.ndarray:
        """Seconds of `steps` consecutive decode-only steps of `num_seqs` sequences (one query
        token each, every one sampling) whose cached prefixes sum to `prefix_sum` at the
        first: the sum grows by `num_seqs` a step. Elementwise as `time`."""
        B = float(num_seqs)
        base, layers, head, overhead, per_pair, per_q, per_kv = self.decode_terms(num_seqs)
        prefix = prefix_sum + B * np.arange(steps, dtype=float)
        core = np.maximum(per_pair * (prefix + 0.5 * B), per_q * B + per_kv * (prefix + B))
        return base + layers * core + head + overhead

    def time_reference(self, num_seqs: int, tokens: float, query_prefix: float,
                       query_squares: float, kv_tokens: float, sampled: int,
                       share: float | None = None) -> float:
        """One forward of a batch: `tokens` query tokens of `num_seqs` sequences (with
        sum(q x prefix), sum(q^2) and the keys read, as `BatchShape.from_sums`), of which
        `sampled` positions sample a token (every stage in turn, no send); `share`: the
        busiest attention rank's share of it (None: `rank_share`)."""
        gpu = self.gpu_reference(num_seqs, tokens, query_prefix, query_squares, kv_tokens,
                                 sampled, share)
        return gpu + self.step_overhead(num_seqs, tokens, gpu)

    def gpu_reference(self, num_seqs: int, tokens: float, query_prefix: float,
                      query_squares: float, kv_tokens: float, sampled: int,
                      share: float | None = None) -> float:
        """`time_reference` without the host overhead: the GPU's seconds."""
        embed, dense, moe, head = self.parts(num_seqs, tokens, query_prefix, query_squares,
                                             kv_tokens, sampled, share)
        total = embed
        if self.dense_layers:
            total += self.dense_layers * dense
        if self.moe_layers:
            total += self.moe_layers * moe
        return total + head

    def parts(self, num_seqs: int, tokens: float, query_prefix: float, query_squares: float,
              kv_tokens: float, sampled: int, share: float | None = None
              ) -> tuple[float, float, float, float]:
        """(embedding, one dense layer, one MoE layer, LM head) seconds of a batch, each
        layer with its collectives: the layer core's functions on the batch's shape (the
        attention on the busiest attention rank's share, `rank_share` unless given)."""
        m, K, deg = self.model, self.K, self.deg
        shape = BatchShape.from_sums(num_seqs, tokens, query_prefix, query_squares, kv_tokens)
        rank = shape
        if self.dpa > 1:  # the busiest attention rank's share
            f = self.rank_share(tokens, query_squares) if share is None else share
            rank = BatchShape.from_sums(num_seqs * f, tokens * f, query_prefix * f,
                                        query_squares * f, kv_tokens * f)
        embed = float(K.memory(embedding_bytes(m, rank.tokens, deg)))
        block = float(tp_block_time(self.cluster, self.tp_members, rank.tokens, m.hidden_size,
                                    False)[0]) if deg.tp > 1 else 0.0
        dense = moe = 0.0
        if self.dense_layers:
            work = float(np.asarray(layer_forward_time(m, K, rank, deg, False,
                                                       kv_bytes_per_token=self.kv_bytes)))
            dense = work + float(tp_blocks_per_layer(False, True)) * block
        if self.moe_layers:
            if not self.moe_split:
                work = float(np.asarray(layer_forward_time(m, K, shape, deg, True,
                                                           kv_bytes_per_token=self.kv_bytes)))
                moe = work + float(tp_blocks_per_layer(True, True)) * block
            else:
                attn = attention_parts(m, K, rank, deg, kv_bytes_per_token=self.kv_bytes)
                experts = mlp_parts(m, K, shape, self.moe_deg, True)
                moe = float(np.asarray(attn.time(K) + experts.time(K))) + block \
                    + self._expert_exchange(float(tokens))
        head = float(np.asarray(head_parts(m, K, max(sampled, 1) / self.dpa, deg).time(K)))
        return embed, dense, moe, head

    def _expert_exchange(self, tokens: float) -> float:
        """Collectives that bring a MoE layer's tokens to its experts and back, when the
        experts are laid out apart from the attention. With ep > 1: each GPU dispatches and
        combines its tp-th of the tokens (times the expert-tensor slices), then the attention
        ranks' GPUs gather their rank's tokens back. With ep = 1 (tensor-split experts under
        data-parallel attention): an all-gather of every rank's tokens over the stage and a
        reduce-scatter of the output (SGLang's DP-attention gather)."""
        m, c = self.model, self.cluster
        act = ACTIVATION_BYTES * m.hidden_size
        if self.ep > 1:
            per_gpu = tokens / self.tp * (self.tp // self.ep)
            t = float(ep_dispatch_combine_time(c, self.ep_members, m, per_gpu)[0])
            if self.deg.tp > 1:
                t += float(comm.all_gather_time(c, self.tp_members, act * tokens / self.dpa)[0])
            return t
        return 2.0 * float(comm.all_gather_time(c, self.stage_members, act * tokens)[0])

    def stage_times(self, num_seqs: int, tokens: float, query_prefix: float,
                    query_squares: float, kv_tokens: float, sampled: int,
                    plain: bool = False) -> list[float]:
        """Seconds of each pipeline stage on the batch (no host overhead, no send): its dense
        and MoE layers, the embedding on the first, the LM head on the last. `plain`: from
        `parts` itself; else from the parts cached per token count plus the attention core."""
        if plain:
            embed, dense, moe, head = self.parts(num_seqs, tokens, query_prefix,
                                                 query_squares, kv_tokens, sampled)
        else:
            T = int(tokens)
            share = self.rank_share(tokens, query_squares)
            g = self._rank_gain(share)
            key = T if self.dpa == 1 else (T, share)
            lb = self._layer_base.get(key)
            if lb is None:
                e, dn, mo, _ = self.parts(1, T, 0.0, 0.0, 0.0, 1, share)
                c0 = self._core(T, 0.0, 0.0) * g
                lb = (e, dn - c0, mo - c0)
                self._layer_base[key] = lb
            core = self._core(tokens, query_prefix + 0.5 * query_squares, kv_tokens) * g
            embed, dense, moe = lb[0], lb[1] + core, lb[2] + core
            head = self._head_time(sampled)
        last = len(self.stages) - 1
        return [(embed if s == 0 else 0.0) + nd * dense + nm * moe + (head if s == last else 0.0)
                for s, (nd, nm) in enumerate(self.stages)]

    def send_time(self, tokens: int, tier: int) -> float:
        """Hand-off from one stage to the next over network tier `tier`: vLLM sends the hidden
        state and the residual (`IntermediateTensors`), each GPU its tp-th
        (`send_tensor_dict(..., all_gather_group=tp_group)`), gathered again over the
        receiving stage's TP group."""
        key = (tokens, tier)
        t = self._send.get(key)
        if t is None:
            full = 2 * ACTIVATION_BYTES * tokens * self.model.hidden_size
            t = float(comm.p2p_time(self.cluster, np.asarray(tier), full / self.tp))
            if self.tp > 1:
                t += float(comm.all_gather_time(self.cluster, self.stage_members, full)[0])
            self._send[key] = t
        return t
