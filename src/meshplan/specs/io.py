"""Loading specs from preset names, meshplan TOML/JSON files and Hugging Face config.json,
and the calibration file whose fitted factors every cluster gets by its accelerator's silicon
(`load_calibration`, `load_cluster`).

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
from meshplan.specs.cluster import FP8_RECIPES, Cluster
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
"""Factors fitted by `meshplan calibrate`, one table per accelerator silicon (the
`calibration_key` of a cluster's accelerator: its `silicon`, else its name)."""

CalibrationRef = str | Path | None
"""Where fitted factors come from: a calibration file (default: the shipped one), or None /
"none" for the raw efficiency curves of the cluster files."""

_FITTED_KEYS = {"gemm_scale", "attention_scale", "kernel_overhead", "pp_overlap", "source",
                "gemm_scale_fp8", *(f"gemm_scale_{r}" for r in FP8_RECIPES)}


def calibration_label(ref: CalibrationRef) -> str:
    """How a calibration choice is named in results: "shipped", "none" or the file's path."""
    if ref is None or str(ref) == "none":
        return "none"
    return "shipped" if Path(ref) == CALIBRATION_FILE else str(ref)


def load_calibration(ref: CalibrationRef = CALIBRATION_FILE) -> dict[str, dict[str, Any]]:
    """Fitted factors per accelerator silicon from a calibration file ({} for None/"none")."""
    if ref is None or str(ref) == "none":
        return {}
    path = Path(ref)
    if path == CALIBRATION_FILE and not path.is_file():
        return {}
    data = read_file(path)
    presets = set(preset_names("clusters"))
    for name, table in data.items():
        if not isinstance(table, dict):
            raise MeshplanError(f"{path}: [{name}] must be a table of fitted factors")
        unknown = sorted(set(table) - _FITTED_KEYS)
        if unknown:
            raise MeshplanError(f"{path}: [{name}] unknown key {unknown[0]!r}; known: "
                                f"{', '.join(sorted(_FITTED_KEYS))}")
        if name in presets:
            raise MeshplanError(
                f"{path}: [{name}] names a cluster preset, but calibration tables are keyed by "
                f"the accelerator's silicon (e.g. [{_preset_key(name)}]); rerun "
                "`meshplan calibrate --runs ... --out` to refit in that form")
    return data


def _preset_key(name: str) -> str:
    acc = preset_data(name).get("accelerator", {})
    return str(acc.get("silicon") or acc.get("name", "?"))


def load_cluster(ref: str | Path | Cluster,
                 calibration: CalibrationRef = CALIBRATION_FILE) -> Cluster:
    """A Cluster from a preset name or a meshplan cluster file (TOML or JSON).

    Presets and files alike get the fitted factors of their accelerator's silicon (the
    table `accelerator.silicon`, else `accelerator.name`, of `calibration`: a file in the
    format of `presets/calibration.toml`; None or "none": no factors), so a copied preset
    file predicts what the preset does. A given calibration file is always read, so a bad
    one is always an error. A Cluster object is taken as it is.
    """
    if isinstance(ref, Cluster):
        return ref
    fitted = load_calibration(calibration)
    ref_s = str(ref)
    if isinstance(ref, Path) or _looks_like_path(ref_s) or os.path.isfile(ref_s):
        data, where = read_file(Path(ref_s)), ref_s
    elif ref_s not in preset_names("clusters"):
        raise unknown_name("cluster", ref_s, preset_names("clusters"))
    else:
        data, where = read_file(PRESETS / "clusters" / f"{ref_s}.toml"), f"preset {ref_s}"
    data = expanded(data)
    key = calibration_key(data)
    merged = with_calibration(data, fitted.get(key) if key else None, key,
                              calibration_label(calibration))
    return _validate(Cluster, merged, where)


def expanded(data: dict[str, Any]) -> dict[str, Any]:
    """A cluster file's data with its catalog accelerator filled in (`specs.catalog`)."""
    from meshplan.specs.catalog import expand_catalog

    return expand_catalog(data)


def preset_data(name: str) -> dict[str, Any]:
    """A cluster preset's data as `load_cluster` validates it (catalog filled in)."""
    return expanded(read_file(PRESETS / "clusters" / f"{name}.toml"))


def calibration_key(data: dict[str, Any]) -> str | None:
    """The calibration table a cluster's data reads (`Accelerator.calibration_key`), or None
    when the data has no accelerator to name one (validation then says what is missing)."""
    acc = data.get("accelerator")
    if not isinstance(acc, dict):
        return None
    key = acc.get("silicon") or acc.get("name")
    return key if isinstance(key, str) else None


def with_calibration(data: dict[str, Any], fitted: dict[str, Any] | None,
                     key: str | None = None, file: str | None = None) -> dict[str, Any]:
    """A cluster's data with its fitted factors (one table of a calibration file, `key`)
    merged in over the file's own values; `file` names the calibration file in the result."""
    out = dict(data)
    cal = data.get("calibration", {})
    if file is not None and isinstance(cal, dict):  # what was applied is this load's to say
        cal = {k: v for k, v in cal.items() if k != "key"}
        out["calibration"] = cal = {**cal, "file": file}
    if not fitted:
        return out
    fitted = dict(fitted)
    if "kernel_overhead" in fitted:
        out["kernel_overhead"] = fitted.pop("kernel_overhead")
    pp = fitted.pop("pp_overlap", None)
    if pp is not None and isinstance(data.get("overlap"), dict):  # else validation names it
        out["overlap"] = {**data["overlap"], "pp": pp}
    if isinstance(cal, dict):
        out["calibration"] = {**cal, **fitted, "key": key}
    return out
