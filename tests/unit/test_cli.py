"""The CLI contract: JSON shapes, and one-line errors with exit code 2 for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BASE = ["--model", "gpt3-175b", "--cluster", "dgx-a100", "--num-gpus", "384",
        "--global-batch-size", "1536", "--seq-len", "2048"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", *args], capture_output=True,
                          text=True, timeout=120)


def test_estimate_json_shape():
    out = run("estimate", *BASE, "--tp", "8", "--pp", "12", "--recompute", "full", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("plan", "step_time_s", "tokens_per_s", "mfu", "memory_gib", "fits",
                "time_breakdown_s"):
        assert key in data
    assert data["plan"]["tp"] == 8 and data["plan"]["dp"] == 4
    assert sum(data["time_breakdown_s"].values()) == pytest.approx(data["step_time_s"])
    assert data["memory_gib"]["peak"] > 0


def test_plan_json_shape_and_ranking():
    out = run("plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16",
              "--global-batch-size", "64", "--seq-len", "4096", "--top", "3", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"plans", "evaluated", "search_seconds"}
    assert 1 <= len(data["plans"]) <= 3 and data["evaluated"] > 100
    tps = [p["tokens_per_s"] for p in data["plans"]]
    assert tps == sorted(tps, reverse=True)
    assert all(p["fits"] for p in data["plans"])


def test_a_plan_that_does_not_fit_is_reported_not_an_error():
    out = run("estimate", "--model", "llama3-70b", "--cluster", "dgx-h100", "--num-gpus", "8",
              "--global-batch-size", "8", "--seq-len", "8192", "--tp", "1", "--zero", "0",
              "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fits"] is False and "needs" in data["fit_reason"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["estimate", "--model", "llama3-8", "--num-gpus", "8"], "llama3-8b"),
        (["estimate", "--cluster", "dgx-h10", "--num-gpus", "8"], "dgx-h100"),
        (["estimate", *BASE, "--tp", "8", "--pp", "12", "--dp", "5"], "multiply"),
        (["estimate", *BASE, "--tp", "7"], "tp"),
        (["estimate", *BASE, "--tp", "8", "--pp", "16", "--schedule", "interleaved-1f1b",
          "--vpp", "4"],
         "num_layers"),
        (["estimate", *BASE, "--micro-batch-size", "7"], "global_batch_size"),
        (["estimate", *BASE, "--schedule", "zb-h9"], "schedule"),
        (["estimate", *BASE, "--recompute", "most"], "recompute"),
        (["estimate", *BASE, "--zero", "4"], "--zero=4"),
        (["estimate", *BASE, "--ep", "2"], "MoE"),
        (["plan", *BASE[:-2], "--seq-len", "0"], "--seq-len=0"),
        (["plan", *BASE, "--top", "0"], "top"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle):
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert needle in lines[0]
    assert "Traceback" not in out.stderr


def test_malformed_model_file(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text("num_layers = [")
    out = run("estimate", "--model", str(bad))
    assert out.returncode == 2 and "malformed" in out.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text('name="x"\nnum_layers=2\nhidden_size=64\nffn_hidden_size=128\n'
                    'num_attention_heads=4\nvocab_size=128\nnum_layerz=3\n')
    out = run("estimate", "--model", str(typo))
    assert out.returncode == 2 and "num_layerz" in out.stderr
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('name="x"\nnum_layers="two"\nhidden_size=64\nffn_hidden_size=128\n'
                     'num_attention_heads=4\nvocab_size=128\n')
    out = run("estimate", "--model", str(wrong))
    assert out.returncode == 2 and "num_layers='two'" in out.stderr


def test_missing_file_and_lists():
    out = run("estimate", "--cluster", "/no/such/cluster.toml")
    assert out.returncode == 2 and "cannot read" in out.stderr
    assert run("models").returncode == 0
    assert "dgx-h100" in run("clusters").stdout


def test_token_budget_gives_time_to_train():
    out = run("estimate", *BASE, "--tp", "8", "--pp", "12", "--recompute", "full",
              "--token-budget", "3e11", "--json")
    data = json.loads(out.stdout)
    seconds = 3e11 / data["tokens_per_s"]
    assert data["time_to_train_days"] == pytest.approx(seconds / 86400)
    assert data["gpu_hours"] == pytest.approx(seconds * 384 / 3600)


@pytest.mark.parametrize(("args", "line"), [
    (["estimate", "--recompute", "ful"], "error: --recompute='ful': Input should be"),
    (["estimate", "--global-batch-size", "0"], "error: --global-batch-size=0: "),
    (["serve", "simulate", "--workload", "poison"], "error: --workload='poison': "),
    (["serve", "simulate", "--rate", "-1"], "error: --rate=-1.0: "),
])
def test_a_bad_value_is_named_by_its_flag(args: list[str], line: str) -> None:
    """The error names the flag the user typed, not the spec field behind it."""
    from tests.conftest import invoke

    code, _, err = invoke(*args)
    assert code == 2 and err.startswith(line) and err.count("\n") == 1, err
