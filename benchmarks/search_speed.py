"""Search speed: plans costed per second for Llama-3.1-405B on 16,384 H100 GPUs.

Prints the figures (issue 2 target: >= 50,000 plans/s on a 2-core machine, whole space < 1 s).
Run: python benchmarks/search_speed.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from meshplan.cost.train.step import evaluate
from meshplan.search.rank import search
from meshplan.search.space import enumerate_plans
from meshplan.specs import Job
from meshplan.specs.io import load_cluster, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    model, cluster = load_model("llama3.1-405b"), load_cluster("dgx-h100")
    job = Job(global_batch_size=2048, seq_len=8192)
    search(model, cluster, job, 16384)  # warm-up (imports, caches)
    whole, cost_only = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = search(model, cluster, job, 16384, top=10)
        whole.append(time.perf_counter() - t0)
        P, _ = enumerate_plans(model, job, 16384)
        t1 = time.perf_counter()
        evaluate(model, cluster, job, P)
        cost_only.append(time.perf_counter() - t1)
    n = result.evaluated
    w, c = statistics.median(whole), statistics.median(cost_only)
    print("llama3.1-405b, dgx-h100, 16384 GPUs, batch 2048 x 8192")
    print(f"  candidates generated      {result.generated:>12,}")
    print(f"  legal plans costed        {n:>12,}")
    print(f"  plans that fit            {result.num_fitting:>12,}")
    print(f"  whole search (median)     {w * 1e3:>12.1f} ms")
    print(f"  cost model only (median)  {c * 1e3:>12.1f} ms")
    print(f"  plans/s, whole search     {n / w:>12,.0f}")
    print(f"  plans/s, cost model       {n / c:>12,.0f}")
    print(f"  vs Calculon (~19 ms/plan) {0.019 / (w / n):>12,.0f}x cheaper per plan")


if __name__ == "__main__":
    main()
