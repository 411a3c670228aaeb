"""Shared fixtures: small plans and jobs built from the presets."""

from __future__ import annotations

import contextlib
import io
import os
import sys

import numpy as np
import pytest

from meshplan.specs import Job, Model, Plan
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.plan import PlanArrays

STRICT_MARKERS = ("engines", "torch", "browser", "ray")
"""Tests that check meshplan against an engine's or torch's own code, in a real browser, or
on Ray."""
MISSING = ("could not import", "not installed", "install-engines.sh", "install-browser.sh")
"""Skip reasons that mean a dependency is missing (pytest.importorskip says "could not import";
our own skips name scripts/install-engines.sh), as opposed to a case that does not apply."""


def _strict() -> bool:
    return os.environ.get("CI") == "true"


def _missing(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The skip reason when `report` is a skip for a missing dependency, else None."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    return reason if any(m in reason for m in MISSING) else None


def _fail(report: pytest.CollectReport | pytest.TestReport, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = f"CI=true: a dependency check may not skip ({reason}); install what " \
                      "it needs with scripts/install-engines.sh or scripts/install-browser.sh"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Under CI=true an `engines`/`torch` test skipped for a missing engine or torch fails, so
    CI cannot go green without those checks."""
    report = (yield).get_result()
    reason = _missing(report)
    if _strict() and reason and any(item.get_closest_marker(m) for m in STRICT_MARKERS):
        _fail(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """The same for a module that skips at import (a module-level pytest.importorskip)."""
    report = (yield).get_result()
    reason = _missing(report)
    if _strict() and reason:
        _fail(report, reason)


@pytest.fixture(scope="session")
def gpt3() -> Model:
    return load_model("gpt3-175b")


@pytest.fixture(scope="session")
def a100():
    return load_cluster("dgx-a100")


@pytest.fixture(scope="session")
def h100():
    return load_cluster("dgx-h100")


def arrays(**plan_kwargs) -> PlanArrays:
    """A one-plan PlanArrays."""
    return PlanArrays.from_plans([Plan(**plan_kwargs)])


def scalar(x) -> float:
    return float(np.asarray(x).reshape(-1)[0])


@pytest.fixture
def gpt_job() -> Job:
    return Job(global_batch_size=1536, seq_len=2048, flash_attention=False)


def invoke(*args: str) -> tuple[int, str, str]:
    """Run `meshplan ARGS` in this process (the console entry point); (exit code, stdout,
    stderr)."""
    from meshplan.cli.main import main

    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv, code = ["meshplan", *args], 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()
