"""The data dependencies of compute actions, written once for the verifier and the simulator.

With s a stage and b a microbatch: F(s,b) needs F(s-1,b); B or I(s,b) needs F(s,b) and the
backward (B or I) of (s+1,b); W(s,b) needs I(s,b). A need on a stage outside the pipeline is
dropped: stage 0's forward reads the data, the last stage's backward starts from its loss.
Both `verify` (which also routes cross-rank needs through SEND/RECV) and `sim.engine` (which
precomputes from this table, outside its loop, where each result is delivered) read it.
"""

from __future__ import annotations

from enum import IntEnum

from meshplan.schedules.ir import ActionKind, B, F, I, W


class Done(IntEnum):
    """What a finished compute action makes available for its (stage, microbatch)."""

    FORWARD = 0
    BACKWARD = 1
    """The input gradient, from B or I."""
    INPUT_GRAD = 2
    """I alone: W may run."""
    WEIGHT_GRAD = 3


NEEDS: dict[ActionKind, tuple[tuple[Done, int], ...]] = {
    F: ((Done.FORWARD, -1),),
    B: ((Done.FORWARD, 0), (Done.BACKWARD, 1)),
    I: ((Done.FORWARD, 0), (Done.BACKWARD, 1)),
    W: ((Done.INPUT_GRAD, 0),),
}
"""Per compute kind: (what, stage offset) of each action it waits on, own stage's first."""

COMPLETES: dict[ActionKind, tuple[Done, ...]] = {
    F: (Done.FORWARD,),
    B: (Done.BACKWARD,),
    I: (Done.BACKWARD, Done.INPUT_GRAD),
    W: (Done.WEIGHT_GRAD,),
}
"""Per compute kind: what it makes available (B and I both count as "the backward")."""


def needs(kind: ActionKind, stage: int, num_stages: int) -> list[tuple[Done, int]]:
    """(what, stage) of each action that `kind` at `stage` waits on, in table order."""
    return [(done, stage + shift) for done, shift in NEEDS[kind]
            if 0 <= stage + shift < num_stages]


def awaited(kind: ActionKind, stage: int, num_stages: int) -> tuple[Done, int] | None:
    """The one need a timed run waits for: the last in table order (another stage's result
    where there is one). The others are on the same stage, hence on the same rank and earlier
    in its list, which `verify` checks."""
    found = needs(kind, stage, num_stages)
    return found[-1] if found else None
