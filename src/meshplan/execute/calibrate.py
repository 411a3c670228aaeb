"""Measure this machine and write it as a meshplan cluster file (`meshplan calibrate --local`).

One "accelerator" is what one rank of `meshplan run` gets: on a CPU, `threads` cores (torchrun
gives each rank one thread by default); on a GPU, one device. Each figure is measured, then
expressed in the schema of `presets/clusters/*.toml`, so calibration changes data, not code
(DESIGN.md):

- peak_flops[dtype]: the fastest GEMM over a range of shapes (fp32, bf16, fp16 where the
  device runs them); gemm_efficiency: measured / peak against the FLOPs of one GEMM, for the
  compute dtype (bf16), as the cost model's roofline reads it (`cost.compute.Kernels.gemm`);
- memory_bandwidth: a large tensor copy (read + write); memory_efficiency: a mid-size
  element-wise add relative to it;
- attention efficiencies: causal `scaled_dot_product_attention` forward and backward, inverted
  through the cost model's own formula (`cost.compute.attention_times`);
- kernel_overhead: a transformer block of the debug model on 8 tokens, where the time is all
  launch and dispatch, spread over the four per-layer overheads the cost model charges;
- network tier "loopback": collective busbw over message sizes (`collectives.py`), latency from
  the smallest messages and the efficiency curve with that latency removed, as the preset
  files' NCCL curves are; reserved_memory_bytes: a rank's resident memory before the model.
Raw measurements are kept as comments at the end of the file.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import tomli_w
import torch

from meshplan.execute.collectives import measure_collectives
from meshplan.specs.io import load_cluster

GEMM_SIZES = ((64, 64, 64), (128, 128, 128), (256, 256, 256), (256, 688, 256),
              (512, 256, 256), (512, 512, 512), (1024, 256, 1024), (1024, 1024, 1024),
              (2048, 1024, 1024), (2048, 2048, 2048))
MESSAGE_SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _timeit(fn, device: torch.device, budget_s: float = 0.1, max_reps: int = 50) -> float:  # noqa: ANN001
    """Median seconds per call, repeating within a time budget."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < 3 or (spent < budget_s and len(samples) < max_reps):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
        spent += samples[-1]
    return statistics.median(samples)


def measure_gemm(device: torch.device, budget_s: float) -> dict[str, list[tuple[float, float]]]:
    """dtype -> [(FLOPs of one GEMM, achieved FLOP/s)] over GEMM_SIZES."""
    out: dict[str, list[tuple[float, float]]] = {}
    for name, dtype in DTYPES.items():
        rows = []
        for m, n, k in GEMM_SIZES:
            flops = 2.0 * m * n * k
            a = torch.randn(m, k, device=device).to(dtype)
            b = torch.randn(k, n, device=device).to(dtype)
            t = _timeit(lambda a=a, b=b: a @ b, device, budget_s)
            rows.append((flops, flops / t))
            if name != "fp32" and rows[-1][1] < 0.2 * max(f for _, f in out["fp32"]):
                break  # an emulated dtype (fp16 on most CPUs): a few points say enough
        out[name] = rows
    return out


def measure_memory(device: torch.device, budget_s: float) -> tuple[float, float]:
    """(copy bandwidth of a 256 MiB tensor, element-wise add bandwidth at 4 MiB), bytes/s."""
    big = torch.empty(64 << 20, device=device)
    dst = torch.empty_like(big)
    copy_bw = 2 * big.numel() * 4 / _timeit(lambda: dst.copy_(big), device, budget_s)
    a, b = torch.ones(1 << 20, device=device), torch.ones(1 << 20, device=device)
    c = torch.empty_like(a)
    add_bw = 3 * a.numel() * 4 / _timeit(lambda: torch.add(a, b, out=c), device, budget_s)
    return copy_bw, add_bw


