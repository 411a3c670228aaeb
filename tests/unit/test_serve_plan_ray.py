"""`serve plan --ray`: the candidate simulations as Ray tasks on a local Ray instance started
here (2 CPUs, no dashboard, on the loopback address) give exactly the local run's plan; a
missing Ray is a one-line error naming the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meshplan.errors import MeshplanError
from meshplan.serve.plan.executor import RAY_EXTRA, executor

ARGS = ("--num-gpus", "2", "--input-len", "512", "--output-len", "64", "--slo-ttft-ms", "500",
        "--slo-tpot-ms", "30", "--num-requests", "200", "--json")


@pytest.fixture(scope="module")
def ray_address():
    """A Ray head in this process; its address for other drivers. The cluster binds to the
    loopback address (Ray's single-machine mode, read when ray is imported)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", "serve", "plan", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_plan_equals_local_plan(ray_address):
    """Another driver (the CLI) connects to the cluster by its address; the JSON plans are
    identical to the one-process run's."""
    on_ray = cli(*ARGS, "--ray", ray_address)
    assert on_ray.returncode == 0, on_ray.stderr
    here = cli(*ARGS, "--workers", "1")
    assert here.returncode == 0, here.stderr
    assert json.loads(on_ray.stdout) == json.loads(here.stdout)
    assert json.loads(on_ray.stdout)["plans"][0]["simulated"] is True


@pytest.mark.slow
@pytest.mark.ray
def test_ray_executor_keeps_item_order(ray_address):
    """Results come back in the order of the items, not of completion (the slow first item
    finishes last; a lambda, which Ray ships by value: this module is not importable on
    the workers)."""
    def sleepy(x):
        return __import__("time").sleep(x) or x

    with executor(ray_address=ray_address) as mapper:
        assert mapper(sleepy, [0.5, 0.0, 0.2, 0.0]) == [0.5, 0.0, 0.2, 0.0]


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MeshplanError, match="meshplan\\[ray\\]"), executor(ray_address="auto"):
        pass
    assert "meshplan[ray]" in RAY_EXTRA


def test_ray_and_workers_are_exclusive():
    with pytest.raises(MeshplanError, match="--workers and --ray"), \
            executor(workers=2, ray_address="auto"):
        pass
