"""Every registered `ScheduleSpec` is complete and agrees with its generator, `Plan`, the closed
forms and the simulator: adding a schedule means adding a spec, and these tests check it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from meshplan.cost.train.pipeline import in_flight_microbatches, pipeline_time
from meshplan.errors import MeshplanError
from meshplan.schedules import (
    SCHEDULE_SPECS,
    generate,
    schedule_code,
    schedule_spec,
    spec_by_code,
    stage_to_rank,
    verify,
)
from meshplan.sim.engine import StageCosts, simulate_schedule
from meshplan.specs.plan import SCHEDULES, Plan

SPECS = pytest.mark.parametrize("spec", SCHEDULE_SPECS, ids=lambda s: s.name)
CHUNKS = range(1, 5)


def legal_m(spec, p: int) -> int:
    """A micro-batch count every rule of `spec` accepts for p ranks."""
    return max(spec.min_microbatches_per_rank, 2) * p


@SPECS
def test_spec_is_complete(spec):
    assert SCHEDULES[schedule_code(spec.name)] == spec.name
    assert spec_by_code(schedule_code(spec.name)) is spec is schedule_spec(spec.name)
    assert callable(spec.generator) and callable(spec.pipeline_time) and callable(spec.in_flight)
    assert spec.placement in ("looped", "v")
    assert spec.allows_chunks(spec.default_chunks)
    for engine in (spec.megatron, spec.torchtitan, spec.deepspeed):
        assert engine is None or (isinstance(engine, str) and engine)


def test_codes_keep_their_order():
    """PlanArrays.schedule codes are indexes: the order must never change."""
    assert SCHEDULES == ("1f1b", "gpipe", "interleaved-1f1b", "looped-bfs", "zb-h1", "zb-h2",
                         "zb-v", "dualpipe-v")


@SPECS
@pytest.mark.parametrize("p", [1, 2, 4])
def test_generator_honours_the_chunk_rule_and_placement(spec, p):
    m = legal_m(spec, p)
    for v in CHUNKS:
        if spec.allows_chunks(v):
            schedule = generate(spec.name, p, m, v)
            assert schedule.num_stages == p * v
            assert schedule.stage_to_rank == spec.stage_to_rank(p, v) == stage_to_rank(
                spec.name, p, v)
            verify(schedule)
        else:
            with pytest.raises(MeshplanError, match="^num_chunks="):
                generate(spec.name, p, m, v)


@SPECS
def test_plan_accepts_exactly_the_chunk_counts_the_spec_allows(spec):
    assert Plan(pp=2, schedule=spec.name).vpp == spec.default_chunks
    for v in CHUNKS:
        if spec.allows_chunks(v):
            assert Plan(pp=2, schedule=spec.name, vpp=v).vpp == v
        else:
            with pytest.raises(ValidationError, match="chunks per rank"):
                Plan(pp=2, schedule=spec.name, vpp=v)


def _terms(per_rank_f: float, per_rank_i: float, per_rank_w: float) -> tuple[np.ndarray, ...]:
    a = lambda x: np.array([x])  # noqa: E731
    fb = per_rank_f + per_rank_i + per_rank_w
    return a(fb), a(fb), a(fb), a(per_rank_f), a(per_rank_i), a(per_rank_w)


EXACT = {
    "F = B": ((1.0, 0.5, 0.5), ("1f1b", "gpipe", "interleaved-1f1b", "looped-bfs", "zb-h1",
                                "zb-h2")),
    "F = I = W": ((1.0, 1.0, 1.0), ("1f1b", "gpipe", "interleaved-1f1b", "looped-bfs", "zb-h1",
                                    "zb-h2", "zb-v")),
}
"""Where the closed forms are exact on equal stages (`TOLERANCE` bounds the others)."""


@pytest.mark.parametrize("shape", EXACT)
@pytest.mark.parametrize(("p", "m"), [(2, 8), (4, 8), (4, 16)])
def test_closed_form_equals_the_simulator_on_equal_stages(shape, p, m):
    (f, i, w), names = EXACT[shape]
    for name in names:
        spec = schedule_spec(name)
        v, code = spec.default_chunks, schedule_code(name)
        stages = p * v
        costs = StageCosts((f / v,) * stages, (i / v,) * stages, (w / v,) * stages,
                           (0.0,) * stages)
        result = simulate_schedule(generate(name, p, m, v), costs)
        simulated = result.staggered_step if spec.staggered else result.makespan
        closed = pipeline_time(np.array([code]), np.array([p]), np.array([m]), np.array([v]),
                               *_terms(f, i, w))[0]
        assert closed == pytest.approx(simulated), name


TOLERANCE = {"zb-h2": 0.06, "zb-v": 0.05, "dualpipe-v": 0.04}
"""Largest |closed form / simulated step - 1| on equal stages over the grid below; every other
schedule's closed form is exact there."""


