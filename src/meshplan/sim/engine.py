"""Run a schedule (per-rank action lists) with per-stage durations, on compute and comm streams.

Each rank executes its actions in order on its compute stream. An action starts when the rank
is free and its input is there (`schedules.deps`: F of stage s needs F of stage s-1, plus the
transfer if the stages sit on different ranks; B or I of stage s needs the gradient from stage
s+1, the last stage its own F; W needs its own I). A transfer runs on the sender's
communication stream (FIFO), so it overlaps the sender's next computation, as
torch.distributed.pipelining's batched isend/irecv and Megatron's async p2p do; `p2p_blocking`
is the share of a transfer that still stalls the sender (Megatron's synchronous 1F1B exchange:
1.0). Activation memory is tracked per rank: F allocates the stage's activations, I frees all
but the part W still needs (the inputs of the linear layers, `w_share`), W and B free the rest.

With `trace`, every box is kept (`Interval`): the compute actions, the transfers (with their
destination), the gradient reduction, and the TP / CP / EP time the stage costs fold into
each F and I, as boxes inside the action on the axis's own lane.

The loop is event-driven on data dependencies (a rank blocked on an input is woken when it
arrives), so it costs O(actions) and a 64-stage x 1,024-micro-batch 1F1B step runs in well
under a second. A rank that can never proceed is a deadlock: `ScheduleError` with the grid.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from meshplan.cost.train.stages import StageCosts
from meshplan.schedules.deps import COMPLETES, Done, awaited
from meshplan.schedules.ir import ActionKind, Schedule

_F, _B, _I, _W = ActionKind.F, ActionKind.B, ActionKind.I, ActionKind.W
_KINDS = (_F, _B, _I, _W)
"""Kind codes 0..3 of the inner loop (durations are looked up by (code, stage))."""


@dataclass(frozen=True)
class Interval:
    """One box on the timeline (for traces)."""

    rank: int
    stream: str
    """"compute", "comm" (pipeline sends, gradient reduction), or "tp" / "cp" / "ep": the
    exposed collectives folded into a compute box, drawn inside it (`StageCosts.*_comm`)."""
    name: str
    start: float
    end: float
    kind: str = ""
    """F, B, I, W; SEND_F, SEND_B; tp, cp, ep; grad_reduce."""
    stage: int = -1
    microbatch: int = -1
    nbytes: float = 0.0
    """Compute: the stage's activations of one micro-batch; comm: what it carries."""
    peer: int = -1
    """A send's destination rank."""


@dataclass
class SimResult:
    """What the simulation measured."""

    makespan: float
    """Time from the first action to the last, pipeline flush included."""
    span: list[float]
    """Per rank, from its first action's start to the end of its last computation or
    transfer (gradient reduction included)."""
    compute_span: list[float]
    """Per rank, from its first action's start to the end of its last computation."""
    busy: list[float]
    """Compute-stream busy time per rank."""
    first_start: list[float]
    peak_activation_bytes: list[float]
    intervals: list[Interval] = field(default_factory=list)
    memory_timeline: list[list[tuple[float, float]]] = field(default_factory=list)
    """Per rank: (time, activation bytes held) after each change (when traced)."""

    @property
    def compute_end(self) -> float:
        """When the last computation of the step ends (transfers may run on after it)."""
        return max(s + f for s, f in zip(self.compute_span, self.first_start, strict=True))

    @property
    def staggered_step(self) -> float:
        """Step time when consecutive iterations may overlap across ranks (the longest rank
        span): Zero Bubble's post-validation of the optimizer step lets rank 0 start the next
        iteration while the last rank finishes (Qi et al. 2024, Sec. 4)."""
        return max(self.span)

    @property
    def idle(self) -> list[float]:
        return [self.makespan - b for b in self.busy]

    @property
    def bubble_fraction(self) -> float:
        """Mean idle share of the compute streams."""
        if self.makespan <= 0:
            return 0.0
        return sum(self.idle) / (len(self.busy) * self.makespan)


def _wiring(num_stages: int, num_microbatches: int, where: tuple[int, ...]) -> tuple[
        list[list[int]], list[list[tuple[tuple[int, int, tuple[int, str]], ...]]]]:
    """From `deps`, once per run: per (kind code, stage), the `ready` slot base it waits on
    (-1: none; add the microbatch) and the (slot base, destination rank, (stage, F or B) for
    the trace) of each waiting action its result is delivered to.

    Slots are keyed by the awaited (what, stage): each is awaited by one kind of action on one
    stage (B and I share theirs), so the transfer to that action's rank is known."""
    S, M = num_stages, num_microbatches
    waits = [[-1] * S for _ in _KINDS]
    consumer: dict[tuple[int, int], int] = {}  # (what, stage) -> the awaiting stage
    for c, kind in enumerate(_KINDS):
        for s in range(S):
            need = awaited(kind, s, S)
            if need is not None:
                assert need[0] != Done.WEIGHT_GRAD, "nothing waits on W"
                waits[c][s] = (need[0] * S + need[1]) * M
                consumer[need[0], need[1]] = s
    sends: list[list[tuple[tuple[int, int, tuple[int, str]], ...]]] = [[()] * S for _ in _KINDS]
    for c, kind in enumerate(_KINDS):
        for s in range(S):
            sends[c][s] = tuple(
                ((int(done) * S + s) * M, where[consumer[done, s]],
                 (s, "F" if kind is _F else "B"))
                for done in COMPLETES[kind] if (done, s) in consumer)
    return waits, sends


