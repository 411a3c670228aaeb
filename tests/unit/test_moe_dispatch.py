"""MoE token dispatchers (Plan.moe_dispatcher): DeepEP / HybridEP's deduplicated dispatch
against a Monte Carlo router, the allgather dispatcher, forced-even routing, the rebuild rules
that read them from a published row, and the Megatron-LM / torchtitan exports."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.api import estimate
from meshplan.cost import comm
from meshplan.cost import moe as M
from meshplan.cost.collectives import ep_all_to_all_bytes, ep_dispatch_combine_time
from meshplan.errors import MeshplanError
from meshplan.export import export
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.plan import MOE_DISPATCHERS, Plan, PlanArrays
from meshplan.validate import rules
from meshplan.validate.rows import Case, build_case, load_runs

CODE = {name: np.array([i]) for i, name in enumerate(MOE_DISPATCHERS)}


@pytest.mark.parametrize(("experts", "top_k", "ep", "group"),
                         [(128, 8, 32, 8), (128, 8, 32, 4), (256, 8, 64, 8), (128, 8, 32, 1),
                          (64, 2, 16, 4)])
def test_distinct_destinations_match_a_simulated_router(experts: int, top_k: int, ep: int,
                                                        group: int) -> None:
    """Copies of a token that cross to other groups of `group` ranks once per group, over the
    copies sent once per expert: closed form vs uniform top-k routing (k distinct experts of E,
    E / ep per rank, contiguous)."""
    moe = load_model("qwen3-30b-a3b").moe.model_copy(update={"num_experts": experts,
                                                             "top_k": top_k})
    rng = np.random.default_rng(1)
    picks = np.argsort(rng.random((40_000, experts)), axis=1)[:, :top_k]
    owner = picks // (experts // ep) // group  # the group holding each expert; ours is 0
    remote = owner != 0
    distinct = sum(np.any(owner == g, axis=1).sum() for g in range(1, ep // group))
    simulated = distinct / remote.sum()
    assert float(M.distinct_share(moe, ep, group)) == pytest.approx(simulated, rel=0.01)


def test_qwen3_over_four_nodes_sends_under_half_the_copies() -> None:
    """Qwen3-235B-A22B (128 experts, top-8) on EP32 of 8 GPUs per node: a token reaches
    1 - C(96, 8) / C(128, 8) of each other node, 32 x that / 64 of the per-expert copies."""
    moe = load_model("qwen3-30b-a3b").moe
    from math import comb
    want = 32 * (1 - comb(96, 8) / comb(128, 8)) / 64
    assert float(M.distinct_share(moe, 32, 8)) == pytest.approx(want, rel=1e-12)
    assert float(M.miss_probability(128, 8, 121)) == 0.0  # fewer than k experts elsewhere


def test_dispatchers_price_the_exchange_as_they_send_it() -> None:
    """Cross-node EP: DeepEP and HybridEP cost the same, less than alltoall by the
    deduplicated share of the slowest (network) tier; allgather gathers every token."""
    model, c = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100")
    members = [np.array([8]), np.array([32])]
    tokens = 4096.0
    t = {d: float(ep_dispatch_combine_time(c, members, model, tokens, True, CODE[d])[0])
         for d in MOE_DISPATCHERS}
    assert t["alltoall"] == pytest.approx(float(ep_dispatch_combine_time(
        c, members, model, tokens, True)[0]))
    assert t["flex-deepep"] == t["hybridep"] < 0.6 * t["alltoall"]
    nbytes = ep_all_to_all_bytes(model, tokens)
    share = float(M.distinct_share(model.moe, 32, 8))
    net = c.network[1]
    want = nbytes * 24 / 32 * share / (net.bandwidth / net.oversubscription
                                       * comm.ALL_TO_ALL_EFFICIENCY[1]) + net.latency
    assert t["flex-deepep"] == pytest.approx(2 * want, rel=1e-9)
    gathered = 2.0 * tokens * model.hidden_size * 32
    assert t["allgather"] == pytest.approx(2 * float(comm.all_gather_time(c, members,
                                                                          gathered)[0]))


def test_force_balanced_plan_drops_the_load_imbalance() -> None:
    model, c = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100")
    job = Job(global_batch_size=256, seq_len=4096)
    plan = Plan(ep=16, dp=16, micro_batch_size=1)
    even = plan.model_copy(update={"moe_force_balanced": True})
    a, b = (estimate(model, c, job, p, 16, simulate=False) for p in (plan, even))
    assert b.time_breakdown_s["compute"] < a.time_breakdown_s["compute"]
    assert list(M.load_imbalance(model.moe, np.array([256.0, 256.0]), 8,
                                 np.array([True, False])) > 1) == [False, True]


def test_plan_arrays_carry_the_moe_fields() -> None:
    plans = [Plan(ep=8, dp=8, moe_dispatcher="hybridep", moe_force_balanced=True), Plan(dp=8)]
    P = PlanArrays.from_plans(plans)
    assert [P.plan(i) for i in range(2)] == plans
    assert list(P.select(np.array([1, 0])).dispatchers()) == [0, 3]
    assert "hybridep" in plans[0].describe() and "alltoall" not in plans[1].describe()


def _rows() -> dict[str, dict]:
    return {r["id"]: r for r in load_runs()}


def _case(row: dict) -> Case:
    case = build_case(row)
    assert isinstance(case, Case), case
    return case


def test_rows_name_their_dispatcher_and_forced_routing() -> None:
    """Read from the row's text whatever its source: the MoE report names HybridEP on GB
    systems and DeepEP on H100 in one note ('HybridEP (GB) / DeepEP (H100)')."""
    rows = _rows()
    seen = {}
    for row in rows.values():
        if (row["ep"] or 1) > 1:
            case = _case(row)
            seen[(case.gpu[:2], row["framework"][:4])] = case.plan.moe_dispatcher
            assert case.plan.moe_force_balanced  # every shipped MoE table forces balance
    assert seen[("GB", "Mega")] == "hybridep"
    assert seen[("H1", "Mega")] == "flex-deepep"
    assert seen[("H1", "NeMo")] == "alltoall"  # names none: the recipes' alltoall
    unknown = {**rows["megatron_bridge_perf_2509-DGX-H100-Qwen3_30B_a3B_tokendrop_-16gpu-fp8"],
               "source_id": "someone_else", "notes": "Megatron-Core, --moe-token-dispatcher-"
               "type flex, DeepEP."}
    plan = _case(unknown).plan
    assert (plan.moe_dispatcher, plan.moe_force_balanced) == ("flex-deepep", False)


def test_per_hardware_alternatives_are_read_for_the_row() -> None:
    text = "Dispatcher HybridEP (GB) / DeepEP (H100); recompute none (GB300) / mlp (GB200)."
    assert rules.for_hardware(text, "NVIDIA H100 80GB") == \
        "Dispatcher DeepEP; recompute none (GB300) / mlp (GB200)."
    assert rules.for_hardware(text, "NVIDIA GB300 (Blackwell Ultra)") == \
        "Dispatcher HybridEP; recompute none."
    assert rules.for_hardware(text, "NVIDIA GB200 (Blackwell)") == \
        "Dispatcher HybridEP; recompute mlp."
    assert rules.for_hardware("a (App. B.2) / b (Table 17)", "NVIDIA B200") == \
        "a (App. B.2) / b (Table 17)"  # no hardware tag: left alone
    only = "recompute moe_act+layernorm on GB200 and H100."
    assert rules.for_hardware(only, "NVIDIA H100 80GB") == only
    assert rules.for_hardware(only, "NVIDIA GB300") == "recompute none on GB200 and H100."
    qwen = _case(_rows()["mcore_moe-Qwen3_235B_a22B-GB300-256gpu-MXFP8-s4096"])
    assert qwen.plan.recompute == "none"
    gb300 = _case(_rows()["mcore_moe-DeepSeekV3-GB300-256gpu-MXFP8-s4096"])
    assert gb300.plan.recompute == "none"
    assert gb300.row["notes"].count("(GB300)") == 1  # the case keeps the row as published


def test_megatron_export_writes_the_dispatcher() -> None:
    job = Job(global_batch_size=4096, seq_len=4096)
    plan = Plan(tp=2, dp=128, ep=64, etp=1, moe_dispatcher="hybridep",
                moe_force_balanced=True, ep_comm_overlap=True)
    text = export(plan, "megatron", model="deepseek-v3", job=job, cluster="dgx-h100")
    assert "--moe-token-dispatcher-type flex" in text
    assert "--moe-flex-dispatcher-backend hybridep" in text
    assert "--moe-router-force-load-balancing" in text
    assert "--overlap-moe-expert-parallel-comm" in text
    plain = export(plan.model_copy(update={"moe_dispatcher": "alltoall"}), "megatron",
                   model="deepseek-v3", job=job, cluster="dgx-h100")
    assert "--moe-token-dispatcher-type alltoall" in plain and "backend" not in plain


def test_torchtitan_refuses_what_it_cannot_run() -> None:
    job = Job(global_batch_size=512, seq_len=4096)
    for update, word in (({"moe_dispatcher": "flex-deepep"}, "moe_dispatcher"),
                         ({"moe_force_balanced": True}, "moe_force_balanced")):
        plan = Plan(dp=64, ep=8, zero_stage=2, **update)
        with pytest.raises(MeshplanError, match=word):
            export(plan, "torchtitan", model="qwen3-30b-a3b", job=job, cluster="dgx-h100")


@pytest.mark.parametrize(("flags", "want"), [
    ("", "allgather"),  # arguments.py: --moe-token-dispatcher-type defaults to allgather
    ("--moe-token-dispatcher-type alltoall", "alltoall"),
    ("--moe-token-dispatcher-type flex", "flex-deepep"),  # backend default deepep
    ("--moe-enable-deepep", "flex-deepep"),  # the older spelling
    ("--moe-token-dispatcher-type flex --moe-flex-dispatcher-backend hybridep", "hybridep"),
])
def test_megatron_args_name_the_dispatcher(flags: str, want: str, tmp_path) -> None:
    from meshplan.importers import megatron

    path = tmp_path / "args.txt"
    path.write_text(f"--num-experts 128 --expert-model-parallel-size 8 {flags}\n"
                    "--moe-router-force-load-balancing --bf16\n")
    values = megatron.read(str(path), load_model("qwen3-30b-a3b")).values
    assert (values["moe_dispatcher"], values["moe_force_balanced"]) == (want, True)


def test_moe_act_recompute_redoes_the_activation_only() -> None:
    """Megatron-Core's `moe_act` recomputes the routed experts' SwiGLU, not the router or the
    permutations: 6 bytes per busiest-rank assignment and expert-FFN element (balanced)."""
    from meshplan.cost.kernels import Kernels
    from meshplan.cost.layer import BatchShape, LayerDegrees, mlp_parts

    m = load_model("qwen3-30b-a3b")
    K = Kernels(load_cluster("dgx-h100"), "bf16")
    deg = LayerDegrees(ep=8, balanced=True)
    parts = mlp_parts(m, K, BatchShape.training(1, 4096, 1), deg, True, M.ALLTOALL)
    act = 6 * 4096 * m.moe.top_k * m.moe.expert_ffn_hidden_size
    assert float(parts.activation_bytes) == pytest.approx(act)
    assert float(parts.activation_bytes) < 0.5 * float(parts.elementwise_bytes)
    model, c = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100")
    job = Job(global_batch_size=256, seq_len=4096)
    none, act_rc = (estimate(model, c, job, Plan(ep=16, dp=16, **kw), 16, simulate=False)
                    for kw in ({}, {"recompute": "selective", "recompute_modules": ("moe_act",)}))
    extra = act_rc.step_time_s - none.step_time_s
    assert 0 < extra < 0.02 * none.step_time_s


@pytest.mark.parametrize("plan", [Plan(dp=8, moe_dispatcher="hybridep"),
                                  Plan(dp=8, moe_force_balanced=True)])
def test_routing_options_on_a_dense_model_are_refused(plan: Plan) -> None:
    job = Job(global_batch_size=64, seq_len=4096)
    with pytest.raises(MeshplanError, match="need a MoE model"):
        estimate(load_model("llama3-8b"), load_cluster("dgx-h100"), job, plan, 8)
