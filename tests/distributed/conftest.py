"""Fixtures for the distributed tests: an in-process `meshplan` CLI and one quick calibration.

Every test here needs torch (`pytest.importorskip`) and is marked `torch`. Multi-rank runs use
gloo on the CPU and stay tiny (debug model, <= 4 ranks, a few steps), so the whole group runs
in a few minutes on two cores.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def _app():  # noqa: ANN202
    """The meshplan CLI module (its app registers `run` and `calibrate`)."""
    from meshplan.cli import main as cli_main

    return cli_main


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """Run `meshplan ARGS...` in this process; returns exit code, stdout and stderr."""
    cli_main = _app()

    def invoke(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["meshplan", *args])
        code = 0
        try:
            cli_main.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick `calibrate --local` of this machine (2 ranks, three message sizes, the
    executor probes once each)."""
    from meshplan.execute.calibrate import calibrate_local

    path = tmp_path_factory.mktemp("calibrate") / "local.toml"
    _, text = calibrate_local(ranks=(2,), budget_s=0.02, message_sizes=(4096, 65536, 1 << 20),
                              repeats=1)
    path.write_text(text)
    return path
