"""Collective bus bandwidth over message sizes, measured the way nccl-tests does.

Conventions follow nccl-tests' PERFORMANCE.md (the same ones `meshplan.cost.comm` uses):
`nbytes` is the full buffer (all-reduce in/out, all-gather output, reduce-scatter input, each
rank's all-to-all buffer) and busbw = nbytes / time x 2(n-1)/n for all-reduce, x (n-1)/n for
all-gather, reduce-scatter and all-to-all; send/recv is one-way (half a ping-pong). Ranks
are spawned with `torch.multiprocessing` on gloo (CPU) or NCCL (one GPU per rank), and rank 0
also reports the resident memory of a process that has torch and a process group up: the
fixed memory cost every rank pays before the model allocates anything.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
    """Median seconds of one call after a warm-up; all ranks run the same repetition count."""
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


def _worker(rank: int, n: int, port: int, sizes: list[int], budget_s: float, threads: int,
            out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= n
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=n)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = []
    for name in COLLECTIVES:
        for nbytes in sizes:
            t = _time(_op(name, nbytes, n, device), device, budget_s)
            if name == "send_recv":
                t /= 2.0
            rows.append({"collective": name, "nbytes": nbytes, "time_s": t,
                         "busbw": nbytes / t * bus_factor(name, n)})
    if rank == 0:
        Path(out).write_text(json.dumps({"ranks": n, "backend": dist.get_backend(),
                                         "baseline_rss_bytes": baseline_rss, "rows": rows}))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_collectives(num_ranks: int, sizes: list[int], budget_s: float = 0.05,
                        threads: int = 1) -> dict[str, Any]:
    """Spawn `num_ranks` ranks and measure every collective at every size."""
    with tempfile.TemporaryDirectory(prefix="meshplan-calib-") as tmp:
        out = os.path.join(tmp, "collectives.json")
        mp.start_processes(_worker, args=(num_ranks, _free_port(), sizes, budget_s, threads,
                                          out), nprocs=num_ranks, start_method="spawn")
        return json.loads(Path(out).read_text())
