"""Memory of every pipeline rank: the peak the cost model reports is the largest of all ranks',
counted rank by rank (brute force) for random uneven splits, schedules and virtual stages."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from meshplan.cost.params import count_params
from meshplan.cost.train import allocator as alloc
from meshplan.cost.train import memory
from meshplan.cost.train.step import MEMORY_TERMS, evaluate
from meshplan.mesh import Mesh
from meshplan.schedules.registry import SCHEDULE_NAMES, schedule_spec
from meshplan.specs import Job, Plan
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.plan import PlanArrays
from meshplan.specs.rules import legal_mask


def brute_force(model, cluster, job, plan: Plan) -> tuple[float, int]:
    """(peak bytes, peak rank) over all ranks, each rank's contents counted on its own."""
    P = PlanArrays.from_plans([plan])
    mesh, counts = Mesh(P), count_params(model)
    spec = schedule_spec(plan.schedule)
    p, L = plan.pp, model.num_layers
    stages = spec.stage_to_rank(p, plan.vpp)
    fixed = {0: plan.first_stage_layers, p - 1: plan.last_stage_layers}
    rest_ranks = p - sum(1 for n in fixed.values() if n)
    rest = L - sum(n or 0 for n in fixed.values())
    m = job.global_batch_size // (plan.dp * plan.micro_batch_size)
    dense_l, moe_l = (x / (L / p) for x in memory.layer_mix(model, P))
    per_layer = (dense_l * memory.layer_activation_bytes(model, job, mesh, False)
                 + moe_l * memory.layer_activation_bytes(model, job, mesh, model.is_moe))
    working = np.where(P.recompute == 2, memory.full_layer_bytes(model, job, P), 0.0)
    head_act = memory.head_activation_bytes(model, job, mesh)
    layer_params = (counts.per_dense_layer if not model.is_moe
                    else counts.per_moe_layer_non_expert + counts.expert / (P.ep * P.etp))
    T = mesh.tokens_per_microbatch(job.seq_len)
    comm_buf = 2 * 2.0 * T * model.hidden_size * (P.tp > 1) + 2 * 2.0 * T * \
        model.hidden_size / mesh.seq_shard * (P.pp > 1)
    workspace, nccl = alloc.workspace_bytes(1), alloc.nccl_bytes(mesh)
    totals = []
    for r in range(p):
        layers = fixed.get(r) or (rest / rest_ranks if p > 1 else L)
        embedding, head = stages[0] == r, stages[-1] == r
        dense, expert = memory.stage_params(counts, model, P, np.array([layers]), embedding, head)
        states = memory.model_state_bytes(dense, P, mesh.shard, job)
        e_states = memory.model_state_bytes(expert, P, mesh.edp, job)
        in_flight = spec.in_flight(np.array([p]), np.array([m]), np.array([plan.vpp]),
                                   np.array([r])) if p > 1 else 1.0
        heads = (m if spec.forward_first and p > 1 else 1) if head else 0
        acts = in_flight * layers * per_layer + heads * head_act + working
        terms = {"activations": acts, "buffers": comm_buf, "workspace": workspace,
                 "zero_buffers": alloc.zero_buffers(job, mesh, layer_params, dense + expert),
                 "logits": alloc.loss_transient_bytes(model, job, mesh) if head else 0.0}
        frag = alloc.fragmentation(terms, alloc.fragmentation_share(job))
        totals.append(float(np.sum(sum(states.values()) + sum(e_states.values())
                                   + sum(terms.values()) + frag + nccl)))
    return max(totals), int(np.argmax(totals))


plans = st.fixed_dictionaries({
    "model": st.sampled_from(["llama3-8b", "mixtral-8x7b", "qwen3-30b-a3b"]),
    "pp": st.sampled_from([2, 3, 4, 6, 8]),
    "schedule": st.sampled_from(SCHEDULE_NAMES),
    "vpp_pick": st.integers(0, 3),
    "first": st.integers(0, 6),
    "last": st.integers(0, 6),
    "mbs": st.sampled_from([1, 2]),
    "zero": st.sampled_from([0, 1, 3]),
    "recompute": st.sampled_from(["none", "selective", "full"]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(plans)
def test_peak_is_the_largest_rank_counted_one_by_one(d):
    model, cluster = load_model(d["model"]), load_cluster("dgx-h100")
    choices = schedule_spec(d["schedule"]).chunk_choices(4)
    vpp = choices[d["vpp_pick"] % len(choices)]
    ep = 2 if model.is_moe else 1
    plan = Plan(pp=d["pp"], dp=4, ep=ep, schedule=d["schedule"], vpp=vpp,
                first_stage_layers=d["first"] or None, last_stage_layers=d["last"] or None,
                micro_batch_size=d["mbs"], zero_stage=d["zero"], recompute=d["recompute"])
    job = Job(global_batch_size=4 * d["mbs"] * 2 * d["pp"], seq_len=1024)
    P = PlanArrays.from_plans([plan])
    assume(bool(legal_mask(model, job, plan.num_gpus, P)[0]))
    c = evaluate(model, cluster, job, P)
    want, rank = brute_force(model, cluster, job, plan)
    got = float(c.memory["peak"][0] - c.memory["cuda_context"][0])
    assert abs(got - want) <= 1e-9 * want
    assert int(c.memory["peak_rank"][0]) == rank
    breakdown = sum(float(c.memory[k][0]) for k in MEMORY_TERMS if k != "cuda_context")
    assert abs(breakdown - got) <= 1e-9 * got
