"""Layout ranking against the shipped serving runs (benchmarks/serve_plan_ranking.py): the
groups are the runs that differ only in layout, the measured static-batch throughput follows
from the prefill and decode times, and the per-GPU order holds as docs/validation.md says."""

from __future__ import annotations

import copy
import statistics

import pytest

from meshplan.serve.validate import load_serving_runs
from meshplan.serve.validate.layouts import (
    layout_groups,
    measured_throughput,
    pairs_agree,
    rank_group,
)


@pytest.fixture(scope="module")
def runs():
    return load_serving_runs()


def test_groups_differ_only_in_layout(runs):
    base = next(r for r in runs if r["scenario"] == "static_batch")
    other = copy.deepcopy(base)
    other["id"] += "-x"
    other["parallelism"]["tp"] = 2 * (base["parallelism"]["tp"] or 1)
    other["hardware"]["num_gpus"] = 2 * (base["hardware"]["num_gpus"] or 1)
    batch = copy.deepcopy(other)
    batch["id"] += "-b"
    batch["workload"]["batch_size"] = 3 * (base["workload"]["batch_size"] or 1)
    groups = layout_groups([base, other, batch])
    assert [[r["id"] for r in g] for g in groups] == [[base["id"], other["id"]]]
    for g in layout_groups(runs):
        assert len({(r["parallelism"]["tp"], r["hardware"]["num_gpus"]) for r in g}) == len(g)


def test_static_batch_throughput_from_its_times(runs):
    r = next(r for r in runs if r["scenario"] == "static_batch"
             and r["metrics"]["output_tokens_per_s"] is None and r["metrics"]["prefill_time_ms"]
             and r["workload"]["batch_size"] > 1)
    m, b, o = r["metrics"], r["workload"]["batch_size"], r["workload"]["output_len"]
    want = b * o / ((m["prefill_time_ms"] + (o - 1) * m["decode_step_ms"]) / 1e3)
    assert measured_throughput(r) == pytest.approx(want)


def test_per_gpu_order_matches_the_measured_one(runs):
    """The figures in docs/validation.md: tokens/s per GPU ordered alike in >= 95% of the
    layout pairs, mean Spearman >= 0.9."""
    groups = [g for g in map(rank_group, layout_groups(runs)) if g]
    assert len(groups) >= 30
    agree = [pairs_agree(g, True) for g in groups]
    assert sum(a for a, _ in agree) / sum(n for _, n in agree) >= 0.95
    rhos = [x for g in groups if (x := g.rho(True)) is not None]
    assert statistics.fmean(rhos) >= 0.9
