"""`meshplan run`: a measured-vs-predicted report, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = [pytest.mark.torch]


def _one_line_error(res, *needles: str) -> None:  # noqa: ANN001
    assert res.code == 2, res
    assert res.err.startswith("error: ") and res.err.count("\n") == 1, res.err
    for needle in needles:
        assert needle in res.err, res.err


def test_plan_needs_more_ranks_than_nproc(cli) -> None:  # noqa: ANN001
    _one_line_error(cli("run", "--cluster", "dgx-a100", "--tp", "2", "--dp", "2", "--nproc",
                        "2"), "needs 4 ranks", "--nproc")


@pytest.mark.parametrize(("args", "needle"), [
    (["--cp", "2"], "context parallelism"),
    (["--model", "debug-moe", "--dp", "2", "--ep", "2"], "expert parallelism"),
    (["--model", "debug-moe", "--tp", "2"], "tensor parallelism of MoE"),
    (["--dp", "2", "--offload"], "offload_optimizer"),
    (["--tp", "8"], "num_kv_heads"),
])
def test_unsupported_combination(cli, args: list[str], needle: str) -> None:  # noqa: ANN001
    _one_line_error(cli("run", "--cluster", "dgx-a100", "--zero", "1", *args), needle)


def test_missing_calibration_file_names_the_fix(cli, tmp_path: Path,  # noqa: ANN001
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _one_line_error(cli("run"), "meshplan calibrate --local")


def test_torch_missing(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    for name in [m for m in sys.modules if m.startswith("meshplan.execute")]:
        monkeypatch.delitem(sys.modules, name)
    _one_line_error(cli("run", "--cluster", "dgx-a100", "--dp", "2"),
                    "the torch extra is not installed: pip install 'meshplan[torch]'")
    _one_line_error(cli("calibrate", "--local"), "the torch extra is not installed")


@pytest.mark.slow
def test_run_reports_measured_and_predicted(cli, local_cluster: Path) -> None:  # noqa: ANN001
    res = cli("run", "--cluster", str(local_cluster), "--dp", "2", "--steps", "3", "--warmup",
              "1", "--global-batch-size", "4", "--seq-len", "32", "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    m, p = data["measured"], data["predicted"]
    assert set(m) >= {"step_time_s", "peak_memory_gib", "losses"}
    assert len(m["losses"]) == 3 and m["losses"][-1] < m["losses"][0]
    assert m["step_time_s"] > 0 and 0 < m["peak_memory_gib"] < 64
    assert p["plan"]["dp"] == 2 and p["step_time_s"] > 0
    assert data["error"] == pytest.approx((p["step_time_s"] - m["step_time_s"])
                                          / m["step_time_s"])
    # predicted against measured peak memory, and what the measurement is (max RSS on CPU)
    assert data["memory_error"] == pytest.approx((p["memory_gib"]["peak"] - m["peak_memory_gib"])
                                                 / m["peak_memory_gib"])
    assert "RSS" in m["peak_memory_measures"] and data["command"] == "run"


def test_more_ranks_than_cores_is_warned(local_cluster: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import meshplan.execute.launch as launch_mod
    from meshplan.api.running import run
    from meshplan.specs.job import Job
    from meshplan.specs.plan import Plan

    fake = {"step_time_s": 0.1, "peak_memory_bytes": 1 << 28, "losses": [1.0, 0.9],
            "step_times_s": [0.1, 0.1], "peak_memory_bytes_per_rank": [1 << 28] * 2,
            "device": "cpu"}
    monkeypatch.setattr(launch_mod, "launch", lambda *a, **k: fake)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    notes: list[str] = []
    res = run("debug", local_cluster, Job(global_batch_size=4, seq_len=32), Plan(dp=2),
              steps=2, warmup=1, notify=notes.append)
    assert res is not None and res.measured["oversubscribed"]
    assert any("time-share the CPU" in n for n in notes), notes
