"""Generators against small cases written out by hand from the papers, and the verifier
against deliberately broken schedules."""

from __future__ import annotations

import pytest

from meshplan.errors import MeshplanError
from meshplan.schedules import (
    SCHEDULE_NAMES,
    Action,
    ActionKind,
    Schedule,
    ScheduleError,
    add_communication,
    generate,
    schedule_spec,
    stage_to_rank,
    verify,
)

F, B, I, W = ActionKind.F, ActionKind.B, ActionKind.I, ActionKind.W  # noqa: E741


def orders(schedule: Schedule) -> dict[int, str]:
    return {r: " ".join(str(a) for a in acts) for r, acts in schedule.items()}


def on(stage: int, text: str) -> str:
    """'F0 B0' on stage 2 -> '2F0 2B0': the figures label actions without their stage."""
    return " ".join(f"{stage}{a}" for a in text.split())


def test_1f1b_p4_m8_matches_pipedream_flush():
    """Narayanan et al. 2021 (PipeDream-Flush); also Fig. 2 of the zero-bubble paper."""
    assert orders(generate("1f1b", 4, 8)) == {
        0: on(0, "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7"),
        1: on(1, "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7"),
        2: on(2, "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7"),
        3: on(3, "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7"),
    }


def test_1f1b_with_fewer_microbatches_than_ranks_caps_the_warmup():
    assert orders(generate("1f1b", 4, 2))[0] == on(0, "F0 F1 B0 B1")


def test_gpipe_runs_all_forwards_then_all_backwards():
    assert orders(generate("gpipe", 2, 3)) == {
        0: on(0, "F0 F1 F2 B0 B1 B2"),
        1: on(1, "F0 F1 F2 B0 B1 B2"),
    }


def test_interleaved_p2_v2_m4_follows_megatron():
    """Megatron-LM's rule: warm-up (v-1)p + 2(p-1-r) virtual microbatches; chunk of forward
    k is (k // p) % v; backwards walk the chunks in reverse. Stage s on rank s % p."""
    assert orders(generate("interleaved-1f1b", 2, 4, 2)) == {
        0: "0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3",
        1: "1F0 1F1 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 1B2 1B3",
    }


def test_looped_bfs_runs_each_chunk_breadth_first():
    assert orders(generate("looped-bfs", 2, 2, 2))[0] == "0F0 0F1 2F0 2F1 2B1 2B0 0B1 0B0"


def test_zb_h1_p4_m8_matches_figure_3_top():
    """Qi et al. 2024, Fig. 3 (top), 0-based; B there is our I (input gradient)."""
    assert orders(generate("zb-h1", 4, 8)) == {
        0: on(0, "F0 F1 F2 F3 I0 W0 F4 I1 W1 F5 I2 W2 F6 I3 W3 F7 I4 W4 I5 W5 I6 W6 I7 W7"),
        1: on(1, "F0 F1 F2 I0 F3 I1 W0 F4 I2 W1 F5 I3 W2 F6 I4 W3 F7 I5 W4 I6 W5 I7 W6 W7"),
        2: on(2, "F0 F1 I0 F2 I1 F3 I2 W0 F4 I3 W1 F5 I4 W2 F6 I5 W3 F7 I6 W4 I7 W5 W6 W7"),
        3: on(3, "F0 I0 F1 I1 F2 I2 F3 I3 W0 F4 I4 W1 F5 I5 W2 F6 I6 W3 F7 I7 W4 W5 W6 W7"),
    }


def test_zb_h2_p4_m8_matches_figure_3_bottom():
    """Device 1 runs 7 forwards before its first backward; device 4 holds every W back
    until the forwards run out."""
    got = orders(generate("zb-h2", 4, 8))
    assert got[0] == on(
        0, "F0 F1 F2 F3 F4 F5 F6 I0 W0 F7 I1 W1 I2 W2 I3 W3 I4 W4 I5 W5 I6 W6 I7 W7"
    )
    assert got[3] == on(
        3, "F0 I0 F1 I1 F2 I2 F3 I3 F4 I4 F5 I5 F6 I6 W0 F7 I7 W1 W2 W3 W4 W5 W6 W7"
    )


@pytest.mark.parametrize("name", ["zb-v", "dualpipe-v"])
def test_v_shaped_schedules_hold_stage_r_and_its_mirror(name):
    p, m = 4, 8
    s = generate(name, p, m, 2)
    assert s.stage_to_rank == (0, 1, 2, 3, 3, 2, 1, 0)
    for rank, acts in s.items():
        assert {a.stage for a in acts} == {rank, 2 * p - 1 - rank}
        assert sum(a.kind is F for a in acts) == 2 * m


