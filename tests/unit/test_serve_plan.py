"""Serving plan search: the bisection's bracket, the bounds' pruning, the ranking, the JSON,
re-simulation and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache

import numpy as np
import pytest

from meshplan.errors import MeshplanError
from meshplan.serve import DeploymentSpec, load_serving_cluster, resolve_any, simulate
from meshplan.serve.iteration import kv_capacity
from meshplan.serve.plan import ServePlan, plan, probe
from meshplan.serve.plan.bounds import bound
from meshplan.serve.plan.pareto import frontier
from meshplan.serve.plan.search import RATE_TOLERANCE
from meshplan.serve.plan.space import enumerate_space
from meshplan.specs.io import load_model

SMALL = dict(model="llama3-8b", cluster="dgx-h100", num_gpus_total=2, input_len=512,
             output_len=64, slo_ttft_ms=500.0, slo_tpot_ms=30.0, num_requests=200)


@cache
def small(objective: str = "goodput-per-gpu", workers: int = 1) -> ServePlan:
    return plan(**SMALL, objective=objective, workers=workers, top=3)  # type: ignore[arg-type]


def test_bisection_brackets_the_highest_rate():
    """Each plan holds the SLOs at its rate and fails them at a rate within the tolerance
    above it, both re-checked here by fresh simulations."""
    r = small()
    m, c = load_model("llama3-8b"), load_serving_cluster("dgx-h100")
    checked = 0
    for p in r.all_plans:
        if p.failed_rate_per_s is None:
            continue
        assert p.failed_rate_per_s > p.max_rate_per_s
        assert p.failed_rate_per_s - p.max_rate_per_s <= RATE_TOLERANCE * p.failed_rate_per_s
        held = probe(m, c, p.spec, p.query, p.max_rate_per_s)
        assert held.ok
        failed = probe(m, c, p.spec, p.query, p.failed_rate_per_s)
        assert not failed.ok
        checked += 1
    assert checked >= 3


def test_resimulating_a_plan_gives_its_numbers():
    r = small()
    p = r.best
    again = simulate("llama3-8b", "dgx-h100", p.spec, p.workload)
    assert again.metrics is not None
    m = again.metrics.aggregate(p.num_gpus, r.query.slo_ttft_s, r.query.slo_tpot_s)
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert m[key] == p.metrics[key]
    assert m["output_tokens_per_s"] == p.metrics["output_tokens_per_s"]
    late = again.metrics.arrival_s >= np.median(again.metrics.arrival_s)
    assert np.percentile(again.metrics.ttft_s[late], 99) * 1e3 == pytest.approx(p.slo_ttft_ms)


def test_ranking_follows_the_objective_and_keeps_both_kinds():
    r = small()
    scores = [p.goodput_per_gpu for p in r.all_plans]
    assert scores == sorted(scores, reverse=True)
    assert {p.disaggregated for p in r.plans} == {True, False}
    t = small("throughput")
    rates = [p.max_rate_per_s for p in t.all_plans]
    assert rates == sorted(rates, reverse=True)
    cost = small("cost")
    hours = [p.gpu_hours_per_million_requests for p in cost.all_plans]
    assert hours == sorted(hours)


def test_best_of_each_kind_survives_top_one():
    r = plan(**SMALL, top=1, workers=1)  # type: ignore[arg-type]
    assert len(r.plans) == 2 and {p.disaggregated for p in r.plans} == {True, False}
    assert r.plans[0] is r.all_plans[0]


def test_json_shape():
    js = small().to_json()
    assert set(js) >= {"plans", "pareto", "pruned"}
    p = js["plans"][0]
    assert set(p) >= {"deployment", "disaggregated", "num_gpus", "max_rate_per_s",
                      "goodput_per_gpu", "metrics", "simulated"}
    assert p["simulated"] is True
    dis = next(x for x in js["plans"] if x["disaggregated"])
    assert {"prefill", "decode"} <= set(dis["deployment"])
    for pool in ("prefill", "decode"):
        assert {"tp", "pp", "ep", "instances"} <= set(dis["deployment"][pool])
    col = next(x for x in js["plans"] if not x["disaggregated"])
    assert {"tp", "pp", "ep", "instances"} <= set(col["deployment"])
    assert js["pareto"] and {"tokens_per_s_per_gpu", "tokens_per_s_per_user"} <= set(
        js["pareto"][0])
    json.dumps(js)


def test_memory_pruned_layouts_really_do_not_fit():
    """70B on one node: tp1 / tp2 layouts the bounds rule out by memory do not fit the KV
    cache or a request in the simulator either."""
    m, c = load_model("llama3-70b"), load_serving_cluster("dgx-h100")
    space = enumerate_space(m, c, 8, "vllm", disaggregation=False)
    pruned = 0
    for s in space.colocated:
        d = resolve_any(m, c, s)
        b = bound(d, 1024, 256, 2.0, 0.1)
        if b.reason != "memory":
            continue
        pruned += 1
        cap = kv_capacity(d)
        assert not cap.fits or cap.blocks_per_rank * d.block_size < 1024 + 256
    assert pruned >= 1


def test_ttft_and_tpot_pruned_layouts_miss_alone():
    """A deployment ruled out by TTFT (TPOT) misses that SLO with a single request."""
    from meshplan.serve import Lengths, Workload

    one = Workload(arrival="burst", num_requests=1, input=Lengths(mean=4096),
                   output=Lengths(mean=64))
    m, c = load_model("llama3-70b"), load_serving_cluster("dgx-h100")
    spec = DeploymentSpec(tp=4)
    d = resolve_any(m, c, spec)
    b = bound(d, 4096, 64, 0.05, 1.0)
    assert b.reason == "TTFT"
    r = simulate(m, c, spec, one).metrics
    assert r is not None and r.ttft_s[0] > 0.05
    b = bound(d, 4096, 64, 10.0, 0.005)
    assert b.reason == "TPOT"
    assert r.tpot_s[0] > 0.005


def test_parallel_equals_serial():
    a, b = small(workers=1).to_json(), small(workers=2).to_json()
    assert a == b


def test_pareto_frontier():
    pts = [(10.0, 1.0), (8.0, 3.0), (9.0, 0.5), (5.0, 3.0), (1.0, 9.0)]
    assert frontier(pts) == [0, 1, 4]


def test_no_layout_fits_is_an_error():
    with pytest.raises(MeshplanError, match="no deployment"):
        plan("llama3-70b", "dgx-h100", 1, 1024, 256, 2000, 100, workers=1)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", "serve", "plan", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("args", "needle"), [
    (("--num-gpus", "12"), "multiple"),
    (("--num-gpus", "8", "--engine", "nope"), "engine"),
    (("--model", "llama3-70b", "--num-gpus", "1"), "no deployment"),
    (("--num-gpus", "8", "--objective", "speed"), "--objective"),
    (("--num-gpus", "8", "--slo-tpot-ms", "0"), "--slo-tpot-ms"),
    (("--num-gpus", "8", "--ray", "auto"), "--ray"),
    (("--num-gpus", "8", "--export", "trtllm", "--out", "x.sh"), "--export"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, needle):
    assert_one_error_line(cli("--input-len", "512", "--output-len", "64", "--num-requests",
                              "100", *args), needle)


def assert_one_error_line(out: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 2 with one `error:` line on stderr that names `needle`."""
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_cli_json_and_export(tmp_path):
    script = tmp_path / "serve.sh"
    out = cli("--num-gpus", "2", "--input-len", "512", "--output-len", "64",
              "--slo-ttft-ms", "500", "--slo-tpot-ms", "30", "--num-requests", "200",
              "--workers", "1", "--json", "--export", "vllm", "--out", str(script))
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    assert js["plans"][0]["simulated"] is True
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "vllm serve" in text


