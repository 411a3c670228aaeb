"""The schedule IR: action text form, CSV files, the communication pass."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshplan.errors import MeshplanError
from meshplan.schedules import (
    SCHEDULE_NAMES,
    Action,
    ActionKind,
    Schedule,
    add_communication,
    compute_only,
    from_csv,
    generate,
    schedule_spec,
    to_csv,
    verify,
)

F, B, I, W = ActionKind.F, ActionKind.B, ActionKind.I, ActionKind.W  # noqa: E741
def small(name: str, p: int = 3, m: int = 6) -> Schedule:
    return generate(name, p, m, schedule_spec(name).default_chunks)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("2F0", Action(2, F, 0)),
        ("0B7", Action(0, B, 7)),
        ("1I3", Action(1, I, 3)),
        ("0W5", Action(0, W, 5)),
        ("12F103", Action(12, F, 103)),
        ("2SEND_F0", Action(2, ActionKind.SEND_F, 0)),
        ("2RECV_B3", Action(2, ActionKind.RECV_B, 3)),
        ("1RECV_F4", Action(1, ActionKind.RECV_F, 4)),
        ("3SEND_B1", Action(3, ActionKind.SEND_B, 1)),
    ],
)
def test_text_form_round_trips(text, action):
    assert str(action) == text
    assert repr(action) == text
    assert Action.parse(text) == action
    assert Action.parse(f" {text} ") == action


@given(st.integers(0, 10_000), st.sampled_from(list(ActionKind)), st.integers(0, 10_000))
def test_every_action_round_trips(stage, kind, microbatch):
    action = Action(stage, kind, microbatch)
    assert Action.parse(str(action)) == action


@pytest.mark.parametrize("text", ["", "F0", "2F", "2X0", "2f0", "2UNSHARD", "-1F0", "2F0x"])
def test_parse_rejects_malformed_text_with_one_line(text):
    with pytest.raises(MeshplanError, match="action=") as err:
        Action.parse(text)
    assert "\n" not in str(err.value)


def test_action_kinds_share_torch_letters():
    assert [k.value for k in ActionKind] == [
        "F", "B", "I", "W", "SEND_F", "RECV_F", "SEND_B", "RECV_B"
    ]  # fmt: skip
    assert Action(0, F, 0).is_compute and not Action(0, ActionKind.SEND_F, 0).is_compute


def test_schedule_is_a_mapping_of_rank_to_actions():
    s = generate("1f1b", 2, 2)
    assert list(s) == [0, 1] and len(s) == 2
    assert [str(a) for a in s[0]] == ["0F0", "0F1", "0B0", "0B1"]
    assert (s.num_ranks, s.num_stages, s.num_chunks, s.num_microbatches) == (2, 2, 1, 2)
    assert not s.has_communication


def test_csv_is_one_line_per_rank_of_comma_separated_actions():
    text = to_csv(generate("1f1b", 2, 2))
    assert text == "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n"


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("comms", [False, True])
def test_csv_round_trips(name, comms):
    s = small(name)
    if comms:
        s = add_communication(s)
    back = from_csv(to_csv(s), name=s.name)
    assert back == s


def test_csv_reader_skips_torch_idle_cells_and_infers_metadata():
    s = from_csv("0F0,,0B0\n,1F0,1B0\n")
    assert s.actions == {
        0: [Action(0, F, 0), Action(0, B, 0)],
        1: [Action(1, F, 0), Action(1, B, 0)],
    }
    assert s.stage_to_rank == (0, 1) and s.num_microbatches == 1
    verify(s)


def test_csv_reader_names_the_bad_cell():
    with pytest.raises(MeshplanError, match="0REDUCE_GRAD"):
        from_csv("0F0,0B0,0REDUCE_GRAD\n")


def test_infer_rejects_a_stage_with_no_actions():
    with pytest.raises(MeshplanError, match="stages"):
        Schedule.infer({0: [Action(0, F, 0)], 1: [Action(2, F, 0)]})


def test_communication_surrounds_compute_with_sends_and_receives():
    s = add_communication(generate("1f1b", 2, 1))
    assert [str(a) for a in s[0]] == ["0F0", "0SEND_F0", "0RECV_B0", "0B0"]
    assert [str(a) for a in s[1]] == ["1RECV_F0", "1F0", "1B0", "1SEND_B0"]


@pytest.mark.parametrize("name", ["zb-v", "dualpipe-v"])
def test_communication_skips_the_turn_of_a_v(name):
    p = 3
    s = add_communication(small(name, p, 2 * p))
    texts = {str(a) for acts in s.values() for a in acts}
    assert f"{p - 1}SEND_F0" not in texts and f"{p}RECV_F0" not in texts
    assert f"{p}SEND_B0" not in texts and f"{p - 1}RECV_B0" not in texts
    assert f"{p - 2}SEND_F0" in texts and f"{p + 1}SEND_B0" in texts


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_communication_keeps_the_dry_run_timing(name):
    s = small(name)
    lowered = add_communication(s)
    assert compute_only(lowered) == s
    assert verify(lowered).num_steps == verify(s).num_steps


def test_communication_pass_refuses_a_lowered_schedule():
    s = add_communication(generate("1f1b", 2, 2))
    with pytest.raises(MeshplanError, match="already"):
        add_communication(s)
