"""Untimed dry run of a schedule: deadlocks, unmatched messages, missing or misordered actions.

Every rank runs its list in order; a compute action takes one step, a SEND or RECV none, and an
action starts once the actions it depends on have finished (as soon as possible: a rank never
idles by choice). Sends are non-blocking, as torch's `_simulate_comms_compute` assumes. The
run is event-driven (each action is visited once), so it scales to 64 ranks x 1024
microbatches in a fraction of a second.

Dependencies, with s a stage and b a microbatch:
- F(s,b) needs F(s-1,b); B or I(s,b) needs F(s,b) and the backward (B or I) of (s+1,b);
  W(s,b) needs I(s,b).
- When the schedule has SEND/RECV actions, a dependency that crosses ranks must go through
  them: F(s,b) needs RECV_F(s,b), which needs SEND_F(s-1,b), which needs F(s-1,b); the same
  for gradients with RECV_B/SEND_B.
A dependency on the same rank must already have run (else the list is misordered); one on
another rank is waited for; if nothing can run any more, the schedule deadlocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplan.errors import MeshplanError
from meshplan.schedules._grid import format_grid
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

_F, _BWD, _I, _W, _SF, _RF, _SB, _RB = range(8)
"""Completion tables: forward, any backward (B or I), I, W and the four message kinds."""
_TABLE_KIND = {_F: F, _BWD: B, _I: I, _W: W, _SF: SEND_F, _RF: RECV_F, _SB: SEND_B, _RB: RECV_B}
_SETS = {F: (_F,), B: (_BWD,), I: (_BWD, _I), W: (_W,), SEND_F: (_SF,), RECV_F: (_RF,),
         SEND_B: (_SB,), RECV_B: (_RB,)}


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

    @property
    def bubble_fraction(self) -> float:
        """Idle share of ranks x steps, with every compute action one step long."""
        total = len(self.busy_steps) * self.num_steps
        return 1.0 - sum(self.busy_steps) / total if total else 0.0


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
    )


_Rule = tuple[tuple[tuple[int, int, bool], ...], tuple[int, ...], int, int]
"""How one (stage, kind) runs: its dependencies (table, index offset, same rank?), the tables
it completes, its duration in steps and its change to the rank's in-flight count."""


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
        self.done = [[-1] * self.size for _ in range(8)]
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
        crosses_down = stage < last and self.owner[stage + 1] != self.owner[stage]
        crosses_up = stage > 0 and self.owner[stage - 1] != self.owner[stage]
        if kind is F:
            if stage == 0:
                return []
            return [(_RF, stage)] if self.comm and crosses_up else [(_F, stage - 1)]
        if kind is B or kind is I:
            if stage == last:
                return [(_F, stage)]
            return [(_F, stage), (_RB, stage) if self.comm and crosses_down else (_BWD, stage + 1)]
        if kind is W:
            return [(_I, stage)]
        if kind in (SEND_F, RECV_B) and stage == last or kind in (RECV_F, SEND_B) and stage == 0:
            return None
        return {SEND_F: [(_F, stage)], RECV_F: [(_SF, stage - 1)],
                SEND_B: [(_BWD, stage)], RECV_B: [(_SB, stage + 1)]}[kind]

    def rules_for(self, rank: int) -> dict[tuple[int, ActionKind], _Rule]:
        """Every (stage, kind) `rank` may run, precomputed so the inner loop only looks up."""
        rules = {}
        for stage in (s for s, r in enumerate(self.owner) if r == rank):
            for kind in ActionKind:
                needs = self.needs(stage, kind)
                if needs is None:
                    continue
                deps = tuple((t, (s - stage) * self.m, self.owner[s] == rank) for t, s in needs)
                live = 1 if kind is F else -1 if kind is B or kind is W else 0
                rules[stage, kind] = (deps, _SETS[kind], int(kind not in COMM_KINDS), live)
        return rules

    def run(self) -> None:
        queue = list(range(len(self.orders)))
        while queue:
            queue.extend(self.advance(queue.pop()))
        stuck = [r for r, acts in enumerate(self.orders) if self.pos[r] < len(acts)]
        if stuck:
            self.deadlock(stuck)

    def advance(self, rank: int) -> list[int]:
        """Run `rank` until it blocks or ends; return the ranks its actions woke up."""
        acts, rules, done, m, size = self.orders[rank], self.rules[rank], self.done, self.m, self.size
        starts, waiting, woken = self.starts[rank], self.waiting, []
        i, t = self.pos[rank], self.clock[rank]
        busy, peak, live = self.busy[rank], self.peak[rank], self.live[rank]
        while i < len(acts):
            action = acts[i]
            stage, kind, mb = action
            rule = rules.get((stage, kind))
            if rule is None or not 0 <= mb < m:
                self.pos[rank], self.clock[rank] = i, t
                self.reject(rank, action)
            deps, sets, duration, delta = rule  # type: ignore[misc]
            index, start = stage * m + mb, t
            for table, offset, local in deps:
                finish = done[table][index + offset]
                if finish < 0:
                    self.pos[rank], self.clock[rank] = i, t
                    if local:
                        self.misordered(rank, action, table, offset)
                    waiting.setdefault(table * size + index + offset, []).append(rank)
                    self.busy[rank], self.peak[rank], self.live[rank] = busy, peak, live
                    return woken
                if finish > start:
                    start = finish
            t = start + duration
            for table in sets:
                if done[table][index] >= 0:
                    self.pos[rank], self.clock[rank] = i, start
                    self.fail_at(rank, action, "each action may run once (and B or I, not both)")
                done[table][index] = t
                if waiting:
                    woken.extend(waiting.pop(table * size + index, ()))
            starts.append(start)
            busy += duration
            live += delta
            if live > peak:
                peak = live
            i += 1
        self.pos[rank], self.clock[rank] = i, t
        self.busy[rank], self.peak[rank], self.live[rank] = busy, peak, live
        return woken

    def reject(self, rank: int, action: Action) -> None:
        last = len(self.owner) - 1
        stage, _, mb = action
        if not 0 <= stage <= last or self.owner[stage] != rank:
            where = f"on rank {self.owner[stage]}" if 0 <= stage <= last else "out of range"
            self.fail_at(rank, action, f"stage {stage} is {where} (stages 0..{last})")
        if not 0 <= mb < self.m:
            self.fail_at(rank, action, f"microbatch must be in 0..{self.m - 1}")
        self.fail_at(rank, action, "no neighbouring stage in that direction")

    def check_complete(self) -> None:
        """Every (stage, microbatch) has one F and one backward, every I its W, every message
        its partner."""
        m, done = self.m, self.done
        partner = {_I: (_W, 0), _SF: (_RF, 1), _SB: (_RB, -1)}
        for table in (_F, _BWD):
            self.missing([i for i, f in enumerate(done[table]) if f < 0], table, "is missing")
        for table, (other, shift) in partner.items():
            lonely = [i for i, f in enumerate(done[table])
                      if f >= 0 and done[other][i + shift * m] < 0]
            self.missing(lonely, table, f"has no matching {_TABLE_KIND[other].value}")

    def missing(self, indexes: list[int], table: int, what: str) -> None:
        if indexes:
            m = self.m
            names = [str(Action(i // m, _TABLE_KIND[table], i % m)) for i in indexes[:4]]
            more = f" and {len(indexes) - 4} more" if len(indexes) > 4 else ""
            if table == _BWD:
                names = [n.replace("B", "B/I", 1) for n in names]
            self.fail(f"{', '.join(names)}{more} {what}", mark=max(self.clock) - 1)

    def misordered(self, rank: int, action: Action, table: int, offset: int) -> None:
        need = Action(action.stage + offset // self.m, _TABLE_KIND[table], action.microbatch)
        self.fail_at(rank, action, f"needs {need} earlier on rank {rank}")

    def deadlock(self, stuck: list[int]) -> None:
        heads = {r: self.orders[r][self.pos[r]] for r in stuck}
        waits = []
        for r, head in heads.items():
            for table, stage in self.needs(head.stage, head.kind) or []:
                if self.done[table][stage * self.m + head.microbatch] < 0:
                    need = Action(stage, _TABLE_KIND[table], head.microbatch)
                    found = need in self.orders[self.owner[stage]]
                    waits.append(f"rank {r} {head} waits for {need} on rank {self.owner[stage]}"
                                 + ("" if found else " (not in the schedule)"))
                    break
        self.fail("deadlock: " + "; ".join(waits), mark=min(self.clock[r] for r in stuck),
                  heads=heads)

    def fail_at(self, rank: int, action: Action, why: str) -> None:
        self.fail(f"rank {rank} step {self.clock[rank]}: {action}: {why}",
                  mark=self.clock[rank], heads={rank: action})

    def fail(self, why: str, mark: int | None = None,
             heads: dict[int, Action] | None = None) -> None:
        ran = [acts[: len(steps)] for acts, steps in zip(self.orders, self.starts, strict=True)]
        grid = format_grid(ran, self.starts, mark, heads or {}, self.clock)
        raise ScheduleError(f"schedule {self.schedule.name!r}: {why}\n{grid}")
