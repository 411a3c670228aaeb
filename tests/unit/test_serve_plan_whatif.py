"""What-if over GPU counts: the cost figures follow from each best plan's own numbers, more
GPUs never serve less, a one-count what-if is the plain search, and bad lists are refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from functools import cache

import pytest

from meshplan.errors import MeshplanError
from meshplan.serve.plan import WhatIf, plan, what_if
from meshplan.serve.plan.whatif import check_price, parse_counts

SMALL = dict(model="llama3-8b", cluster="dgx-h100", input_len=512, output_len=64,
             slo_ttft_ms=500.0, slo_tpot_ms=30.0)
KW = dict(num_requests=200, top=3, workers=1)


@cache
def small() -> WhatIf:
    return what_if(**SMALL, counts=[1, 2], gpu_hour_price=2.5, **KW)  # type: ignore[arg-type]


def test_gpu_hours_and_cost_follow_the_best_plans_rate():
    w = small()
    assert [r.num_gpus for r in w.rows] == [1, 2]
    for row in w.rows:
        assert row.result is not None
        best = row.result.best
        hours = best.num_gpus / best.max_rate_per_s / 3600 * 1e6
        assert row.gpu_hours_per_million_requests == pytest.approx(hours, rel=1e-12)
        assert row.cost_per_million_requests == pytest.approx(hours * 2.5, rel=1e-12)
        js = row.to_json()
        assert js["best"]["cost_per_million_requests"] == pytest.approx(hours * 2.5)
        assert js["max_rate_per_s"] == best.max_rate_per_s


def test_more_gpus_never_serve_less():
    rates = [r.result.best.max_rate_per_s for r in small().rows if r.result is not None]
    assert len(rates) == 2 and rates[1] >= rates[0]


def test_json_shape_and_single_count_is_the_plain_search():
    js = small().to_json()
    assert js["gpu_hour_price"] == 2.5 and {"model", "cluster", "slo", "workload"} <= set(js)
    assert [x["num_gpus"] for x in js["what_if"]] == [1, 2]
    for x in js["what_if"]:
        assert {"num_gpus", "best", "gpu_hours_per_million_requests",
                "cost_per_million_requests", "result"} <= set(x)
        assert x["result"]["plans"][0] == x["best"]
    json.dumps(js)
    one = plan(**SMALL, num_gpus_total=2, **KW)  # type: ignore[arg-type]
    assert small().rows[1].result.to_json() == one.to_json()  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["8,,16", "0", "x", "8,-1", "", "8,8", "1.5"])
def test_bad_counts_refused(text):
    with pytest.raises(MeshplanError, match="--num-gpus"):
        parse_counts(text)


def test_counts_parse():
    assert parse_counts("8, 16,32") == [8, 16, 32]


@pytest.mark.parametrize("price", [0.0, -1.0, math.nan, math.inf])
def test_bad_price_refused(price):
    with pytest.raises(MeshplanError, match="--gpu-hour-price"):
        check_price(price)


def test_a_count_without_a_deployment_is_a_row_not_an_error():
    w = what_if("llama3-70b", "dgx-h100", [1, 8], 1024, 256, 2000.0, 100.0,
                disaggregation=False, **KW)  # type: ignore[arg-type]
    assert w.rows[0].result is None and "no deployment" in str(w.rows[0].reason)
    assert w.rows[1].result is not None


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", "serve", "plan", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("args", "needle"), [
    (("--num-gpus", "8,,16"), "--num-gpus"),
    (("--num-gpus", "0"), "--num-gpus"),
    (("--num-gpus", "eight"), "--num-gpus"),
    (("--num-gpus", "8,12"), "multiple"),
    (("--num-gpus", "8", "--gpu-hour-price", "0"), "--gpu-hour-price"),
    (("--num-gpus", "8", "--gpu-hour-price", "nan"), "--gpu-hour-price"),
    (("--num-gpus", "1,2", "--export", "vllm", "--out", "x.sh"), "--export"),
])
def test_cli_bad_what_if_input_is_one_line_and_exit_2(args, needle):
    from tests.unit.test_serve_plan import assert_one_error_line

    assert_one_error_line(cli("--input-len", "512", "--output-len", "64", "--num-requests",
                              "100", *args), needle)


def test_cli_what_if_table_and_json():
    args = ("--num-gpus", "1,2", "--input-len", "512", "--output-len", "64", "--slo-ttft-ms",
            "500", "--slo-tpot-ms", "30", "--num-requests", "200", "--workers", "1",
            "--gpu-hour-price", "2")
    table = cli(*args)
    assert table.returncode == 0, table.stderr
    assert "what-if" in table.stdout and "$/1M req" in table.stdout
    js = json.loads(cli(*args, "--json").stdout)
    assert [x["num_gpus"] for x in js["what_if"]] == [1, 2] and "plans" not in js
