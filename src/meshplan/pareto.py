"""The Pareto frontier of a set of points: the ones no other beats on both axes. One
implementation for the training plan space (throughput against memory, `search.frontier`) and
the serving plans (throughput per GPU against per user, `serve.plan.pareto`)."""

from __future__ import annotations

import numpy as np


def pareto_mask(throughput: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Plans no other plan beats on both axes (more throughput with no more memory, or as
    much with less): sort by memory, keep each plan faster than every plan before it."""
    order = np.lexsort((-throughput, memory))
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], throughput[order][:-1]]))
    mask = np.zeros(len(throughput), dtype=bool)
    mask[order[throughput[order] > best_before]] = True
    return mask
