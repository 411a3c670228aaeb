"""meshplan: plan, predict and prove how a transformer is split across GPUs, for training
and for serving (`meshplan.serve`).

The stable surface is `__all__`; subpackages are importable for power users.
"""

from meshplan import serve
from meshplan.api import (
    LocalCalibration,
    PlanResult,
    RunResult,
    RunsCalibration,
    Simulation,
    calibrate,
    estimate,
    plan,
    run,
    simulate,
)
from meshplan.errors import MeshplanError
from meshplan.estimate import Estimate
from meshplan.export.api import export
from meshplan.specs import Cluster, Job, Model, Plan
from meshplan.specs.io import load_cluster, load_model

__version__ = "0.1.0"

__all__ = [
    "serve",
    "Cluster",
    "Estimate",
    "Job",
    "LocalCalibration",
    "MeshplanError",
    "Model",
    "Plan",
    "PlanResult",
    "RunResult",
    "RunsCalibration",
    "Simulation",
    "calibrate",
    "estimate",
    "export",
    "load_cluster",
    "load_model",
    "plan",
    "run",
    "simulate",
]
