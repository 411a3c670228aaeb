"""The training simulator's Perfetto trace: pipeline sends linked to their receivers by flow
events, the TP / CP / EP collectives on their own lanes inside the compute they belong to,
and each slice's micro-batch, stage, chunk and bytes."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from meshplan import Job, api
from meshplan.sim.trace import write_trace
from meshplan.specs.io import load_model
from meshplan.specs.plan import Plan

JOB = Job(global_batch_size=32, seq_len=8192)
# Mixtral on 4 nodes: TP inside a node, CP and EP across nodes: all three axes left exposed.
PLANS = {
    "moe": ("mixtral-8x7b", Plan(tp=2, cp=8, pp=2, dp=1, ep=4, schedule="1f1b"), 32),
    "interleaved": ("llama3-8b", Plan(tp=2, cp=2, pp=4, dp=1, schedule="interleaved-1f1b",
                                      vpp=2), 16),
    "zero-bubble": ("llama3-8b", Plan(tp=2, pp=4, dp=2, schedule="zb-h1"), 16),
}


@pytest.fixture(scope="module", params=sorted(PLANS))
def traced(request, tmp_path_factory):
    model, plan, gpus = PLANS[request.param]
    sim = api.simulate(model, "dgx-h100", JOB, plan, gpus, trace=True)
    path = tmp_path_factory.mktemp("trace") / "step.json"
    write_trace(sim.result, path)
    return sim, json.loads(path.read_text())["traceEvents"], load_model(model)


def slices(events, **match):
    return [e for e in events if e["ph"] == "X"
            and all(e.get(k) == v for k, v in match.items())]


def inside(ts, e):
    return e["ts"] <= ts <= e["ts"] + e["dur"]


def test_every_send_flows_to_the_action_that_receives_it(traced):
    sim, events, model = traced
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = Counter(e["id"] for e in events if e["ph"] == "f")
    sends = slices(events, cat="comm", tid=1)
    sends = [e for e in sends if e["name"].startswith("send")]
    assert len(starts) == len(sends) > 0 and sum(1 for e in events if e["ph"] == "s") == len(sends)
    assert set(ends) == set(starts) and set(ends.values()) == {1}
    by_lane = defaultdict(list)
    for e in slices(events):
        by_lane[e["pid"], e["tid"]].append(e)
    for f in (e for e in events if e["ph"] == "f"):
        s = starts[f["id"]]
        assert f["bp"] == "e" and s["ts"] < f["ts"]
        (send,) = [e for e in by_lane[s["pid"], s["tid"]] if inside(s["ts"], e)]
        (recv,) = [e for e in by_lane[f["pid"], f["tid"]] if inside(f["ts"], e)]
        assert send["args"]["to_rank"] == recv["pid"] != send["pid"]
        assert recv["args"]["microbatch"] == send["args"]["microbatch"]
        forward = send["name"].rstrip("0123456789").endswith("F")
        assert recv["args"]["stage"] == send["args"]["stage"] + (1 if forward else -1)
        assert recv["ts"] >= send["ts"] + send["dur"] - 1e-6  # it starts once the data is there


def test_slices_carry_microbatch_stage_chunk_and_bytes(traced):
    sim, events, model = traced
    costs, plan = sim.costs, sim.estimate.plan
    tokens = plan.micro_batch_size * JOB.seq_len / plan.cp
    activation = 2 * tokens * model.hidden_size / plan.tp  # bf16, Megatron's scatter/gather
    for e in slices(events):
        if e["name"] == "grad reduce":
            continue
        args = e["args"]
        assert set(args) >= {"microbatch", "stage", "chunk", "bytes"}
        assert 0 <= args["microbatch"] < sim.schedule.num_microbatches
        assert sim.schedule.stage_to_rank[args["stage"]] == e["pid"]
        assert 0 <= args["chunk"] < plan.vpp
        if e["name"].startswith("send"):
            assert args["bytes"] == pytest.approx(activation)
        elif e["cat"] == "compute":
            assert args["bytes"] == costs.activation_bytes[args["stage"]]
    chunks = {(e["pid"], e["args"]["stage"]): e["args"]["chunk"] for e in slices(events,
                                                                                cat="compute")}
    assert set(chunks.values()) == set(range(plan.vpp))


def test_collectives_lie_inside_their_compute_and_add_up_to_the_breakdown(traced):
    sim, events, model = traced
    plan, costs = sim.estimate.plan, sim.costs
    makespan = sim.result.makespan * 1e6
    compute = {(e["pid"], e["args"]["stage"], e["args"]["microbatch"], e["name"][len(
        str(e["args"]["stage"]))]): e for e in slices(events, cat="compute")}
    per_box: dict[int, float] = defaultdict(float)
    per_rank: dict[tuple[str, int], float] = defaultdict(float)
    axes = {"tp": plan.tp, "cp": plan.cp, "ep": plan.ep}
    for axis, degree in axes.items():
        lane = slices(events, cat=axis)
        assert bool(lane) == (degree > 1 and any(
            p.seconds[0] > 0 for p in costs.forward_comm if p.axis == axis))
        for e in lane:
            assert e["ts"] >= 0 and e["ts"] + e["dur"] <= makespan * (1 + 1e-9)
            a = e["args"]
            kind = e["name"].split()[1][len(str(a["stage"]))]
            box = compute[e["pid"], a["stage"], a["microbatch"], kind]
            assert box["ts"] - 1e-6 <= e["ts"]
            assert e["ts"] + e["dur"] <= box["ts"] + box["dur"] + 1e-6
            per_box[id(box)] += e["dur"]
            part = {p.axis: p for p in (costs.forward_comm if kind == "F"
                                        else costs.backward_comm)}[axis]
            assert e["dur"] == pytest.approx(part.seconds[a["stage"]] * 1e6)
            assert a["bytes"] == part.nbytes[a["stage"]] > 0
            per_rank[axis, e["pid"]] += e["dur"] / 1e6
    boxes = {id(b): b for b in compute.values()}
    assert all(per_box[k] <= boxes[k]["dur"] * (1 + 1e-9) for k in per_box)
    # Every layer split evenly here: each rank's exposed time is the simulated breakdown's.
    for axis in axes:
        worst = max((v for (a, _), v in per_rank.items() if a == axis), default=0.0)
        assert worst == pytest.approx(sim.estimate.time_breakdown_s[f"{axis}_comm"], rel=1e-6,
                                      abs=1e-12)
