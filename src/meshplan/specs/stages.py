"""How many transformer layers each pipeline rank holds.

Even split: L / p on every rank. Uneven split (Megatron-LM's --decoder-first-pipeline-num-layers
and --decoder-last-pipeline-num-layers; torchtitan's first/last-stage-less-layers): the first
and/or last rank hold the given counts and the other ranks share the rest evenly, which lets
the end ranks carry fewer layers next to the embedding and the LM head, and allows pipeline
degrees that do not divide the layer count.
"""

from __future__ import annotations

import numpy as np

from meshplan.errors import MeshplanError
from meshplan.specs.plan import PlanArrays


def rank_layers(num_layers: int, P: PlanArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, middle, last) rank layer counts; middle is 0 when no middle rank exists."""
    f, last = P.first_layers, P.last_layers
    uneven = (f > 0) | (last > 0)
    fixed = (f > 0).astype(int) + (last > 0).astype(int)
    rest_ranks = P.pp - fixed
    rest = num_layers - f - last
    mid = np.where(rest_ranks > 0, rest / np.maximum(rest_ranks, 1), 0.0)
    even = num_layers / P.pp
    return (np.where(uneven, np.where(f > 0, f, mid), even),
            np.where(uneven, mid, even),
            np.where(uneven, np.where(last > 0, last, mid), even))


def uneven_split_ok(num_layers: int, P: PlanArrays) -> np.ndarray:
    """Legal uneven splits: pp >= 2 and every other rank an equal whole number (at least one)
    of the remaining layers. With virtual stages a rank's layers are spread over its chunks
    on average (engines that need whole layers per chunk check that when exporting)."""
    f, last = P.first_layers, P.last_layers
    fixed = (f > 0).astype(int) + (last > 0).astype(int)
    rest_ranks = P.pp - fixed
    rest = num_layers - f - last
    shared = np.where(rest_ranks > 0,
                      (rest >= rest_ranks) & (rest % np.maximum(rest_ranks, 1) == 0),
                      rest == 0)
    return (P.pp >= 2) & (rest >= 0) & shared


def default_uneven_split(num_layers: int, pp: int) -> tuple[int, int]:
    """(first, last) for a pp that does not divide the layers: middle ranks take
    ceil(L / pp) and the two end ranks split what is left (as Megatron recipes do for
    Llama-3.1-405B's 126 layers on 16 stages: 7 + 14 x 8 + 7). (0, 0) when even or impossible."""
    if pp < 2 or num_layers % pp == 0:
        return 0, 0
    mid = -(-num_layers // pp)
    rest = num_layers - mid * (pp - 2)
    if rest < 2:
        mid = num_layers // pp
        rest = num_layers - mid * (pp - 2)
    first = rest // 2
    return (first, rest - first) if first >= 1 else (0, 0)


def stage_layer_ranges(num_layers: int, num_stages: int, stage_rank: tuple[int, ...],
                       pp: int, first: int | None, last: int | None) -> list[range]:
    """Layer indices of each pipeline stage, for an executor. Even split: num_layers /
    num_stages each. Uneven split (one stage per rank only): first and last ranks take their
    counts, the others share the rest evenly."""
    if not first and not last:
        if num_layers % num_stages:
            raise MeshplanError(f"pp*vpp={num_stages}: must divide num_layers ({num_layers})")
        counts = [num_layers // num_stages] * num_stages
    else:
        if num_stages != pp:
            raise MeshplanError(f"first/last stage layers with {num_stages // pp} virtual "
                                "stages per rank: an executor needs whole layers per stage; "
                                "use one stage per rank")
        fixed = [n for n in (first, last) if n]
        rest_ranks = pp - len(fixed)
        rest = num_layers - sum(fixed)
        if rest < 0 or (rest_ranks and rest % rest_ranks) or (not rest_ranks and rest):
            raise MeshplanError(f"first_stage_layers={first}, last_stage_layers={last}: the "
                                f"other {rest_ranks} ranks cannot share {rest} layers equally")
        mid = rest // rest_ranks if rest_ranks else 0
        counts = [mid] * num_stages
        counts[0] = first or mid
        counts[-1] = last or mid
    assert len(stage_rank) == num_stages
    starts = [sum(counts[:i]) for i in range(num_stages)]
    return [range(a, a + n) for a, n in zip(starts, counts, strict=True)]
