"""The simulated estimate composes its step-time breakdown from the timeline."""

from __future__ import annotations

import pytest

from meshplan import Job, Plan
from meshplan.analytic import analytic_estimate
from meshplan.sim.plan import simulate_estimate, transfer_stalls
from meshplan.specs.io import load_cluster, load_model

CASES = [
    ("llama3-8b", Job(global_batch_size=64, seq_len=4096),
     Plan(tp=2, pp=4, dp=2, schedule="1f1b")),
    ("llama3-8b", Job(global_batch_size=64, seq_len=4096),
     Plan(tp=2, pp=4, dp=2, schedule="interleaved-1f1b", vpp=2)),
    ("llama3-8b", Job(global_batch_size=64, seq_len=4096),
     Plan(tp=2, pp=4, dp=2, schedule="zb-v")),
    ("llama3-70b", Job(global_batch_size=64, seq_len=4096),
     Plan(tp=8, pp=6, dp=2, first_stage_layers=12, last_stage_layers=12)),
]


@pytest.mark.parametrize(("model", "job", "plan"), CASES)
def test_breakdown_adds_up_and_comes_from_the_busiest_rank(model, job, plan):
    m, cluster = load_model(model), load_cluster("dgx-h100")
    analytic, costs = analytic_estimate(m, cluster, job, plan)
    sim = simulate_estimate(analytic, costs, 0, cluster)
    t = sim.estimate.time_breakdown_s
    assert list(t) == list(analytic.time_breakdown_s)
    assert sum(t.values()) == pytest.approx(sim.estimate.step_time_s, rel=1e-12)
    assert all(v >= 0 for v in t.values())
    stalls = transfer_stalls(sim.schedule, sim.costs)
    load = [b + s for b, s in zip(sim.result.busy, stalls, strict=True)]
    r = load.index(max(load))
    # compute and exposed TP/CP/EP are the busiest rank's compute-stream time ...
    busy = sum(t[k] for k in ("compute", "tp_comm", "cp_comm", "ep_comm"))
    assert busy == pytest.approx(sim.result.busy[r], rel=1e-9)
    # ... its stalls on sends are the pipeline communication ...
    assert t["pp_comm"] == pytest.approx(stalls[r])
    # ... and the rest of the pipeline is its bubble.
    pipeline = sim.estimate.extra["simulated"]["pipeline_s"]
    assert t["bubble"] == pytest.approx(pipeline - load[r], abs=1e-12)
    # utilisation follows from the simulated step, not from a ratio
    assert sim.estimate.mfu == pytest.approx(
        analytic.model_flops_per_step / (sim.estimate.step_time_s * plan.num_gpus
                                         * cluster.accelerator.peak("bf16")))


def test_transfer_stalls_count_sends_across_ranks():
    """1F1B on 4 ranks: inner ranks send forward and backward every micro-batch, end ranks
    one way only; a blocking share of 1 stalls the sender for the whole transfer."""
    from meshplan.cost.train.stages import StageCosts
    from meshplan.schedules.registry import generate

    sched = generate("1f1b", 4, 8)
    costs = StageCosts((1.0,) * 4, (1.0,) * 4, (1.0,) * 4, (0.0,) * 4, p2p_time=0.5,
                       p2p_blocking=1.0)
    assert transfer_stalls(sched, costs) == [4.0, 8.0, 8.0, 4.0]