def test_stage_to_rank_loops_or_folds():
    assert stage_to_rank("interleaved-1f1b", 3, 2) == (0, 1, 2, 0, 1, 2)
    assert stage_to_rank("looped-bfs", 2, 3) == (0, 1, 0, 1, 0, 1)
    assert stage_to_rank("1f1b", 3) == (0, 1, 2)
    assert stage_to_rank("zb-v", 3, 2) == (0, 1, 2, 2, 1, 0)
    assert stage_to_rank("dualpipe-v", 2, 2) == (0, 1, 1, 0)


@pytest.mark.parametrize(
    ("name", "v", "steps", "peak"),
    [
        ("gpipe", 1, lambda p, m, v: 2 * (m + p - 1), lambda p, m, v: m),
        ("1f1b", 1, lambda p, m, v: 2 * (m + p - 1), lambda p, m, v: p),
        ("interleaved-1f1b", 2, lambda p, m, v: 2 * (v * m + p - 1), lambda p, m, v: v * p + p - 1),
        ("interleaved-1f1b", 3, lambda p, m, v: 2 * (v * m + p - 1), lambda p, m, v: v * p + p - 1),
        ("looped-bfs", 2, lambda p, m, v: 2 * (v * m + p - 1), lambda p, m, v: v * m),
        ("zb-h1", 1, lambda p, m, v: 3 * m + p - 1, lambda p, m, v: p),
        ("zb-h2", 1, lambda p, m, v: 3 * m + p - 1, lambda p, m, v: 2 * p - 1),
        ("zb-v", 2, lambda p, m, v: 6 * m + p - 1, lambda p, m, v: 2 * p),
        ("dualpipe-v", 2, None, lambda p, m, v: 2 * p + 1),
    ],
)
@pytest.mark.parametrize(("p", "m"), [(2, 8), (4, 8), (4, 16), (8, 32)])
def test_unit_step_makespan_and_peak_match_the_closed_forms(name, v, steps, peak, p, m):
    """The forms in the table of `meshplan.schedules` (peak in stage-microbatches, rank 0)."""
    report = verify(generate(name, p, m, v))
    if steps is not None:
        assert report.num_steps == steps(p, m, v)
    assert report.peak_in_flight[0] == peak(p, m, v)


@pytest.mark.parametrize(("name", "v", "work"), [("zb-h2", 1, 3), ("zb-v", 2, 6)])
@pytest.mark.parametrize(("p", "m"), [(2, 3), (4, 7), (4, 8), (6, 20)])
def test_zero_bubble_schedules_idle_only_before_and_after(name, v, work, p, m):
    """The parallelogram: with m >= 2p-1, rank r starts at step r and then never waits."""
    report = verify(generate(name, p, m, v))
    assert report.busy_steps == (work * m,) * p
    assert report.interior_idle == (0,) * p
    assert report.num_steps == work * m + p - 1