def test_a_rate_the_deployment_falls_behind_at_does_not_hold():
    """Llama-3-8B on one H100 (1,024 in / 256 out) serves ~20 req/s: at 30 req/s the queue
    grows for as long as the arrivals last, so the probe does not hold even though the SLOs
    are loose; at 10 req/s completions keep pace with arrivals and it holds, and its measured
    throughput is the offered rate (no drain diluting it)."""
    from meshplan.serve.plan.search import Query

    m, c = load_model("llama3-8b"), load_serving_cluster("dgx-h100")
    q = Query(1024, 256, slo_ttft_s=600.0, slo_tpot_s=1.0, num_requests=1000)
    over = probe(m, c, DeploymentSpec(tp=1), q, 30.0)
    assert not over.steady["keeps_up"] and not over.ok
    under = probe(m, c, DeploymentSpec(tp=1), q, 10.0)
    assert under.steady["keeps_up"] and under.ok
    assert under.steady["requests_per_s"] == pytest.approx(10.0, rel=0.1)


def test_verification_steps_a_failing_rate_down_to_one_that_holds():
    from meshplan.serve.plan.search import RATE_TOLERANCE, Query, verify

    m, c = load_model("llama3-8b"), load_serving_cluster("dgx-h100")
    q = Query(1024, 256, slo_ttft_s=2.0, slo_tpot_s=0.1, num_requests=200)
    tried = verify(m, c, DeploymentSpec(tp=1), q, 26.0)  # above what one H100 sustains
    held, failed = tried[-1], [t for t in tried if not t.ok]
    assert held.ok and not tried[0].ok and held.rate_per_s < 26.0
    above = min(t.rate_per_s for t in failed if t.rate_per_s > held.rate_per_s)
    assert above - held.rate_per_s <= RATE_TOLERANCE * above
