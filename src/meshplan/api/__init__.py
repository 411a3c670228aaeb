"""The Python API: the workflows the CLI calls (plan, estimate, simulate, run, calibrate,
validate). The CLI only parses flags, calls one of these and prints the result.

Each function takes model and cluster as preset names, files or specs; `calibration` picks
the fitted factors of the cluster presets (default: the shipped `presets/calibration.toml`;
a file of the same format; None or "none": the raw efficiency curves).
"""

from meshplan.api.calibration import LocalCalibration, RunsCalibration, calibrate
from meshplan.api.planning import PlanResult, Refusal, plan
from meshplan.api.predict import ClusterRef, ModelRef, Simulation, estimate, simulate
from meshplan.api.running import RunResult, run
from meshplan.api.validation import validate

__all__ = ["ClusterRef", "LocalCalibration", "ModelRef", "PlanResult", "Refusal", "RunResult",
           "RunsCalibration", "Simulation", "calibrate", "estimate", "plan", "run",
           "simulate", "validate"]
