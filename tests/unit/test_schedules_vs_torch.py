"""Our generators against torch.distributed.pipelining's own per-rank orders (torch 2.13).

torch builds a schedule's order in the constructor of its runtime class, so we build each
one from stub stages (plain objects with the attributes the constructors read; no process
group, no model) and compare the compute actions rank by rank, ignoring torch's idle slots
and its REDUCE_GRAD bookkeeping. Where torch writes an overlapped pair (DualPipeV's
OVERLAP_F_B), its sub-actions are compared in order: our IR writes the pair as F then B.

Known, deliberate differences (each asserted below, not skipped):
- 1f1b: torch's `Schedule1F1B._get_pipeline_order` numbers the last rank's forwards from 1
  (1F1, ..., 1F{m}: it lists microbatch m, which does not exist, and never 0). That order
  only feeds torch's visualizer; its runtime loop runs F0 first. We compare the other ranks
  exactly and the last rank after shifting torch's forward numbers down by one.
- zb-h1: torch's `ScheduleInterleavedZeroBubble` with one stage per rank is the same
  algorithm; it refuses m not a multiple of max(1, m // p) (a rule of its interleaved
  variant), so we compare where it accepts m.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from meshplan.schedules import add_communication, generate, to_csv

pytestmark = pytest.mark.torch
torch_schedules = pytest.importorskip("torch.distributed.pipelining.schedules")

SIZES = [(p, m) for p in (1, 2, 3, 4, 6) for m in (1, 2, 3, 4, 5, 8, 12, 16, 24)]
MULTI = {
    "interleaved-1f1b": "ScheduleInterleaved1F1B",
    "looped-bfs": "ScheduleLoopedBFS",
    "zb-h1": "ScheduleInterleavedZeroBubble",
    "zb-v": "ScheduleZBVZeroBubble",
    "dualpipe-v": "ScheduleDualPipeV",
}


def stub_stage(index: int, num_stages: int, num_ranks: int) -> SimpleNamespace:
    return SimpleNamespace(
        stage_index=index, num_stages=num_stages, group_size=num_ranks, group_rank=0, submod=None
    )


def torch_order(name: str, p: int, m: int, v: int) -> dict[int, list[str]]:
    """torch's compute order per rank, as action strings (rank 0's view; all ranks agree)."""
    if name in ("gpipe", "1f1b"):
        cls = torch_schedules.ScheduleGPipe if name == "gpipe" else torch_schedules.Schedule1F1B
        schedule = cls(stub_stage(0, p, p), m)
    else:
        local = [0, 2 * p - 1] if v == 2 and name in ("zb-v", "dualpipe-v") else range(0, p * v, p)
        stages = [stub_stage(s, p * v, p) for s in local]
        schedule = getattr(torch_schedules, MULTI[name])(stages, m)
    return {rank: _compute(actions) for rank, actions in schedule.pipeline_order.items()}


def _compute(actions: list) -> list[str]:
    out = []
    for action in actions:
        if action is None:
            continue
        for sub in action.sub_actions or (action,):
            if sub.computation_type.value in ("F", "B", "I", "W"):
                out.append(str(sub))
    return out


def ours(name: str, p: int, m: int, v: int) -> dict[int, list[str]]:
    return {r: [str(a) for a in acts] for r, acts in generate(name, p, m, v).items()}


@pytest.mark.parametrize(("p", "m"), SIZES)
@pytest.mark.parametrize(
    ("name", "v"),
    [("gpipe", 1), ("interleaved-1f1b", 2), ("interleaved-1f1b", 3), ("looped-bfs", 2),
     ("looped-bfs", 3), ("zb-v", 2), ("dualpipe-v", 2)],
)  # fmt: skip
def test_same_order_as_torch(name, v, p, m):
    if name == "interleaved-1f1b" and m % p:
        pytest.skip("m must be a multiple of p (Megatron rule; torch relaxes it)")
    if name == "dualpipe-v" and m < 2 * p:
        pytest.skip("DualPipeV needs m >= 2p (torch and DeepSeek)")
    assert ours(name, p, m, v) == torch_order(name, p, m, v)


@pytest.mark.parametrize(("p", "m"), SIZES)
def test_zb_h1_is_torch_interleaved_zero_bubble_on_one_stage(p, m):
    if m % max(1, m // p):
        pytest.skip("torch's interleaved zero-bubble refuses this m")
    assert ours("zb-h1", p, m, 1) == torch_order("zb-h1", p, m, 1)


@pytest.mark.parametrize(("p", "m"), [(p, m) for p, m in SIZES if m >= p])
def test_1f1b_matches_torch_except_its_last_rank_numbering(p, m):
    theirs, mine = torch_order("1f1b", p, m, 1), ours("1f1b", p, m, 1)
    for rank in range(p - 1):
        assert mine[rank] == theirs[rank]
    last = p - 1
    shifted = [a if "B" in a else f"{last}F{int(a.split('F')[1]) - 1}" for a in theirs[last]]
    assert mine[last] == shifted
    assert theirs[last][0] == f"{last}F1" and f"{last}F{m}" in theirs[last]  # torch's slip


@pytest.mark.parametrize(
    ("name", "v"),
    [("1f1b", 1), ("interleaved-1f1b", 2), ("looped-bfs", 2), ("zb-h1", 1), ("zb-h2", 1),
     ("zb-v", 2), ("dualpipe-v", 2), ("gpipe", 1)],
)  # fmt: skip
def test_torch_reads_our_csv_and_its_dry_run_accepts_our_communication(name, v):
    """Our text is torch's `_Action` text, and torch's own simulator finds no deadlock in the
    SEND/RECV placement of `add_communication`."""
    p, m = 4, 8
    lowered = add_communication(generate(name, p, m, v))
    rows = to_csv(lowered).splitlines()
    parsed = {r: [torch_schedules._Action.from_str(c) for c in row.split(",")] for r, row in
              enumerate(rows)}  # fmt: skip
    assert {r: [str(a) for a in acts] for r, acts in parsed.items()} == {
        r: [str(a) for a in acts] for r, acts in lowered.items()
    }
    torch_schedules._simulate_comms_compute(
        parsed, lambda s: lowered.stage_to_rank[s], lowered.num_stages
    )
