"""The per-rank training loop that `meshplan run` launches under torchrun.

Run as `python -m meshplan.execute.runtime CONFIG.json OUT.json` on every rank (torchrun sets
RANK/WORLD_SIZE/MASTER_ADDR). Each rank builds its share of the model (`parallelize`), trains
`steps` optimizer steps on one fixed synthetic batch (seeded, so every plan sees the same
tokens and the loss falls as the model memorises it), and times each step wall-clock between
barriers. Rank 0 writes the JSON: the loss per step (averaged over data-parallel replicas, as
the single-process loss of the whole batch), the median step time after warm-up (the slowest
rank's), and the peak memory per rank (CUDA: `max_memory_reserved`; CPU: the process's max
RSS from `resource.getrusage`, which is what the calibrated `reserved_memory_bytes` baseline
is measured against).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from meshplan.execute.model import loss_fn
from meshplan.execute.parallelize import Parallelized, model_parameters, parallelize
from meshplan.mesh import num_microbatches
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan

PIDS_DIR = "pids"
"""Folder next to the result where each rank writes its pid (so `launch.stop` can reap it)."""


def progress_path(out_path: str | Path) -> Path:
    """Where rank 0 appends one JSON line per finished step (read after an interrupt)."""
    return Path(str(out_path) + ".progress.jsonl")


DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Compute dtype name -> autocast dtype (fp32: no autocast). Parameters stay fp32."""


