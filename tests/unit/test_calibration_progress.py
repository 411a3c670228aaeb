"""`calibrate --runs` reports progress on stderr, never on stdout, and the fit costs each
batch of runs once per candidate factors (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import meshplan
from meshplan.validate import calibrate as cal
from meshplan.validate import load_runs


def _runs(tmp_path: Path, *sources: str) -> Path:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([r for r in load_runs() if r["source_id"] in sources]))
    return path


def test_progress_counts_every_loss_evaluation_up_to_the_total(tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    runs = _runs(tmp_path, "nemo_perf_2407", "megatron_bridge_perf_2509")
    fitted = meshplan.calibrate(runs, progress=lambda *a: seen.append(a))
    assert isinstance(fitted, meshplan.RunsCalibration) and set(fitted.factors) == {"H100"}
    # the fit (with the FP8-tensorwise factor these 18 runs from two sources earn) and two
    # leave-one-source-out refits (one source each: FP8 falls back to bf16, one factor less)
    total = 3 * cal.EVALUATIONS_PER_FIT + cal.SWEEPS * (cal.GOLDEN_ITERS + 2)
    assert {t for _, _, t in seen} == {total}
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen) and seen[-1][1] == total
    assert [w for w, _, _ in seen if w != "done"][0] == "H100: 18 runs"
    assert {w for w, _, _ in seen} >= {"H100 without nemo_perf_2407", "done"}


def test_batches_share_inputs_and_memo_avoids_recosting() -> None:
    cases = [fc for fc in cal.prepare(load_runs()) if fc.source == "zerobubble2024"]
    fitter = cal.Fitter(cases)
    assert len(fitter.batches) < len(cases)  # rows differing only in provenance text share
    factors = dict(cal.DEFAULTS)
    first = fitter.steps(factors)
    memo = len(fitter._memo)
    assert (fitter.steps(factors) == first).all() and len(fitter._memo) == memo
    one_by_one = [cal.Fitter([fc]).steps(factors)[0] for fc in cases[:6]]
    assert list(first[:6]) == one_by_one  # batching changes no number


def test_cli_progress_goes_to_stderr_and_json_to_stdout(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "megatron2021")
    out = subprocess.run([sys.executable, "-m", "meshplan", "calibrate", "--runs", str(runs),
                          "--no-loso", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) >= {"factors", "in_sample", "held_out"}
    assert "calibrate: A100: 22 runs" in out.stderr
