"""Megatron-LM: a `torchrun ... pretrain_gpt.py` script carrying the plan as command-line flags.

Flag names, value types and the checks a plan must pass mirror Megatron-LM
`megatron/training/arguments.py` (the Megatron-Core 0.16 line: `_add_distributed_args`,
`_add_training_args`, `_add_network_size_args`, `_add_moe_args`, `_add_mla_args`,
`validate_args`) and Megatron-Core 0.16 (`TransformerConfig`, `parallel_state.RankGenerator`,
`distributed/fsdp`). Virtual stages use `--num-virtual-stages-per-pipeline-rank`, the flag that
release reads first (`--num-layers-per-virtual-pipeline-stage` is the older spelling).
"""

from __future__ import annotations

import math
import shlex

from meshplan.export._common import (
    DEFAULT_AXIS_ORDER,
    Refusal,
    check,
    constant,
    engine_schedule,
    field_value,
    header,
    match_order,
    order_refusal,
    schedule_refusals,
)
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model, MoE
from meshplan.specs.plan import Plan

ENGINE = "Megatron-LM"
SOURCE = "Megatron-LM megatron/training/arguments.py (Megatron-Core 0.16)"
ORDERS: dict[tuple[str, ...], str | None] = {
    DEFAULT_AXIS_ORDER: None,
    ("tp", "cp", "ep", "pp", "dp"): "--use-tp-pp-dp-mapping",
}
"""RankGenerator order `tp-cp-ep-dp-pp`, or `tp-cp-ep-pp-dp` with --use-tp-pp-dp-mapping."""
FSDP_STRATEGY = {2: "optim_grads", 3: "optim_grads_params"}
"""Megatron-FSDP `--data-parallel-sharding-strategy` for ZeRO-2 and ZeRO-3."""