def measure_attention(device: torch.device, peak: float, budget_s: float) -> tuple[float, float]:
    """(forward, backward) efficiency of causal SDPA in bf16, inverted through the cost
    model: forward = 0.5 core / (peak eff_f), backward = core / (peak eff_b), where core =
    4 b s^2 a d (`cost.flops.attention_core_flops`)."""
    effs_f, effs_b = [], []
    for s in (128, 256, 512):
        q, k, v = (torch.randn(1, 8, s, 32, device=device, dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        core = 4.0 * s * s * 8 * 32
        f = torch.nn.functional.scaled_dot_product_attention
        t_f = _timeit(lambda q=q, k=k, v=v: f(q, k, v, is_causal=True), device, budget_s)
        t_fb = _timeit(lambda q=q, k=k, v=v: f(q, k, v, is_causal=True).sum().backward(),
                       device, budget_s)
        effs_f.append(0.5 * core / (t_f * peak))
        effs_b.append(core / (max(t_fb - t_f, 1e-9) * peak))
    clip = lambda e: float(min(1.0, max(1e-4, statistics.median(e))))  # noqa: E731
    return clip(effs_f), clip(effs_b)


def measure_overhead(device: torch.device, budget_s: float) -> float:
    """Fixed seconds per layer per pass: a debug-model block on 8 tokens, forward + backward
    under bf16 autocast, divided by the 4 overheads (attention + MLP, forward + backward) the
    cost model charges per layer."""
    from meshplan.execute.model import Block
    from meshplan.specs.io import load_model

    block = Block(load_model("debug"), 0, 64).to(device)
    x = torch.randn(1, 8, 256, device=device, requires_grad=True)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = block(x)
        y.float().sum().backward()
    return _timeit(step, device, budget_s) / 4.0


def measure_adam(device: torch.device) -> float:
    """Parameters per second of one AdamW step (for the host-offload figure)."""
    p = torch.nn.Parameter(torch.randn(4 << 20, device=device))
    p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW([p])
    return p.numel() / _timeit(opt.step, device, 0.2, 10)


def fit_network(coll: dict[str, Any]) -> dict[str, Any]:
    """Latency and busbw curve of the ring model in `cost.comm._ring` from measured rows."""
    n = coll["ranks"]
    steps = min(n - 1, 2 * math.ceil(math.log2(max(n, 2))))
    ring = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0}
    rows = [r for r in coll["rows"] if r["collective"] in ring]
    smallest = min(r["nbytes"] for r in rows)
    latency = statistics.median(r["time_s"] / (ring[r["collective"]] * steps)
                                for r in rows if r["nbytes"] == smallest)
    by_size: dict[int, list[float]] = {}
    for r in rows:
        factor = ring[r["collective"]]
        data_time = max(r["time_s"] - factor * steps * latency, 0.05 * r["time_s"])
        by_size.setdefault(r["nbytes"], []).append(factor * (n - 1) / n * r["nbytes"] / data_time)
    sizes = sorted(by_size)
    busbw = [math.exp(statistics.fmean(math.log(b) for b in by_size[s])) for s in sizes]
    bandwidth = max(busbw)
    curve = {"x": [float(s) for s in sizes],
             "y": [round(max(1e-4, b / bandwidth), 4) for b in busbw]}
    return {"name": "loopback", "domain_size": 1 << 20, "bandwidth": float(f"{bandwidth:.4g}"),
            "latency": float(f"{latency:.4g}"), "bus_efficiency": curve}


def _curve(rows: list[tuple[float, float]], peak: float) -> dict[str, list[float]]:
    best: dict[float, float] = {}
    for flops, rate in rows:
        best[flops] = max(best.get(flops, 0.0), rate)
    xs = sorted(best)
    return {"x": xs, "y": [round(max(1e-4, best[x] / peak), 4) for x in xs]}


def calibrate_local(out: str | Path = "meshplan-local.toml", *, threads: int = 1,
                    ranks: tuple[int, ...] = (2, 4), budget_s: float = 0.05,
                    message_sizes: tuple[int, ...] = MESSAGE_SIZES) -> dict[str, Any]:
    """Measure this machine, write the cluster TOML to `out`, return the data written."""
    device = _device()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    gemm = measure_gemm(device, budget_s)
    peaks = {k: float(f"{max(r for _, r in v):.4g}") for k, v in gemm.items()}
    compute = "bf16" if peaks["bf16"] >= 0.2 * peaks["fp32"] else "fp32"
    copy_bw, add_bw = measure_memory(device, budget_s)
    attn_f, attn_b = measure_attention(device, peaks["bf16"], budget_s)
    overhead = measure_overhead(device, budget_s)
    cores = os.cpu_count() or 1
    per_node = max(1, cores // threads) if device.type == "cpu" else torch.cuda.device_count()
    usable = [n for n in ranks if n <= max(per_node, 2)] or [2]
    colls = [measure_collectives(n, list(message_sizes), budget_s, threads) for n in ranks]
    fit_from = max((c for c in colls if c["ranks"] in usable), key=lambda c: c["ranks"])
    if device.type == "cuda":
        mem_bytes = float(torch.cuda.get_device_properties(0).total_memory)
        name = torch.cuda.get_device_name(0)
    else:
        mem_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / per_node
        name = f"cpu-{threads}t"
    data = {
        "name": "local",
        "gpus_per_node": per_node,
        "kernel_overhead": float(f"{overhead:.4g}"),
        "source": f"meshplan calibrate --local on {os.uname().nodename} "
                  f"({cores} cores, torch {torch.__version__}, {fit_from['backend']})",
        "accelerator": {
            "name": name,
            "peak_flops": peaks,
            "memory_bytes": float(f"{mem_bytes:.6g}"),
            "memory_bandwidth": float(f"{copy_bw:.4g}"),
            "gemm_efficiency": _curve(gemm[compute], peaks[compute]),
            "attention_efficiency": round(attn_f, 4),
            "attention_backward_efficiency": round(attn_b, 4),
            "memory_efficiency": round(min(1.0, max(0.01, add_bw / copy_bw)), 4),
            "reserved_memory_bytes": float(fit_from["baseline_rss_bytes"]),
        },
        "network": [fit_network(fit_from)],
        "host": {"bandwidth": float(f"{copy_bw:.4g}"),
                 "cpu_adam_params_per_s": float(f"{measure_adam(torch.device('cpu')):.4g}"),
                 "memory_bytes": float(f"{mem_bytes:.6g}")},
    }
    path = Path(out)
    path.write_text(_header(device, threads) + tomli_w.dumps(data) + _raw(gemm, colls))
    load_cluster(path)  # what we write must load
    return data


def _header(device: torch.device, threads: int) -> str:
    what = (f"one rank = {threads} CPU thread(s), gloo over loopback" if device.type == "cpu"
            else "one rank = one GPU, NCCL")
    return (f"# Measured by `meshplan calibrate --local` ({what}).\n"
            "# Units SI (FLOP/s, bytes, seconds); raw measurements at the end of the file.\n")


def _raw(gemm: dict[str, list[tuple[float, float]]], colls: list[dict[str, Any]]) -> str:
    lines = ["", "# --- raw measurements ---"]
    for dtype, rows in gemm.items():
        pts = ", ".join(f"{f:.3g}:{r / 1e9:.1f}" for f, r in rows)
        lines.append(f"# gemm {dtype} (FLOPs:GFLOP/s) {pts}")
    for c in colls:
        for name in sorted({r["collective"] for r in c["rows"]}):
            pts = ", ".join(f"{r['nbytes']}:{r['busbw'] / 1e9:.3f}/{r['time_s'] * 1e6:.0f}us"
                            for r in c["rows"] if r["collective"] == name)
            lines.append(f"# {c['backend']} {c['ranks']} ranks {name} (bytes:busbw GB/s/time) "
                         f"{pts}")
    return "\n".join(lines) + "\n"
