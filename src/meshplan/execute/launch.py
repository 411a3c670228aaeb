"""Launch the ranks of one run with torchrun and collect rank 0's JSON.

Mirrors how torchtitan's `run_train.sh` starts training: `python -m torch.distributed.run
--nproc-per-node P ...` (torchrun, `torch.distributed.run`), so the elastic agent, its
rendezvous and its multi-node flags (`--nnodes`, `--node-rank`, `--rdzv-endpoint`,
`--rdzv-backend`, `--rdzv-id`, `--master-addr`, `--master-port`) behave exactly as users know
them. Without multi-node flags the run is `--standalone` (a local rendezvous on a free port,
so concurrent runs do not collide).

A launch is a well-behaved child: torchrun runs in its own session (a Ctrl-C in the terminal
reaches meshplan only), its output goes to a log file in a private temporary folder, and a
SIGINT or SIGTERM to meshplan stops torchrun (which stops its ranks), then kills any rank still
alive (each rank records its pid in the folder), removes the folder and raises `Interrupted`
with the steps rank 0 had finished. The folder is kept only when the run fails, for its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.execute.runtime import PIDS_DIR, RunConfig, progress_path

STOP_GRACE_S = 15.0
"""Seconds torchrun gets to stop its ranks after SIGTERM before everything is killed."""


class Interrupted(Exception):  # noqa: N818  (a signal, not an error of the user)
    """The launch was stopped by SIGINT or SIGTERM; `progress` holds rank 0's finished steps
    (dicts with config, step, time_s, loss), `exit_code` the shell's 128 + signal."""

    def __init__(self, signum: int, progress: list[dict[str, Any]]) -> None:
        self.signum = signum
        self.progress = progress
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def torchrun_command(config: Path, out: Path, nproc_per_node: int,
                     torchrun_args: Sequence[str] = ()) -> list[str]:
    """The torchrun command line for one run."""
    args = list(torchrun_args) or ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
            str(nproc_per_node), *args, "-m", "meshplan.execute.runtime", str(config), str(out)]


_RANK_ERROR = re.compile(r"^\[rank(\d+)\]: ((?:\w+\.)*\w*(?:Error|Exception)\b.*)$")


def last_error(text: str) -> str:
    """The most telling line of a failed run's log: the first rank's exception line."""
    for line in text.splitlines():
        match = _RANK_ERROR.match(line.strip())
        if match:
            return f"rank {match.group(1)}: {match.group(2)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def _raise_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `_Signalled` while the ranks run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise _Signalled(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Hold off SIGINT/SIGTERM while the ranks are stopped and the folder removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _rank_pids(workdir: Path) -> list[int]:
    pids = []
    for f in (workdir / PIDS_DIR).glob("*"):
        with contextlib.suppress(ValueError, OSError):
            pids.append(int(f.read_text()))
    return pids


def _is_our_rank(pid: int, workdir: Path) -> bool:
    """The pid is alive and still one of this launch's ranks (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(workdir).encode() in cmdline


def stop(proc: subprocess.Popen, workdir: Path, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM torchrun (it forwards the signal to its ranks and waits for them); after
    `grace_s`, SIGKILL torchrun's group and every rank of this launch still alive."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    deadline = time.monotonic() + 5.0
    for pid in _rank_pids(workdir):
        while _is_our_rank(pid, workdir) and time.monotonic() < deadline:
            time.sleep(0.05)  # torchrun's SIGTERM is on its way
        if _is_our_rank(pid, workdir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def read_progress(workdir: Path) -> list[dict[str, Any]]:
    """The steps rank 0 has finished (one JSON line each), tolerant of a half-written line."""
    path = progress_path(workdir / "result.json")
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def launch(cfg: RunConfig | list[RunConfig], nproc_per_node: int,
           torchrun_args: Sequence[str] = (), timeout_s: float | None = None) -> Any:
    """Run `cfg` on `nproc_per_node` local ranks (times the nodes torchrun_args name).

    Returns rank 0's result (a list of results for a list of configs, run back to back in
    one launch), or None on a node that does not hold rank 0. A failed run raises
    MeshplanError with the last error line and the path of the full log (the only case the
    temporary folder is kept); SIGINT / SIGTERM raise `Interrupted` once every rank is gone.
    """
    workdir = Path(tempfile.mkdtemp(prefix="meshplan-run-"))
    keep = False
    try:
        with _raise_on_signals():
            return _launch(workdir, cfg, nproc_per_node, torchrun_args, timeout_s)
    except _Signalled as sig:  # arrived after the ranks were gone
        raise Interrupted(sig.signum, read_progress(workdir)) from None
    except MeshplanError:
        keep = True
        raise
    finally:
        if not keep:
            with _signals_ignored():
                shutil.rmtree(workdir, ignore_errors=True)


def _launch(workdir: Path, cfg: RunConfig | list[RunConfig], nproc_per_node: int,
            torchrun_args: Sequence[str], timeout_s: float | None) -> Any:
    config, out, log = workdir / "config.json", workdir / "result.json", workdir / "log.txt"
    cfgs = cfg if isinstance(cfg, list) else [cfg]
    config.write_text(json.dumps([c.to_dict() for c in cfgs] if isinstance(cfg, list)
                                 else cfg.to_dict()))
    # TMPDIR: torchrun's and the ranks' own temporary files (torchelastic_*) go with the run.
    env = dict(os.environ, OMP_NUM_THREADS=str(cfgs[0].threads_per_rank),
               PYTHONUNBUFFERED="1", TMPDIR=str(workdir))
    cmd = torchrun_command(config, out, nproc_per_node, torchrun_args)
    proc = None
    try:
        with open(log, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with _signals_ignored():
            assert proc is not None
            stop(proc, workdir)
        raise MeshplanError(f"run timed out after {timeout_s:.0f} s (log: {log})") from None
    except _Signalled as sig:
        with _signals_ignored():
            if proc is not None:
                stop(proc, workdir)
            progress = read_progress(workdir)
        raise Interrupted(sig.signum, progress) from None
    if code != 0:
        raise MeshplanError(f"torchrun failed (exit {code}): "
                            f"{last_error(log.read_text(errors='replace'))} (full log: {log})")
    if not out.exists():
        return None
    return json.loads(out.read_text())
