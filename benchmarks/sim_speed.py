"""Simulator speed: one step of 64 pipeline stages x 1,024 micro-batches (issue 3: < 1 s).

Prints generation, simulation and total time per schedule (median of a few runs).
Run: python benchmarks/sim_speed.py
"""

from __future__ import annotations

import statistics
import time

from meshplan.schedules.registry import generate
from meshplan.sim.engine import StageCosts, simulate_schedule


def timed(name: str, p: int, m: int, v: int, repeats: int = 3) -> tuple[float, float, int]:
    gen, sim = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = generate(name, p, m, v)
        t1 = time.perf_counter()
        S = s.num_stages
        c = StageCosts((1.0 / v,) * S, (1.0 / v,) * S, (1.0 / v,) * S, (1.0,) * S, p2p_time=0.01)
        simulate_schedule(s, c)
        t2 = time.perf_counter()
        gen.append(t1 - t0)
        sim.append(t2 - t1)
    actions = sum(len(a) for a in s.actions.values())
    return statistics.median(gen), statistics.median(sim), actions


def main() -> None:
    print(f"{'schedule':18} {'p':>4} {'m':>6} {'v':>3} {'actions':>9} {'generate':>10} "
          f"{'simulate':>10} {'total':>8}")
    for name, v in (("1f1b", 1), ("interleaved-1f1b", 2), ("zb-h1", 1), ("zb-v", 2),
                    ("dualpipe-v", 2), ("gpipe", 1)):
        g, s, n = timed(name, 64, 1024, v)
        print(f"{name:18} {64:>4} {1024:>6} {v:>3} {n:>9,} {g:>9.3f}s {s:>9.3f}s {g + s:>7.3f}s")


if __name__ == "__main__":
    main()
