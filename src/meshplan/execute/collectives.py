"""Collective bus bandwidth over message sizes, measured the way nccl-tests does.

Conventions follow nccl-tests' PERFORMANCE.md (the same ones `meshplan.cost.comm` uses):
`nbytes` is the full buffer (all-reduce in/out, all-gather output, reduce-scatter input, each
rank's all-to-all buffer) and busbw = nbytes / time x 2(n-1)/n for all-reduce, x (n-1)/n for
all-gather, reduce-scatter and all-to-all; send/recv is one-way (half a ping-pong). Ranks
are started with torchrun, as `meshplan run` starts them, on gloo (CPU) or NCCL (one GPU per
rank). Rank 0 also reports the resident memory of a rank with torch and a process group up
(the fixed cost every rank pays before the model allocates anything), and how collectives
behave inside a compute loop (`_in_training_loop`).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from meshplan.errors import MeshplanError
from meshplan.execute.launch import last_error

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


def bus_factor(name: str, n: int) -> float:
    """busbw / algbw (nccl-tests PERFORMANCE.md)."""
    if name == "all_reduce":
        return 2.0 * (n - 1) / n
    if name == "send_recv":
        return 1.0
    return (n - 1) / n


def _op(name: str, nbytes: int, n: int, device: torch.device):  # noqa: ANN202
    """A zero-argument callable running one collective of `nbytes` (float32 elements)."""
    elems = max(n, nbytes // 4 // n * n)
    if name == "all_reduce":
        t = torch.ones(elems, device=device)
        return lambda: dist.all_reduce(t)
    if name == "all_gather":
        out, inp = torch.empty(elems, device=device), torch.ones(elems // n, device=device)
        return lambda: dist.all_gather_into_tensor(out, inp)
    if name == "reduce_scatter":
        inp, out = torch.ones(elems, device=device), torch.empty(elems // n, device=device)
        return lambda: dist.reduce_scatter_tensor(out, inp)
    if name == "all_to_all":
        inp, out = torch.ones(elems, device=device), torch.empty(elems, device=device)
        return lambda: dist.all_to_all_single(out, inp)
    t = torch.ones(elems, device=device)
    rank = dist.get_rank()

    def ping_pong() -> None:  # ranks 0 and 1 exchange; others idle (measured one-way)
        if rank == 0:
            dist.send(t, 1)
            dist.recv(t, 1)
        elif rank == 1:
            dist.recv(t, 0)
            dist.send(t, 0)
    return ping_pong


def _time(fn, device: torch.device, budget_s: float) -> float:  # noqa: ANN001
    """Median seconds of one call (max over ranks) after a warm-up; all ranks repeat equally."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    dist.barrier()
    start = time.perf_counter()
    fn()
    sync()
    once = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(once, op=dist.ReduceOp.MAX)
    reps = int(min(50, max(3, budget_s / max(once.item(), 1e-6))))
    samples = []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    t = torch.tensor([statistics.median(samples)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _worker(sizes: list[int], budget_s: float, threads: int, out: str,
            compute_ranks: int) -> None:
    """One rank under torchrun. Ranks below `compute_ranks` first measure their device all at
    once (`calibrate.measure_device`); then every rank measures the collectives. Rank 0
    writes everything to `out`."""
    torch.set_num_threads(threads)
    n, local = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= n
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    dist.all_reduce(torch.ones(1 << 10, device=device))
    import meshplan.execute.parallelize  # noqa: F401  (what a `meshplan run` rank imports)
    from meshplan.execute.kernels import local_device, measure_device

    baseline_rss = _current_rss()
    figures = measure_device(local_device(local), budget_s) if local < compute_ranks else None
    gathered: list[Any] = [None] * n
    dist.all_gather_object(gathered, figures)
    rows = []
    for name in COLLECTIVES:
        for nbytes in sizes:
            t = _time(_op(name, nbytes, n, device), device, budget_s)
            if name == "send_recv":
                t /= 2.0
            rows.append({"collective": name, "nbytes": nbytes, "time_s": t,
                         "busbw": nbytes / t * bus_factor(name, n)})
    in_situ, overlap = _in_training_loop(device)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({
            "ranks": n, "backend": dist.get_backend(), "baseline_rss_bytes": baseline_rss,
            "rows": rows, "latency_in_loop_s": in_situ, "overlap": overlap,
            "device": [g for g in gathered if g is not None]}))
    dist.barrier()
    dist.destroy_process_group()


def _in_training_loop(device: torch.device) -> tuple[float, float]:
    """(latency, overlap) of collectives as a training loop meets them.

    Latency: extra time of a 4 KiB all-reduce issued after ~1 ms of GEMMs, back to back with
    no barrier, so that the ranks' drift and the wake-up of the backend's threads count, as
    they do between the layers of a tensor-parallel step. Overlap: the share of the shorter
    of (compute, 16 MiB all-reduce) hidden when the all-reduce runs async beside the compute
    (`Cluster.overlap`): on a CPU whose cores all compute, the backend has no core to run on.
    """
    a, b = (torch.randn(256, 256, device=device) for _ in range(2))
    small, big = torch.ones(1024, device=device), torch.ones(4 << 20, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def compute(reps: int) -> None:
        for _ in range(reps):
            a @ b
        sync()

    probe = _time(lambda: compute(1), device, 0.05)
    reps = max(1, int(1e-3 / max(probe, 1e-7)))
    def loop(with_collective: bool) -> None:
        for _ in range(20):
            compute(reps)
            if with_collective:
                dist.all_reduce(small)
    alone = _time(lambda: loop(False), device, 0.2)
    mixed = _time(lambda: loop(True), device, 0.2)
    latency = max((mixed - alone) / 20, 1e-7)
    heavy = max(1, int(0.02 / max(probe, 1e-7)))
    t_c = _time(lambda: compute(heavy), device, 0.2)
    t_m = _time(lambda: dist.all_reduce(big), device, 0.2)

    def both() -> None:
        work = dist.all_reduce(big, async_op=True)
        compute(heavy)
        work.wait()
    t_b = _time(both, device, 0.2)
    overlap = min(1.0, max(0.0, (t_c + t_m - t_b) / min(t_c, t_m)))
    return latency, overlap


def fit_network(coll: dict[str, Any]) -> dict[str, Any]:
    """Latency, bandwidth and busbw curve of the ring model in `cost.comm._ring`.

    Fitted to the collectives torch's runtimes issue (FSDP2 and sequence parallelism:
    all-gather and reduce-scatter; the other rows stay as comments). A least-squares fit of
    t = steps x alpha + (n-1)/n x S / B over message sizes, in relative error, gives the
    per-step latency alpha and the bandwidth B; the curve is each size's busbw with alpha
    removed, over B (as the preset NCCL curves are). The latency is raised to what a
    collective costs inside a compute loop (`collectives._in_training_loop`) when that is
    larger, since training issues its collectives between kernels, not after a barrier.
    """
    n = coll["ranks"]
    steps = min(n - 1, 2 * math.ceil(math.log2(max(n, 2))))
    rows = [r for r in coll["rows"] if r["collective"] in ("all_gather", "reduce_scatter")]
    t = np.array([r["time_s"] for r in rows])
    moved = np.array([(n - 1) / n * r["nbytes"] for r in rows])
    design = np.stack([np.full_like(t, steps), moved], axis=1) / t[:, None]
    (alpha, inv_bw), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    inv_bw = max(float(inv_bw), 1e-12)
    alpha = min(max(float(alpha), 0.0), float(t.min()) / steps)
    by_size: dict[int, list[float]] = {}
    for r, moved_r in zip(rows, moved, strict=True):
        data_time = max(r["time_s"] - steps * alpha, 0.25 * r["time_s"])
        by_size.setdefault(r["nbytes"], []).append(moved_r / data_time)
    sizes = sorted(by_size)
    bandwidth = 1.0 / inv_bw
    curve = {"x": [float(s) for s in sizes],
             "y": [round(float(min(1.0, max(1e-4, statistics.median(by_size[s]) / bandwidth))),
                         4) for s in sizes]}
    latency = max(alpha, coll.get("latency_in_loop_s", 0.0) / (2.0 * steps))
    return {"name": "loopback", "domain_size": 1 << 20, "bandwidth": float(f"{bandwidth:.4g}"),
            "latency": float(f"{latency:.4g}"), "bus_efficiency": curve}


def _current_rss() -> int:
    """Resident bytes now (Linux /proc); not ru_maxrss, which a spawned child inherits from
    its parent across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_collectives(num_ranks: int, sizes: list[int], budget_s: float = 0.05,
                        threads: int = 1, compute_ranks: int = 0) -> dict[str, Any]:
    """Start `num_ranks` ranks with torchrun (as `meshplan run` does) and measure every
    collective at every size; the first `compute_ranks` also measure their device."""
    with tempfile.TemporaryDirectory(prefix="meshplan-calib-") as tmp:
        out = os.path.join(tmp, "collectives.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(num_ranks), "-m", "meshplan.execute.collectives",
               json.dumps(sizes), str(budget_s), str(threads), out, str(compute_ranks)]
        # TMPDIR: torchrun's own temporary files go with this folder.
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TMPDIR=tmp)
        for _attempt in range(2):  # one retry: a loaded machine can drop a gloo connection
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode == 0 and os.path.exists(out):
                return json.loads(Path(out).read_text())
        raise MeshplanError(f"collective benchmark on {num_ranks} ranks failed (exit "
                            f"{proc.returncode}): {last_error(proc.stderr + proc.stdout)}")


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
            int(sys.argv[5]))