Flag = tuple[str, str | None]
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
"""Fixed by Megatron-Core's RotaryEmbedding._apply_scaling (rotary_pos_embedding.py): only the
factor has a flag (--rope-scaling-factor)."""
MLA_YARN = {"original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0}
"""MLATransformerConfig defaults with no command-line flag in arguments.py (_add_mla_args has
--rotary-scaling-factor, --mscale and --mscale-all-dim only)."""
POSITIONS = {"rope": "rope", "learned": "learned_absolute"}
MLPS = {"swiglu": [("--swiglu", None)], "gelu": []}
"""--swiglu, or gelu (the default)."""


def _uneven_not_whole(name: str) -> Refusal:
    column = {"first_stage_layers": "first_layers", "last_stage_layers": "last_layers"}[name]
    return Refusal(name, lambda M, J, P: (P.pp > 1) & (getattr(P, column) % P.vpp > 0),
                   field_value(column), lambda M, J, P, i: f"needs whole layers in each of "
                   f"the {int(P.vpp[i])} virtual stages of a rank")


def _scaling(M: Model, kind: str) -> bool:
    return M.rope_scaling is not None and M.rope_scaling.type == kind


def _fixed(M: Model, fixed: dict[str, float]) -> bool:
    """The model's RoPE scaling differs from values Megatron cannot set."""
    return M.rope_scaling is not None and any(
        getattr(M.rope_scaling, k) != v for k, v in fixed.items())


def _rope_value(M: Model, J: Job, P: object, i: int) -> str:
    return "none" if M.rope_scaling is None else M.rope_scaling.type


_ROPE_REFUSALS: tuple[Refusal, ...] = (
    Refusal("rope_theta", lambda M, J, P: M.position_embedding == "rope"
            and M.rope_theta != int(M.rope_theta), lambda M, J, P, i: M.rope_theta,
            "reads --rotary-base as an integer"),
    Refusal("rope_scaling", lambda M, J, P: _scaling(M, "llama3") and (
        M.mla is not None or _fixed(M, LLAMA3_ROPE)), _rope_value,
            "applies Llama 3.1 RoPE scaling to standard attention only, with low/high "
            "frequency factors 1/4 and original length 8192 (RotaryEmbedding._apply_scaling)"),
    Refusal("rope_scaling", lambda M, J, P: _scaling(M, "yarn") and (
        M.mla is None or _fixed(M, MLA_YARN)), _rope_value,
            "builds YaRN only in multi-latent attention, with original length 4096 and "
            "beta_fast/slow 32/1 (MLATransformerConfig; no flags for them)"),
    Refusal("rope_scaling", lambda M, J, P: _scaling(M, "linear") and (
        M.mla is not None or M.rope_scaling.factor != int(M.rope_scaling.factor)),  # type: ignore[union-attr]
            _rope_value, "interpolates positions by an integer factor only "
            "(--rotary-seq-len-interpolation-factor), in standard attention"),
    Refusal("moe.normalize_top_k", lambda M, J, P: M.moe is not None
            and M.moe.router_score == "sigmoid" and not M.moe.normalize_top_k
            and M.moe.top_k > 1, constant(False),
            "always renormalises sigmoid top-k weights (moe_utils.py "
            "topk_routing_with_score_function)"),
)


REFUSALS: tuple[Refusal, ...] = (
    # ScheduleSpec.megatron: forward_backward_pipelining_{without,with}_interleaving
    # (core/pipeline_parallel/schedules.py). Uneven splits: TransformerConfig's
    # num_layers_in_first/last_pipeline_stage, whole layers per virtual stage.
    *schedule_refusals("megatron", "core/pipeline_parallel/schedules.py; export to "
                       "torchtitan for the other schedules"),
    _uneven_not_whole("first_stage_layers"),
    _uneven_not_whole("last_stage_layers"),
    order_refusal(ORDERS),
    Refusal("tp_comm_overlap", lambda M, J, P: P.tp_overlap & ~((P.tp > 1) & P.sp),
            constant(True), "overlaps TP communication only with tp > 1 and sequence "
            "parallelism"),
    Refusal("mlp_type", lambda M, J, P: M.mlp_type not in MLPS,
            lambda M, J, P, i: M.mlp_type,
            "builds swiglu or gelu MLPs (--swiglu; gelu is the default), not geglu or relu"),
    Refusal("position_embedding", lambda M, J, P: M.position_embedding not in POSITIONS,
            lambda M, J, P, i: M.position_embedding,
            "supports rope and learned position embeddings, not alibi"),
    Refusal("ep", lambda M, J, P: M.is_moe & (P.ep > 1) & (J.precision == "fp16"),
            field_value("ep"), "supports expert parallelism only with bf16 or fp8"),
    Refusal("zero_stage", lambda M, J, P: (P.zero >= 2) & (P.pp > 1), field_value("zero"),
            "shards gradients and weights only with Megatron-FSDP, which supports TP, EP and "
            "CP but not pp > 1"),
    Refusal("offload_optimizer", lambda M, J, P: P.offload & (P.zero != 1), constant(True),
            "offloads the optimizer with its distributed optimizer (zero_stage 1)"),
    *_ROPE_REFUSALS,
)
"""What a Megatron-LM launch cannot express (megatron/training/arguments.py validate_args)."""


def render(model: Model, job: Job, plan: Plan, cluster: Cluster | None = None) -> str:
    """The launch script: header comments, torchrun line, one `--flag value` per line."""
    check(ENGINE, REFUSALS, model, job, plan)
    flags = [*_parallel(plan), *_batch(job, plan), *_shape(model, job, plan),
             *_moe(model, job, plan), *_mla(model), *_precision(job), *_recompute(model, job, plan),
             *_data_parallel(plan)]
    return _script(model, job, plan, cluster, flags)


def padded_vocab(model: Model, plan: Plan) -> int:
    """The vocabulary rounded up to a multiple of tp: VocabParallelEmbedding splits it evenly."""
    return math.ceil(model.vocab_size / plan.tp) * plan.tp


def _parallel(plan: Plan) -> list[Flag]:
    flags: list[Flag] = [("--tensor-model-parallel-size", str(plan.tp)),
                         ("--pipeline-model-parallel-size", str(plan.pp)),
                         ("--context-parallel-size", str(plan.cp))]
    if plan.sequence_parallel and plan.tp > 1:
        flags.append(("--sequence-parallel", None))
    flags += _schedule(plan)
    order_flag = match_order(plan, ENGINE, ORDERS)
    if order_flag:
        flags.append((order_flag, None))
    if plan.tp_comm_overlap:
        flags.append(("--tp-comm-overlap", None))
    return flags


def _schedule(plan: Plan) -> list[Flag]:
    if engine_schedule(plan, "megatron") is None:
        return []
    v = plan.vpp
    flags: list[Flag] = [("--num-virtual-stages-per-pipeline-rank", str(v))] if v > 1 else []
    if plan.first_stage_layers:
        flags.append(("--decoder-first-pipeline-num-layers", str(plan.first_stage_layers)))
    if plan.last_stage_layers:
        flags.append(("--decoder-last-pipeline-num-layers", str(plan.last_stage_layers)))
    return flags


def _batch(job: Job, plan: Plan) -> list[Flag]:
    flags: list[Flag] = [("--micro-batch-size", str(plan.micro_batch_size)),
                         ("--global-batch-size", str(job.global_batch_size))]
    if job.token_budget is not None:
        flags.append(("--train-samples", str(math.ceil(job.token_budget / job.seq_len))))
    return flags


def _shape(model: Model, job: Job, plan: Plan) -> list[Flag]:
    flags: list[Flag] = [("--num-layers", str(model.num_layers)),
                         ("--hidden-size", str(model.hidden_size)),
                         ("--ffn-hidden-size", str(model.ffn_hidden_size)),
                         ("--num-attention-heads", str(model.num_attention_heads))]
    if model.mla is None:
        if model.kv_heads != model.num_attention_heads:
            flags += [("--group-query-attention", None),
                      ("--num-query-groups", str(model.kv_heads))]
        flags.append(("--kv-channels", str(model.head_size)))
    max_pos = max(job.seq_len, model.max_seq_len or 0)
    flags += [("--seq-length", str(job.seq_len)), ("--max-position-embeddings", str(max_pos)),
              ("--padded-vocab-size", str(padded_vocab(model, plan)))]
    flags += _activation(model) + _layout(model) + _rope(model)
    flags.append(("--norm-epsilon", repr(model.norm_eps)))
    if model.mtp_layers:
        flags.append(("--mtp-num-layers", str(model.mtp_layers)))
    if not job.flash_attention:
        flags.append(("--attention-backend", "unfused"))
    return flags


def _activation(model: Model) -> list[Flag]:
    return list(MLPS[model.mlp_type])


def _layout(model: Model) -> list[Flag]:
    """Position embedding, norm, biases, embeddings tying and dropout."""
    norm = "RMSNorm" if model.norm == "rmsnorm" else "LayerNorm"
    flags: list[Flag] = [("--position-embedding-type", POSITIONS[model.position_embedding]),
                         ("--normalization", norm)]
    if model.qk_norm:
        flags.append(("--qk-layernorm", None))
    if not model.linear_bias:
        flags.append(("--disable-bias-linear", None))
        if model.qkv_bias:
            flags.append(("--add-qkv-bias", None))
    if not model.tied_embeddings:
        flags.append(("--untie-embeddings-and-output-weights", None))
    dropout = "0.1" if model.dropout else "0.0"
    return flags + [("--attention-dropout", dropout), ("--hidden-dropout", dropout)]


def _rope(model: Model) -> list[Flag]:
    """RoPE base and scaling: --rotary-base (arguments.py, an int), Llama 3.1 scaling
    (--use-rope-scaling, --rope-scaling-factor), position interpolation, and for MLA the rope
    type (MLA defaults to YaRN) with YaRN's factor and mscales (_add_mla_args)."""
    if model.position_embedding != "rope":
        return []
    flags: list[Flag] = [("--rotary-base", str(int(model.rope_theta)))]
    sc = model.rope_scaling
    if model.mla is not None:
        if sc is None:
            return flags + [("--rope-type", "rope")]
        return flags + [("--rope-type", "yarn"), ("--rotary-scaling-factor", repr(sc.factor)),
                        ("--mscale", repr(sc.mscale)),
                        ("--mscale-all-dim", repr(sc.mscale_all_dim))]
    if sc is not None and sc.type == "llama3":
        flags += [("--use-rope-scaling", None), ("--rope-scaling-factor", repr(sc.factor))]
    elif sc is not None:  # linear (the refusals leave no other)
        flags.append(("--rotary-seq-len-interpolation-factor", str(int(sc.factor))))
    return flags


def _router(moe: MoE) -> list[Flag]:
    """Router numerics (TransformerConfig moe_router_*): score function, renormalisation
    (Megatron's softmax after top-k renormalises; --moe-router-pre-softmax does not), group-
    limited top-k, output scale, expert bias, and the capacity factor (None: dropless)."""
    flags: list[Flag] = []
    if moe.router_score != "softmax":
        flags.append(("--moe-router-score-function", moe.router_score))
    if moe.router_score == "softmax" and not moe.normalize_top_k:
        flags.append(("--moe-router-pre-softmax", None))
    if moe.router_groups:
        flags += [("--moe-router-num-groups", str(moe.router_groups)),
                  ("--moe-router-group-topk", str(moe.router_group_top_k))]
    if moe.router_scaling != 1.0:
        flags.append(("--moe-router-topk-scaling-factor", repr(moe.router_scaling)))
    if moe.router_expert_bias:
        flags.append(("--moe-router-enable-expert-bias", None))
    if moe.capacity_factor is not None:
        flags.append(("--moe-expert-capacity-factor", repr(moe.capacity_factor)))
    return flags


DISPATCHER_FLAGS: dict[str, list[Flag]] = {
    "alltoall": [("--moe-token-dispatcher-type", "alltoall")],
    "allgather": [("--moe-token-dispatcher-type", "allgather")],
    "flex-deepep": [("--moe-token-dispatcher-type", "flex"),
                    ("--moe-flex-dispatcher-backend", "deepep")],
    "hybridep": [("--moe-token-dispatcher-type", "flex"),
                 ("--moe-flex-dispatcher-backend", "hybridep")],
}
"""`Plan.moe_dispatcher` as _add_moe_args spells it (--moe-token-dispatcher-type choices
allgather / alltoall / flex; --moe-flex-dispatcher-backend deepep / hybridep)."""


def _moe(model: Model, job: Job, plan: Plan) -> list[Flag]:
    if model.moe is None:
        return []
    moe = model.moe
    flags: list[Flag] = [("--num-experts", str(moe.num_experts)),
                         ("--moe-router-topk", str(moe.top_k)),
                         ("--moe-ffn-hidden-size", str(moe.expert_ffn_hidden_size)),
                         *_router(moe)]
    if moe.num_shared_experts:
        shared = moe.num_shared_experts * moe.shared_expert_ffn_hidden_size
        flags.append(("--moe-shared-expert-intermediate-size", str(shared)))
    if moe.num_dense_layers:
        dense, sparse = moe.num_dense_layers, model.num_layers - moe.num_dense_layers
        flags.append(("--moe-layer-freq", f"([0]*{dense}+[1]*{sparse})"))
    flags += [("--expert-model-parallel-size", str(plan.ep)),
              ("--expert-tensor-parallel-size", str(plan.etp))]
    if plan.ep > 1:
        flags += DISPATCHER_FLAGS[plan.moe_dispatcher]
        if plan.ep_comm_overlap:
            flags.append(("--overlap-moe-expert-parallel-comm", None))
    if plan.moe_force_balanced:
        flags.append(("--moe-router-force-load-balancing", None))
    if job.precision != "fp16":
        flags.append(("--moe-grouped-gemm", None))
    return flags


def _mla(model: Model) -> list[Flag]:
    if model.mla is None:
        return []
    mla = model.mla
    flags: list[Flag] = [("--multi-latent-attention", None)]
    if mla.q_lora_rank:
        flags.append(("--q-lora-rank", str(mla.q_lora_rank)))
    return flags + [("--kv-lora-rank", str(mla.kv_lora_rank)),
                    ("--qk-head-dim", str(mla.qk_nope_head_dim)),
                    ("--qk-pos-emb-head-dim", str(mla.qk_rope_head_dim)),
                    ("--v-head-dim", str(mla.v_head_dim))]


def _precision(job: Job) -> list[Flag]:
    """--bf16/--fp16; fp8 is bf16 plus Transformer Engine's hybrid E4M3/E5M2 GEMMs.

    Gradient bytes: bf16 accumulates and reduces in fp32 unless --grad-reduce-in-bf16; fp16 keeps
    fp16 grads unless --accumulate-allreduce-grads-in-fp32 (validate_args, "Parameters dtype").
    """
    if job.precision == "fp16":
        fp16: list[Flag] = [("--fp16", None)]
        if job.grad_bytes == 4:
            fp16.append(("--accumulate-allreduce-grads-in-fp32", None))
        return fp16
    flags: list[Flag] = [("--bf16", None)]
    if job.grad_bytes == 2:
        flags.append(("--grad-reduce-in-bf16", None))
    if job.precision == "fp8":
        flags.append(("--fp8-format", "hybrid"))
    return flags


def _recompute(model: Model, job: Job, plan: Plan) -> list[Flag]:
    if plan.recompute == "selective":
        flags: list[Flag] = [("--recompute-granularity", "selective")]
        # The modules meshplan costed: the plan's list, else its default policy
        # (`cost.train.recompute.default_mask`) in Megatron-Core's names: the norms, and the
        # routed experts' activation (moe_act needs --moe-grouped-gemm, validate_args); bare
        # selective would be Megatron's own default, core_attn. With unfused attention the
        # default is core_attn, Megatron's too. The dense MLP's activation has no module name.
        modules = plan.recompute_modules
        if not modules and job.flash_attention:
            grouped = model.moe is not None and job.precision != "fp16"
            modules = ("layernorm", "moe_act") if grouped else ("layernorm",)
        if modules:  # nargs list: the names as separate words
            flags.append(("--recompute-modules " + " ".join(modules), None))
        return flags
    chunk = model.num_layers // (plan.pp * plan.vpp)
    if plan.recompute == "full" and plan.recompute_num_layers and \
            plan.recompute_num_layers < chunk:
        # The first N layers of each pipeline stage's model chunk (transformer_block.py
        # _checkpointed_forward, recompute_method 'block'), as `train.recompute.full_share`;
        # N >= the chunk is every layer (Megatron-Core's TransformerConfig refuses N above the
        # layers per pipeline rank), written as the every-layer form below.
        return [("--recompute-granularity", "full"), ("--recompute-method", "block"),
                ("--recompute-num-layers", str(plan.recompute_num_layers))]
    if plan.recompute == "full":
        return [("--recompute-granularity", "full"), ("--recompute-method", "uniform"),
                ("--recompute-num-layers", "1")]
    return []


def _data_parallel(plan: Plan) -> list[Flag]:
    """ZeRO stage -> DDP, distributed optimizer (ZeRO-1) or Megatron-FSDP (ZeRO-2/3)."""
    z, flags = plan.zero_stage, list[Flag]()
    if z == 1:
        flags.append(("--use-distributed-optimizer", None))
    elif z >= 2:
        flags += [("--use-megatron-fsdp", None),
                  ("--data-parallel-sharding-strategy", FSDP_STRATEGY[z]),
                  ("--use-distributed-optimizer", None),
                  ("--no-gradient-accumulation-fusion", None),
                  ("--ckpt-format", "fsdp_dtensor")]
    if z >= 1 and plan.dp_shard < plan.dp:
        flags.append(("--num-distributed-optimizer-instances",
                      str(plan.dp // plan.dp_shard)))
    if plan.offload_optimizer:
        flags += [("--optimizer-cpu-offload", None), ("--use-precision-aware-optimizer", None)]
    if plan.overlap_grad_reduce:
        flags.append(("--overlap-grad-reduce", None))
        if z >= 1:
            flags.append(("--overlap-param-gather", None))
    return flags


def _script(model: Model, job: Job, plan: Plan, cluster: Cluster | None,
            flags: list[Flag]) -> str:
    per_node = min(plan.num_gpus, cluster.gpus_per_node if cluster else 8)
    nodes = math.ceil(plan.num_gpus / per_node)
    lines = ["#!/usr/bin/env bash", *(f"# {line}" for line in header(ENGINE, SOURCE, model,
                                                                     job, plan)),
             "# Data, tokenizer, optimizer and checkpoint flags are yours: pass them as",
             "# arguments, e.g. bash train.sh --mock-data --tokenizer-type NullTokenizer ..."]
    if padded_vocab(model, plan) != model.vocab_size:
        lines.append(f"# vocabulary {model.vocab_size} padded to {padded_vocab(model, plan)}, a "
                     f"multiple of tp={plan.tp} (VocabParallelEmbedding)")
    lines.append("set -euo pipefail")
    if (plan.tp > 1 or plan.cp > 1) and plan.zero_stage < 2:
        lines.append("export CUDA_DEVICE_MAX_CONNECTIONS=1  # validate_args wants it before "
                     "Blackwell")
    lines += [f'torchrun --nproc-per-node "${{GPUS_PER_NODE:-{per_node}}}" '
              f'--nnodes "${{NNODES:-{nodes}}}" --node-rank "${{NODE_RANK:-0}}" \\',
              '    --master-addr "${MASTER_ADDR:-localhost}" '
              '--master-port "${MASTER_PORT:-6000}" \\',
              "    pretrain_gpt.py \\"]
    for name, value in flags:
        lines.append(f"    {name}" + ("" if value is None else f" {shlex.quote(value)}") + " \\")
    lines.append('    "$@"')
    return "\n".join(lines) + "\n"
