"""Workloads: zipf lengths, trace files (parsing and errors), replayed and closed-loop
arrivals, shared prefixes, and their CLI flags."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from meshplan.errors import MeshplanError
from meshplan.serve import DeploymentSpec, Lengths, Workload, draw, resolve
from meshplan.serve.loop import simulate
from meshplan.serve.workload import ArrivalFeed, read_trace, zipf_support
from meshplan.specs.io import load_cluster, load_model


def test_zipf_lengths_have_the_mean_and_the_power_law():
    rng = np.random.default_rng(0)
    x = Lengths(kind="zipf", mean=300, spread=1.1).draw(rng, 400_000)
    p = zipf_support(300, 1.1)
    assert x.min() == 1 and x.max() <= len(p)
    assert abs(x.mean() - 300) / 300 < 0.02
    # P(1) / P(2) = 2^a
    counts = np.bincount(x)
    assert counts[1] / counts[2] == pytest.approx(2 ** 1.1, rel=0.03)
    # the support's mean reaches the target at its last length, not before
    lengths = np.arange(1, len(p) + 1)
    assert float(np.dot(p, lengths)) >= 300
    q = zipf_support(300, 1.1)[:-1]
    assert float(np.dot(q / q.sum(), lengths[:-1])) < 300


def test_zipf_needs_an_exponent_and_a_reachable_mean():
    with pytest.raises(ValidationError, match="exponent"):
        Lengths(kind="zipf", mean=100)
    with pytest.raises(MeshplanError, match="zipf with exponent 3"):
        Lengths(kind="zipf", mean=500, spread=3.0).draw(np.random.default_rng(0), 10)


def test_csv_and_jsonl_traces_parse(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("input_len,output_len,arrival_s\n100,10,2.5\n200,20,0.5\n300,30,1.0\n")
    ins, outs, t = read_trace(csv)
    assert ins.tolist() == [100, 200, 300] and outs.tolist() == [10, 20, 30]
    assert t.tolist() == [2.0, 0.0, 0.5]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"input_len": 5, "output_len": 7, "timestamp": 1700000000.0}\n\n'
                  '{"input_len": 6, "output_len": 8.0, "timestamp": 1700000003.5}\n')
    ins, outs, t = read_trace(jl)
    assert ins.tolist() == [5, 6] and outs.tolist() == [7, 8] and t.tolist() == [0.0, 3.5]
    bare = tmp_path / "b.csv"
    bare.write_text("output_len,input_len\n3,4\n")
    assert read_trace(bare)[2] is None


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("e.csv", "", "no requests"),
    ("h.csv", "input_len,output_len\n", "no requests"),
    ("m.csv", "input_len,arrival_s\n3,0\n", "missing output_len"),
    ("n.csv", "input_len,output_len\n3,abc\n", "output_len='abc' is not a number"),
    ("z.csv", "input_len,output_len\n0,4\n", "whole number >= 1"),
    ("f.csv", "input_len,output_len\n2.5,4\n", "whole number >= 1"),
    ("t.csv", "input_len,output_len,timestamp\n3,4,x\n", "timestamp='x'"),
    ("j.jsonl", '{"input_len": 3, "output_len": 4}\n[1, 2]\n', ":2: not a JSON object"),
    ("k.jsonl", '{"input_len": 3,\n', ":1: not a JSON object"),
    ("x.txt", "input_len,output_len\n3,4\n", ".csv or .jsonl"),
])
def test_malformed_traces_are_one_line_errors(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MeshplanError) as err:
        read_trace(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_missing_trace_and_replay_without_times_are_errors(tmp_path):
    with pytest.raises(MeshplanError, match="not found"):
        read_trace(tmp_path / "nope.csv")
    path = tmp_path / "l.csv"
    path.write_text("input_len,output_len\n3,4\n")
    with pytest.raises(MeshplanError, match="no arrival_s or timestamp"):
        draw(Workload(arrival="replay", lengths_file=path))
    with pytest.raises(ValidationError, match="needs a lengths_file"):
        Workload(arrival="replay", input=Lengths(mean=3), output=Lengths(mean=3))


def test_replay_sorts_by_time_and_lengths_files_cycle(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("input_len,output_len,arrival_s\n100,10,3\n200,20,1\n300,30,2\n")
    r = draw(Workload(arrival="replay", lengths_file=path))
    assert r.arrival_s.tolist() == [0.0, 1.0, 2.0] and r.input_len.tolist() == [200, 300, 100]
    with pytest.raises(MeshplanError, match="only 3 requests"):
        draw(Workload(arrival="replay", lengths_file=path, num_requests=4))
    p = draw(Workload(arrival="poisson", rate=5, lengths_file=path, num_requests=7))
    assert p.input_len.tolist() == [100, 200, 300, 100, 200, 300, 100]
    assert np.all(np.diff(p.arrival_s) > 0)


def test_closed_loop_keeps_at_most_n_outstanding_and_chains_each_client():
    n, think = 5, 0.02
    w = Workload(arrival="closed", clients=n, think_s=think, num_requests=80, seed=1,
                 input=Lengths(kind="uniform", mean=400, spread=0.5),
                 output=Lengths(kind="uniform", mean=50, spread=0.5))
    d = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"), DeploymentSpec())
    m = simulate(d, draw(w)).metrics
    assert np.all(np.isfinite(m.arrival_s)) and np.all(np.isfinite(m.finish_s))
    assert np.all(m.arrival_s[:n] == 0.0)
    np.testing.assert_allclose(m.arrival_s[n:], m.finish_s[:-n] + think, rtol=1e-15)
    events = sorted([(t, 1) for t in m.arrival_s] + [(t, -1) for t in m.finish_s],
                    key=lambda e: (e[0], e[1]))  # a finish goes before an arrival then
    outstanding = np.cumsum([e[1] for e in events])
    assert outstanding.max() == n and outstanding[-1] == 0


def test_the_arrival_feed_orders_closed_clients_by_their_finishes():
    r = draw(Workload(arrival="closed", clients=2, num_requests=5, input=Lengths(mean=3),
                      output=Lengths(mean=3)))
    f = ArrivalFeed(r)
    assert [f.pop(), f.pop()] == [0, 1] and f.next_s == float("inf")
    f.finished(1, 2.0)
    f.finished(0, 3.0)
    assert f.pop() == 3 and f.next_s == 3.0 and f.pop() == 2
    f.finished(3, 4.0)  # request 5 does not exist
    assert f.next_s == float("inf")


def test_shared_prefixes_are_prepended_by_group():
    w = Workload(arrival="burst", num_requests=7, prefix_len=50, prefix_group_size=3,
                 input=Lengths(mean=10), output=Lengths(mean=4))
    r = draw(w)
    assert r.prefix_group.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert r.prefix_len.tolist() == [50] * 7 and r.input_len.tolist() == [60] * 7
    assert draw(Workload(arrival="burst", num_requests=2, input=Lengths(mean=10),
                         output=Lengths(mean=4))).prefix_group is None


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", "serve", "simulate", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_runs_the_new_workloads(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps({"input_len": 100 + i, "output_len": 10,
                                        "arrival_s": 0.1 * i}) + "\n" for i in range(30)))
    for args in (("--workload", "closed", "--clients", "4", "--num-requests", "40"),
                 ("--workload", "replay", "--lengths-file", str(path), "--engine", "sglang"),
                 ("--rate", "5", "--lengths-file", str(path), "--engine", "trtllm"),
                 ("--rate", "5", "--num-requests", "30", "--lengths", "zipf", "--spread",
                  "1.2", "--engine", "static"),
                 ("--rate", "5", "--num-requests", "30", "--prefix-len", "512",
                  "--prefix-group-size", "3")):
        out = cli(*args, "--input-len", "300", "--output-len", "20", "--json")
        assert out.returncode == 0, (args, out.stderr)
        js = json.loads(out.stdout)
        assert js["num_completed"] == js["num_requests"] > 0, args


@pytest.mark.parametrize(("args", "needle"), [
    (("--workload", "closed"), "needs clients"),
    (("--workload", "replay"), "needs a lengths_file"),
    (("--lengths", "zipf", "--rate", "1"), "exponent"),
    (("--rate", "1", "--lengths-file", "/nonexistent.csv"), "not found"),
    (("--workload", "closed", "--clients", "0"), "clients"),
    (("--rate", "1", "--prefix-group-size", "0"), "--prefix-group-size=0"),
])
def test_cli_bad_workloads_are_one_line_and_exit_2(args, needle):
    out = cli(*args)
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_capped_lognormal_keeps_its_mean_under_the_cap():
    """A lognormal cut at `max` (longer draws drawn again) has the stated mean: the partial
    expectation E[X | X <= c] = exp(mu + s^2/2) Phi(z - s) / Phi(z), z = (ln c - mu) / s."""
    import math

    from meshplan.serve.workload import truncated_lognormal_mean, truncated_lognormal_mu

    assert truncated_lognormal_mean(0.0, 1.0, 1e12) == pytest.approx(math.exp(0.5), rel=1e-9)
    # cut at the median (c = e^mu): the mean halves the uncut exp(mu + s^2/2) times
    # 2 Phi(-s); for s = 1, 2 Phi(-1) = 0.31731
    assert truncated_lognormal_mean(0.0, 1.0, 1.0) == pytest.approx(
        math.exp(0.5) * 0.3173105, rel=1e-6)
    mu = truncated_lognormal_mu(179, 0.9, 2044)
    assert truncated_lognormal_mean(mu, 0.9, 2044) == pytest.approx(179, rel=1e-9)
    x = Lengths(kind="lognormal", mean=202, spread=1.6, max=1024).draw(
        np.random.default_rng(1), 100_000)
    assert x.max() <= 1024 and x.mean() == pytest.approx(202, rel=0.01)
    with pytest.raises(ValueError, match="lognormal"):
        Lengths(kind="normal", mean=100, spread=0.2, max=500)
    with pytest.raises(ValueError, match="exceed the mean"):
        Lengths(kind="lognormal", mean=100, spread=0.5, max=90)
