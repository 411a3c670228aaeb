"""Helpers shared by the schedule generators: stage placement, size checks, action emitters."""

from __future__ import annotations

from collections import Counter, deque

from meshplan.errors import invalid
from meshplan.schedules.ir import B, I, W, Action, ActionKind


def loop_stage_to_rank(num_ranks: int, num_chunks: int) -> tuple[int, ...]:
    """Looped placement (Megatron interleaving, BFS): stage s lives on rank s % p."""
    return tuple(s % num_ranks for s in range(num_ranks * num_chunks))


def v_stage_to_rank(num_ranks: int) -> tuple[int, ...]:
    """V placement (ZB-V, DualPipeV): rank r holds stages r and 2p-1-r, so the turn is local."""
    p = num_ranks
    return tuple(s if s < p else 2 * p - 1 - s for s in range(2 * p))


def check_sizes(name: str, num_ranks: int, num_microbatches: int, min_microbatches: int = 1,
                why: str = "") -> None:
    """Raise the standard one-line error for a rank or microbatch count a schedule cannot take."""
    if not isinstance(num_ranks, int) or num_ranks < 1:
        raise invalid("num_ranks", num_ranks, "must be an integer >= 1")
    if not isinstance(num_microbatches, int) or num_microbatches < min_microbatches:
        rule = f"{name} needs an integer >= {min_microbatches}" + (f" ({why})" if why else "")
        raise invalid("num_microbatches", num_microbatches, rule)


class Emitter:
    """Appends actions to one rank's list, numbering microbatches per (stage, kind) in order.

    Hand-written schedules (ZB-V, DualPipeV) are phrased as "do a forward of chunk 0" rather
    than "forward microbatch 5 of stage 3"; the counters supply the microbatch. `B` counts as
    both the `I` and the `W` of its microbatch, and each `I` queues its `W` for `pop_w`.
    """

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.count: Counter[tuple[int, ActionKind]] = Counter()
        self.pending_w: deque[Action] = deque()

    def __call__(self, stage: int, kind: ActionKind) -> None:
        key = (stage, I if kind is B else kind)
        mb = self.count[key]
        self.count[key] = mb + 1
        if kind is B:
            self.count[stage, W] += 1
        elif kind is I:
            self.pending_w.append(Action(stage, W, mb))
        self.actions.append(Action(stage, kind, mb))

    def repeat(self, times: int, *steps: tuple[int, ActionKind]) -> None:
        for _ in range(times):
            for stage, kind in steps:
                self(stage, kind)

    def pop_w(self) -> None:
        """Run the oldest weight gradient still owed, if any (a bubble filler)."""
        if self.pending_w:
            action = self.pending_w.popleft()
            self.count[action.stage, W] += 1
            self.actions.append(action)

    def drain_w(self, stage: int) -> None:
        """Run every weight gradient of `stage` whose input gradient has run, oldest first."""
        while self.count[stage, W] < self.count[stage, I]:
            self(stage, W)
