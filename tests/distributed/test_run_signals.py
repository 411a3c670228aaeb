"""`meshplan run` stops cleanly on Ctrl-C (SIGINT) and SIGTERM: exit 130 / 143, what was
measured so far on stderr, no rank or torchrun left running, no temporary folder left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout_s: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_every_rank_and_cleans_up(signum: int, code: int, local_cluster: Path,
                                               tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the run's temporary folder lands here
    cmd = [sys.executable, "-m", "meshplan", "run", "--cluster", str(local_cluster), "--dp",
           "2", "--steps", "100000", "--warmup", "1", "--global-batch-size", "4",
           "--seq-len", "32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    pids: list[int] = []
    try:
        def running() -> bool:
            folders = list(tmp_path.glob("meshplan-run-*"))
            return bool(folders) and len(list(folders[0].glob("pids/*"))) == 2 and any(
                f.stat().st_size > 0 for f in folders[0].glob("*.progress.jsonl"))
        assert _wait_for(running, 180), "the ranks never started training"
        folder = next(tmp_path.glob("meshplan-run-*"))
        pids = [int(p.name) for p in (folder / "pids").iterdir()]
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert f"interrupted by {signal.Signals(signum).name} after" in err, err
    assert "median step so far" in err and "Traceback" not in err, err
    assert _wait_for(lambda: not any(_alive(p) for p in pids), 10), "a rank survived"
    assert list(tmp_path.glob("meshplan-run-*")) == [], "the temporary folder was left"
