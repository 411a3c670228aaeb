"""The Pareto frontier of throughput per GPU against interactivity (tokens/s per user)."""

from __future__ import annotations

from collections.abc import Sequence


def frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximized; a
    point equal to another on both is kept once, the first), by the first coordinate
    descending."""
    order = sorted(range(len(points)), key=lambda k: (-points[k][0], -points[k][1], k))
    out: list[int] = []
    best_y = float("-inf")
    for k in order:
        if points[k][1] > best_y:
            out.append(k)
            best_y = points[k][1]
    return out
