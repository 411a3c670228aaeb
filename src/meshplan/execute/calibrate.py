"""Measure this machine as a meshplan cluster file (`meshplan calibrate --local`).

One "accelerator" is what one rank of `meshplan run` gets: on a CPU, `threads` cores (torchrun
gives each rank one thread by default); on a GPU, one device. Each figure is measured, then
expressed in the schema of `presets/clusters/*.toml`, so calibration changes data, not code
(DESIGN.md):

- peak_flops[dtype]: the fastest GEMM over a range of shapes (fp32, bf16, fp16 where the
  device runs them); gemm_efficiency: measured / peak against the FLOPs of one GEMM, for the
  compute dtype (bf16), as the cost model's roofline reads it (`cost.kernels.Kernels.gemm`);
- memory_bandwidth: a large tensor copy (read + write); memory_efficiency: a mid-size
  element-wise add relative to it;
- attention efficiencies: causal `scaled_dot_product_attention` forward and backward, inverted
  through the cost model's own formula (`cost.train.passes.attention_times`);
- kernel_overhead: a debug-model block timed at 128 and 256 tokens, minus what the calibrated
  roofline terms above predict for it, spread over the four per-layer overheads the cost
  model charges (`fit_overhead`; the block on 8 tokens, pure overhead, if that is negative);
- network tier "loopback": collective busbw over message sizes (`collectives.py`), the
  efficiency curve with the small-message latency removed, as the preset files' NCCL curves
  are; latency: the larger of that and a collective's cost inside a compute loop;
- overlap: on a GPU, the share of an async all-reduce hidden behind concurrent compute; on a
  CPU zero, as FSDP2 and DTensor wait each collective on the compute thread (pp stays 0:
  torch's pipeline runtime waits on each receive);
- reserved_memory_bytes: a rank's resident memory before the model.
The microbenchmarks live in `kernels.py` and `collectives.py`; raw measurements are kept as
comments at the end of the file.
"""

from __future__ import annotations

import os
import statistics
import sys
import tomllib
from collections.abc import Callable
from typing import Any

import tomli_w
import torch

from meshplan.execute.collectives import fit_network, measure_collectives
from meshplan.execute.kernels import FIT_TOKENS, local_device
from meshplan.specs.cluster import Cluster


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


MESSAGE_SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20)


def fit_overhead(data: dict[str, Any], blocks: dict[int, float], tiny: float) -> float:
    """`kernel_overhead`: what one block takes beyond the cost model's roofline terms.

    The calibrated figures (GEMM curve, attention, memory) price the block through the cost
    model's own formulas (`cost.train.passes.attention_times` / `mlp_times`, overhead 0); the
    measured remainder, spread over the 4 overheads charged per layer (attention and MLP,
    forward and backward), is the overhead: launches, dispatch, autocast casts and whatever
    else the roofline leaves out. Falls back to the block on 8 tokens (pure overhead) if the
    roofline already over-explains the block.
    """
    from meshplan.cost.kernels import Kernels
    from meshplan.cost.train.passes import attention_times, mlp_times
    from meshplan.mesh import Mesh
    from meshplan.specs.io import load_model
    from meshplan.specs.job import Job
    from meshplan.specs.plan import Plan, PlanArrays

    cluster = Cluster.model_validate({**data, "kernel_overhead": 0.0})
    model, plans = load_model("debug"), Mesh(PlanArrays.from_plans([Plan()]))
    residuals = []
    for tokens, measured in blocks.items():
        job = Job(global_batch_size=1, seq_len=tokens, precision="bf16")
        K = Kernels(cluster, job.precision)
        terms = (attention_times(model, job, K, plans), mlp_times(model, job, K, plans, False))
        roofline = sum(float(getattr(t, k)[0]) for t in terms
                       for k in ("forward", "backward_input", "backward_weight"))
        residuals.append((measured - roofline) / 4.0)
    fitted = statistics.median(residuals)
    return fitted if fitted > 0 else tiny


def _curve(rows: list[tuple[float, float]], peak: float) -> dict[str, list[float]]:
    best: dict[float, float] = {}
    for flops, rate in rows:
        best[flops] = max(best.get(flops, 0.0), rate)
    xs = sorted(best)
    # best is a max over ranks and peak a median over ranks: clamp the ratio at 1
    return {"x": xs, "y": [round(min(1.0, max(1e-4, best[x] / peak)), 4) for x in xs]}


