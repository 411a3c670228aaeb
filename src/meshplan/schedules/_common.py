"""Helpers shared by the schedule generators: stage placement, size checks, action emitters."""

from __future__ import annotations

from collections import defaultdict, deque

from meshplan.errors import invalid
from meshplan.schedules.ir import Action, ActionKind, B, I, W, as_actions


def loop_stage_to_rank(num_ranks: int, num_chunks: int) -> tuple[int, ...]:
    """Looped placement (Megatron interleaving, BFS): stage s lives on rank s % p."""
    return tuple(s % num_ranks for s in range(num_ranks * num_chunks))


def v_stage_to_rank(num_ranks: int) -> tuple[int, ...]:
    """V placement (ZB-V, DualPipeV): rank r holds stages r and 2p-1-r, so the turn is local."""
    p = num_ranks
    return tuple(s if s < p else 2 * p - 1 - s for s in range(2 * p))


def check_sizes(
    name: str, num_ranks: int, num_microbatches: int, min_microbatches: int = 1, why: str = ""
) -> None:
    """Raise the standard one-line error for a rank or microbatch count a schedule cannot take."""
    if not isinstance(num_ranks, int) or num_ranks < 1:
        raise invalid("num_ranks", num_ranks, "must be an integer >= 1")
    if not isinstance(num_microbatches, int) or num_microbatches < min_microbatches:
        rule = f"{name} needs an integer >= {min_microbatches}" + (f" ({why})" if why else "")
        raise invalid("num_microbatches", num_microbatches, rule)


def check_chunks(name: str, num_chunks: int, minimum: int, maximum: int | None = None) -> None:
    """Raise the standard one-line error for a chunk (virtual stage) count outside the range."""
    if (
        isinstance(num_chunks, int)
        and minimum <= num_chunks
        and (maximum is None or num_chunks <= maximum)
    ):
        return
    if minimum == maximum:
        raise invalid("num_chunks", num_chunks, f"{name} runs exactly {minimum} chunk(s) per rank")
    raise invalid("num_chunks", num_chunks, f"{name} needs an integer >= {minimum}")


class Emitter:
    """Collects one rank's (stage, kind) steps and numbers their microbatches at the end.

    Hand-written schedules (ZB-V, DualPipeV) are phrased as "a forward of chunk 0" rather
    than "forward microbatch 5 of stage 3": within a stage, forwards take microbatches in
    order, so do backwards (B or I), and each W takes the oldest I still owing one.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[int, ActionKind]] = []
        self.owed_w: deque[int] = deque()

    def __call__(self, stage: int, kind: ActionKind) -> None:
        self.steps.append((stage, kind))
        if kind is I:
            self.owed_w.append(stage)

    def repeat(self, times: int, *steps: tuple[int, ActionKind]) -> None:
        self.steps.extend(steps * times)
        self.owed_w.extend([stage for stage, kind in steps if kind is I] * times)

    def pop_w(self) -> None:
        """Run the oldest weight gradient still owed on this rank, if any (a bubble filler)."""
        if self.owed_w:
            self.steps.append((self.owed_w.popleft(), W))

    def actions(self, num_microbatches: int) -> list[Action]:
        """Number the steps; drop those past `num_microbatches` (schedules planned for more)."""
        next_mb: dict[tuple[int, ActionKind], int] = {}
        owed: defaultdict[int, deque[int]] = defaultdict(deque)
        numbered = []
        for step in self.steps:
            stage, kind = step
            if kind is W:
                mb = owed[stage].popleft()
            else:
                key = (stage, I) if kind is B else step
                mb = next_mb.get(key, 0)
                next_mb[key] = mb + 1
                if kind is I:
                    owed[stage].append(mb)
            if mb < num_microbatches:
                numbered.append((stage, kind, mb))
        return as_actions(numbered)
