"""`meshplan compare`: plans side by side, each term's change against the first plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshplan import Job, Plan, api
from meshplan.cli.compare_cmd import parse_plan
from meshplan.export import export
from tests.conftest import invoke

JOB = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "64",
       "--global-batch-size", "512", "--seq-len", "8192"]


def test_json_gives_each_plan_and_its_differences() -> None:
    code, out, err = invoke("compare", *JOB, "tp=2,pp=2", "zero=3,mbs=1", "--json")
    assert code == 0, err
    data = json.loads(out)
    job = Job(global_batch_size=512, seq_len=8192)
    first = api.estimate("llama3-8b", "dgx-h100", job, Plan(tp=2, pp=2, dp=16))
    second = api.estimate("llama3-8b", "dgx-h100", job, Plan(dp=64, zero_stage=3))
    assert [p["step_time_s"] for p in data["plans"]] == [first.step_time_s, second.step_time_s]
    vs = data["versus_first"][0]
    assert vs["step_delta_s"] == pytest.approx(second.step_time_s - first.step_time_s)
    assert vs["time_terms_s"]["tp_comm"] == pytest.approx(
        second.time_breakdown_s["tp_comm"] - first.time_breakdown_s["tp_comm"])
    assert vs["memory_terms_bytes"]["weights"] < 0  # ZeRO-3 shards the weights


def test_table_names_the_plans_and_why() -> None:
    code, out, err = invoke("compare", *JOB, "tp=2,pp=2", "tp=8,recompute=full")
    assert code == 0, err
    assert "#1 tp2 pp2 dp16" in out and "#2 tp8 dp8" in out
    assert "time: tp_comm" in out and "mem: peak (GiB)" in out
    assert "#2 vs #1:" in out and "slower" in out


def test_the_job_read_with_from_is_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(export(Plan(dp=64, zero_stage=1), "deepspeed", model="llama3-8b",
                           job=Job(global_batch_size=512, seq_len=8192)))
    code, out, err = invoke("compare", "--model", "llama3-8b", "--from-deepspeed", str(path),
                            "zero=3", "--json")
    assert code == 0, err
    plans = json.loads(out)["plans"]
    assert [(p["plan"]["zero_stage"], p["plan"]["dp"]) for p in plans] == [(1, 64), (3, 64)]


@pytest.mark.parametrize(("args", "message"), [
    (["tp=2"], "two or more plans"),
    (["tp=2", "tpp=4"], "'tpp=4' is not key=value with a plan field"),
    (["tp=2", "tp=3"], "must divide --num-gpus"),
])
def test_bad_plans_are_one_line(args: list[str], message: str) -> None:
    code, _, err = invoke("compare", *JOB, *args)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_parse_plan_types_values() -> None:
    assert parse_plan("tp=2, sp=false,schedule=interleaved-1f1b,zero=3") == {
        "tp": 2, "sequence_parallel": False, "schedule": "interleaved-1f1b", "zero_stage": 3}
