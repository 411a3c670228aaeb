"""`meshplan validate`: every published run is compared or skipped with a reason, the JSON
contract holds, and custom runs files work. No accuracy bounds yet (set after calibration);
run with `-s` to see the summary."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from meshplan.cli import main as cli_main
from meshplan.cli.validate_cmd import register
from meshplan.errors import MeshplanError
from meshplan.validate import build_case, load_runs, spearman, validate
from meshplan.validate.rows import SCHEMA_KEYS, Case

ROW_KEYS = {"id", "source_id", "metric", "measured", "predicted", "error", "throughput_error",
            "assumptions", "gpu", "is_sweep", "sweep_group", "memory", "fits"}


@pytest.fixture(scope="module")
def shipped() -> list[dict]:
    return load_runs()


@pytest.fixture(scope="module")
def result(shipped) -> dict:
    return validate(shipped)


def test_shipped_file_is_the_445_row_dataset(shipped):
    assert len(shipped) == 445
    assert all(set(r) == set(SCHEMA_KEYS) for r in shipped)


def test_every_row_is_compared_or_skipped_with_a_reason(shipped, result):
    ids = [r["id"] for r in result["rows"]] + [s["id"] for s in result["skipped"]]
    assert sorted(ids) == sorted(r["id"] for r in shipped)
    assert len(result["rows"]) + len(result["skipped"]) == 445
    assert all(s["reason"].strip() and "\n" not in s["reason"] for s in result["skipped"])
    for r in result["rows"]:
        assert set(r) == ROW_KEYS
        assert r["measured"] > 0 and r["predicted"] > 0
        assert r["error"] == pytest.approx((r["predicted"] - r["measured"]) / r["measured"])
        if r["metric"] != "iteration_time_s":
            assert r["throughput_error"] == pytest.approx(r["error"])
        else:
            assert r["throughput_error"] == pytest.approx(r["measured"] / r["predicted"] - 1)
        assert (r["sweep_group"] is None) == (not r["is_sweep"])
    summary = result["summary"]
    assert summary["compared"] == len(result["rows"])
    assert summary["all"]["count"] == summary["headline"]["count"] + summary["sweep"]["count"]
    _print_summary(result)


def _print_summary(result: dict) -> None:
    s = result["summary"]
    print(f"\n{s['compared']} compared, {s['skipped']} skipped: {s['skip_reasons']}")
    for name, group in [("all", s["all"]), ("headline", s["headline"]), ("sweep", s["sweep"]),
                        *s["by_source"].items(), *s["by_accelerator"].items()]:
        print(f"  {name:28} n={group['count']:3}  median|e|={group['median_abs_error']:.3f}  "
              f"p90|e|={group['p90_abs_error']:.3f}  bias={group['bias']:+.3f}")
    for name, group in s["sweep_groups"].items():
        rho = "-" if group["spearman"] is None else f"{group['spearman']:+.2f}"
        print(f"  {name:36} n={group['count']:3}  Spearman={rho}  bias={group['bias']:+.3f}")
    print(f"  memory: {s['memory']}")
    print(f"  predicted not to fit ({len(s['oom_misses'])}): {s['oom_misses']}")


def test_every_default_is_recorded(shipped):
    rows = {r["id"]: r for r in shipped}
    case = build_case(rows["megatron2021-t1-1.7B"])
    assert isinstance(case, Case)
    assert case.plan.micro_batch_size == 1
    assert any("micro-batch" in a for a in case.assumptions)
    assert case.plan.recompute == "full" and case.plan.zero_stage == 0
    assert case.job.flash_attention is False
    a40 = build_case(next(r for r in shipped if r["gpu_type"] == "NVIDIA A100 40GB"))
    assert isinstance(a40, Case) and a40.cluster.accelerator.memory_bytes == 40 * 2**30
    assert a40.cluster.network[-1].bandwidth == pytest.approx(25e9)  # 1600 Gb/s per node / 8
    zb = build_case(rows["zerobubble-1.5B-ZB-2p-m24"])
    assert isinstance(zb, Case) and zb.plan.schedule == "zb-h2"
    # the fork takes the padding from the end stages (rules.STAGE_SPLIT): 2 + 6 x 3 + 2
    assert zb.source_model.num_layers == 22 and zb.model.num_layers == 22
    assert (zb.plan.first_stage_layers, zb.plan.last_stage_layers) == (2, 2)
    padded = build_case(rows["torchtitan-t5-405B-512gpu-1F1B"])  # no engine rule: padded
    assert isinstance(padded, Case)
    assert padded.source_model.num_layers == 126 and padded.model.num_layers == 128
    gb300 = build_case(next(r for r in shipped if "GB300" in r["gpu_type"]))
    assert isinstance(gb300, Case) and gb300.cluster.name == "gb300-nvl72"


def _custom_rows(shipped: list[dict]) -> list[dict]:
    rows = {r["id"]: r for r in shipped}
    a = copy.deepcopy(rows["megatron2021-t2-PTD-P-174.6B-384gpu"])
    b = copy.deepcopy(rows["zerobubble-1.5B-1F1B-m24"])
    c = copy.deepcopy(a)
    a["id"], b["id"], c["id"] = "custom-a", "custom-b", "custom-unbuildable"
    c["gpu_type"] = "Imaginary TPU v9"
    return [a, b, c]


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app with only `validate`."""

    register(app)
    return app


