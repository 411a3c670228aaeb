"""Pure-data inputs: Model, Cluster, Job and Plan (strictly validated, frozen)."""

from meshplan.specs.cluster import Accelerator, Cluster, Curve, NetworkTier
from meshplan.specs.job import Job
from meshplan.specs.model import MLA, Model, MoE
from meshplan.specs.plan import AXES, Plan

__all__ = [
    "AXES",
    "MLA",
    "Accelerator",
    "Cluster",
    "Curve",
    "Job",
    "Model",
    "MoE",
    "NetworkTier",
    "Plan",
]
