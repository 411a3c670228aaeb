"""The schedule IR: per-rank lists of `Action`s, their text form, CSV files and the comm pass.

A pipeline schedule is data, not code: one ordered list of actions per rank, as in
torch.distributed.pipelining (`_Action`, `pipeline_order`). Keeping it as plain data lets the
same list feed the verifier, the simulator, the exporters and the executor, so there is one
source of truth per schedule. The text form (`2F0`, `1SEND_F3`) and the CSV layout (one row per
rank, one cell per action) follow torch's so that its `_load_csv` can read files written here.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import NamedTuple

from meshplan.errors import MeshplanError, invalid
from meshplan.schedules._gc import gc_paused


class ActionKind(StrEnum):
    """What an action does. Values are torch's `_ComputationType` letters, so text is shared."""

    F = "F"
    """Forward of one microbatch through one stage."""
    B = "B"
    """Full backward (input and weight gradients together)."""
    I = "I"  # noqa: E741 (the name is the paper's and torch's)
    """Backward for inputs only; sends the gradient upstream (zero-bubble split)."""
    W = "W"
    """Backward for weights only; needs the matching I first, nobody waits for it."""
    SEND_F = "SEND_F"
    """Send stage s's forward output to stage s+1."""
    RECV_F = "RECV_F"
    """Receive stage s's forward input from stage s-1."""
    SEND_B = "SEND_B"
    """Send stage s's input gradient to stage s-1."""
    RECV_B = "RECV_B"
    """Receive stage s's output gradient from stage s+1."""


F, B, I, W = ActionKind.F, ActionKind.B, ActionKind.I, ActionKind.W  # noqa: E741
SEND_F, RECV_F = ActionKind.SEND_F, ActionKind.RECV_F
SEND_B, RECV_B = ActionKind.SEND_B, ActionKind.RECV_B
COMPUTE_KINDS = frozenset({F, B, I, W})
COMM_KINDS = frozenset({SEND_F, RECV_F, SEND_B, RECV_B})

# Longest alternatives first so `SEND_F` is not read as stage + `S...`; anchored both ends.
_ACTION_RE = re.compile(r"(\d+)(SEND_F|RECV_F|SEND_B|RECV_B|F|B|I|W)(\d+)")


class Action(NamedTuple):
    """One step of one rank: `kind` on `microbatch` at pipeline `stage` (all 0-based).

    A NamedTuple (not a dataclass) because schedules hold hundreds of thousands of these and
    the simulator hashes and unpacks them in its inner loop.
    """

    stage: int
    kind: ActionKind
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind.value}{self.microbatch}"

    def __repr__(self) -> str:
        return str(self)

    @property
    def is_compute(self) -> bool:
        return self.kind in COMPUTE_KINDS

    @classmethod
    def parse(cls, text: str) -> Action:
        """Inverse of `str()`: `"2F0"` -> `Action(2, F, 0)`, `"1RECV_B3"` -> (1, RECV_B, 3)."""
        match = _ACTION_RE.fullmatch(text.strip())
        if match is None:
            raise invalid(
                "action",
                text,
                "expected <stage><kind><microbatch> with kind one of "
                + ", ".join(k.value for k in ActionKind)
                + ", e.g. 2F0 or 1SEND_F3",
            )
        stage, kind, microbatch = match.groups()
        return cls(int(stage), ActionKind(kind), int(microbatch))


_new_action = functools.partial(tuple.__new__, Action)


def as_actions(rows: Iterable[tuple[int, ActionKind, int]]) -> list[Action]:
    """Bulk `Action` construction from (stage, kind, microbatch) tuples; about twice as fast
    as calling `Action` per item, which matters for 10^5-action schedules."""
    return list(map(_new_action, rows))


def make_actions(
    stages: Iterable[int], kind: ActionKind, microbatches: Iterable[int]
) -> list[Action]:
    """Actions of one kind, pairing `stages` with `microbatches` item by item."""
    return as_actions(zip(stages, itertools.repeat(kind), microbatches))


RankOrders = dict[int, list[Action]]
"""rank -> that rank's actions in execution order (torch's `pipeline_order`, without `None`)."""


