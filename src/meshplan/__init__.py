"""meshplan: plan, predict and prove hybrid-parallel layouts for transformer training.

The stable surface is `__all__`; subpackages are importable for power users.
"""

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
