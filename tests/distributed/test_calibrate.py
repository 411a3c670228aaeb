"""`calibrate --local` writes a cluster file that loads and holds figures in a sane range."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from meshplan.specs.io import load_cluster  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_calibrated_file_loads_with_sane_figures(local_cluster: Path) -> None:
    c = load_cluster(local_cluster)
    acc, net = c.accelerator, c.network[0]
    assert 1e8 < acc.peak("bf16") < 1e16  # from a slow CPU core to a fast GPU
    assert 1e8 < acc.peak_flops["fp32"] < 1e15
    assert 1e8 < acc.memory_bandwidth < 1e13
    assert 0 < max(acc.gemm_efficiency.y) <= 1.0
    assert list(acc.gemm_efficiency.x) == sorted(acc.gemm_efficiency.x)
    assert 0 < acc.attention_efficiency <= 1 and 0 < acc.attention_backward_efficiency <= 1
    assert 1e-7 < c.kernel_overhead < 0.1
    assert 10e6 < acc.reserved_memory_bytes < 8e9  # a rank with torch and gloo up
    assert acc.memory_bytes > acc.reserved_memory_bytes
    assert net.name == "loopback" and 1e6 < net.bandwidth < 1e12
    assert 1e-7 < net.latency < 0.1
    assert 0 < min(net.bus_efficiency.y) <= max(net.bus_efficiency.y) <= 1.0
    assert "raw measurements" in local_cluster.read_text()


def test_calibrated_file_feeds_the_estimate(local_cluster: Path) -> None:
    from meshplan.api import estimate
    from meshplan.specs.job import Job
    from meshplan.specs.plan import Plan

    e = estimate("debug", local_cluster, Job(global_batch_size=8, seq_len=128), Plan(dp=2))
    assert 1e-4 < e.step_time_s < 100 and e.memory_bytes["peak"] > 0


def test_calibrate_without_local_is_a_one_line_error(cli) -> None:  # noqa: ANN001
    res = cli("calibrate")
    assert res.code == 2 and res.err.count("\n") == 1 and "--local" in res.err


def _probe_rows(data: dict, spread: float = 0.02) -> dict:
    from meshplan.execute.probes import _plans, predict

    probes = {k: {"plan": p, "step_time_s": 1.0, "spread": spread, "memory_bytes": None}
              for k, p in _plans(2).items()}
    est = predict(data, probes)
    for k, r in probes.items():
        r["step_time_s"] = est[k].step_time_s
        r["memory_bytes"] = est[k].memory_bytes["peak"] + 50e6 if k == "single" else None
    return probes


def test_fit_to_probes_recovers_a_known_machine(local_cluster: Path) -> None:
    import tomllib

    from meshplan.execute.probes import _with, fit_to_probes, load_warnings

    start = tomllib.loads(local_cluster.read_text())
    net = start["network"][0]
    truth = _with(start, (3 * start["kernel_overhead"], 5 * net["latency"], 0.5, 0.6), net)
    probes = _probe_rows(truth)
    fitted, report = fit_to_probes(start, probes)
    for name, row in report.items():
        assert row["after_s"] == pytest.approx(row["measured_s"], rel=0.05), name
    assert fitted["accelerator"]["reserved_memory_bytes"] == pytest.approx(
        start["accelerator"]["reserved_memory_bytes"] + 50e6, rel=0.01)
    assert load_warnings(report, None) == []
    notes: list[str] = []
    noisy = {**report, "tp2 sp": {**report["tp2 sp"], "spread": 0.4}}
    assert len(load_warnings(noisy, notes.append)) == 1 and "tp2 sp 40%" in notes[0]


def test_calibrated_file_records_this_host_and_the_probes(local_cluster: Path) -> None:
    from meshplan.api.running import check_machine, measured_host, this_host

    c = load_cluster(local_cluster)
    assert measured_host(c) == (this_host(), "cpu")
    check_machine(c, None, "cpu")  # counts as this machine
    assert "executor probes" in local_cluster.read_text()
