"""Speed of `meshplan serve simulate` (issue 11's target: llama3-8b on dgx-h100, tp1, vLLM,
Poisson 15 req/s, 512 in / 256 out, 1,000,000 requests in <= 60 s on 2 cores).

    PYTHONPATH=src python benchmarks/serve_speed.py [--sizes 10000 100000 1000000] [--plain]

Prints, per size, the wall and CPU seconds of `simulate`, the iterations, the completed
requests and the peak resident memory so far (the fast path by default; `--plain` times the
one-iteration-at-a-time reference loop, the path before the fast-forward).

Measured 2026-12-01 on this project's 2-core machine (wall seconds of `simulate`):

    requests   before (d8873fd)   after   iterations
      10,000        7.7            0.41        64,242
     100,000       77.4            4.05       643,893
   1,000,000      ~819 (CLI)       40.4      6,460,952

The target command (`meshplan serve simulate ... --num-requests 1000000 --json`): before,
13 min 39 s wall and 6.1 GiB peak RSS; after, 39.1 s and 375 MiB, every request completed,
the same iterations and preemptions, every float of the JSON within 6e-14 relative of
before's.
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
