"""A plan table an engineer can read: equivalent plans are one row, each row says what binds
it and how much memory it leaves, and --explain says why the neighbours rank where they do."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

import meshplan
from meshplan import Job
from meshplan.compare import difference
from meshplan.search.rank import EQUIVALENT_STEP, group_equivalents

JOB = Job(global_batch_size=512, seq_len=8192)


@pytest.fixture(scope="module")
def result():
    return meshplan.plan("llama3-8b", "dgx-h100", JOB, num_gpus=64, top=10)


def _degrees(e):
    return (e.plan.tp, e.plan.cp, e.plan.pp, e.plan.dp, e.plan.ep)


def test_each_row_is_one_layout(result):
    """The README's first command: the top rows are ten different sets of parallel degrees
    (issue 16: "five plans with five different sets of parallel degrees at the top")."""
    degrees = [_degrees(e) for e in result.plans]
    assert len(degrees) == 10 and len(set(degrees)) == 10
    steps = [e.step_time_s for e in result.plans]
    assert steps == sorted(steps)


def test_rows_with_the_same_degrees_differ_by_more_than_the_tolerance():
    plans = meshplan.plan("llama3-8b", "dgx-h100", JOB, num_gpus=64, top=10,
                          variants=True).plans
    assert len(plans) == 10
    assert len({_degrees(e) for e in plans}) < 10  # --variants: settings of one layout too
    for i, a in enumerate(plans):
        for b in plans[i + 1:]:
            if _degrees(a) == _degrees(b):
                fast, slow = sorted((a.step_time_s, b.step_time_s))
                assert slow > (1 + EQUIVALENT_STEP) * fast
    assert sum(e.equivalent_plans for e in plans) > len(plans)  # some rows stand for several


def test_the_representative_has_the_most_headroom(result):
    best = result.plans[0]
    twin = replace(best, memory_bytes={**best.memory_bytes,
                                       "peak": best.memory_bytes["peak"] + 2**30},
                   step_time_s=best.step_time_s * (1 + EQUIVALENT_STEP / 2))
    merged = group_equivalents([twin, best])
    assert len(merged) == 1 and merged[0] is not twin
    assert merged[0].memory_bytes["peak"] == best.memory_bytes["peak"]
    assert merged[0].equivalent_plans == twin.equivalent_plans + best.equivalent_plans


def test_binding_and_headroom_are_reported(result):
    e = result.plans[0]
    js = e.to_json()
    assert js["binds"] in ("compute", "memory", "bubble", "tp_comm", "cp_comm", "ep_comm",
                           "pp_comm", "dp_comm", "optimizer")
    assert js["headroom_gib"] == pytest.approx(
        (e.memory_capacity_bytes - e.memory_bytes["peak"]) / 2**30)
    assert js["equivalent_plans"] >= 1
    full = replace(e, memory_bytes={**e.memory_bytes, "peak": 0.99 * e.memory_capacity_bytes})
    assert full.binding == "memory"


def test_difference_names_the_terms_that_changed(result):
    a, b = result.plans[0], result.plans[-1]
    d = difference(a, b)
    assert d.step_delta_s == pytest.approx(b.step_time_s - a.step_time_s)
    assert all(abs(v) > 0 for _, v in d.time_terms)
    assert sum(v for _, v in d.time_terms) == pytest.approx(d.step_delta_s, abs=1e-9)
    assert "slower" in d.why() or "same step time" in d.why()


def test_cli_explain_prints_breakdowns_and_neighbours():
    cmd = [sys.executable, "-m", "meshplan", "plan", "--model", "llama3-8b", "--cluster",
           "dgx-h100", "--num-gpus", "64", "--global-batch-size", "512", "--seq-len", "8192",
           "--top", "4", "--explain", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "time per step" in out.stdout and "memory per GPU" in out.stdout
    assert "#1 " in out.stdout and "#3 " in out.stdout
    bad = subprocess.run(cmd[:-1] + ["9"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --explain=9")
