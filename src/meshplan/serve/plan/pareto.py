"""The Pareto frontier of throughput per GPU against interactivity (tokens/s per user)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meshplan.pareto import pareto_mask


def frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximized; a
    point equal to another on both is kept once, the first), by the first coordinate
    descending."""
    if not points:
        return []
    x, y = (np.array(c, dtype=float) for c in zip(*points, strict=True))
    kept = np.flatnonzero(pareto_mask(y, -x))  # maximize y at the least -x: both maximized
    return sorted(kept.tolist(), key=lambda k: (-points[k][0], -points[k][1], k))
