"""`validate`: predict published training runs and report the error against each one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef


def validate(runs: str | Path | None = None, *, source: str | None = None,
             headline_only: bool = False, simulate: bool = True,
             calibration: CalibrationRef = CALIBRATION_FILE) -> dict[str, Any]:
    """`{"rows", "skipped", "summary"}` for a runs file (default: the shipped dataset),
    optionally one `source` only or without sweep rows; `simulate` False uses the closed-form
    pipeline (faster)."""
    from meshplan.validate import load_runs, select
    from meshplan.validate import validate as validate_rows

    rows = select(load_runs(None if runs is None else Path(runs)), source, headline_only)
    return validate_rows(rows, simulate=simulate, calibration=calibration)
