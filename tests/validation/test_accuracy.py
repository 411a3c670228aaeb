"""Accuracy bounds against the shipped published runs (fails if the model regresses).

The bounds are the figures measured when the calibration was last fitted (docs/validation.md),
plus a small margin; the issue's targets are noted beside them where they are not met yet.
"""

from __future__ import annotations

import pytest

from meshplan.validate.report import validate
from meshplan.validate.rows import load_runs


@pytest.fixture(scope="module")
def report():
    return validate(load_runs())


def test_headline_error_bounds(report):
    s = report["summary"]["headline"]
    assert s["count"] >= 70
    # issue 13's in-sample targets (median <= 8%, p90 <= 25%) are met (6.9% / 22.3% on
    # 2026-12-02; 7.0% / 19.1% with the network rules, the MoE dispatchers and block recompute
    # merged, docs/validation.md); margin kept.
    assert s["median_abs_error"] <= 0.08
    assert s["p90_abs_error"] <= 0.21


def test_all_rows_error_bounds(report):
    s = report["summary"]["all"]
    assert s["median_abs_error"] <= 0.09  # 7.9% on 2026-12-02; 7.8% merged
    assert s["p90_abs_error"] <= 0.27  # 25.7%; 24.9%
    assert abs(s["bias"]) <= 0.07  # +4.9%; +5.3%


def test_sweep_rank_correlation(report):
    groups = report["summary"]["sweep_groups"]
    rho = {k: v["spearman"] for k, v in groups.items() if v["spearman"] is not None}
    # target >= 0.8 in every group; met in all but two (docs/validation.md): Hagemann 30B at
    # s = 2048 (0.73) and llm-foundry's MPT-13B on 40 GB (0.38)
    below = sorted(k for k, v in rho.items() if v < 0.8)
    assert len(below) <= 2, below
    assert min(rho.values()) >= 0.2
    zb = [v for k, v in rho.items() if k.startswith("zerobubble")]
    assert min(zb) >= 0.8


def test_gpt3_175b_ptdp_runs_within_15_percent(report):
    """Issue 2: Megatron-LM 2021 Table 2, GPT-3 175B on 384/768/1536 A100s, TP 8, PP 12."""
    rows = {r["id"]: r for r in report["rows"]}
    for n in (384, 768, 1536):
        r = rows[f"megatron2021-t2-PTD-P-174.6B-{n}gpu"]
        assert abs(r["error"]) <= 0.15, (n, r["error"])


def test_measured_runs_predicted_out_of_memory_stay_few(report):
    # target: none (met since issue 16's recompute modules and FP8 expert inputs)
    assert report["summary"]["oom_misses"] == []
    # every run that reports its peak memory is predicted to fit
    assert report["summary"]["memory"]["measured_not_fitting"] == []


def test_peak_memory_error_bounds(report):
    """Predicted vs reported (reserved) peak; nothing is fitted to these rows. Targets median
    <= 10 %, p90 <= 25 %: met (1.7 % / 13.0 % on 2026-12-02, docs/validation.md)."""
    s = report["summary"]["memory"]
    assert s["count"] >= 60
    assert s["median_abs_error"] <= 0.05 and s["p90_abs_error"] <= 0.16
    assert s["by_source"]["torchtitan_bench_2412"]["median_abs_error"] <= 0.12