def _median_over_ranks(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-figure median over the ranks that measured concurrently."""
    med = statistics.median
    out: dict[str, Any] = {k: med(r[k] for r in per_rank) for k in per_rank[0] if k != "gemm"}
    out["gemm"] = {}
    for dtype, rows in per_rank[0]["gemm"].items():
        n = min(len(r["gemm"][dtype]) for r in per_rank)
        out["gemm"][dtype] = [(rows[i][0], med(r["gemm"][dtype][i][1] for r in per_rank))
                              for i in range(n)]
    return out


def calibrate_local(*, threads: int = 1, ranks: tuple[int, ...] = (2, 4),
                    budget_s: float = 0.05, message_sizes: tuple[int, ...] = MESSAGE_SIZES,
                    probes: bool = True, repeats: int = 3,
                    notify: Callable[[str], None] | None = _stderr
                    ) -> tuple[dict[str, Any], str]:
    """Measure this machine: the cluster data and the text of its cluster TOML file (the
    data, with the raw measurements as comments). Writing it is the caller's choice.

    The compute figures are measured on every rank of a full node at once (one rank per
    `threads` cores, or per GPU), because that is how a multi-rank plan meets the machine:
    on a CPU the ranks share caches, memory bandwidth and whatever else runs there. The
    network is fitted from the largest rank count that fits the node (at least 2); the
    other counts are kept as comments.

    With `probes`, the executor itself is then measured (`probes.py`: one rank, FSDP2, DTensor
    TP with SP, pipelining; `repeats` times each, the median kept) and kernel_overhead, the
    network's latency and bandwidth and reserved_memory_bytes are fitted to it; repeats that
    disagree by more than 15 % are reported through `notify` and in the file.
    """
    device = local_device()
    cores = os.cpu_count() or 1
    per_node = max(1, cores // threads) if device.type == "cpu" else torch.cuda.device_count()
    fit_ranks = max([n for n in ranks if n <= max(per_node, 2)] or [2])
    colls = [measure_collectives(n, list(message_sizes), budget_s, threads,
                                 compute_ranks=min(n, per_node) if n == fit_ranks else 0)
             for n in sorted(set(ranks) | {fit_ranks})]
    fit_from = next(c for c in colls if c["ranks"] == fit_ranks)
    dev = _median_over_ranks(fit_from["device"])
    gemm = dev["gemm"]
    peaks = {k: float(f"{max(r for _, r in v):.4g}") for k, v in gemm.items()}
    compute = "bf16" if peaks["bf16"] >= 0.2 * peaks["fp32"] else "fp32"
    if device.type == "cuda":
        mem_bytes = float(torch.cuda.get_device_properties(0).total_memory)
        name = torch.cuda.get_device_name(0)
    else:
        mem_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / per_node
        name = f"cpu-{threads}t"
    # On a CPU, FSDP2 and DTensor issue and wait each collective on the compute thread (no
    # streams), so nothing hides behind compute whatever the hardware could do (the
    # microbenchmark's figure stays in the comments); on a GPU, NCCL's stream overlap is
    # what was measured.
    overlap = round(fit_from["overlap"], 3) if device.type == "cuda" else 0.0
    data = {
        "name": "local",
        "gpus_per_node": per_node,
        "kernel_overhead": 0.0,  # fitted below
        # the host and device measured: `meshplan run` counts this file as this machine
        # (`api.running.measured_host`)
        "source": f"meshplan calibrate --local on host={os.uname().nodename} "
                  f"({cores} cores, device={device.type}, torch {torch.__version__}, "
                  f"{fit_from['backend']})",
        "accelerator": {
            "name": name,
            "peak_flops": peaks,
            "memory_bytes": float(f"{mem_bytes:.6g}"),
            "memory_bandwidth": float(f"{dev['copy_bw']:.4g}"),
            "gemm_efficiency": _curve(gemm[compute], peaks[compute]),
            "attention_efficiency": round(dev["attn_f"], 4),
            "attention_backward_efficiency": round(dev["attn_b"], 4),
            "memory_efficiency": round(min(1.0, max(0.01, dev["add_bw"] / dev["copy_bw"])), 4),
            "reserved_memory_bytes": float(fit_from["baseline_rss_bytes"]),
        },
        "network": [fit_network(fit_from)],
        "overlap": {"tp_backward": overlap, "tp_overlapped": overlap, "dp": overlap,
                    "pp": 0.0, "cp": overlap, "ep_overlapped": overlap},
        "host": {"bandwidth": float(f"{dev['copy_bw']:.4g}"),
                 "cpu_adam_params_per_s": float(f"{dev['adam']:.4g}"),
                 "memory_bytes": float(f"{mem_bytes:.6g}")},
    }
    blocks = {n: dev[f"block_{n}"] for n in FIT_TOKENS}
    data["kernel_overhead"] = float(f"{fit_overhead(data, blocks, dev['overhead']):.4g}")
    probe_lines: list[str] = []
    if probes:
        from meshplan.execute.probes import fit_to_probes, load_warnings, report_lines, run_probes

        net, acc = data["network"][0], data["accelerator"]  # type: ignore[index]
        assert isinstance(net, dict) and isinstance(acc, dict)
        micro = (float(data["kernel_overhead"]), float(net["latency"]),  # type: ignore[arg-type]
                 float(net["bandwidth"]), float(acc["reserved_memory_bytes"]))
        measured = run_probes(per_node, threads, repeats)
        data, report = fit_to_probes(data, measured)
        warnings = load_warnings(report, notify)
        probe_lines = ["", *report_lines(report), *(f"# {w}" for w in warnings)]
        probe_lines.append("# fitted to the probes: kernel_overhead, network latency and "
                           "bandwidth, reserved_memory_bytes; the microbenchmarks gave "
                           f"{micro[0] * 1e6:.0f} us, {micro[1] * 1e6:.0f} us, "
                           f"{micro[2] / 1e9:.3g} GB/s, {micro[3] / 2**30:.3f} GiB")
    header = _header(device, threads, len(fit_from["device"]), fit_from["backend"])
    text = (header + tomli_w.dumps(data) + _raw(gemm, colls)
            + "# debug block fwd+bwd (tokens:ms) " + ", ".join(
                f"{n}:{t * 1e3:.2f}" for n, t in {8: 4 * dev["overhead"], **blocks}.items())
            + "\n# async all-reduce hidden behind concurrent compute (microbenchmark): "
            f"{fit_from['overlap']:.2f}; latency inside a compute loop: "
            f"{fit_from['latency_in_loop_s'] * 1e6:.0f} us\n"
            + "".join(line + "\n" for line in probe_lines))
    Cluster.model_validate(tomllib.loads(text))  # what we hand back must load
    return data, text


def _header(device: torch.device, threads: int, busy: int, backend: str) -> str:
    what = (f"one rank = {threads} CPU thread(s)" if device.type == "cpu"
            else "one rank = one GPU") + f", collectives on {backend}"
    return (f"# Measured by `meshplan calibrate --local` ({what}; compute measured with "
            f"{busy} rank(s) busy at once).\n"
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