def test_custom_runs_file_through_the_cli(shipped, tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(_custom_rows(shipped)))
    out = CliRunner().invoke(_app(), ["validate", "--runs", str(path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert set(data) == {"rows", "skipped", "summary", "schema_version", "meshplan_version",
                         "command", "inputs"}
    assert data["inputs"]["runs"] == str(path)
    assert [r["id"] for r in data["rows"]] == ["custom-a", "custom-b"]
    assert all(set(r) == ROW_KEYS for r in data["rows"])
    assert data["skipped"] == [{"id": "custom-unbuildable",
                                "reason": "unknown hardware 'Imaginary TPU v9'"}]
    assert data["rows"][1]["memory"] is not None and set(data["rows"][1]["memory"]) == {
        "measured_gib", "predicted_gib", "error", "reported"}
    assert data["summary"]["headline"]["count"] == 1 and data["summary"]["sweep"]["count"] == 1
    table = CliRunner().invoke(_app(), ["validate", "--runs", str(path), "--headline-only",
                                        "--analytic"])
    assert table.exit_code == 0 and "custom-a" in table.stdout and "custom-b" not in table.stdout


@pytest.mark.parametrize("mutate, needle", [
    (lambda rows: "not json", "malformed JSON"),
    (lambda rows: [{k: v for k, v in rows[0].items() if k != "tp"}], "missing keys 'tp'"),
    (lambda rows: [{**rows[0], "tp_size": 8}], "unknown keys 'tp_size'"),
    (lambda rows: {"runs": rows}, "expected a JSON list"),
])
def test_malformed_runs_file_is_one_line_error(shipped, tmp_path, mutate, needle):
    path = tmp_path / "bad.json"
    data = mutate(_custom_rows(shipped))
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(MeshplanError, match=needle) as err:
        load_runs(path)
    assert "\n" not in str(err.value)


def test_unknown_source_is_an_error(shipped):
    from meshplan.validate import select

    with pytest.raises(MeshplanError, match="zerobubble2024"):
        select(shipped, source="zerobubble")


@pytest.mark.skipif("validate" not in {c.name or c.callback.__name__
                                       for c in cli_main.app.registered_commands},
                    reason="validate not registered on the main CLI yet")
def test_main_cli_exit_code_2_on_bad_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[1, 2]")
    out = subprocess.run([sys.executable, "-m", "meshplan", "validate", "--runs", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "expected" in out.stderr


def test_spearman_hand_computed():
    # x ranks 1..5; y = [2, 1, 4, 3, 5]: d = [-1, 1, -1, 1, 0], sum d^2 = 4,
    # rho = 1 - 6*4 / (5*(25-1)) = 1 - 24/120 = 0.8
    assert spearman([10, 20, 30, 40, 50], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # ties take their average rank: x ranks [1, 2.5, 2.5, 4] vs y ranks [1, 2, 3, 4]:
    # Pearson of the ranks = 4.5 / sqrt(4.5 * 5) = 0.9487
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([1, 2], [2, 1]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