@dataclass(frozen=True)
class Schedule(Mapping[int, list[Action]]):
    """Per-rank action lists plus the metadata every consumer needs to interpret them.

    Behaves as the mapping `rank -> list[Action]`; treat the lists as read-only.
    """

    actions: RankOrders
    """rank -> ordered actions; ranks are 0..num_ranks-1."""
    num_microbatches: int
    stage_to_rank: tuple[int, ...]
    """Rank holding each stage, indexed by stage."""
    name: str = "custom"
    """Schedule name (a CLI name from the registry, or "custom")."""

    def __getitem__(self, rank: int) -> list[Action]:
        return self.actions[rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_ranks(self) -> int:
        return len(self.actions)

    @property
    def num_stages(self) -> int:
        return len(self.stage_to_rank)

    @property
    def num_chunks(self) -> int:
        """Stages (model chunks) per rank."""
        return self.num_stages // max(self.num_ranks, 1)

    @property
    def has_communication(self) -> bool:
        kinds = map(itemgetter(1), itertools.chain.from_iterable(self.actions.values()))
        return not COMM_KINDS.isdisjoint(kinds)

    def with_actions(self, actions: RankOrders) -> Schedule:
        """The same schedule metadata over new action lists (for IR passes)."""
        return dataclasses.replace(self, actions=actions)

    @classmethod
    def infer(
        cls, actions: RankOrders, *, num_microbatches: int | None = None, name: str = "custom"
    ) -> Schedule:
        """Build a schedule from bare action lists, reading stages and ranks off the actions.

        Each stage goes to the first rank it appears on; `verify` reports any later conflict.
        """
        owner: dict[int, int] = {}
        for rank in sorted(actions):
            for action in actions[rank]:
                owner.setdefault(action.stage, rank)
        num_stages = max(owner, default=-1) + 1
        missing = [s for s in range(num_stages) if s not in owner]
        if missing:
            raise invalid("stages", missing, "every stage below the highest needs an action")
        if num_microbatches is None:
            num_microbatches = 1 + max(
                (a.microbatch for acts in actions.values() for a in acts), default=-1
            )
        return cls(actions, num_microbatches, tuple(owner[s] for s in range(num_stages)), name)


def to_csv(schedule: Mapping[int, Sequence[Action]]) -> str:
    """One line per rank (rank 0 first), actions separated by commas: torch's CSV layout."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for rank in sorted(schedule):
        writer.writerow([str(a) for a in schedule[rank]])
    return out.getvalue()


@gc_paused
def from_csv(text: str, *, num_microbatches: int | None = None, name: str = "custom") -> Schedule:
    """Read `to_csv` output (or a torch CSV dump); empty cells (torch's idle slots) are dropped.

    Line i is rank i. Stages, ranks and the microbatch count are inferred from the actions
    unless `num_microbatches` is given.
    """
    rows = list(csv.reader(io.StringIO(text)))
    actions = {rank: [Action.parse(c) for c in row if c.strip()] for rank, row in enumerate(rows)}
    if not actions:
        raise invalid("csv", text[:40], "needs at least one line (one line per rank)")
    return Schedule.infer(actions, num_microbatches=num_microbatches, name=name)


@gc_paused
def add_communication(schedule: Schedule, stage_to_rank: Sequence[int] | None = None) -> Schedule:
    """Lower a compute-only schedule: add SEND/RECV actions between stages on different ranks.

    Stage s's F output goes to s+1 and its B/I output (the input gradient) to s-1. Each SEND
    goes right after the compute that produces it, and each RECV right before the compute
    that consumes it: the order torch's `_defer_recv_ops` pass produces, without its
    rank-parity reordering (that works around platforms whose sends block). Boundaries
    inside one rank (the turn of a V-shaped schedule) need no messages and get none.
    """
    if schedule.has_communication:
        raise MeshplanError("add_communication: schedule already has SEND/RECV actions")
    owner = tuple(stage_to_rank) if stage_to_rank is not None else schedule.stage_to_rank
    last = len(owner) - 1
    lowered: RankOrders = {}
    for rank, acts in schedule.actions.items():
        out: list[Action] = []
        for action in acts:
            stage, kind, mb = action
            if kind is F:
                if stage > 0 and owner[stage - 1] != rank:
                    out.append(Action(stage, RECV_F, mb))
                out.append(action)
                if stage < last and owner[stage + 1] != rank:
                    out.append(Action(stage, SEND_F, mb))
            elif kind is B or kind is I:
                if stage < last and owner[stage + 1] != rank:
                    out.append(Action(stage, RECV_B, mb))
                out.append(action)
                if stage > 0 and owner[stage - 1] != rank:
                    out.append(Action(stage, SEND_B, mb))
            else:
                out.append(action)
        lowered[rank] = out
    return dataclasses.replace(schedule, actions=lowered, stage_to_rank=owner)


def compute_only(schedule: Schedule) -> Schedule:
    """Drop communication actions (the inverse of `add_communication`)."""
    return schedule.with_actions(
        {r: [a for a in acts if a.kind in COMPUTE_KINDS] for r, acts in schedule.actions.items()}
    )
