"""Speed of `meshplan serve simulate` (issue 11's target: llama3-8b on dgx-h100, tp1, vLLM,
Poisson 15 req/s, 512 in / 256 out, 1,000,000 requests in <= 60 s on 2 cores).

    PYTHONPATH=src python benchmarks/serve_speed.py [--sizes 10000 100000 1000000] [--plain]

Prints, per size, the wall and CPU seconds of `simulate`, the iterations, the completed
requests and the peak resident memory so far (the fast path by default; `--plain` times the
one-iteration-at-a-time reference loop, the path before the fast-forward).
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
