"""`calibrate`: fit the efficiency factors of each accelerator silicon to measured runs, or
measure this machine. Both return data and the text of the file they describe; writing it is the
caller's choice (`meshplan calibrate --out`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshplan.errors import MeshplanError

SHIPPED = "shipped"
"""`runs` value for the published runs shipped with meshplan."""


@dataclass(frozen=True)
class RunsCalibration:
    """Factors fitted per accelerator silicon, their errors, and the calibration file's text."""

    factors: dict[str, dict[str, float]]
    """silicon (the calibration key of the accelerators that read it) -> fitted factors."""
    in_sample: dict[str, dict[str, Any]]
    """"all" and "headline" error statistics with the factors fitted on every run."""
    held_out: dict[str, dict[str, Any]]
    """The same, each source predicted by factors fitted without it (leave one out)."""
    text: str
    """A calibration file (the format of presets/calibration.toml) for `calibration=`."""

    def to_json(self) -> dict[str, Any]:
        return {"factors": self.factors, "in_sample": self.in_sample,
                "held_out": self.held_out}


@dataclass(frozen=True)
class LocalCalibration:
    """This machine measured as a cluster: the data and the cluster file's text."""

    cluster: dict[str, Any]
    text: str


def calibrate(runs: str | Path | None = None, *, local: bool = False,
              leave_one_source_out: bool = True, threads: int = 1,
              progress: Callable[[str, int, int], None] | None = None
              ) -> RunsCalibration | LocalCalibration:
    """Fit to `runs` (a runs file in the published_training_runs.json schema, or "shipped"),
    or with `local` measure this machine (`threads` CPU threads per rank; needs torch).

    With runs, `progress(what, done, total)` is called as the fit advances (`done` of
    `total` loss evaluations over every fit, `what` naming the current one)."""
    if local == (runs is not None):
        raise MeshplanError("calibrate: give exactly one of local=True or runs=FILE")
    if local:
        if threads < 1:
            raise MeshplanError(f"--threads-per-rank={threads}: must be >= 1")
        from meshplan.execute.calibrate import calibrate_local  # MeshplanError without torch

        return LocalCalibration(*calibrate_local(threads=threads))
    return _fit_runs(None if str(runs) == SHIPPED else str(runs), leave_one_source_out,
                     progress)


def _fit_runs(path: str | None, loso: bool,
              progress: Callable[[str, int, int], None] | None) -> RunsCalibration:
    from meshplan.validate.calibrate import calibrate as fit
    from meshplan.validate.calibrate import calibration_toml
    from meshplan.validate.report import stats
    from meshplan.validate.rows import load_runs

    rows = load_runs(None if path is None else Path(path))
    result = fit(rows, leave_one_source_out=loso, progress=progress)
    headline = {r["id"] for r in rows if not r["is_sweep"]}

    def split(errors: dict[str, float]) -> dict[str, dict[str, Any]]:
        return {"all": stats(errors.values()),
                "headline": stats(e for i, e in errors.items() if i in headline)}

    return RunsCalibration(result.factors, split(result.in_sample), split(result.held_out),
                           calibration_toml(result, path or SHIPPED))
