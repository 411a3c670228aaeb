"""How many transformer layers each pipeline rank holds.

Even split: L / p on every rank. Uneven split (Megatron-LM's --decoder-first-pipeline-num-layers
and --decoder-last-pipeline-num-layers; torchtitan's first/last-stage-less-layers): the first
and/or last rank hold the given counts and the other ranks share the rest evenly, which lets
the end ranks carry fewer layers next to the embedding and the LM head, and allows pipeline
degrees that do not divide the layer count.
"""

from __future__ import annotations

import numpy as np

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
