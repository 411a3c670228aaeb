"""The shipped presets/calibration.toml is exactly what `meshplan calibrate --runs shipped`
fits (issue 10): refit on every shipped run (no leave-one-source-out, ~30 s of CPU) and compare
table by table. A change to the cost model, the rebuild rules or the runs that moves a factor
fails here until the file is regenerated:

    meshplan calibrate --runs shipped --no-loso --out src/meshplan/presets/calibration.toml
"""

from __future__ import annotations

import pytest

from meshplan.specs.io import CALIBRATION_FILE, load_calibration
from meshplan.validate.calibrate import calibrate, calibration_toml
from meshplan.validate.rows import load_runs

REGENERATE = ("regenerate it: meshplan calibrate --runs shipped --no-loso "
              "--out src/meshplan/presets/calibration.toml")


@pytest.fixture(scope="module")
def refit():
    return calibrate(load_runs(), leave_one_source_out=False)


def test_shipped_factors_are_what_calibrate_fits(refit) -> None:
    shipped = load_calibration(CALIBRATION_FILE)
    assert set(shipped) == set(refit.factors), REGENERATE
    for key, fitted in refit.factors.items():
        for name, value in fitted.items():
            assert shipped[key][name] == pytest.approx(value, rel=1e-3, abs=1e-9), (
                f"[{key}] {name}: shipped {shipped[key][name]}, refit {value}; {REGENERATE}")


def test_shipped_file_is_the_command_output(refit) -> None:
    assert calibration_toml(refit, "shipped") == CALIBRATION_FILE.read_text(), (
        REGENERATE)
    assert not refit.held_out  # no leave-one-source-out asked for
