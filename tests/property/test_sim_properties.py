"""Simulator invariants over random schedules and stage costs (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshplan.schedules.registry import generate
from meshplan.sim.engine import StageCosts, simulate_schedule

NAMES = ["gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zb-h2", "zb-v",
         "dualpipe-v"]


@st.composite
def cases(draw):
    name = draw(st.sampled_from(NAMES))
    p = draw(st.integers(2, 6))
    v = 2 if name in ("zb-v", "dualpipe-v") else (draw(st.integers(2, 3)) if name in (
        "interleaved-1f1b", "looped-bfs") else 1)
    m = p * draw(st.integers(1, 4))
    if name == "dualpipe-v":
        m = max(m, 2 * p)
    s = generate(name, p, m, v)
    S = s.num_stages
    dur = st.floats(0.1, 3.0)
    costs = StageCosts(tuple(draw(dur) for _ in range(S)), tuple(draw(dur) for _ in range(S)),
                       tuple(draw(dur) for _ in range(S)), tuple(1.0 for _ in range(S)),
                       p2p_time=draw(st.floats(0, 0.5)))
    return s, costs


@settings(max_examples=60, deadline=None)
@given(cases())
def test_step_never_below_the_busiest_rank_and_deterministic(case):
    schedule, costs = case
    a = simulate_schedule(schedule, costs)
    b = simulate_schedule(schedule, costs)
    assert a.makespan == b.makespan and a.busy == b.busy
    assert a.makespan >= max(a.busy) - 1e-9
    assert 0 <= a.bubble_fraction < 1
    assert all(x >= 0 for x in a.peak_activation_bytes)
