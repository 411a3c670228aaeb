"""Serving simulation: closed forms, queueing theory, conservation, determinism, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from meshplan.errors import MeshplanError
from meshplan.serve import DeploymentSpec, Lengths, Workload, draw, resolve, simulate
from meshplan.serve.iteration import IterationCost, kv_capacity
from meshplan.serve.loop import simulate as simulate_requests
from meshplan.specs.io import load_cluster, load_model


@pytest.fixture(scope="module")
def deployment():
    return resolve(load_model("llama3-8b"), load_cluster("dgx-h100"), DeploymentSpec(tp=1))


def one_request(deployment, prompt: int, output: int):
    w = Workload(arrival="burst", num_requests=1, input=Lengths(mean=prompt),
                 output=Lengths(mean=output))
    return simulate_requests(deployment, draw(w))


def test_a_request_alone_takes_its_prefill_then_one_decode_step_per_token(deployment):
    """TTFT = the prefill iteration; E2E = TTFT + the (out - 1) decode steps, each over the
    KV length it reads (the cost core's iteration time, nothing else)."""
    prompt, out = 1000, 50
    r = one_request(deployment, prompt, out)
    cost = IterationCost(deployment)
    prefill = cost.time(1, prompt, 0, prompt * prompt, prompt, 1)
    decode = sum(cost.time(1, 1, prompt + g - 1, 1, prompt + g, 1) for g in range(1, out))
    m = r.metrics
    assert m.ttft_s[0] == pytest.approx(prefill, rel=1e-12)
    assert m.e2e_s[0] == pytest.approx(prefill + decode, rel=1e-12)
    assert r.iterations == out


def test_a_long_prompt_is_chunked_by_the_token_budget():
    d = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                DeploymentSpec(max_num_batched_tokens=512))
    r = one_request(d, 3 * 512 + 10, 2)
    assert r.iterations == 4 + 1  # four prefill chunks, then one decode step
    whole = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                    DeploymentSpec(max_num_batched_tokens=512, enable_chunked_prefill=False))
    with pytest.raises(MeshplanError, match="max_num_batched_tokens=512"):
        one_request(whole, 3 * 512 + 10, 2)


def test_light_poisson_load_on_a_one_request_engine_waits_as_in_md1():
    """max_num_seqs=1 serves one request at a time: an M/D/1 queue with service S (the
    request alone), whose mean wait is rho S / (2 (1 - rho)) (Pollaczek-Khinchine)."""
    d = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                DeploymentSpec(tp=1, max_num_seqs=1))
    service = one_request(d, 256, 16).metrics.e2e_s[0]
    rho = 0.3
    w = Workload(arrival="poisson", rate=rho / service, num_requests=6000, seed=1,
                 input=Lengths(mean=256), output=Lengths(mean=16))
    r = simulate_requests(d, draw(w))
    wait = float(r.metrics.queueing_s.mean())
    # a request arriving mid-iteration also waits for that iteration to end: allow for it
    assert wait == pytest.approx(rho * service / (2 * (1 - rho)), rel=0.12)


def test_every_request_finishes_once_and_blocks_return(deployment):
    w = Workload(arrival="poisson", rate=20, num_requests=400, seed=3,
                 input=Lengths(kind="uniform", mean=800, spread=0.5),
                 output=Lengths(kind="lognormal", mean=120, spread=0.8))
    reqs = draw(w)
    r = simulate_requests(deployment, reqs)
    m = r.metrics
    assert np.all(np.isfinite(m.finish_s)) and len(m.finish_s) == 400
    assert np.all(m.first_token_s >= m.arrival_s) and np.all(m.finish_s >= m.first_token_s)
    assert len(m.itl_s) == int((reqs.output_len - 1).sum())  # one gap per later token
    assert r.kv_usage[-1, 1] == 0.0  # all blocks back in the pool


def test_preemption_when_blocks_run_out():
    """A cache for few requests forces recompute preemptions, and every request still ends."""
    d = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                DeploymentSpec(tp=1, gpu_memory_utilization=0.25))
    cap = kv_capacity(d)
    assert cap.num_blocks > 0
    tokens = cap.num_blocks * d.block_size
    w = Workload(arrival="burst", num_requests=40, input=Lengths(mean=tokens // 20),
                 output=Lengths(mean=tokens // 20))
    r = simulate_requests(d, draw(w))
    assert r.preemptions > 0 and np.all(np.isfinite(r.metrics.finish_s))


def test_same_seed_same_numbers_other_seed_other_numbers():
    def run(seed):
        w = Workload(arrival="poisson", rate=10, num_requests=200, seed=seed,
                     input=Lengths(mean=512), output=Lengths(mean=64))
        return simulate("llama3-8b", "dgx-h100", DeploymentSpec(instances=2), w).to_json()
    assert run(7) == run(7)
    assert run(7)["metrics"] != run(8)["metrics"]


def test_a_deployment_that_does_not_fit_is_a_result():
    w = Workload(arrival="burst", num_requests=1, input=Lengths(mean=10), output=Lengths(mean=2))
    r = simulate("llama3.1-405b", "dgx-h100", DeploymentSpec(tp=2), w)
    assert not r.fits and "KV cache" in r.why_not and r.to_json()["fits"] is False


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", "serve", "simulate", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_json_carries_counts_metrics_and_deployment():
    out = cli("--rate", "5", "--num-requests", "100", "--json")
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    assert js["num_requests"] == js["num_completed"] == 100
    assert js["deployment"]["tp"] == 1 and js["deployment"]["max_num_seqs"] == 1024
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(js["metrics"][key]) == {"mean", "p50", "p90", "p95", "p99"}
    assert js["metrics"]["output_tokens_per_s"] > 0


@pytest.mark.parametrize(("args", "needle"), [
    (("--rate", "0"), "rate"),
    (("--rate", "1", "--engine", "nope"), "unknown engine"),
    (("--rate", "1", "--input-len", "200000"), "max_seq_len"),
    (("--rate", "1", "--tp", "3"), "tp=3"),
    (("--workload", "poisson"), "needs a rate"),
    (("--rate", "1e-300"), "rate"),
    (("--rate", "1", "--slo-ttft-ms", "-1"), "--slo-ttft-ms"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, needle):
    out = cli(*args)
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_littles_law_on_the_simulated_queue():
    """L = lambda W for the waiting queue: its length sampled at 4,000 instants of the
    steady run (requests arrived and not yet scheduled) against the arrival rate times the
    mean queueing delay of the requests that arrived in that window."""
    d = resolve(load_model("llama3-8b"), load_cluster("dgx-h100"),
                DeploymentSpec(tp=1, max_num_seqs=8))
    w = Workload(arrival="poisson", rate=6.0, num_requests=4000, input=Lengths(mean=512),
                 output=Lengths(mean=64), seed=3)
    m = simulate_requests(d, draw(w)).metrics
    a, s = m.arrival_s, m.first_scheduled_s
    assert np.all(s >= a)
    lo, hi = a[500], a[3500]  # away from the start-up and the drain
    t = np.linspace(lo, hi, 4000)
    queue = ((a[None, :] <= t[:, None]) & (s[None, :] > t[:, None])).sum(axis=1)
    inside = (a >= lo) & (a < hi)
    rate = inside.sum() / (hi - lo)
    waiting = float(np.mean(m.queueing_s[inside]))
    assert waiting > 0.05  # a real queue, not an idle server
    assert float(queue.mean()) == pytest.approx(rate * waiting, rel=0.1)
