"""Shared fixtures: small plans and jobs built from the presets."""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import pytest

from meshplan.specs import Job, Model, Plan
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.plan import PlanArrays


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
