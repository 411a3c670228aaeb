"""`--format csv`: the rows and columns of the table, machine-readable, equal to the JSON."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

PLAN = ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16",
        "--global-batch-size", "64", "--seq-len", "4096", "--top", "4"]
SERVE = ["serve", "plan", "--num-gpus", "2", "--input-len", "512", "--output-len", "64",
         "--slo-ttft-ms", "500", "--slo-tpot-ms", "30", "--num-requests", "200",
         "--workers", "1", "--top", "3"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", *args], capture_output=True,
                          text=True, timeout=300)


def both(args: list[str]) -> tuple[list[dict[str, str]], dict]:
    table = run(*args, "--format", "csv")
    assert table.returncode == 0, table.stderr
    js = run(*args, "--json")
    assert js.returncode == 0, js.stderr
    return list(csv.DictReader(io.StringIO(table.stdout))), json.loads(js.stdout)


def test_plan_csv_matches_the_json():
    rows, js = both(PLAN)
    assert len(rows) == len(js["plans"]) >= 2
    for row, p in zip(rows, js["plans"], strict=True):
        assert float(row["step_s"]) == p["step_time_s"]
        assert float(row["mem_gib"]) == p["memory_gib"]["peak"]
        assert float(row["mfu"]) == p["mfu"] and 0 < float(row["mfu"]) < 1  # a share
        assert int(row["tp"]) == p["plan"]["tp"] and int(row["dp"]) == p["plan"]["dp"]
        assert row["fits"] == "true" and int(row["alike"]) == p["equivalent_plans"]
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))


def test_plan_csv_has_the_table_columns():
    from meshplan.tables import plan_rows

    columns, _ = plan_rows([])
    header = run(*PLAN, "--top", "1", "--format", "csv").stdout.splitlines()[0]
    assert header.split(",") == [c.name for c in columns]
    assert len(columns) == 19 and "step_s" in header and "(" not in header
    assert header.endswith(",costed_by")


def test_serve_plan_csv_matches_the_json():
    rows, js = both(SERVE)
    assert len(rows) == len(js["plans"]) >= 1
    for row, p in zip(rows, js["plans"], strict=True):
        assert row["deployment"] == p["label"]
        assert float(row["max_rate_per_s"]) == p["max_rate_per_s"]
        assert float(row["ttft_p99_ms"]) == p["slo_measured"]["ttft_ms"]
        assert int(row["gpus"]) == p["num_gpus"]


@pytest.mark.parametrize("args", [PLAN, SERVE])
@pytest.mark.parametrize(("extra", "needle"), [
    (("--format", "csv", "--json"), "--json"),
    (("--format", "xlsx"), "table, csv"),
])
def test_bad_format_is_one_line_exit_2(args, extra, needle):
    out = run(*args, *extra)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert out.stdout == ""


def test_plan_csv_refuses_what_is_not_a_row():
    out = run(*PLAN, "--format", "csv", "--explain", "1")
    assert out.returncode == 2 and "--explain" in out.stderr
    out = run(*PLAN, "--format", "csv", "--export", "megatron")
    assert out.returncode == 2 and "--export" in out.stderr
