"""Speed of `meshplan serve simulate` (issue 11's target: llama3-8b on dgx-h100, tp1, vLLM,
Poisson 15 req/s, 512 in / 256 out, 1,000,000 requests in <= 60 s on 2 cores).

    PYTHONPATH=src python benchmarks/serve_speed.py [--sizes 10000 100000 1000000] [--plain]

Prints, per size, the wall and CPU seconds of `simulate`, the iterations, the completed
requests and the peak resident memory so far (the fast path by default; `--plain` times the
one-iteration-at-a-time reference loop, the path before the fast-forward).

Measured 2026-12-02 on this project's 2-core machine, shared (load average 6-8, so CPU
seconds of `simulate` are the figure to compare; before and after run alternately):

    requests   before (0c96751)   after (long runs)   iterations
      10,000         1.10              0.16              27,381
     100,000         8.4               1.05             273,046
   1,000,000        ~89 (wall, quiet)  10.8             2,738,916

Before, the fast path stopped each decode run at the next arrival, so every arrival cost a
scheduled step and every step an O(batch) pass or more (~33 us a step); the long runs
(`loop.simulate`) step through arrivals and finishes without the scheduler, ~4 us a step.
The target command (`meshplan serve simulate ... --num-requests 1000000 --json`,
`/usr/bin/time -v`): before 95.6 s user CPU (6 min 39 s wall at load 8), after 10.4 s user
CPU (27.6 s wall at load 7), 255 MiB peak RSS both, every request completed, 3,195,220
iterations and no preemption both, every metric of the JSON bit-identical (the thinned
`timeseries` keep the same peaks from other samples). Earlier (2026-12-01, d8873fd -> the
first fast path): 10^5 requests 77.4 -> 4.05 s, 10^6 ~819 s -> 40.4 s.
"""

from __future__ import annotations

import argparse
import resource
import time

from meshplan.serve import DeploymentSpec, Lengths, Workload, draw, resolve
from meshplan.serve.loop import simulate
from meshplan.specs.io import load_cluster, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--plain", action="store_true")
    args = ap.parse_args()
    d = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"), DeploymentSpec(tp=1))
    print(f"{'requests':>10} {'wall_s':>8} {'cpu_s':>8} {'iterations':>11} {'completed':>10} "
          f"{'us/iter':>8} {'max_rss_mib':>11}")
    for n in args.sizes:
        w = Workload(arrival="poisson", rate=15, num_requests=n, input=Lengths(mean=512),
                     output=Lengths(mean=256))
        reqs = draw(w)
        t0, c0 = time.perf_counter(), time.process_time()
        r = simulate(d, reqs, plain=args.plain)
        js = r.to_json()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{n:>10} {wall:>8.2f} {cpu:>8.2f} {r.iterations:>11} {js['num_completed']:>10} "
              f"{1e6 * wall / r.iterations:>8.2f} {rss:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
