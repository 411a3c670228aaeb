"""`meshplan run` refuses bad options, and any cluster that is not this machine, before it
launches anything (no torch, no torchrun needed for these)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from meshplan.api.running import check_machine, measured_host, this_host
from meshplan.errors import MeshplanError
from meshplan.specs.io import load_cluster


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", "run", *args],
                          capture_output=True, text=True, timeout=120)


def _local(source: str):  # noqa: ANN202
    return load_cluster("dgx-a100").model_copy(update={"name": "local", "source": source})


@pytest.mark.parametrize(("args", "needle"), [
    (["--optimizer", "lion"], "--optimizer='lion'"),
    (["--steps", "0"], "--steps=0"),
    (["--warmup", "5", "--steps", "5"], "--warmup=5"),
    (["--threads-per-rank", "0"], "--threads-per-rank=0"),
    (["--precision", "fp8"], "fp8"),
    (["--nnodes", "3"], "--nnodes=3"),
    (["--nnodes", "2"], "--rdzv-endpoint"),
    (["--nproc", "0"], "--nproc=0"),
])
def test_option_errors_come_before_the_launch(args: list[str], needle: str) -> None:
    start = time.perf_counter()
    out = run("--cluster", "dgx-a100", "--dp", "2", *args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    assert time.perf_counter() - start < 8.0  # the interpreter and the CLI, no torchrun


def test_a_preset_is_not_this_machine() -> None:
    with pytest.raises(MeshplanError, match="not this machine.*--compare-to dgx-h100"):
        check_machine(load_cluster("dgx-h100"), None, "cpu")


def test_compare_to_names_the_cluster_on_purpose() -> None:
    notes: list[str] = []
    check_machine(load_cluster("dgx-h100"), "dgx-h100", "cpu", notes.append)
    assert len(notes) == 1 and "dgx-h100" in notes[0] and "on purpose" not in notes[0]
    with pytest.raises(MeshplanError, match="not this machine"):
        check_machine(load_cluster("dgx-h100"), "dgx-a100", "cpu")


def test_a_local_calibration_of_this_host_counts_as_this_machine() -> None:
    here = _local(f"meshplan calibrate --local on host={this_host()} (2 cores, device=cpu, "
                  "torch 2.13, gloo)")
    assert measured_host(here) == (this_host(), "cpu")
    check_machine(here, None, "cpu")
    # the format written before the device was recorded still counts
    check_machine(_local(f"meshplan calibrate --local on {this_host()} (2 cores, torch 2.13, "
                         "gloo)"), None, "cpu")
    with pytest.raises(MeshplanError, match="not this machine"):  # measured the GPU here
        check_machine(here, None, "cuda")
    with pytest.raises(MeshplanError, match="drop the flag"):
        check_machine(here, "dgx-h100", "cpu")


def test_a_local_calibration_of_another_host_is_refused() -> None:
    other = _local("meshplan calibrate --local on host=elsewhere-42 (64 cores, device=cpu, "
                   "torch 2.13, gloo)")
    with pytest.raises(MeshplanError, match="measured on host 'elsewhere-42'"):
        check_machine(other, None, "cpu")
    check_machine(other, "local", "cpu")


def test_cli_refuses_a_preset_cluster_before_the_launch() -> None:
    pytest.importorskip("torch")
    out = run("--cluster", "dgx-h100", "--dp", "2", "--steps", "2", "--warmup", "1")
    assert out.returncode == 2, out.stderr
    assert "not this machine" in out.stderr and "--compare-to dgx-h100" in out.stderr
    assert out.stderr.count("\n") == 1
