"""Every input validated at the edge: each kind of bad input is one `error:` line and exit 2
(or a skipped run with its reason), never a traceback or an impossible number."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w

from meshplan.cli.render import print_json
from meshplan.errors import MeshplanError
from meshplan.specs import Job, Plan
from meshplan.specs.io import PRESETS, load_cluster, load_model
from meshplan.validate.rows import load_runs
from tests.conftest import invoke

JOB = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8",
       "--global-batch-size", "64", "--seq-len", "4096"]


def refused(*args: str) -> str:
    """The one error line of a refused command."""
    code, _, err = invoke(*args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def _cluster_file(tmp_path: Path, edit) -> Path:
    data = tomllib.loads((PRESETS / "clusters" / "dgx-h100.toml").read_text())
    edit(data)
    path = tmp_path / "cluster.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.mark.parametrize("flag", ["--tp", "--pp", "--cp", "--dp", "--micro-batch-size"])
def test_a_degree_of_zero_is_refused(flag):
    assert flag.removeprefix("--").replace("-", "_")[:2] in refused("estimate", *JOB, flag, "0")


def test_huge_integers_are_refused():
    assert "at most" in refused("estimate", *JOB, "--tp", str(10**30), "--dp", "1")
    with pytest.raises(ValueError, match="at most"):
        Plan(tp=2**30)


def test_fp8_without_an_fp8_peak():
    line = refused("estimate", *JOB[:2], "--cluster", "dgx-a100", *JOB[4:], "--precision", "fp8")
    assert "no fp8 peak" in line
    with pytest.raises(MeshplanError, match="fp8"):
        load_cluster("dgx-a100").accelerator.peak("fp8")


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00\x01", "name = 'caf\u00e9'".encode("latin-1")])
def test_files_that_are_not_utf8(tmp_path, raw):
    path = tmp_path / "model.toml"
    path.write_bytes(raw)
    assert "not UTF-8" in refused("estimate", *JOB, "--model", str(path))
    runs = tmp_path / "runs.json"
    runs.write_bytes(raw)
    assert "not UTF-8" in refused("validate", "--runs", str(runs))


def test_a_model_file_with_a_huge_integer(tmp_path):
    data = tomllib.loads((PRESETS / "models" / "llama3-8b.toml").read_text())
    data["vocab_size"] = 10**30
    path = tmp_path / "m.toml"
    path.write_text(tomli_w.dumps(data))
    assert "vocab_size" in refused("estimate", *JOB, "--model", str(path))


@pytest.mark.parametrize(("value", "needle"), [(float("nan"), "finite"), (1e40, "1e+18"),
                                               (0.0, "bf16")])
def test_cluster_peaks_must_be_finite_and_plausible(tmp_path, value, needle):
    path = _cluster_file(tmp_path, lambda d: d["accelerator"]["peak_flops"].update(bf16=value))
    assert needle in refused("estimate", *JOB[:2], "--cluster", str(path), *JOB[4:])


def test_cluster_bandwidth_beyond_any_hardware(tmp_path):
    path = _cluster_file(tmp_path, lambda d: d["accelerator"].update(memory_bandwidth=1e20))
    assert "memory_bandwidth" in refused("estimate", *JOB[:2], "--cluster", str(path), *JOB[4:])


@pytest.mark.parametrize("budget", ["inf", "nan", "0"])
def test_token_budget_must_be_finite_and_positive(budget):
    assert "--token-budget=" in refused("estimate", *JOB, "--token-budget", budget)


def test_a_sequence_beyond_the_models_max_seq_len():
    line = refused("plan", *JOB[:-1], "16384")
    assert "max_seq_len=8192" in line


def test_more_gpus_than_the_outer_network_tier(tmp_path):
    def shrink(d):
        d["network"][-1]["domain_size"] = 64

    path = _cluster_file(tmp_path, shrink)
    args = [*JOB[:2], "--cluster", str(path), "--num-gpus", "128", *JOB[6:]]
    assert "64 GPUs" in refused("plan", *args)
    assert "num_gpus" in refused("plan", *JOB[:4], "--num-gpus", str(10**9), *JOB[6:])


@pytest.mark.parametrize(("flags", "needle"), [
    (["--schedule", "zb-h1"], "pp > 1"),
    (["--schedule", "interleaved-1f1b"], "pp > 1"),
    (["--tp-overlap"], "tp > 1"),
    (["--ep-overlap"], "ep > 1"),
    (["--zero", "0", "--dp-shard", "2"], "zero_stage >= 1"),
])
def test_flags_that_would_be_ignored_are_refused(flags, needle):
    assert needle in refused("estimate", *JOB, "--pp", "1", "--tp", "1", *flags)


def test_plan_out_needs_export(tmp_path):
    assert "--export" in refused("plan", *JOB, "--out", str(tmp_path / "x.sh"))
    assert "--out FILE" in refused("plan", *JOB, "--export", "megatron", "--json")


def test_an_output_folder_that_does_not_exist_is_refused_before_the_search(tmp_path):
    line = refused("plan", *JOB, "--export", "torchtitan", "--out", str(tmp_path / "no/x.toml"))
    assert "does not exist" in line
    assert "standard output" in refused("simulate", *JOB, "--pp", "2", "--trace", "-")


def test_export_out_dash_is_stdout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = invoke("export", *JOB, "--to", "megatron", "--out", "-")
    assert code == 0 and "pretrain_gpt.py" in out and not (tmp_path / "-").exists()


def test_print_json_never_writes_nan(capsys):
    with pytest.raises(ValueError):
        print_json({"x": float("nan")})
    assert "NaN" not in capsys.readouterr().out


def _runs(tmp_path: Path, **edit) -> Path:
    rows = [r for r in load_runs() if r["source_id"] == "megatron2021"][:2]
    rows[0].update(edit)
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize(("edit", "needle"), [
    ({"tflops_per_gpu": 1e9}, "peak"),
    ({"tokens_per_sec_per_gpu": 1e12}, "peak"),
    ({"mfu": 1.5}, "fraction"),
    ({"tflops_per_gpu": float("nan")}, "no measured"),  # NaN is no figure to compare to
    ({"peak_memory_gb": float("inf")}, "not a finite number"),
    ({"iteration_time_s": -3.0}, "positive"),
])
def test_impossible_runs_are_skipped_with_the_reason(tmp_path, edit, needle):
    code, out, err = invoke("validate", "--runs", str(_runs(tmp_path, **edit)), "--analytic",
                            "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["rows"]) == 1 and needle in result["skipped"][0]["reason"]


def test_a_text_field_of_the_wrong_type_is_one_line(tmp_path):
    assert "gpu_type" in refused("validate", "--runs", str(_runs(tmp_path, gpu_type=3.0)))


def test_valid_inputs_still_load():
    assert load_model("llama3-8b").max_seq_len == 8192
    assert Job(global_batch_size=8, seq_len=8, token_budget=1e13).token_budget == 1e13
    for name in ("dgx-h100", "dgx-b200", "gb200-nvl72", "mi300x"):
        load_cluster(name)


def test_endless_and_unnameable_files(tmp_path):
    if Path("/dev/zero").exists():
        assert "larger than" in refused("validate", "--runs", "/dev/zero")
    long = "a" * 300
    assert "File name too long" in refused("estimate", *JOB, "--model", f"{long}.toml")
    assert "file name longer" in refused("export", *JOB, "--to", "megatron", "--out",
                                         str(tmp_path / long))


def test_simulate_applies_the_token_budget():
    code, out, err = invoke("simulate", *JOB, "--pp", "2", "--token-budget", "1e12", "--json")
    assert code == 0, err
    assert json.loads(out)["token_budget"] == 1e12
