"""Validation against published training runs: rebuild each run, predict it, report the error.

    from meshplan.validate import load_runs, validate
    result = validate(load_runs())          # {"rows": [...], "skipped": [...], "summary": {...}}

`rows` rebuilds a run's specs (with every default it applies listed in `assumptions`),
`hardware` maps its GPU and network, `metrics` compares on the quantity the source measured,
`report` runs them all and summarises.
"""

from meshplan.validate.report import select, spearman, validate
from meshplan.validate.rows import Case, Skip, build_case, load_runs

__all__ = ["Case", "Skip", "build_case", "load_runs", "select", "spearman", "validate"]
