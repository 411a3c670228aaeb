"""The Perfetto / Chrome trace: trace-event schema, one non-overlapping track per instance
stage, request spans, KV transfers, and the size caps."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from meshplan.serve import (
    DeploymentSpec,
    DisaggregatedSpec,
    Lengths,
    Workload,
    draw,
    resolve_any,
)
from meshplan.serve.loop import simulate
from meshplan.serve.trace import Tracer
from meshplan.specs.io import load_cluster, load_model

WORK = Workload(arrival="poisson", rate=25, num_requests=150, seed=3,
                input=Lengths(kind="uniform", mean=600, spread=0.5),
                output=Lengths(kind="lognormal", mean=40, spread=0.6))


def traced(spec, tmp_path, tracer=None):
    d = resolve_any(load_model("llama3-8b"), load_cluster("dgx-h100"), spec)
    path = tmp_path / "trace.json"
    r = simulate(d, draw(WORK), trace=path, tracer=tracer)
    return r, json.loads(path.read_text())


def check_schema(doc):
    events = doc["traceEvents"]
    assert events
    for e in events:
        assert e["ph"] in {"X", "b", "e", "n", "M", "s", "f"}
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], float) and e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0
    tracks = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            tracks[e["pid"], e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for spans in tracks.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end - 1e-6  # microseconds; float rounding only
    return events, tracks


@pytest.mark.parametrize("spec", [DeploymentSpec(instances=2), DeploymentSpec(tp=2, pp=2)])
def test_colocated_and_pipelined_traces(spec, tmp_path):
    r, doc = traced(spec, tmp_path)
    events, tracks = check_schema(doc)
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == r.iterations * spec.pp
    assert {pid for pid, _ in tracks} == set(range(spec.instances))
    assert {tid for _, tid in tracks} == set(range(spec.pp))
    assert sum(e["args"]["tokens"] for e in slices) / spec.pp == int(
        (draw(WORK).input_len + draw(WORK).output_len - 1).sum())  # no preemption here
    begins = [e for e in events if e["ph"] == "b"]
    ends = [e for e in events if e["ph"] == "e"]
    assert len(begins) == len(ends) == 150
    first = {e["id"]: e["ts"] for e in events if e["ph"] == "n"}
    m = r.metrics
    assert first[7] == pytest.approx(m.first_token_s[7] * 1e6)


def test_disaggregated_trace_has_kv_transfers(tmp_path):
    spec = DisaggregatedSpec(prefill=DeploymentSpec(), decode=DeploymentSpec(tp=2))
    r, doc = traced(spec, tmp_path)
    events, tracks = check_schema(doc)
    sends = [e for e in events if e["ph"] == "X" and e["name"] == "kv transfer"]
    assert len(sends) == len(r.kv_transfer_s)
    assert {(e["pid"], e["tid"]) for e in sends} == {(0, 1)}  # the prefill instance's link
    assert sends[0]["dur"] == pytest.approx(r.kv_transfer_s[0] * 1e6)
    # Each transfer flows from its slice to the decode instance's next iteration.
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert len(starts) == len(ends) == len(sends) and set(starts) == set(ends)
    decode_starts = sorted(ts for ts, _ in tracks[1, 0])
    for send in sends:
        (s,) = [e for e in starts.values() if send["ts"] <= e["ts"] <= send["ts"] + send["dur"]
                and e["pid"] == send["pid"]]
        f = ends[s["id"]]
        assert (f["pid"], f["tid"]) == (send["args"]["to_instance"], 0) == (1, 0)
        assert f["ts"] == pytest.approx(send["ts"] + send["dur"])
        assert any(ts >= f["ts"] - 1e-6 for ts in decode_starts)  # a slice to bind to
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert any(n.startswith("prefill 0") for n in names)
    assert any(n.startswith("decode 0") for n in names)


def test_the_trace_is_capped(tmp_path):
    r, doc = traced(DeploymentSpec(), tmp_path, Tracer(max_slices=50, max_requests=10))
    check_schema(doc)
    assert sum(e["ph"] == "X" for e in doc["traceEvents"]) == 50
    assert sum(e["ph"] == "b" for e in doc["traceEvents"]) == 10
    other = doc["otherData"]
    assert other["slices_left_out"] == r.iterations - 50 and other["requests_left_out"] == 140
