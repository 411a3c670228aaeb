"""Closed-form pipeline time and in-flight micro-batches, per schedule.

The first pass of the planner; `meshplan.sim` replaces it with an event simulation.
Sources (p ranks, m micro-batches, v chunks per rank, per-micro-batch times F, B = I + W):
- GPipe / 1F1B (Huang et al. 2019; Narayanan et al. 2021): step = (m + p - 1)(F + B) with equal
  stages; with unequal stages sum_r (F_r + B_r) + (m - 1) max_r (F_r + B_r).
- Interleaved 1F1B (Narayanan et al. 2021, Sec. 2.2.2): bubble (p - 1)/v (F + B).
- ZB-H1 / ZB-H2 (Qi et al., ICLR 2024, Sec. 3): bubble (p - 1)(F + I - W) and
  (p - 1)(F + I - 2W), floored at 0.
- ZB-V (Qi et al. 2024, "Pipeline Parallelism with Controllable Memory"): the V-shape with
  chunk times halves the 1F1B warm-up and reaches (p - 1)(F_c + I_c - 2 W_c).
- DualPipe (DeepSeek-V3 report, arXiv:2412.19437, Table 2): (p/2 - 1)(F&B + B - 3W) for
  DualPipe; DualPipe-V runs it on p ranks with 2 chunks each: (p - 1)(F_c + B_c - 3 W_c)
  with F&B taken as F_c + B_c (no overlap credit).
- Activation memory: 1F1B keeps p micro-batches in flight on the first rank, GPipe m,
  interleaved p + (p - 1)/v (Korthikanti et al. 2022 Sec. 4.2.3: factor 1 + (p-1)/(p v)),
  ZB-H2 2p - 1 (Qi et al. 2024 Table 1: about 2 p M_B), DualPipe-V p + 1 (DeepSeek-V3 Table 2).
"""

from __future__ import annotations

import numpy as np

from meshplan.specs.plan import SCHEDULES

CODE = {name: i for i, name in enumerate(SCHEDULES)}


def pipeline_time(schedule: np.ndarray, p: np.ndarray, m: np.ndarray, v: np.ndarray,
                  first: np.ndarray, middle: np.ndarray, last: np.ndarray,
                  fwd: np.ndarray, bwd_i: np.ndarray, bwd_w: np.ndarray) -> np.ndarray:
    """Time of all micro-batches through the pipeline, flush included.

    first/middle/last: F + B of one micro-batch on that rank (all its chunks).
    fwd, bwd_i, bwd_w: the middle rank's F, I, W per micro-batch (all its chunks).
    """
    ranks_total = np.where(p > 1, first + last + (p - 2) * middle, first)
    slowest = np.maximum(np.maximum(first, last), middle)
    steady = m * slowest
    one_f_one_b = ranks_total + (m - 1) * slowest
    interleaved = steady + (ranks_total - slowest) / v
    f_c, i_c, w_c = fwd / v, bwd_i / v, bwd_w / v
    # Zero Bubble runs overlap iterations (optimizer post-validation, Qi et al. Sec. 4), so
    # their bubble is the paper's figure without the (p-1) F warm-up of the last rank.
    zb_h1 = steady + (p - 1) * np.maximum(fwd + bwd_i - bwd_w, 0.0)
    zb_h2 = steady + (p - 1) * np.maximum(fwd + bwd_i - 2 * bwd_w, 0.0)
    zb_v = steady + (p - 1) * np.maximum(f_c + i_c - 2 * w_c, 0.0)
    dualpipe = steady + (p - 1) * np.maximum(f_c + 2 * i_c - w_c, 0.0)
    out = one_f_one_b
    for name, value in (("interleaved-1f1b", interleaved), ("looped-bfs", interleaved),
                        ("zb-h1", zb_h1), ("zb-h2", zb_h2), ("zb-v", zb_v),
                        ("dualpipe-v", dualpipe)):
        out = np.where(schedule == CODE[name], value, out)
    return np.where(p > 1, out, m * first)


def in_flight_microbatches(schedule: np.ndarray, p: np.ndarray, m: np.ndarray,
                           v: np.ndarray) -> np.ndarray:
    """Micro-batches' worth of one rank's activations held at the peak, on the first rank."""
    one_f_one_b = np.minimum(p, m).astype(float)
    out = one_f_one_b
    table = {
        "gpipe": m.astype(float),
        "looped-bfs": m.astype(float),
        "interleaved-1f1b": np.minimum(p + (p - 1) / v, m),
        "zb-h2": np.minimum(2 * p - 1, m).astype(float),
        "dualpipe-v": np.minimum(p + 1, m).astype(float),
    }
    for name, value in table.items():
        out = np.where(schedule == CODE[name], value, out)
    return np.where(p > 1, out, 1.0)
