"""The wheel carries every data file, so an installed meshplan predicts what the source does.

Builds the wheel from a copy of the project (offline: no build isolation), installs it with
`--no-deps` into a fresh venv that sees this interpreter's site-packages for numpy, pydantic,
typer and rich, and runs it from outside the repository with PYTHONPATH cleared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import meshplan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "meshplan"


def _run(cmd: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _data_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv python, installed package directory)."""
    tmp = tmp_path_factory.mktemp("wheel")
    project = tmp / "project"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copy(ROOT / "README.md", project)
    shutil.copytree(ROOT / "src", project / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          str(project), "-w", str(tmp / "dist")], tmp)
    wheel = next((tmp / "dist").glob("meshplan-*.whl"))
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")], tmp)
    python = tmp / "venv" / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp)
    where = _run([str(python), "-c", "import meshplan; print(meshplan.__file__)"], tmp).strip()
    package = Path(where).parent
    assert package.is_relative_to(tmp / "venv"), where
    return python, package


def test_every_data_file_is_installed(installed: tuple[Path, Path]) -> None:
    _, package = installed
    missing = _data_files(SRC) - _data_files(package)
    assert not missing, f"not in the wheel: {sorted(missing)}"


def test_installed_validate_matches_the_source(installed: tuple[Path, Path]) -> None:
    python, _ = installed
    meshplan_cli = python.parent / "meshplan"
    out = _run([str(meshplan_cli), "validate", "--json", "--analytic"], python.parent)
    source = json.loads(json.dumps(meshplan.api.validate(simulate=False)))
    installed_result = json.loads(out)
    assert installed_result.pop("command") == "validate"  # the envelope, then the result
    for key in ("schema_version", "meshplan_version", "inputs"):
        installed_result.pop(key)
    assert installed_result == source
    assert source["summary"]["compared"] > 0
