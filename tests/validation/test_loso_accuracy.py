"""Honest figures gated (issue 13, part 5): leave-one-source-out error per source family.

Each group (silicon) is refitted without one source at a time and predicts that source's runs
(`validate.calibrate`, closed-form pipeline, as `benchmarks/validation_accuracy.py`). The
bounds are today's figures plus a small margin (docs/validation.md, "Error: in-sample and
leave-one-source-out"), so a change that makes meshplan transfer worse to unseen sources
fails here even when the in-sample fit (tests/validation/test_accuracy.py) still looks good.
One calibration with leave-one-source-out for the whole session (~160 s of CPU; 4-15 min
wall on a shared 2-core machine).
"""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.validate.calibrate import FitResult, calibrate
from meshplan.validate.rows import load_runs

pytestmark = pytest.mark.slow

FAMILIES: dict[str, tuple[str, ...]] = {
    # engine lineage of each shipped source (published_training_runs.md)
    "Megatron-LM / DeepSpeed 2021-22": ("megatron2021", "mtnlg2022", "bloom_tr11"),
    "Megatron-Core / NeMo": ("nemo_perf_2407", "megatron_bridge_perf_2509",
                             "mcore_moe_report_2026"),
    "Zero Bubble (Megatron-LM fork)": ("zerobubble2024",),
    "PyTorch FSDP (llm-foundry, IBM)": ("llmfoundry_bench", "ibm_pytorch_fsdp_blog_2024"),
    "torchtitan (500 W H100, reads the H100 table)": ("torchtitan_bench_2412",),
    "Aleph Alpha framework": ("hagemann2024",),
}
MARGIN = 0.03
"""Absolute slack on every bound (3 points of |error|): refits move figures by about 1 point."""
# (median, p90) of |held-out throughput error| measured on 2026-12-02 with the session's merged
# model (memory rebuild of issue 16, silicon / power-cap and DeepSpeed ZeRO-3 rules, the MoE
# cost, GB300) and its refitted calibration (docs/validation.md, "Leave-one-source-out").
# Before them, on 2026-12-01: headline 0.224 / 1.200, all 0.140 / 0.458. Issue 13's target
# (headline median <= 10%, p90 <= 30%): p90 met, median not yet; these guard against regression.
# Then, merged on 2026-12-02 (previous figures beside): the network rules (ZeRO-3/FSDP
# per-layer collectives at their own size and latency, scale-out curves read at the ring's
# per-step share, fms-fsdp bf16 reduction), the MoE dispatchers (DeepEP / HybridEP's
# deduplicated dispatch, forced-even routing, moe_act recompute of the experts' activation
# only) and full recompute of a share of the blocks (rows checkpointing every n-th block):
# headline 0.139 / 0.288 -> 0.124 / 0.265.
TODAY: dict[str, tuple[float, float]] = {
    "headline": (0.124, 0.265),
    "all": (0.094, 0.278),  # 0.107 / 0.331
    "Megatron-LM / DeepSpeed 2021-22": (0.061, 0.220),  # 0.072 / 0.238; 0.034 / 1.143 on 12-01
    # The context-parallel rows over InfiniBand (megatron_bridge 405B cp2) price one NIC's small
    # ring messages on the pooled scale-out curve (pessimistic, docs/validation.md). The MoE
    # report's DeepSeek-V3 on H100 went from -4 % to +17 % with the deduplicated dispatch
    # (now compute-bound and too fast), Qwen3-235B from -45 % to -26 %.
    "Megatron-Core / NeMo": (0.180, 0.310),  # 0.169 / 0.338
    "Zero Bubble (Megatron-LM fork)": (0.023, 0.093),  # 0.027 / 0.098
    # llm-foundry's held-out A100 factors now fit IBM's 13B rows rebuilt with their real share
    # of recomputed blocks (its bias -11.5 % -> -5.3 %).
    "PyTorch FSDP (llm-foundry, IBM)": (0.097, 0.233),  # 0.128 / 0.332
    "torchtitan (500 W H100, reads the H100 table)": (0.113, 0.228),  # 0.129 / 0.245
    # A100 factors refitted on the IBM rows' exposed FSDP traffic (0.112 / 0.405 before).
    "Aleph Alpha framework": (0.118, 0.420),
}


@pytest.fixture(scope="session")
def loso() -> tuple[FitResult, dict[str, dict]]:
    rows = load_runs()
    return calibrate(rows, leave_one_source_out=True), {r["id"]: r for r in rows}


def _stats(errors: list[float]) -> tuple[float, float]:
    e = np.abs(np.array(errors))
    return float(np.median(e)), float(np.percentile(e, 90))


def _subset(loso, keep) -> list[float]:
    result, meta = loso
    return [e for i, e in result.held_out.items() if keep(meta[i])]


def test_every_compared_run_is_held_out(loso):
    result, _ = loso
    assert set(result.held_out) == set(result.in_sample) and len(result.held_out) >= 440


def test_families_cover_every_shipped_source(loso):
    _, meta = loso
    named = {s for sources in FAMILIES.values() for s in sources}
    assert {r["source_id"] for r in meta.values()} - named <= {"opt2022"}  # never compared


@pytest.mark.parametrize("subset", sorted(TODAY))
def test_held_out_error_stays_at_todays_level(loso, subset):
    if subset == "headline":
        errors = _subset(loso, lambda r: not r["is_sweep"])
    elif subset == "all":
        errors = _subset(loso, lambda r: True)
    else:
        errors = _subset(loso, lambda r: r["source_id"] in FAMILIES[subset])
    assert errors
    median, p90 = _stats(errors)
    print(f"LOSO {subset}: median {median:.3f} p90 {p90:.3f} n {len(errors)}")
    bound_median, bound_p90 = TODAY[subset]
    assert median <= bound_median + MARGIN, (subset, median)
    assert p90 <= bound_p90 + MARGIN, (subset, p90)
