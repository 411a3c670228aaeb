"""HTML reports and the JSON they draw: the envelope on every result, the plan space's
frontier, the simulated timeline, the serving distributions and time series, the refusals."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from meshplan.output import ENVELOPE_KEYS, SCHEMA_VERSION
from tests.conftest import invoke

pytest.importorskip("plotly")

SMALL = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16",
         "--global-batch-size", "64", "--seq-len", "4096"]
PIPELINED = [*SMALL, "--tp", "2", "--pp", "4"]
SERVE = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--rate", "30", "--num-requests",
         "400", "--input-len", "512", "--output-len", "128", "--slo-ttft-ms", "400",
         "--slo-tpot-ms", "40"]
SERVE_PLAN = ["serve", "plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus",
              "2", "--input-len", "512", "--output-len", "128", "--slo-ttft-ms", "1000",
              "--slo-tpot-ms", "50", "--num-requests", "200", "--workers", "1", "--top", "3"]


def run_json(*args: str) -> dict:
    code, out, err = invoke(*args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def serve_plan_doc() -> dict:
    return run_json(*SERVE_PLAN)


@pytest.mark.parametrize(("args", "command", "own_key"), [
    (["plan", *SMALL, "--top", "3"], "plan", "plans"),
    (["estimate", *PIPELINED], "estimate", "step_time_s"),
    (["simulate", *PIPELINED], "simulate", "step_time_s"),
    (["serve", "simulate", *SERVE], "serve simulate", "metrics"),
])
def test_every_result_carries_the_envelope(args: list[str], command: str, own_key: str) -> None:
    doc = run_json(*args)
    assert list(doc)[:4] == list(ENVELOPE_KEYS)
    assert doc["schema_version"] == SCHEMA_VERSION and doc["command"] == command
    from meshplan import __version__

    assert doc["meshplan_version"] == __version__
    assert own_key in doc  # the result's own keys stay at the top level
    assert doc["inputs"]["model"] == "llama3-8b" or doc["inputs"]["model"]["name"] == "llama3-8b"


def test_training_inputs_echo_what_was_answered() -> None:
    doc = run_json("estimate", *PIPELINED)
    i = doc["inputs"]
    assert i["num_gpus"] == 16 and i["job"]["seq_len"] == 4096
    assert i["plan_flags"] == {"tp": 2, "pp": 4}
    assert i["cluster"]["memory_gib"] == pytest.approx(80.0)


def test_serve_plan_envelope_and_best_simulation(serve_plan_doc: dict) -> None:
    doc = serve_plan_doc
    assert doc["command"] == "serve plan" and doc["inputs"]["num_gpus"] == 2
    best, again = doc["plans"][0], doc["best_simulation"]
    # The replay at the plan's max rate is the simulation its row reports.
    assert again["metrics"] == best["metrics"]
    assert len(again["distributions"]["ttft_ms"]) == 101


def test_serve_plan_probes_bracket_the_max_rate(serve_plan_doc: dict) -> None:
    for p in serve_plan_doc["plans"]:
        probes = p["probes"]
        assert [x["rate_per_s"] for x in probes] == sorted(x["rate_per_s"] for x in probes)
        held = [x for x in probes if x["rate_per_s"] == p["max_rate_per_s"]]
        assert held and held[0]["meets_slo"]
        assert len(probes) == p["simulations"]
        if p["failed_rate_per_s"] is not None:
            failed = [x for x in probes if x["rate_per_s"] == p["failed_rate_per_s"]]
            assert failed and not failed[0]["meets_slo"]


def test_pareto_mask_matches_brute_force() -> None:
    from meshplan.search.frontier import pareto_mask

    rng = np.random.default_rng(3)
    thr, mem = rng.integers(0, 30, 400).astype(float), rng.integers(0, 30, 400).astype(float)
    mask = pareto_mask(thr, mem)
    for i in range(len(thr)):
        beaten = ((thr >= thr[i]) & (mem <= mem[i]) & ((thr > thr[i]) | (mem < mem[i]))).any()
        if beaten:
            assert not mask[i]
    # Exactly one plan per distinct (throughput, memory) of the non-dominated set.
    front = {(thr[i], mem[i]) for i in range(len(thr))
             if not ((thr >= thr[i]) & (mem <= mem[i]) & ((thr > thr[i]) | (mem < mem[i]))).any()}
    assert {(thr[i], mem[i]) for i in np.flatnonzero(mask)} == front
    assert mask.sum() == len(front)


def test_space_points_keep_the_frontier_and_the_best_plan() -> None:
    from meshplan.search.frontier import COLUMNS, pareto_mask, space_points
    from meshplan.search.rank import rank_space
    from meshplan.specs import Job
    from meshplan.specs.io import load_cluster, load_model

    space = rank_space(load_model("llama3-8b"), load_cluster("dgx-h100"),
                       Job(global_batch_size=512, seq_len=8192), 64)
    pts = space_points(space, 64, limit=300)
    col = {c: i for i, c in enumerate(COLUMNS)}
    assert len(pts["rows"]) == 300 and pts["evaluated"] == len(space.plans)
    per_gpu = space.costs.tokens_per_s / 64
    fits = space.costs.fits
    front = pareto_mask(per_gpu[fits], space.costs.memory["peak"][fits] / 2**30)
    assert sum(r[col["pareto"]] for r in pts["rows"]) == front.sum()
    assert all(r[col["fits"]] for r in pts["rows"] if r[col["pareto"]])  # only fitting ones
    best = space.order[0]
    assert pts["rows"][0][col["tokens_per_s_per_gpu"]] == pytest.approx(per_gpu[best])
    assert any(not r[col["fits"]] for r in pts["rows"])  # the unfit part is drawn too


def test_timeline_json_holds_every_box_and_rank() -> None:
    from meshplan import Job, Plan, simulate
    from meshplan.sim.timeline import timeline_json

    sim = simulate("llama3-8b", "dgx-h100", Job(global_batch_size=16, seq_len=2048),
                   Plan(tp=2, pp=4, dp=1), trace=True)
    t = timeline_json(sim.result)
    assert len(t["intervals"]) == len(sim.result.intervals) and not t["truncated"]
    names = [b[2] for b in t["intervals"] if b[1] == "compute"]
    m = sim.estimate.num_microbatches
    assert sum(n[1] == "F" for n in names) == 4 * m  # every micro-batch's forward per stage
    assert len(t["activation_gib"]) == 4
    peaks = [max(v for _, v in r) for r in t["activation_gib"]]
    assert peaks == pytest.approx(sim.estimate.extra["simulated"]["peak_activation_gib"])


def test_quantile_curve_and_thinning() -> None:
    from meshplan.serve.loop import thin
    from meshplan.serve.metrics import quantile_curve

    x = np.random.default_rng(0).exponential(1.0, 5000)
    q = quantile_curve(x, 1e3)
    assert len(q) == 101 and q[0] == pytest.approx(x.min() * 1e3)
    assert q[-1] == pytest.approx(x.max() * 1e3) and all(np.diff(q) >= 0)
    assert quantile_curve(np.array([])) == []
    series = np.stack([np.arange(10_000.0), np.sin(np.arange(10_000.0))], axis=1)
    series[7777, 1] = 5.0
    kept = thin(series, 100)
    assert len(kept) == 100 and max(v for _, v in kept) == 5.0
    assert kept[-1][0] == series[-1, 0]


def test_queue_length_over_time_tracks_overload() -> None:
    doc = run_json("serve", "simulate", *[a if a != "30" else "200" for a in SERVE])
    queue = doc["timeseries"]["queue_length"]
    assert max(v for _, v in queue) > 10  # 200 req/s on one H100 queues
    assert queue[-1][1] == 0  # and drains once the arrivals stop
    kv = doc["timeseries"]["kv_usage"]
    assert max(v for _, v in kv) == pytest.approx(doc["kv_usage_peak"])


def test_report_from_saved_json_is_the_html_flag_page(tmp_path) -> None:
    a, b, saved = tmp_path / "a.html", tmp_path / "b.html", tmp_path / "r.json"
    code, _, err = invoke("simulate", *PIPELINED, "--html", str(a))
    assert code == 0, err
    saved.write_text(json.dumps(run_json("simulate", *PIPELINED)))
    code, _, err = invoke("report", str(saved), "--html", str(b))
    assert code == 0, err
    assert a.read_bytes() == b.read_bytes()
    page = a.read_text()
    assert "<script src" not in page and "<link" not in page  # nothing fetched: opens offline
    assert page.count('class="plotly-graph-div"') == 4


@pytest.mark.parametrize(("content", "needle"), [
    ("{\"plans\": []}", "no 'command' key"),
    ("{\"command\": \"validate\"}", "have no report"),
    ("{\"command\": \"plan\", \"plans\": []}", "lacks 'space'"),
    ("{\"command\": \"plan\", \"schema_version\": 99}", "newer than this meshplan"),
    ("[1, 2]", "JSON object"),
    ("{not json", "malformed JSON"),
])
def test_report_refuses_what_it_cannot_draw(tmp_path, content: str, needle: str) -> None:
    f = tmp_path / "r.json"
    f.write_text(content)
    code, _, err = invoke("report", str(f), "--html", str(tmp_path / "r.html"))
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def test_html_without_the_extra_names_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly now raises ImportError
    out = tmp_path / "e.html"
    code, stdout, err = invoke("estimate", *PIPELINED, "--html", str(out))
    assert code == 2 and "meshplan[report]" in err and stdout == ""
    assert not out.exists()


def test_html_to_an_unwritable_place_is_refused_first(tmp_path) -> None:
    code, stdout, err = invoke("plan", *SMALL, "--html", str(tmp_path / "no" / "p.html"))
    assert code == 2 and "does not exist" in err and stdout == ""


def test_the_other_json_results_carry_it_too() -> None:
    compared = run_json("compare", *SMALL, "tp=2", "tp=4")
    assert compared["command"] == "compare" and compared["inputs"]["plans"] == ["tp=2", "tp=4"]
    assert len(compared["plans"]) == 2
    validated = run_json("validate", "--analytic", "--source", "megatron2021")
    assert validated["command"] == "validate" and validated["inputs"]["source"] == "megatron2021"
    assert validated["schema_version"] == SCHEMA_VERSION


def test_timeline_boxes_are_told_apart() -> None:
    from meshplan.report.training import kind_of

    assert kind_of("0F3", "compute") == ("F", "3")
    assert kind_of("2W11", "compute") == ("W", "11")
    assert kind_of("tp 1B4", "tp") == ("tp", "4")
    assert kind_of("send 0F2", "comm") == ("comm", "2")
    assert kind_of("grad reduce", "comm") == ("grad", "")
