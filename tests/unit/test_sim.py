"""The simulator against closed forms where they hold, and end-to-end through `simulate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshplan.schedules.registry import generate
from meshplan.sim.engine import StageCosts, simulate_schedule


def uniform(schedule, f=1.0, i=1.0, w=1.0, act=1.0, p2p=0.0):
    S, v = schedule.num_stages, schedule.num_chunks
    return StageCosts((f / v,) * S, (i / v,) * S, (w / v,) * S, (act,) * S, p2p_time=p2p)


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (8, 32)])
def test_bubble_matches_closed_form(name, p, m):
    r = simulate_schedule(generate(name, p, m), uniform(generate(name, p, m)))
    assert r.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize(("p", "m", "v"), [(2, 4, 2), (4, 8, 2), (4, 16, 4)])
def test_interleaved_bubble_matches_megatron(p, m, v):
    """(p-1)/(v m + p - 1): the paper's (1/v)(p-1)/m as a share of the step."""
    s = generate("interleaved-1f1b", p, m, v)
    r = simulate_schedule(s, uniform(s))
    assert r.bubble_fraction == pytest.approx((p - 1) / (v * m + p - 1))


def test_zb_h1_bubble_is_about_a_third_of_1f1b():
    p, m = 4, 16
    one = simulate_schedule(generate("1f1b", p, m), uniform(generate("1f1b", p, m)))
    zb = simulate_schedule(generate("zb-h1", p, m), uniform(generate("zb-h1", p, m)))
    ratio = (zb.makespan - 3 * m) / (one.makespan - 3 * m)
    assert ratio == pytest.approx(1 / 3, abs=0.05)


def test_peak_in_flight_activations():
    p, m = 4, 12
    one = simulate_schedule(generate("1f1b", p, m), uniform(generate("1f1b", p, m)))
    gp = simulate_schedule(generate("gpipe", p, m), uniform(generate("gpipe", p, m)))
    assert one.peak_activation_bytes[0] == p
    assert gp.peak_activation_bytes[0] == m


def test_transfers_lengthen_the_step_but_run_off_the_compute_stream():
    s = generate("1f1b", 4, 8)
    free = simulate_schedule(s, uniform(s))
    slow = simulate_schedule(s, uniform(s, p2p=0.5))
    assert slow.makespan > free.makespan
    assert slow.busy == free.busy


def test_simulate_cli_writes_a_perfetto_trace(tmp_path):
    out = tmp_path / "step.json"
    cmd = [sys.executable, "-m", "meshplan", "simulate", "--model", "llama3-8b", "--cluster",
           "dgx-h100", "--num-gpus", "16", "--global-batch-size", "32", "--seq-len", "4096",
           "--tp", "2", "--pp", "4", "--schedule", "zb-h1", "--trace", str(out), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["source"] == "simulated" and 0 < summary["simulated"]["bubble_fraction"] < 1
    events = json.loads(out.read_text())["traceEvents"]
    names = {e["name"] for e in events if e["ph"] == "X"}
    for kind in ("F", "I", "W"):
        assert any(kind in n for n in names)
    assert any(n.startswith("send") for n in names)
    assert {e["pid"] for e in events if e["ph"] == "X"} == {0, 1, 2, 3}


def test_zero_bubble_paper_order_is_reproduced():
    """Qi et al. 2024 Tables 3-5: the simulator ranks 1F1B, 1F1B-I, ZB-1p and ZB-2p as measured
    in at least 9 of the 12 (model, micro-batches) groups, and every two schedules whose
    measured throughputs differ by more than 2.5% in their measured order (the misordered
    pairs are near-ties in the paper: 1F1B-I against ZB-1p at m = 64, 2.2% and 0.2%, and an
    exact tie at 1.5B m = 32). benchmarks/zero_bubble.py prints the full table."""
    from collections import defaultdict

    from meshplan.validate.report import validate
    from meshplan.validate.rows import load_runs

    rows = [r for r in load_runs() if r["source_id"] == "zerobubble2024"]
    groups = defaultdict(list)
    for r in validate(rows)["rows"]:
        groups[r["id"].rsplit("-m", 1)[1] + r["id"].split("-")[1]].append(r)
    matched = sum(sorted(g, key=lambda r: r["measured"]) == sorted(g, key=lambda r: r["predicted"])
                  for g in groups.values())
    assert len(groups) == 12 and matched >= 9
    for g in groups.values():
        for a in g:
            for b in g:
                if b["measured"] > 1.025 * a["measured"]:
                    assert b["predicted"] > a["predicted"], (a["id"], b["id"])
