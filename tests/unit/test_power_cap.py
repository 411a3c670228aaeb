"""The power-cap model (specs.power) against the figures it is sourced from, and its use by
training presets and published-run rows."""

from __future__ import annotations

import pytest

from meshplan.specs.io import load_cluster
from meshplan.specs.power import POWER_CLOCK_EXPONENT, clock_fraction
from meshplan.validate.hardware import build_cluster, stated_power_limit


def test_clock_model_reproduces_splitwise_prompt_slowdown_at_70_percent_power():
    # SplitwiseSim perf_model.csv: DGX-H100 at 70 % power, prompt phase x1.30
    assert 1 / clock_fraction(0.70) == pytest.approx(1.30, rel=1e-9)
    assert clock_fraction(1.0) == 1.0 and clock_fraction(1.2) == 1.0
    # between the voltage-at-floor (P ~ f) and V ~ f (P ~ f^3) limits
    assert 1 / 3 < POWER_CLOCK_EXPONENT < 1


def test_clock_model_within_published_600w_h100_pretraining_loss():
    # factryze.ai "Power Capping": an H100 capped at 600 W "typically loses 10 to 15 % step
    # throughput" on transformer pretraining (a compute-bound step)
    loss = 1 - clock_fraction(600 / 700)
    assert 0.10 <= loss <= 0.15


def test_serving_splitwise_rows_see_the_measured_prompt_ratio():
    from meshplan.serve.validate import build_case, load_serving_runs

    runs = {r["id"]: r for r in load_serving_runs()}
    capped = build_case(runs["splitwise-llama2-70b-h100-80gb-pcap-tp8-p8192-b1"])
    full = build_case(runs["splitwise-llama2-70b-h100-80gb-tp8-p8192-b1"])
    ratio = full.cluster.accelerator.peak("bf16") / capped.cluster.accelerator.peak("bf16")
    measured = (runs["splitwise-llama2-70b-h100-80gb-pcap-tp8-p8192-b1"]["metrics"]
                ["prefill_time_ms"] / runs["splitwise-llama2-70b-h100-80gb-tp8-p8192-b1"]
                ["metrics"]["prefill_time_ms"])
    assert ratio == pytest.approx(measured, rel=0.01)


def test_power_capped_preset_shares_h100_factors_and_derates_only_compute():
    capped, full = load_cluster("h100-hbm2e-500w"), load_cluster("dgx-h100")
    a, b = capped.accelerator, full.accelerator
    assert a.calibration_key == b.calibration_key == "H100"
    assert capped.calibration.gemm_scale == full.calibration.gemm_scale
    assert a.peak("bf16") / b.peak("bf16") == pytest.approx(clock_fraction(500 / 700))
    assert a.peak("fp8") / b.peak("fp8") == pytest.approx(clock_fraction(500 / 700))
    assert a.peak_flops == b.peak_flops  # the vendor figures stay as quoted
    assert a.memory_bandwidth < b.memory_bandwidth  # HBM2e, not HBM3


def test_a_power_limit_without_a_rating_is_refused(tmp_path):
    from meshplan.errors import MeshplanError
    from meshplan.specs.io import PRESETS

    text = (PRESETS / "clusters" / "dgx-h100.toml").read_text()
    bad = tmp_path / "capped.toml"
    bad.write_text(text.replace("tdp_w = 700", "power_limit_w = 500"))
    with pytest.raises(MeshplanError, match="power_limit_w needs tdp_w"):
        load_cluster(bad)
    with pytest.raises(MeshplanError, match="positive"):
        clock_fraction(0.0)


def test_row_power_limit_is_read_and_applied_to_any_preset():
    assert stated_power_limit({"gpu_type": "NVIDIA H100 SXM HBM2e 96GB (500W power limit)"}) \
        == 500
    assert stated_power_limit({"gpu_type": "H100", "system": "power-capped to 450 W"}) == 450
    assert stated_power_limit({"gpu_type": "NVIDIA H100 SXM 80GB", "system": None}) is None
    row = {"gpu_type": "NVIDIA H100 SXM 80GB", "gpu_memory_gb": 80, "gpus_per_node": 8,
           "inter_node_interconnect": None, "system": "DGX H100 at a 450 W power limit"}
    built = build_cluster(row)
    assert not isinstance(built, str)
    cluster, _, notes = built
    assert cluster.name == "dgx-h100"
    assert cluster.accelerator.peak("bf16") == pytest.approx(989.4e12 * clock_fraction(450 / 700))
    assert any("450 W power limit (stated)" in n for n in notes)