def simulate_schedule(schedule: Schedule, costs: StageCosts, trace: bool = False) -> SimResult:
    """Time every action of `schedule` (compute actions only; transfers are implied)."""
    from meshplan.schedules.verify import ScheduleError

    S, M = schedule.num_stages, schedule.num_microbatches
    assert len(costs.forward) == S, f"costs for {len(costs.forward)} stages, schedule has {S}"
    where = schedule.stage_to_rank
    ranks = sorted(schedule.actions)
    code = {kind: c for c, kind in enumerate(_KINDS)}
    orders = {r: [(a.stage, code[a.kind], a.microbatch, a) for a in schedule.actions[r]
                  if a.kind in code] for r in ranks}
    durations = (costs.forward,
                 tuple(i + w for i, w in zip(costs.backward_input, costs.backward_weight,
                                             strict=True)),
                 costs.backward_input, costs.backward_weight)
    waits, sends = _wiring(S, M, where)
    # ready[k]: time the awaited input of an action is there (k from `_wiring`); -1 = not yet.
    ready = [-1.0] * (3 * S * M)
    waiting: dict[int, int] = {}
    pos = dict.fromkeys(ranks, 0)
    free = dict.fromkeys(ranks, 0.0)
    comm_free = dict.fromkeys(ranks, 0.0)
    busy = dict.fromkeys(ranks, 0.0)
    held = dict.fromkeys(ranks, 0.0)
    peak = dict.fromkeys(ranks, 0.0)
    intervals: list[Interval] = []
    mem_tl: dict[int, list[tuple[float, float]]] = {r: [(0.0, 0.0)] for r in ranks}
    queue = deque(ranks)
    p2p, blocking, w_share = costs.p2p_time, costs.p2p_blocking, costs.w_share
    acts = costs.activation_bytes
    # The exposed TP/CP/EP seconds inside F, B (its I part) and I, by kind code (traces only).
    folded = (costs.forward_comm, costs.backward_comm, costs.backward_comm, ())

    def deliver(key: int, src: int, dst: int, t: float, tag: tuple[int, str], mb: int) -> None:
        if src != dst and p2p > 0:
            start = max(t, comm_free[src])
            t = start + p2p
            comm_free[src] = t
            free[src] += blocking * p2p
            if trace:
                s, what = tag
                intervals.append(Interval(src, "comm", f"send {s}{what}{mb}", start, t,
                                          f"SEND_{what}", s, mb, costs.p2p_bytes, dst))
        ready[key] = t
        if key in waiting:
            queue.append(waiting.pop(key))

    first = dict.fromkeys(ranks, -1.0)
    last_bwd = dict.fromkeys(ranks, (0.0, 0.0))
    while queue:
        r = queue.popleft()
        order, i = orders[r], pos[r]
        while i < len(order):
            s, kind, mb, a = order[i]
            key = waits[kind][s]
            if key >= 0:
                key += mb
                t_in = ready[key]
                if t_in < 0:
                    waiting[key] = r
                    break
            else:
                t_in = 0.0
            start = free[r] if free[r] > t_in else t_in
            if first[r] < 0:
                first[r] = start
            end = start + durations[kind][s]
            free[r] = end
            busy[r] += end - start
            if kind == 0:
                held[r] += acts[s]
                if held[r] > peak[r]:
                    peak[r] = held[r]
            elif kind == 2:
                held[r] -= acts[s] * (1 - w_share)
            elif kind == 3:
                held[r] -= acts[s] * w_share
            else:
                held[r] -= acts[s]
            if kind:
                last_bwd[r] = (start, end)
            if trace:
                intervals.append(Interval(r, "compute", str(a), start, end, a.kind.value, s,
                                          mb, acts[s]))
                mem_tl[r].append((end, held[r]))
                t_c = start  # the folded collectives, back to back from the box's start
                for part in folded[kind]:
                    d = part.seconds[s]
                    if d > 0:
                        intervals.append(Interval(r, part.axis, f"{part.axis} {a}", t_c,
                                                  t_c + d, part.axis, s, mb, part.nbytes[s]))
                        t_c += d
            for base, dst, tag in sends[kind][s]:
                deliver(base + mb, r, dst, end, tag, mb)
            i += 1
        pos[r] = i
    stuck = [r for r in ranks if pos[r] < len(orders[r])]
    if stuck:
        r = stuck[0]
        raise ScheduleError(f"deadlock: rank {r} waits forever at {orders[r][pos[r]][3]} "
                            f"(action {pos[r]} of {len(orders[r])})")
    if costs.grad_reduce > 0:
        for r in ranks:
            b0, b1 = last_bwd[r]
            start = max(comm_free[r], b1 - costs.grad_reduce_overlap * (b1 - b0))
            comm_free[r] = start + costs.grad_reduce
            if trace:
                intervals.append(Interval(r, "comm", "grad reduce", start, comm_free[r],
                                          "grad_reduce"))
    makespan = max(max(free.values()), max(comm_free.values()))
    start0 = {r: max(first[r], 0.0) for r in ranks}
    span = [max(free[r], comm_free[r]) - start0[r] for r in ranks]
    compute_span = [free[r] - start0[r] for r in ranks]
    return SimResult(makespan, span, compute_span, [busy[r] for r in ranks],
                     [start0[r] for r in ranks], [peak[r] for r in ranks], intervals,
                     [mem_tl[r] for r in ranks] if trace else [])
