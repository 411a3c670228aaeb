"""Every generated schedule passes the verifier; breaking one never goes unnoticed."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meshplan.errors import MeshplanError
from meshplan.schedules import (
    SCHEDULE_NAMES,
    ActionKind,
    Schedule,
    ScheduleError,
    add_communication,
    from_csv,
    generate,
    schedule_spec,
    to_csv,
    verify,
)

FAST = settings(max_examples=50, deadline=None)


@st.composite
def legal(draw: st.DrawFn, name: str) -> tuple[int, int, int]:
    """(p, m, v) the schedule `name` accepts, p <= 8, m <= 32."""
    p = draw(st.integers(1, 8))
    if name == "interleaved-1f1b":
        return p, p * draw(st.integers(1, 32 // p)), draw(st.integers(2, 4))
    if name == "looped-bfs":
        return p, draw(st.integers(1, 32)), draw(st.integers(1, 4))
    if name in ("zb-v", "dualpipe-v"):
        low = 2 * p if name == "dualpipe-v" else 1
        return p, draw(st.integers(low, max(low, 32))), 2
    return p, draw(st.integers(1, 32)), 1


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@FAST
@given(data=st.data())
def test_every_schedule_verifies(name, data):
    p, m, v = data.draw(legal(name))
    s = generate(name, p, m, v)
    report = verify(s)
    assert (s.num_ranks, s.num_stages, s.num_microbatches) == (p, p * v, m)
    assert report.num_steps >= max(report.busy_steps)
    per_stage = sum(1 for acts in s.values() for a in acts if a.kind is ActionKind.F)
    assert per_stage == p * v * m
    assert report.peak_in_flight[0] <= v * m


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@FAST
@given(data=st.data())
def test_lowering_and_csv_keep_the_schedule(name, data):
    p, m, v = data.draw(legal(name))
    s = generate(name, p, m, v)
    lowered = add_communication(s)
    assert verify(lowered).num_steps == verify(s).num_steps
    assert from_csv(to_csv(lowered), name=name) == lowered


def _legal_schedule(name: str, p: int, m: int):
    """A generated schedule, skipping (p, m) the schedule does not accept."""
    v = schedule_spec(name).default_chunks
    assume(name != "interleaved-1f1b" or m % p == 0)
    assume(name != "dualpipe-v" or m >= 2 * p)
    return generate(name, p, m, v)


@FAST
@given(
    name=st.sampled_from(SCHEDULE_NAMES),
    p=st.integers(1, 8),
    m=st.integers(1, 32),
    drop=st.integers(0, 10**6),
)
def test_dropping_any_compute_action_is_caught(name, p, m, drop):
    s = _legal_schedule(name, p, m)
    rank = drop % p
    acts = list(s[rank])
    del acts[drop % len(acts)]
    with pytest.raises(ScheduleError, match="<-- ERROR"):
        verify(s.with_actions({**s.actions, rank: acts}))


@FAST
@given(
    name=st.sampled_from(SCHEDULE_NAMES),
    p=st.integers(1, 4),
    m=st.integers(2, 12),
    at=st.integers(0, 10**6),
)
def test_moving_a_backward_before_its_forward_is_caught(name, p, m, at):
    s = _legal_schedule(name, p, m)
    rank = at % p
    acts = list(s[rank])
    backwards = [i for i, a in enumerate(acts) if a.kind in (ActionKind.B, ActionKind.I)]
    moved = acts.pop(backwards[at % len(backwards)])
    acts.insert(0, moved)
    with pytest.raises(ScheduleError, match=f"{moved}: needs"):
        verify(s.with_actions({**s.actions, rank: acts}))


@FAST
@given(
    name=st.text(max_size=20) | st.sampled_from(SCHEDULE_NAMES),
    p=st.integers(-2, 10),
    m=st.integers(-2, 40),
    v=st.integers(-1, 5),
)
def test_any_request_gives_a_verified_schedule_or_one_line_error(name, p, m, v):
    try:
        s = generate(name, p, m, v)
    except MeshplanError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(s, Schedule)
    verify(s)