def test_zb_h1_keeps_a_bubble_inside_the_ranks():
    assert verify(generate("zb-h1", 4, 8)).interior_idle == (3, 2, 1, 0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("1fb1", 4, 8), "unknown schedule '1fb1'; did you mean 1f1b"),
        (("1f1b", 4, 8, 2), "num_chunks=2: 1f1b runs exactly 1 chunk"),
        (("zb-v", 4, 8, 1), "num_chunks=1: zb-v runs exactly 2 chunk"),
        (("interleaved-1f1b", 4, 8, 1), "num_chunks=1: interleaved-1f1b needs an integer >= 2"),
        (("interleaved-1f1b", 4, 6, 2), "num_microbatches=6: .*multiple of num_ranks=4"),
        (("interleaved-1f1b", 4, 2, 2), "num_microbatches=2"),
        (("dualpipe-v", 4, 7, 2), "num_microbatches=7: dualpipe-v needs an integer >= 8"),
        (("gpipe", 0, 4), "num_ranks=0"),
        (("1f1b", 4, 0), "num_microbatches=0"),
        (("zb-h1", 2.5, 4), "num_ranks=2.5"),
    ],
)
def test_generate_rejects_bad_input_in_one_line(args, match):
    with pytest.raises(MeshplanError, match=match) as err:
        generate(*args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_every_schedule_runs_on_one_rank(name):
    verify(generate(name, 1, 4, schedule_spec(name).default_chunks))


# The verifier on broken schedules ------------------------------------------------------


def broken(actions: dict[int, list[str]], m: int, stage_to_rank: tuple[int, ...]) -> Schedule:
    return Schedule({r: [Action.parse(a) for a in acts] for r, acts in actions.items()}, m,
                    stage_to_rank, "broken")  # fmt: skip


def verify_error(schedule: Schedule) -> str:
    with pytest.raises(ScheduleError) as err:
        verify(schedule)
    text = str(err.value)
    assert isinstance(err.value, MeshplanError)
    header = ["step", *(word for r in range(schedule.num_ranks) for word in ("rank", str(r)))]
    assert text.splitlines()[1].split() == header
    assert text.count("<-- ERROR") == 1
    return text


def test_verifier_reports_a_deadlock_with_the_grid():
    """Rank 1 waits for 0F1 before it does 1B0, which rank 0 needs before it runs 0F1."""
    text = verify_error(
        broken({0: ["0F0", "0B0", "0F1", "0B1"], 1: ["1F1", "1F0", "1B0", "1B1"]}, 2, (0, 1))
    )
    assert "deadlock: rank 0 0B0 waits for 1B0 on rank 1; rank 1 1F1 waits for 0F1" in text
    assert "0     0F0     [1F1]  <-- ERROR" in text


def test_verifier_reports_a_backward_before_its_forward():
    text = verify_error(broken({0: ["0B0", "0F0"]}, 1, (0,)))
    assert "rank 0 step 0: 0B0: needs 0F0 earlier on rank 0" in text
    assert "[0B0]  <-- ERROR" in text


def test_verifier_reports_a_weight_gradient_without_its_input_gradient():
    text = verify_error(broken({0: ["0F0", "0B0", "0W0"]}, 1, (0,)))
    assert "0W0: needs 0I0 earlier" in text


def test_verifier_reports_a_missing_weight_gradient():
    s = generate("zb-h1", 3, 4)
    text = verify_error(s.with_actions({r: [a for a in s[r] if str(a) != "1W2"] for r in s}))
    assert "1I2 has no matching W" in text


def test_verifier_reports_a_missing_backward():
    text = verify_error(broken({0: ["0F0", "0F1", "0B0"]}, 2, (0,)))
    assert "0B/I1 is missing" in text


def test_verifier_reports_a_duplicate_and_a_double_backward():
    assert "may run once" in verify_error(broken({0: ["0F0", "0F0", "0B0"]}, 1, (0,)))
    assert "may run once" in verify_error(broken({0: ["0F0", "0I0", "0B0", "0W0"]}, 1, (0,)))


def test_verifier_reports_actions_on_the_wrong_rank_or_microbatch():
    assert "stage 1 is on rank 1" in verify_error(broken({0: ["0F0", "1F0"], 1: []}, 1, (0, 1)))
    assert "microbatch must be in 0..0" in verify_error(broken({0: ["0F1"]}, 1, (0,)))
    assert "no neighbouring stage" in verify_error(broken({0: ["0F0", "0SEND_F0"]}, 1, (0,)))


def test_verifier_reports_a_dropped_send_as_an_unmatched_receive():
    s = add_communication(generate("interleaved-1f1b", 2, 4, 2))
    text = verify_error(s.with_actions({r: [a for a in s[r] if str(a) != "0SEND_F2"] for r in s}))
    assert "1RECV_F2 waits for 0SEND_F2 on rank 0 (not in the schedule)" in text


def test_verifier_reports_a_dropped_receive_and_an_unreceived_send():
    s = add_communication(generate("1f1b", 2, 2))
    no_recv = s.with_actions({r: [a for a in s[r] if str(a) != "1RECV_F1"] for r in s})
    assert "1F1: needs 1RECV_F1 earlier on rank 1" in verify_error(no_recv)
    extra = dict(s.actions)
    extra[0] = [*s[0], Action.parse("0SEND_F0")]
    assert "may run once" in verify_error(s.with_actions(extra))


def test_verifier_reports_a_send_nobody_receives():
    """At the turn of a V the next stage is local, so nothing waits for this message."""
    s = add_communication(generate("zb-v", 2, 4, 2))
    acts = dict(s.actions)
    turn = acts[1].index(Action(1, F, 0)) + 1
    acts[1] = [*acts[1][:turn], Action.parse("1SEND_F0"), *acts[1][turn:]]
    assert "1SEND_F0 has no matching RECV_F" in verify_error(s.with_actions(acts))


def test_verifier_report_counts_steps_and_actions():
    report = verify(generate("1f1b", 4, 8))
    assert report.num_steps == 22 and report.num_actions == 64
    assert report.busy_steps == (16, 16, 16, 16)
    assert report.peak_in_flight == (4, 3, 2, 1)
    assert report.bubble_fraction == pytest.approx(3 / 11)
