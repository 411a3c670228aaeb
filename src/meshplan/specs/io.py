"""Loading specs from preset names, meshplan TOML/JSON files and Hugging Face config.json,
and the calibration file whose fitted factors the cluster presets get (`load_calibration`).

Everything funnels through `_validate`, so an unknown key or a wrong type is one
`MeshplanError` naming the file, the field and the value.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from meshplan.errors import MeshplanError, from_validation_error, unknown_name
from meshplan.specs._base import Spec
from meshplan.specs.cluster import Cluster
from meshplan.specs.model import Model

PRESETS = Path(__file__).resolve().parent.parent / "presets"
S = TypeVar("S", bound=Spec)


def preset_names(kind: str) -> list[str]:
    """Names of the built-in presets of a kind ('models' or 'clusters')."""
    return sorted(p.stem for p in (PRESETS / kind).glob("*.toml"))


MAX_FILE_BYTES = 64 * 2**20
"""Largest input file read (64 MiB; the shipped runs file is ~1 MiB)."""


def read_text(path: Path) -> str:
    """A file's text, read as bytes (at most `MAX_FILE_BYTES`) and decoded as UTF-8; an
    unreadable, oversized or undecodable file is a MeshplanError."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise MeshplanError(f"cannot read {path}: {err.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise MeshplanError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB; not a "
                            "meshplan input file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MeshplanError(f"{path}: not UTF-8 text (byte {err.start}: "
                            f"{raw[err.start:err.start + 1]!r})") from None


def parse_json(text: str, where: str) -> Any:
    """Parse JSON text; malformed JSON is a MeshplanError naming `where`."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, int digit limit, depth
        raise MeshplanError(f"{where}: malformed JSON: {' '.join(str(err).split())}") from None


def read_file(path: Path) -> dict[str, Any]:
    """Parse a TOML or JSON file into a dict; a parse error is a MeshplanError."""
    text = read_text(path)
    if path.suffix == ".json":
        data = parse_json(text, str(path))
    else:
        try:
            data = tomllib.loads(text)
        except (ValueError, RecursionError) as err:  # TOMLDecodeError is a ValueError
            raise MeshplanError(f"{path}: malformed TOML: {' '.join(str(err).split())}"
                                ) from None
    if not isinstance(data, dict):
        raise MeshplanError(f"{path}: expected an object at the top level")
    return data


def _validate(cls: type[S], data: dict[str, Any], where: str) -> S:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(err, where) from None


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".toml", ".json"))


def load_model(ref: str | Path | Model) -> Model:
    """A Model from a preset name, a meshplan model file, or a Hugging Face config.json."""
    if isinstance(ref, Model):
        return ref
    ref_s = str(ref)
    if isinstance(ref, Path) or _looks_like_path(ref_s) or os.path.isfile(ref_s):
        path = Path(ref_s)
        if os.path.isdir(path):
            path = path / "config.json"
        data = read_file(path)
        if "architectures" in data or "model_type" in data:
            from meshplan.specs.hf import model_from_hf_config

            return model_from_hf_config(data, name=path.parent.name or path.stem, where=str(path))
        return _validate(Model, data, str(path))
    if ref_s not in preset_names("models"):
        raise unknown_name("model", ref_s, preset_names("models"))
    return _validate(Model, read_file(PRESETS / "models" / f"{ref_s}.toml"), f"preset {ref_s}")


CALIBRATION_FILE = PRESETS / "calibration.toml"
"""Factors fitted by `meshplan calibrate` for the cluster presets, one table per preset."""

CalibrationRef = str | Path | None
"""Where fitted factors come from: a calibration file (default: the shipped one), or None /
"none" for the raw efficiency curves of the cluster files."""

_FITTED_KEYS = {"gemm_scale", "attention_scale", "kernel_overhead", "pp_overlap", "source"}


def load_calibration(ref: CalibrationRef = CALIBRATION_FILE) -> dict[str, dict[str, Any]]:
    """Fitted factors per cluster preset name from a calibration file ({} for None/"none")."""
    if ref is None or str(ref) == "none":
        return {}
    path = Path(ref)
    if path == CALIBRATION_FILE and not path.is_file():
        return {}
    data = read_file(path)
    for name, table in data.items():
        if not isinstance(table, dict):
            raise MeshplanError(f"{path}: [{name}] must be a table of fitted factors")
        unknown = sorted(set(table) - _FITTED_KEYS)
        if unknown:
            raise MeshplanError(f"{path}: [{name}] unknown key {unknown[0]!r}; known: "
                                f"{', '.join(sorted(_FITTED_KEYS))}")
    return data


def load_cluster(ref: str | Path | Cluster,
                 calibration: CalibrationRef = CALIBRATION_FILE) -> Cluster:
    """A Cluster from a preset name or a meshplan cluster file (TOML or JSON).

    A preset gets the fitted factors of its name from `calibration` (a file in the format of
    `presets/calibration.toml`; None or "none": no factors). A cluster file is taken as
    written, but a given calibration file is still read, so a bad one is always an error.
    """
    if isinstance(ref, Cluster):
        return ref
    fitted = load_calibration(calibration)
    ref_s = str(ref)
    if isinstance(ref, Path) or _looks_like_path(ref_s) or os.path.isfile(ref_s):
        return _validate(Cluster, read_file(Path(ref_s)), ref_s)
    if ref_s not in preset_names("clusters"):
        raise unknown_name("cluster", ref_s, preset_names("clusters"))
    data = read_file(PRESETS / "clusters" / f"{ref_s}.toml")
    return _validate(Cluster, with_calibration(data, fitted.get(ref_s)), f"preset {ref_s}")


def with_calibration(data: dict[str, Any], fitted: dict[str, Any] | None) -> dict[str, Any]:
    """A preset's data with its fitted factors (one table of a calibration file) merged in."""
    if not fitted:
        return data
    fitted = dict(fitted)
    out = dict(data)
    if "kernel_overhead" in fitted:
        out["kernel_overhead"] = fitted.pop("kernel_overhead")
    if "pp_overlap" in fitted:
        out["overlap"] = {**data.get("overlap", {}), "pp": fitted.pop("pp_overlap")}
    out["calibration"] = {**data.get("calibration", {}), **fitted}
    return out
