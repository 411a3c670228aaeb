"""The workflow API (plan with an export target, simulate, calibrate, validate) and the
calibration file each predicting command can select."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import meshplan
from meshplan import Job, MeshplanError, Plan
from meshplan.specs.io import CALIBRATION_FILE, PRESETS, load_calibration, load_cluster
from meshplan.validate import load_runs

JOB = Job(global_batch_size=64, seq_len=4096)
EST = ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16",
       "--global-batch-size", "64", "--seq-len", "4096", "--tp", "2", "--pp", "2", "--json"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], out.stderr


def same_but_file(est: dict, file: str) -> dict:
    """An estimate's JSON without the calibration file's name (checked to be `file`)."""
    cal = dict(est["calibration"])
    assert cal.pop("file") == file
    return {**est, "calibration": cal}


def test_plan_with_export_target_skips_what_the_target_cannot_express() -> None:
    plain = meshplan.plan("llama3-8b", "dgx-h100", JOB, num_gpus=16, top=5)
    result = meshplan.plan("llama3-8b", "dgx-h100", JOB, num_gpus=16, top=5,
                           export_target="megatron")
    assert result.plans and result.config is not None and result.config.startswith("#!")
    assert result.ranks == sorted(result.ranks) and len(result.ranks) == len(result.plans)
    assert {s.rank for s in result.skipped}.isdisjoint(result.ranks)
    assert all(s.rank < result.ranks[-1] and s.reason for s in result.skipped)
    assert [e.to_json() for e in result.ranking(5)] == [e.to_json() for e in plain.plans]
    with pytest.raises(MeshplanError, match="export target"):
        meshplan.plan("llama3-8b", "dgx-h100", JOB, num_gpus=16, export_target="nemo")


def test_simulate_returns_the_timeline() -> None:
    sim = meshplan.simulate("llama3-8b", "dgx-h100", JOB, Plan(tp=2, pp=4, dp=2,
                                                              schedule="zb-h1"), trace=True)
    assert sim.estimate.extra["simulated"]["pipeline_s"] > 0
    est = meshplan.estimate("llama3-8b", "dgx-h100", JOB, Plan(tp=2, pp=4, dp=2,
                                                              schedule="zb-h1"))
    assert sim.estimate.step_time_s == est.step_time_s


def test_calibration_source_is_selectable(tmp_path: Path) -> None:
    plan = Plan(tp=2, pp=2, dp=4)
    shipped = meshplan.estimate("llama3-8b", "dgx-h100", JOB, plan)
    copy = tmp_path / "cal.toml"
    copy.write_text(CALIBRATION_FILE.read_text())
    same = meshplan.estimate("llama3-8b", "dgx-h100", JOB, plan, calibration=copy).to_json()
    assert same_but_file(same, str(copy)) == same_but_file(shipped.to_json(), "shipped")
    raw = meshplan.estimate("llama3-8b", "dgx-h100", JOB, plan, calibration=None)
    assert raw.step_time_s != shipped.step_time_s
    assert load_cluster("dgx-h100", "none").calibration.gemm_scale == 1.0
    assert load_calibration(None) == {}
    bad = tmp_path / "bad.toml"
    bad.write_text("[dgx-h100]\ngemm_scael = 0.5\n")
    with pytest.raises(MeshplanError, match="gemm_scael"):
        load_cluster("dgx-h100", bad)


def test_calibrate_runs_returns_a_loadable_calibration(tmp_path: Path) -> None:
    rows = [r for r in load_runs() if r["source_id"] == "megatron2021"]
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps(rows))
    fitted = meshplan.calibrate(runs, leave_one_source_out=False)
    assert isinstance(fitted, meshplan.RunsCalibration)
    assert set(fitted.factors) == {"A100"} and fitted.in_sample["all"]["count"] > 0
    cal = tmp_path / "cal.toml"
    cal.write_text(fitted.text)
    assert load_calibration(cal)["A100"]["gemm_scale"] == pytest.approx(
        fitted.factors["A100"]["gemm_scale"], rel=1e-3)
    with pytest.raises(MeshplanError, match="exactly one"):
        meshplan.calibrate()


def test_cluster_file_without_overlap_is_a_clear_error(tmp_path: Path) -> None:
    text = (PRESETS / "clusters" / "dgx-h100.toml").read_text()
    cut = tmp_path / "no-overlap.toml"
    cut.write_text(text[:text.index("[overlap]")])
    with pytest.raises(MeshplanError, match="missing key 'overlap'"):
        load_cluster(cut)


def test_cli_calibration_flag(tmp_path: Path) -> None:
    default = json.loads(cli(*EST).stdout)
    raw = json.loads(cli(*EST, "--calibration", "none").stdout)
    assert raw["step_time_s"] != default["step_time_s"]
    copy = tmp_path / "cal.toml"
    copy.write_text(CALIBRATION_FILE.read_text())
    same = json.loads(cli(*EST, "--calibration", str(copy)).stdout)
    assert same_but_file(same, str(copy)) == same_but_file(default, "shipped")
    one_line_error(cli(*EST, "--calibration", str(tmp_path / "missing.toml")), "--calibration")
    one_line_error(cli("validate", "--calibration", "missing.toml"), "--calibration")


@pytest.mark.parametrize("args", [
    ["calibrate", "--runs", "shipped", "--out", "/no/such/dir/cal.toml"],
    ["plan", "--export", "megatron", "--out", "/no/such/dir/train.sh"],
    ["export", "--to", "megatron", "--out", "/no/such/dir/train.sh"],
    ["simulate", "--pp", "2", "--trace", "/no/such/dir/t.json"],
])
def test_out_into_a_missing_directory_fails_before_any_work(args: list[str]) -> None:
    one_line_error(cli(*args), "does not exist")


def test_calibrate_write_is_refused_and_out_writes_a_user_file(tmp_path: Path) -> None:
    one_line_error(cli("calibrate", "--runs", "shipped", "--write"), "--out")
    rows = [r for r in load_runs() if r["source_id"] == "megatron2021"]
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps(rows))
    out = cli("calibrate", "--runs", str(runs), "--no-loso", "--out", "cal.toml", "--json",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"factors", "in_sample", "held_out"}
    assert "A100" in load_calibration(tmp_path / "cal.toml")
    used = cli(*EST[:4], "dgx-a100", *EST[5:], "--calibration", "cal.toml", cwd=tmp_path)
    assert used.returncode == 0, used.stderr
