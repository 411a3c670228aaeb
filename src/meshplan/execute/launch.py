"""Launch the ranks of one run with torchrun and collect rank 0's JSON.

Mirrors how torchtitan's `run_train.sh` starts training: `python -m torch.distributed.run
--nproc-per-node P ...` (torchrun, `torch.distributed.run`), so the elastic agent, its
rendezvous and its multi-node flags (`--nnodes`, `--node-rank`, `--rdzv-endpoint`,
`--rdzv-backend`, `--rdzv-id`, `--master-addr`, `--master-port`) behave exactly as users know
them. Without multi-node flags the run is `--standalone` (a local rendezvous on a free port,
so concurrent runs do not collide).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.execute.runtime import RunConfig


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


def launch(cfg: RunConfig | list[RunConfig], nproc_per_node: int,
           torchrun_args: Sequence[str] = (), timeout_s: float | None = None) -> Any:
    """Run `cfg` on `nproc_per_node` local ranks (times the nodes torchrun_args name).

    Returns rank 0's result (a list of results for a list of configs, run back to back in
    one launch), or None on a node that does not hold rank 0. A failed run raises
    MeshplanError with the last error line and the path of the full log.
    """
    workdir = Path(tempfile.mkdtemp(prefix="meshplan-run-"))
    config, out, log = workdir / "config.json", workdir / "result.json", workdir / "log.txt"
    cfgs = cfg if isinstance(cfg, list) else [cfg]
    config.write_text(json.dumps([c.to_dict() for c in cfgs] if isinstance(cfg, list)
                                 else cfg.to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS=str(cfgs[0].threads_per_rank),
               PYTHONUNBUFFERED="1")
    cmd = torchrun_command(config, out, nproc_per_node, torchrun_args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise MeshplanError(f"run timed out after {timeout_s:.0f} s (log dir {workdir})") from None
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise MeshplanError(f"torchrun failed (exit {proc.returncode}): "
                            f"{last_error(proc.stderr + proc.stdout)} (full log: {log})")
    if not out.exists():
        return None
    return json.loads(out.read_text())
