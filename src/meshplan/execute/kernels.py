"""Compute microbenchmarks of one rank's device, for `meshplan calibrate --local`.

Each function times what the cost model prices, in the layout training runs it: the three
GEMMs of a linear layer (`cost.kernels.Kernels.gemm`), causal GQA attention through
`scaled_dot_product_attention` (`attention_times`), a large copy and a mid-size element-wise
add (memory roofline), a whole debug-model block (to fit `kernel_overhead`) and an AdamW step.
`measure_device` runs them all; `calibrate.py` runs it on every rank of a node at once.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

GEMM_SIZES = ((64, 256, 256), (128, 256, 256), (128, 688, 256), (256, 688, 256),
              (512, 688, 256), (1024, 1024, 1024), (2048, 1024, 1024), (2048, 2048, 2048))
"""(tokens, out features, in features) of the linear layers timed: the debug model's shapes up
to GEMMs large enough to reach the device's peak."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def local_device(local_rank: int = 0) -> torch.device:
    return (torch.device("cuda", local_rank) if torch.cuda.is_available()
            else torch.device("cpu"))


def _timeit(fn, device: torch.device, budget_s: float = 0.1, max_reps: int = 50) -> float:  # noqa: ANN001
    """Median seconds per call over repetitions within a time budget.

    The median, not `timeit`'s minimum: `meshplan run` reports median step times, so the
    figures it is compared with should carry the same share of whatever else the machine
    (or its host) runs; on a quiet GPU the two agree anyway."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < 5 or (spent < budget_s and len(samples) < max_reps):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
        spent += samples[-1]
    return statistics.median(samples)


def measure_gemm(device: torch.device, budget_s: float) -> dict[str, list[tuple[float, float]]]:
    """dtype -> [(FLOPs of one GEMM, achieved FLOP/s)] over GEMM_SIZES.

    Each point times the three GEMMs of a linear layer, in the layouts training runs them:
    forward `F.linear(x, w)`, input gradient `dy @ w`, weight gradient `dy.T @ x` (the cost
    model charges all three at the forward's FLOPs, `cost.train.passes`)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for name, dtype in DTYPES.items():
        rows = []
        for m, n, k in GEMM_SIZES:
            flops = 2.0 * m * n * k
            x, w, dy = (torch.randn(*shape, device=device).to(dtype)
                        for shape in ((m, k), (n, k), (m, n)))
            t = (_timeit(lambda x=x, w=w: torch.nn.functional.linear(x, w), device, budget_s)
                 + _timeit(lambda dy=dy, w=w: dy @ w, device, budget_s)
                 + _timeit(lambda dy=dy, x=x: dy.t() @ x, device, budget_s))
            rows.append((flops, 3 * flops / t))
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
    """(forward, backward) efficiency of causal SDPA in bf16 on the debug model's heads (8
    query heads over 4 KV heads, head size 32, (b, s, h, d) transposed as the model does),
    inverted through the cost model: forward = 0.5 core / (peak eff_f), backward =
    core / (peak eff_b), where core = 4 b s^2 a d (`cost.flops.attention_core_flops`)."""
    effs_f, effs_b = [], []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for s in (128, 256, 512):
        q, k, v = (torch.randn(1, s, heads, 32, device=device, dtype=torch.bfloat16
                               ).transpose(1, 2).requires_grad_() for heads in (8, 4, 4))
        core = 4.0 * s * s * 8 * 32

        def fwd(q=q, k=k, v=v) -> torch.Tensor:  # noqa: ANN001
            return sdpa(q, k, v, is_causal=True, enable_gqa=True)
        t_f = _timeit(fwd, device, budget_s)
        t_fb = _timeit(lambda fwd=fwd: fwd().sum().backward(), device, budget_s)
        effs_f.append(0.5 * core / (t_f * peak))
        effs_b.append(core / (max(t_fb - t_f, 1e-9) * peak))
    clip = lambda e: float(min(1.0, max(1e-4, statistics.median(e))))  # noqa: E731
    return clip(effs_f), clip(effs_b)


FIT_TOKENS = (128, 256)
"""Sequence lengths of the debug-model block timed to fit `kernel_overhead`."""


def block_time(device: torch.device, tokens: int, budget_s: float) -> float:
    """Seconds of one debug-model block, forward + backward under bf16 autocast, on one
    sequence of `tokens` tokens (the residual stream in bf16, as `Transformer` runs it)."""
    from meshplan.execute.model import Block
    from meshplan.specs.io import load_model

    block = Block(load_model("debug"), 0, max(tokens, 8)).to(device)
    x = torch.randn(1, tokens, 256, device=device).to(torch.bfloat16).requires_grad_()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = block(x)
        y.float().sum().backward()
    return _timeit(step, device, budget_s)


def measure_adam(device: torch.device) -> float:
    """Parameters per second of one AdamW step (for the host-offload figure)."""
    p = torch.nn.Parameter(torch.randn(4 << 20, device=device))
    p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW([p])
    return p.numel() / _timeit(opt.step, device, 0.2, 10)


def measure_device(device: torch.device, budget_s: float) -> dict[str, Any]:
    """Every compute figure of one rank's device (run on all ranks of a node at once)."""
    gemm = measure_gemm(device, budget_s)
    bf16_peak = max(r for _, r in gemm["bf16"])
    copy_bw, add_bw = measure_memory(device, budget_s)
    attn_f, attn_b = measure_attention(device, bf16_peak, budget_s)
    out = {"gemm": gemm, "copy_bw": copy_bw, "add_bw": add_bw, "attn_f": attn_f,
           "attn_b": attn_b, "overhead": block_time(device, 8, budget_s) / 4.0,
           "adam": measure_adam(device)}
    out.update({f"block_{n}": block_time(device, n, budget_s) for n in FIT_TOKENS})
    return out