@SPECS
def test_closed_form_follows_the_simulator_when_passes_differ_and_m_is_short(spec):
    """F, I, W unequal and m from p (the fewest the zero-bubble schedules take) to 3p: the
    warm-up of ZB-H2 / ZB-V with m < 2p - 1 and I > F cost what the generated orders cost (the
    papers' forms assume m >= 2p - 1 and F = I = W and were up to 34 % short)."""
    v = 2 if spec.takes_chunks else spec.default_chunks
    worst = 0.0
    for f, i, w in itertools.product((0.8, 1.2), (0.8, 1.6, 2.2), (0.5, 1.2)):
        for p in (2, 4, 8):
            for m in sorted({p, p + p // 2, 2 * p - 1, 3 * p}):
                if m < spec.min_microbatches_per_rank * p or (
                        spec.microbatches_multiple_of_ranks and m % p):
                    continue
                stages = p * v
                costs = StageCosts((f / v,) * stages, (i / v,) * stages, (w / v,) * stages,
                                   (0.0,) * stages)
                result = simulate_schedule(spec.generate(p, m, v), costs)
                simulated = result.staggered_step if spec.staggered else result.makespan
                closed = pipeline_time(np.array([schedule_code(spec.name)]), np.array([p]),
                                       np.array([m]), np.array([v]), *_terms(f, i, w))[0]
                worst = max(worst, abs(closed / simulated - 1))
    assert worst <= TOLERANCE.get(spec.name, 1e-9), (spec.name, worst)


@SPECS
def test_in_flight_matches_the_verifier_peak_on_rank_0(spec):
    """The closed-form peak (whole-rank micro-batches) bounds what the dry run measures."""
    p, m = 4, 16
    v = spec.default_chunks
    report = verify(generate(spec.name, p, m, v))
    closed = in_flight_microbatches(np.array([schedule_code(spec.name)]), np.array([p]),
                                    np.array([m]), np.array([v]))[0]
    assert report.peak_in_flight[0] / v <= closed + 1e-9


def test_looped_bfs_runs_one_chunk_as_torch_does():
    """torch's ScheduleLoopedBFS takes any number of local stages, so the registry and Plan
    both accept one chunk; torchtitan's multi-stage rule still refuses it at export."""
    assert schedule_spec("looped-bfs").allows_chunks(1)
    assert Plan(pp=2, schedule="looped-bfs", vpp=1).vpp == 1
    assert generate("looped-bfs", 2, 4, 1).num_stages == 2


def test_torchtitan_names_are_torch_schedule_classes():
    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    for spec in SCHEDULE_SPECS:
        if spec.torchtitan is not None:
            assert schedules.get_schedule_class(spec.torchtitan) is not None


def test_plan_fields_hold_their_resolved_defaults():
    plan = Plan(tp=2, dp=4, pp=2, schedule="interleaved-1f1b")
    assert (plan.sequence_parallel, plan.etp, plan.dp_shard, plan.vpp) == (True, 1, 4, 2)
    assert Plan().sequence_parallel is False
    explicit_none = Plan(tp=2, dp=4, sequence_parallel=None, etp=None, dp_shard=None, vpp=None)
    assert explicit_none == Plan(tp=2, dp=4)
    dumped = plan.model_dump(mode="json")
    assert set(dumped) == set(Plan.model_fields)
    assert Plan.model_validate(dumped) == plan
    assert not hasattr(plan, "sp") and not hasattr(plan, "expert_tp")
    assert not hasattr(plan, "shard_group")
