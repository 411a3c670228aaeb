"""Untimed dry run of a schedule: deadlocks, unmatched messages, missing or misordered actions.

Every rank runs its list in order; a compute action takes one step, a SEND or RECV none, and an
action starts once the actions it depends on have finished (as soon as possible: a rank never
idles by choice). Sends are non-blocking, as torch's `_simulate_comms_compute` assumes. The
run is event-driven (each action is visited once), so it scales to 64 ranks x 1024
microbatches in a fraction of a second.

Dependencies, with s a stage and b a microbatch:
- Those of `deps.NEEDS`: F(s,b) needs F(s-1,b); B or I(s,b) needs F(s,b) and the backward
  (B or I) of (s+1,b); W(s,b) needs I(s,b).
- When the schedule has SEND/RECV actions, a dependency that crosses ranks must go through
  them: F(s,b) needs RECV_F(s,b), which needs SEND_F(s-1,b), which needs F(s-1,b); the same
  for gradients with RECV_B/SEND_B.
A dependency on the same rank must already have run (else the list is misordered); one on
another rank is waited for; if nothing can run any more, the schedule deadlocks.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import NoReturn

from meshplan.errors import MeshplanError
from meshplan.schedules._gc import gc_paused
from meshplan.schedules._grid import format_grid
from meshplan.schedules.deps import COMPLETES, NEEDS, Done
from meshplan.schedules.ir import (
    COMM_KINDS,
    RECV_B,
    RECV_F,
    SEND_B,
    SEND_F,
    Action,
    ActionKind,
    B,
    F,
    I,
    Schedule,
    W,
)

_F, _BWD, _I, _W = (int(done) for done in Done)
_SF, _RF, _SB, _RB = range(4, 8)
"""Completion tables: those of `deps.Done` (forward, any backward, I, W), then the four
message kinds."""
_TABLE_KIND = {_F: F, _BWD: B, _I: I, _W: W, _SF: SEND_F, _RF: RECV_F, _SB: SEND_B, _RB: RECV_B}
_SETS: dict[ActionKind, tuple[int, ...]] = {
    **{kind: tuple(int(d) for d in done) for kind, done in COMPLETES.items()},
    **{kind: (table,) for table, kind in _TABLE_KIND.items() if kind in COMM_KINDS},
}
"""Tables each kind completes (`deps.COMPLETES` for compute kinds)."""
_RECV = {-1: _RF, 1: _RB}
"""The receive a cross-rank need goes through, by stage offset: activations from below,
gradients from above."""
_MESSAGES = {SEND_F: (_F, 0, 1), RECV_F: (_SF, -1, -1), SEND_B: (_BWD, 0, -1), RECV_B: (_SB, 1, 1)}
"""Per message kind: the table it waits on, that action's stage offset, the peer's offset."""


class ScheduleError(MeshplanError):
    """An illegal schedule; the message ends with a step x rank grid around the failure."""


@dataclass(frozen=True)
class VerifyReport:
    """What the dry run measured, in unit steps (each F, B, I or W takes one step)."""

    num_steps: int
    """Steps until the last rank finishes: the makespan with unit-time compute."""
    num_actions: int
    busy_steps: tuple[int, ...]
    """Compute actions per rank."""
    peak_in_flight: tuple[int, ...]
    """Per rank, the most (stage, microbatch) pairs held between F and their B or W: the
    activation memory high-water mark, in stage-microbatches (divide by chunks per rank for
    whole-rank microbatches)."""
    interior_idle: tuple[int, ...]
    """Per rank, idle steps between its first action and its last: the bubble that overlap
    with the optimizer step cannot absorb (none for ZB-H2 or ZB-V once m >= 2p-1)."""

    @property
    def bubble_fraction(self) -> float:
        """Idle share of ranks x steps, with every compute action one step long."""
        total = len(self.busy_steps) * self.num_steps
        return 1.0 - sum(self.busy_steps) / total if total else 0.0


@gc_paused
def verify(schedule: Schedule) -> VerifyReport:
    """Dry-run `schedule`; return its report, or raise `ScheduleError` naming the first fault."""
    run = _DryRun(schedule)
    run.run()
    run.check_complete()
    return VerifyReport(
        num_steps=max(run.clock, default=0),
        num_actions=sum(len(acts) for acts in run.orders),
        busy_steps=tuple(run.busy),
        peak_in_flight=tuple(run.peak),
        interior_idle=tuple(
            end - steps[0] - busy if steps else 0
            for end, steps, busy in zip(run.clock, run.starts, run.busy, strict=True)
        ),
    )


_Rule = tuple[tuple[tuple[int, bool], ...], tuple[int, ...], int, int]
"""How one (stage, kind) runs: its dependencies (offset from its own slot in `done`, on the
same rank?), where in `done` it records itself (per table), its duration in steps and its
change to the rank's in-flight count."""


