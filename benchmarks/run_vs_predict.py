"""Run vs predict: calibrate this machine, run plans on torch.distributed, compare.

Steps: `calibrate_local` writes the machine's cluster file; each plan then runs on the debug
model (bf16 autocast, gloo) in its own torchrun launch, and `meshplan.api.estimate` predicts it
on the calibrated cluster. Prints predicted vs measured step time (median after warm-up; the
best step too) and peak memory per plan (what the executor reports: max RSS on a CPU), the
median and worst absolute step-time error (issue 10 targets: median <= 15 %, every plan within
30 %) and the median and worst memory error (target: within 15 %). The calibration fits the
executor probes of `meshplan.execute.probes` at batch 4 x 128; the plans here run at 8 x 256,
so they are not the data the file was fitted to. The load average is printed before and after:
other work on a shared box (or its host) slows the runs.

Only plans whose ranks fit the cores run by default (one rank per core: an oversubscribed run
measures the scheduler, not the plan); `--four` adds the 4-rank plans anyway.
Run: python benchmarks/run_vs_predict.py [--cluster FILE] [--steps N] [--four]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from meshplan.api import estimate
from meshplan.estimate import GIB
from meshplan.execute.calibrate import calibrate_local
from meshplan.execute.launch import launch
from meshplan.execute.runtime import RunConfig
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.plan import Plan

PLANS = {
    "single": Plan(),
    "dp2 zero1": Plan(dp=2, zero_stage=1),
    "fsdp2 zero3": Plan(dp=2, zero_stage=3),
    "tp2 sp": Plan(tp=2),
    "pp2 1f1b": Plan(pp=2, micro_batch_size=1),
    "pp2 interleaved": Plan(pp=2, schedule="interleaved-1f1b"),
    "pp2 zb-h1": Plan(pp=2, schedule="zb-h1"),
    "pp2 gpipe": Plan(pp=2, schedule="gpipe"),
}
FOUR = {
    "fsdp4 zero3": Plan(dp=4, zero_stage=3),
    "tp2 dp2": Plan(tp=2, dp=2),
    "tp2 pp2": Plan(tp=2, pp=2),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster", help="use this calibrated file instead of calibrating")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--global-batch-size", type=int, default=8)
    ap.add_argument("--four", action="store_true", help="also run the 4-rank plans")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    if args.cluster:
        path = Path(args.cluster)
    else:
        path = Path(tempfile.mkdtemp(prefix="meshplan-bench-")) / "local.toml"
        path.write_text(calibrate_local()[1])
    cluster = load_cluster(path)
    acc, net = cluster.accelerator, cluster.network[0]
    print(f"calibrated {path}: bf16 peak {acc.peak('bf16') / 1e9:.0f} GFLOP/s, fp32 "
          f"{acc.peak_flops['fp32'] / 1e9:.0f}; memory {acc.memory_bandwidth / 1e9:.1f} GB/s; "
          f"attention eff fwd {acc.attention_efficiency:.3f} bwd "
          f"{acc.attention_backward_efficiency:.3f}; kernel overhead "
          f"{cluster.kernel_overhead * 1e6:.0f} us; {net.name} busbw {net.bandwidth / 1e9:.2f} "
          f"GB/s, latency {net.latency * 1e6:.0f} us; reserved "
          f"{acc.reserved_memory_bytes / GIB:.2f} GiB")

    model = load_model("debug")
    job = Job(global_batch_size=args.global_batch_size, seq_len=args.seq_len, precision="bf16")
    plans = dict(PLANS, **(FOUR if args.four else {}))
    cores = os.cpu_count() or 1
    print(f"\ndebug model, batch {job.global_batch_size} x {job.seq_len}, bf16, "
          f"{args.steps} steps (median after 3 warm-up), {cores} cores\n")
    print(f"{'plan':18} {'ranks':>5} {'pred ms':>9} {'meas ms':>9} {'best ms':>9} {'error':>8} "
          f"{'pred GiB':>9} {'meas GiB':>9}")
    errors, mem_errors = [], []
    for name, plan in plans.items():
        pred = estimate(model, cluster, job, plan)
        cfg = RunConfig(model=model.model_dump(mode="json"), plan=plan.model_dump(mode="json"),
                        global_batch_size=job.global_batch_size, seq_len=job.seq_len,
                        steps=args.steps, warmup=3, dtype="bf16")
        res = launch(cfg, plan.num_gpus)
        t_m, t_p = res["step_time_s"], pred.step_time_s
        err = (t_p - t_m) / t_m
        mem_err = (pred.memory_bytes["peak"] - res["peak_memory_bytes"]) / res["peak_memory_bytes"]
        if plan.num_gpus <= cores:
            errors.append(abs(err))
            mem_errors.append(abs(mem_err))
        flag = "" if plan.num_gpus <= cores else "  (oversubscribed: not in the median)"
        print(f"{name:18} {plan.num_gpus:5d} {t_p * 1e3:9.1f} {t_m * 1e3:9.1f} "
              f"{res['step_time_min_s'] * 1e3:9.1f} {err:+8.1%} "
              f"{pred.memory_bytes['peak'] / GIB:9.2f} {res['peak_memory_bytes'] / GIB:9.2f}"
              f"{flag}")
    print(f"\n|step-time error| over {len(errors)} plans: median "
          f"{statistics.median(errors):.1%} (target <= 15%), worst {max(errors):.1%} (target "
          f"<= 30%); |memory error| median {statistics.median(mem_errors):.1%}, worst "
          f"{max(mem_errors):.1%} (target <= 15%); load average before {load_before:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
