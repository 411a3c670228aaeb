"""Legality rules of a plan against a model, job and GPU count.

Each rule is vectorised (a boolean mask over many plans), so the search filters a whole space
with the same code that `estimate` uses to reject a single plan with a one-line message.
The divisibility rules are those of Megatron-Core (`parallel_state`, `TransformerConfig`
checks) and torchtitan's `ParallelDims._validate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from meshplan.errors import MeshplanError, invalid
from meshplan.mesh import num_microbatches
from meshplan.schedules.registry import SCHEDULE_SPECS
from meshplan.specs._base import MAX_INT
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import SCHEDULES, PlanArrays
from meshplan.specs.stages import uneven_split_ok

Mask = np.ndarray


@dataclass(frozen=True)
class Rule:
    """A named rule: `ok` returns a legal-mask; `why` explains a violation for plan i."""

    name: str
    ok: Callable[[Model, Job, int, PlanArrays], Mask]
    why: Callable[[Model, Job, int, PlanArrays, int], str]


def _m(job: Job, P: PlanArrays) -> np.ndarray:
    return np.asarray(num_microbatches(job.global_batch_size, P.dp, P.mbs))


def _uneven(P: PlanArrays) -> np.ndarray:
    return (P.first_layers > 0) | (P.last_layers > 0)


_MIN_M_PER_RANK = np.array([spec.min_microbatches_per_rank for spec in SCHEDULE_SPECS])
"""Per schedule code: plans need m >= this * pp micro-batches."""
_SINGLE_STAGE = SCHEDULES.index("1f1b")
"""The schedule code a single-stage plan holds (the default; any other would be ignored)."""
_NEEDS_M_MULTIPLE_OF_P = [code for code, spec in enumerate(SCHEDULE_SPECS)
                          if spec.microbatches_multiple_of_ranks]


def _least_m(code: int, pp: int) -> str:
    k = int(_MIN_M_PER_RANK[code])
    return f"pp={pp}" if k == 1 else f"{k}*pp={k * pp}"


RULES: tuple[Rule, ...] = (
    Rule("gpus", lambda M, J, n, P: P.dp * P.tp * P.pp * P.cp == n,
         lambda M, J, n, P, i: f"dp*tp*pp*cp={int(P.dp[i] * P.tp[i] * P.pp[i] * P.cp[i])}: "
                               f"degrees must multiply to the GPU count {n}"),
    Rule("tp_heads", lambda M, J, n, P: M.num_attention_heads % P.tp == 0,
         lambda M, J, n, P, i: f"tp={int(P.tp[i])}: must divide num_attention_heads "
                               f"({M.num_attention_heads})"),
    Rule("tp_kv", lambda M, J, n, P: (M.kv_heads % P.tp == 0) | (P.tp % M.kv_heads == 0),
         lambda M, J, n, P, i: f"tp={int(P.tp[i])}: must divide num_kv_heads ({M.kv_heads}) "
                               "or be a multiple of it"),
    Rule("tp_ffn", lambda M, J, n, P: M.ffn_hidden_size % P.tp == 0,
         lambda M, J, n, P, i: f"tp={int(P.tp[i])}: must divide ffn_hidden_size "
                               f"({M.ffn_hidden_size})"),
    Rule("pp_layers", lambda M, J, n, P: _uneven(P) | (M.num_layers % (P.pp * P.vpp) == 0),
         lambda M, J, n, P, i: f"pp*vpp={int(P.pp[i] * P.vpp[i])}: must divide num_layers "
                               f"({M.num_layers}); or set first/last stage layers"),
    Rule("uneven_layers", lambda M, J, n, P: ~_uneven(P) | uneven_split_ok(M.num_layers, P),
         lambda M, J, n, P, i: f"first_stage_layers={int(P.first_layers[i]) or None}, "
                               f"last_stage_layers={int(P.last_layers[i]) or None}: with pp="
                               f"{int(P.pp[i])} the other ranks must share the rest of "
                               f"the {M.num_layers} layers equally (at least one each)"),
    Rule("batch", lambda M, J, n, P: J.global_batch_size % (P.dp * P.mbs) == 0,
         lambda M, J, n, P, i: f"micro_batch_size={int(P.mbs[i])}: dp*micro_batch_size="
                               f"{int(P.dp[i] * P.mbs[i])} must divide global_batch_size "
                               f"({J.global_batch_size})"),
    Rule("cp_seq", lambda M, J, n, P: (P.cp == 1) | (J.seq_len % (2 * P.cp) == 0),
         lambda M, J, n, P, i: f"cp={int(P.cp[i])}: 2*cp must divide seq_len ({J.seq_len}) "
                               "for load-balanced causal attention"),
    Rule("ep_dense", lambda M, J, n, P: M.is_moe | ((P.ep == 1) & (P.etp == 1)),
         lambda M, J, n, P, i: f"ep={int(P.ep[i])}: expert parallelism needs a MoE model"),
    Rule("moe_routing", lambda M, J, n, P: M.is_moe | ~_moe_routing_set(P),
         lambda M, J, n, P, i: "moe_dispatcher / moe_force_balanced: need a MoE model"),
    Rule("ep_experts", lambda M, J, n, P: np.ones(len(P), bool) if M.moe is None
         else M.moe.num_experts % P.ep == 0,
         lambda M, J, n, P, i: f"ep={int(P.ep[i])}: must divide num_experts "
                               f"({M.moe.num_experts if M.moe else 0})"),
    Rule("ep_group", lambda M, J, n, P: (P.dp * P.cp * P.tp) % (P.ep * P.etp) == 0,
         lambda M, J, n, P, i: f"ep*etp={int(P.ep[i] * P.etp[i])}: must divide dp*cp*tp "
                               f"({int(P.dp[i] * P.cp[i] * P.tp[i])})"),
    Rule("moe_sp", lambda M, J, n, P: (not M.is_moe) | (P.tp == 1) | P.sp,
         lambda M, J, n, P, i: "sequence_parallel=False: MoE with tp > 1 needs sequence "
                               "parallelism (Megatron-Core)"),
    Rule("sp_tp", lambda M, J, n, P: ~P.sp | (P.tp > 1),
         lambda M, J, n, P, i: "sequence_parallel=True: needs tp > 1"),
    Rule("schedule_m", lambda M, J, n, P: (P.pp == 1)
         | (_m(J, P) >= _MIN_M_PER_RANK[P.schedule] * P.pp),
         lambda M, J, n, P, i: f"schedule={SCHEDULES[int(P.schedule[i])]}: needs at least "
                               f"{_least_m(int(P.schedule[i]), int(P.pp[i]))} micro-batches, "
                               f"got {int(_m(J, P)[i])}"),
    Rule("schedule_m_multiple", lambda M, J, n, P: (P.pp == 1)
         | ~np.isin(P.schedule, _NEEDS_M_MULTIPLE_OF_P) | (_m(J, P) % P.pp == 0),
         lambda M, J, n, P, i: f"schedule={SCHEDULES[int(P.schedule[i])]}: micro-batches "
                               f"({int(_m(J, P)[i])}) must be a multiple of pp "
                               f"({int(P.pp[i])}) (Megatron-LM)"),
    Rule("schedule_pp", lambda M, J, n, P: (P.pp > 1) | ((P.schedule == _SINGLE_STAGE)
                                                          & (P.vpp == 1)),
         lambda M, J, n, P, i: f"schedule={SCHEDULES[int(P.schedule[i])]}, vpp="
                               f"{int(P.vpp[i])}: a pipeline schedule and virtual stages "
                               "need pp > 1"),
    Rule("tp_overlap", lambda M, J, n, P: ~P.tp_overlap | (P.tp > 1),
         lambda M, J, n, P, i: "tp_comm_overlap=True: needs tp > 1"),
    Rule("ep_overlap", lambda M, J, n, P: ~P.ep_overlap | (P.ep > 1),
         lambda M, J, n, P, i: "ep_comm_overlap=True: needs ep > 1"),
    Rule("dp_shard_zero", lambda M, J, n, P: (P.dp_shard == P.dp) | (P.zero >= 1),
         lambda M, J, n, P, i: f"dp_shard={int(P.dp_shard[i])}: hybrid sharding needs "
                               "zero_stage >= 1 (zero_stage 0 shards nothing)"),
    Rule("offload_zero", lambda M, J, n, P: ~P.offload | (P.zero >= 1),
         lambda M, J, n, P, i: "offload_optimizer=True: needs zero_stage >= 1"),
)


def _moe_routing_set(P: PlanArrays) -> np.ndarray:
    """Plans that name a MoE dispatcher other than alltoall, or force even routing."""
    out = np.zeros(len(P), bool)
    if P.dispatcher is not None:
        out |= P.dispatcher != 0
    if P.force_balanced is not None:
        out |= P.force_balanced.astype(bool)
    return out


def legal_mask(model: Model, job: Job, num_gpus: int, P: PlanArrays) -> np.ndarray:
    """True where every rule holds."""
    ok = np.ones(len(P), dtype=bool)
    for rule in RULES:
        ok &= np.asarray(rule.ok(model, job, num_gpus, P), dtype=bool)
    return ok


def check_plan(model: Model, job: Job, num_gpus: int, P: PlanArrays) -> None:
    """Raise MeshplanError naming the first broken rule of plan 0."""
    for rule in RULES:
        if not bool(np.asarray(rule.ok(model, job, num_gpus, P), dtype=bool).reshape(-1)[0]):
            raise MeshplanError(rule.why(model, job, num_gpus, P, 0))


def check_inputs(model: Model, cluster: Cluster, job: Job, num_gpus: int) -> None:
    """Raise MeshplanError where the job cannot run on this model and cluster at any plan:
    a sequence beyond the model's `max_seq_len`, a precision the accelerator has no peak
    for, more GPUs than the outermost network tier (or the cluster) holds."""
    if not 0 < num_gpus <= MAX_INT:
        raise invalid("num_gpus", num_gpus, f"must be in [1, {MAX_INT:,}]")
    if model.max_seq_len is not None and job.seq_len > model.max_seq_len:
        raise invalid("seq_len", job.seq_len, f"{model.name} holds at most max_seq_len="
                      f"{model.max_seq_len} positions; give a model file with a larger one")
    cluster.accelerator.peak(job.precision)
    outer = cluster.network[-1]
    if num_gpus > outer.domain_size:
        raise invalid("num_gpus", num_gpus, f"cluster {cluster.name}'s outermost network tier "
                      f"({outer.name}) connects at most {outer.domain_size:,} GPUs")
    if cluster.num_gpus is not None and num_gpus > cluster.num_gpus:
        raise invalid("num_gpus", num_gpus, f"cluster {cluster.name} has only "
                      f"{cluster.num_gpus}")