@dataclass
class RunConfig:
    """Everything a rank needs; travels to the ranks as JSON."""

    model: dict[str, Any]
    plan: dict[str, Any]
    global_batch_size: int
    seq_len: int
    steps: int = 5
    warmup: int = 2
    seed: int = 0
    dtype: str = "fp32"
    optimizer: str = "adamw"
    lr: float = 1e-3
    threads_per_rank: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_batch(seed: int, batch: int, seq_len: int, vocab: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the whole global batch: labels are the inputs shifted by one."""
    gen = torch.Generator().manual_seed(10_007 + seed)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def make_optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer {name!r}")


def default_device_type() -> str:
    """Where ranks run: one GPU each when CUDA is available (NCCL), else CPU (gloo)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


PEAK_MEMORY_KIND = {"cuda": "reserved by the caching allocator (torch.cuda.max_memory_reserved)",
                    "cpu": "process max RSS (resource.getrusage)"}
"""What `peak_memory_bytes` measures per device type: on a GPU the allocator's reserved peak,
the figure meshplan's memory model predicts (what is allocated plus what the allocator holds
back: `cost.train.allocator`), as the sources it is validated on report it."""


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_reserved(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _set_sync(parts: list, plan: Plan, last: bool) -> None:
    """Gradient accumulation over micro-batches on FSDP2/replicate modules.

    ZeRO-0/1 reduce gradients once, after the last micro-batch; ZeRO-2/3 reduce-scatter every
    micro-batch (Rajbhandari et al. 2020, Sec. 5). ZeRO-1/2 keep the gathered weights until
    the step ends (all-gathered once per step); ZeRO-3 reshards after every backward.
    """
    for part in parts:
        if hasattr(part, "set_requires_gradient_sync"):
            part.set_requires_gradient_sync(last or plan.zero_stage >= 2)
            part.set_reshard_after_backward(last or plan.zero_stage >= 3)


def train_step(par: Parallelized, plan: Plan, x: torch.Tensor, y: torch.Tensor,
               opt: torch.optim.Optimizer) -> torch.Tensor:
    """One optimizer step on this rank's slice; returns its mean loss (0 off the last stage)."""
    if par.schedule is not None:
        losses: list[torch.Tensor] | None = [] if par.has_last else None
        args = (x,) if par.has_first else ()
        par.schedule.step(*args, target=y if par.has_last else None,  # type: ignore[attr-defined]
                          losses=losses)
        loss = torch.stack(losses).mean() if losses else torch.zeros((), device=x.device)
    else:
        mbs = plan.micro_batch_size
        m = x.shape[0] // mbs
        model = par.parts[0]
        loss = torch.zeros((), device=x.device)
        for i in range(m):
            _set_sync(par.parts, plan, last=i == m - 1)
            sl = slice(i * mbs, (i + 1) * mbs)
            mb_loss = loss_fn(model(x[sl]), y[sl]) / m
            mb_loss.backward()
            loss = loss + mb_loss.detach()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.float()


def run(cfg: RunConfig, progress: Path | None = None, index: int = 0) -> dict[str, Any]:
    """Train on this rank; return the summary (meaningful on every rank). Rank 0 appends
    each finished step (its own time, the loss) to `progress`."""
    if default_device_type() == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cfg.threads_per_rank)
    spec, plan = Model.model_validate(cfg.model), Plan.model_validate(cfg.plan)
    world = dist.get_world_size()
    assert world == plan.num_gpus, f"world size {world} != plan's {plan.num_gpus} ranks"
    m = int(num_microbatches(cfg.global_batch_size, plan.dp, plan.micro_batch_size))
    par = parallelize(spec, plan, m, seed=cfg.seed, seq_len=cfg.seq_len, device=device,
                      compute_dtype=DTYPES[cfg.dtype])
    opt = make_optimizer(cfg.optimizer, model_parameters(par.parts), cfg.lr)
    x, y = synthetic_batch(cfg.seed, cfg.global_batch_size, cfg.seq_len, spec.vocab_size)
    local = cfg.global_batch_size // plan.dp
    rows = slice(par.dp_index * local, (par.dp_index + 1) * local)
    x, y = x[rows].to(device), y[rows].to(device)
    pp_group = par.mesh["pp"].get_group() if plan.pp > 1 else None

    losses, times = [], []
    for _ in range(cfg.steps):
        dist.barrier()
        start = time.perf_counter()
        loss = train_step(par, plan, x, y, opt)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        if pp_group is not None:  # only the last stage saw the loss
            dist.all_reduce(loss, group=pp_group)
        dist.all_reduce(loss)  # each replica counted tp*pp times: the mean is the dp mean
        losses.append(loss.item() / world)
        if progress is not None and dist.get_rank() == 0:
            with open(progress, "a") as f:
                f.write(json.dumps({"config": index, "step": len(losses) - 1,
                                    "time_s": times[-1], "loss": losses[-1]}) + "\n")

    slowest = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    memory = torch.tensor([peak_memory_bytes(device)], dtype=torch.float64)
    per_rank = [torch.zeros_like(memory) for _ in range(world)]
    dist.all_gather(per_rank, memory)
    step_times = slowest.tolist()
    timed = step_times[min(cfg.warmup, len(step_times) - 1):]
    return {
        "world_size": world, "device": device.type, "plan": plan.model_dump(mode="json"),
        "dtype": cfg.dtype, "threads_per_rank": cfg.threads_per_rank,
        "num_microbatches": m, "losses": losses, "step_times_s": step_times,
        "step_time_s": statistics.median(timed), "step_time_min_s": min(timed),
        "peak_memory_bytes_per_rank": [int(t.item()) for t in per_rank],
        "peak_memory_bytes": int(max(t.item() for t in per_rank)),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point on each rank. CONFIG holds one RunConfig or a list of them; a list runs
    back to back in the same processes (one torchrun start-up for several plans of the same
    world size; the max-RSS memory figure is then a running maximum)."""
    args = sys.argv[1:] if argv is None else argv
    config_path, out_path = args
    with open(config_path) as f:
        data = json.load(f)
    configs = [RunConfig(**c) for c in (data if isinstance(data, list) else [data])]
    pids = Path(out_path).parent / PIDS_DIR
    with contextlib.suppress(OSError):
        pids.mkdir(exist_ok=True)
        (pids / str(os.getpid())).write_text(str(os.getpid()))
    dist.init_process_group("nccl" if default_device_type() == "cuda" else "gloo")
    progress = progress_path(out_path)
    results = [run(cfg, progress, i) for i, cfg in enumerate(configs)]
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results if isinstance(data, list) else results[0], f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: gloo's worker threads can abort it ("terminate called
    # without an active exception") after the work is done and the result written.
    os._exit(code)