class _DryRun:
    """State of one dry run: per-rank cursors and clocks, and completion step per action."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        ranks = schedule.num_ranks
        self.orders = [schedule.actions.get(r, []) for r in range(ranks)]
        self.owner = schedule.stage_to_rank
        self.m = schedule.num_microbatches
        self.comm = schedule.has_communication
        self.size = schedule.num_stages * self.m
        self.done = [-1] * (8 * self.size)  # table t, stage s, microbatch b at t*size + s*m + b
        self.pos, self.clock = [0] * ranks, [0] * ranks
        self.busy, self.peak, self.live = [0] * ranks, [0] * ranks, [0] * ranks
        self.starts: list[list[int]] = [[] for _ in range(ranks)]
        self.waiting: dict[int, list[int]] = {}
        if sorted(schedule.actions) != list(range(ranks)):
            self.fail(f"ranks must be 0..{ranks - 1}, got {sorted(schedule.actions)}")
        self.rules = [self.rules_for(r) for r in range(ranks)]

    def needs(self, stage: int, kind: ActionKind) -> list[tuple[int, int]] | None:
        """(table, stage) of each action that must finish first; None if `kind` cannot run
        at `stage` (a message to or from a stage that does not exist)."""
        last = len(self.owner) - 1
        if kind in NEEDS:
            out = []
            for done, shift in NEEDS[kind]:
                other = stage + shift
                if not 0 <= other <= last:
                    continue
                crosses = self.comm and self.owner[other] != self.owner[stage]
                out.append((_RECV[shift], stage) if crosses else (int(done), other))
            return out
        table, shift, peer = _MESSAGES[kind]
        return [(table, stage + shift)] if 0 <= stage + peer <= last else None

    def rules_for(self, rank: int) -> dict[tuple[int, ActionKind], _Rule]:
        """Every (stage, kind) `rank` may run, precomputed so the inner loop only looks up."""
        rules = {}
        for stage in (s for s, r in enumerate(self.owner) if r == rank):
            for kind in ActionKind:
                needs = self.needs(stage, kind)
                if needs is None:
                    continue
                deps = tuple(
                    (self.slot(t, s, 0) - self.slot(0, stage, 0), self.owner[s] == rank)
                    for t, s in needs
                )
                sets = tuple(self.slot(t, 0, 0) for t in _SETS[kind])
                live = 1 if kind is F else -1 if kind is B or kind is W else 0
                rules[stage, kind] = (deps, sets, int(kind not in COMM_KINDS), live)
        return rules

    def slot(self, table: int, stage: int, microbatch: int) -> int:
        """Index of (table, stage, microbatch) in `done`; also its key in `waiting`."""
        return table * self.size + stage * self.m + microbatch

    def run(self) -> None:
        """Advance ranks, the one furthest behind first, so faults surface in step order."""
        queue = [(0, r) for r in range(len(self.orders))]
        while queue:
            for rank in self.advance(heapq.heappop(queue)[1]):
                heapq.heappush(queue, (self.clock[rank], rank))
        stuck = [r for r, acts in enumerate(self.orders) if self.pos[r] < len(acts)]
        if stuck:
            self.deadlock(stuck)

    def advance(self, rank: int) -> list[int]:
        """Run `rank` until it blocks or ends; return the ranks its actions woke up."""
        acts, rules, done, m = self.orders[rank], self.rules[rank], self.done, self.m
        starts, waiting, woken = self.starts[rank], self.waiting, list[int]()
        i, t = self.pos[rank], self.clock[rank]
        busy, peak, live = self.busy[rank], self.peak[rank], self.live[rank]
        while i < len(acts):
            action = acts[i]
            stage, kind, mb = action
            rule = rules.get((stage, kind))
            if rule is None or not 0 <= mb < m:
                self.pos[rank], self.clock[rank] = i, t
                self.reject(rank, action)
            deps, sets, duration, delta = rule
            index, start = stage * m + mb, t
            for offset, local in deps:
                finish = done[index + offset]
                if finish < 0:
                    self.pos[rank], self.clock[rank] = i, t
                    if local:
                        self.misordered(rank, action, index + offset)
                    waiting.setdefault(index + offset, []).append(rank)
                    self.busy[rank], self.peak[rank], self.live[rank] = busy, peak, live
                    return woken
                if finish > start:
                    start = finish
            t = start + duration
            for base in sets:
                if done[base + index] >= 0:
                    self.pos[rank], self.clock[rank] = i, start
                    self.fail_at(rank, action, "each action may run once (and B or I, not both)")
                done[base + index] = t
                if waiting:
                    woken.extend(waiting.pop(base + index, ()))
            starts.append(start)
            busy += duration
            live += delta
            if live > peak:
                peak = live
            i += 1
        self.pos[rank], self.clock[rank] = i, t
        self.busy[rank], self.peak[rank], self.live[rank] = busy, peak, live
        return woken

    def reject(self, rank: int, action: Action) -> NoReturn:
        last = len(self.owner) - 1
        stage, _, mb = action
        if not 0 <= stage <= last or self.owner[stage] != rank:
            where = f"on rank {self.owner[stage]}" if 0 <= stage <= last else "out of range"
            self.fail_at(rank, action, f"stage {stage} is {where} (stages 0..{last})")
        if not 0 <= mb < self.m:
            self.fail_at(rank, action, f"microbatch must be in 0..{self.m - 1}")
        self.fail_at(rank, action, "no neighbouring stage in that direction")

    def check_complete(self) -> None:
        """Every (stage, microbatch) has one F and one backward, every I its W and every send
        its receive. (A W without its I, or a receive without its send, never runs.)"""
        size, done = self.size, self.done
        for table in (_F, _BWD):
            if self.count(table) < size:
                lost = [i for i in range(size) if done[table * size + i] < 0]
                self.report_missing(lost, table, "is missing")
        for table, partner, shift in ((_I, _W, 0), (_SF, _RF, self.m), (_SB, _RB, -self.m)):
            if self.count(table) != self.count(partner):
                lonely = [
                    i
                    for i in range(size)
                    if done[table * size + i] >= 0 and done[partner * size + i + shift] < 0
                ]
                self.report_missing(lonely, table, f"has no matching {_TABLE_KIND[partner].value}")

    def count(self, table: int) -> int:
        """How many actions of `table` ran."""
        segment = self.done[table * self.size : (table + 1) * self.size]
        return self.size - segment.count(-1)

    def action_at(self, slot: int) -> Action:
        """Inverse of `slot`."""
        table, rest = divmod(slot, self.size)
        return Action(rest // self.m, _TABLE_KIND[table], rest % self.m)

    def report_missing(self, indexes: list[int], table: int, what: str) -> NoReturn:
        names = [str(self.action_at(self.slot(table, 0, 0) + i)) for i in indexes[:4]]
        if table == _BWD:  # the backward may be either kind
            names = [n.replace("B", "B/I", 1) for n in names]
        more = f" and {len(indexes) - 4} more" if len(indexes) > 4 else ""
        self.fail(f"{', '.join(names)}{more} {what}", mark=max(self.clock) - 1)

    def misordered(self, rank: int, action: Action, slot: int) -> NoReturn:
        self.fail_at(rank, action, f"needs {self.action_at(slot)} earlier on rank {rank}")

    def deadlock(self, stuck: list[int]) -> NoReturn:
        heads = {r: self.orders[r][self.pos[r]] for r in stuck}
        waits = []
        for r, head in heads.items():
            for table, stage in self.needs(head.stage, head.kind) or []:
                if self.done[self.slot(table, stage, head.microbatch)] < 0:
                    need = Action(stage, _TABLE_KIND[table], head.microbatch)
                    found = need in self.orders[self.owner[stage]]
                    waits.append(
                        f"rank {r} {head} waits for {need} on rank {self.owner[stage]}"
                        + ("" if found else " (not in the schedule)")
                    )
                    break
        self.fail(
            "deadlock: " + "; ".join(waits), mark=min(self.clock[r] for r in stuck), heads=heads
        )

    def fail_at(self, rank: int, action: Action, why: str) -> NoReturn:
        self.fail(
            f"rank {rank} step {self.clock[rank]}: {action}: {why}",
            mark=self.clock[rank],
            heads={rank: action},
        )

    def fail(
        self, why: str, mark: int | None = None, heads: dict[int, Action] | None = None
    ) -> NoReturn:
        ran = [acts[: len(steps)] for acts, steps in zip(self.orders, self.starts, strict=True)]
        grid = format_grid(ran, self.starts, mark, heads or {}, self.clock)
        raise ScheduleError(f"schedule {self.schedule.name!r}: {why}\n{grid}")
