"""Engine profiles: each engine's scheduler knobs with their real defaults, and its host
overhead per iteration, as data (`presets/engines/*.toml`)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from meshplan.errors import MeshplanError, from_validation_error, unknown_name
from meshplan.specs._base import Spec
from meshplan.specs.cluster import Accelerator
from meshplan.specs.io import PRESETS

ENGINES_DIR = PRESETS / "engines"
SERVING_CALIBRATION = PRESETS / "serving_calibration.toml"
"""Overheads fitted by `meshplan serve calibrate` on published serving runs, one table per
engine profile, merged over the profile's own values."""
FITTED_KEYS = ("iteration_overhead_s", "iteration_overhead_eager_s", "block_overhead_s")


class EngineProfile(Spec):
    """An engine's defaults (one file per engine)."""

    name: str
    scheduler: Literal["vllm"]
    """Which scheduler in `meshplan.serve.scheduler` runs its iterations."""
    max_num_seqs: int = Field(gt=0)
    max_num_batched_tokens: int = Field(gt=0)
    large_gpu_memory_gib: float = Field(gt=0)
    """GPUs with at least this much memory get the large-GPU defaults below."""
    large_gpu_max_num_seqs: int = Field(gt=0)
    large_gpu_max_num_batched_tokens: int = Field(gt=0)
    large_gpu_excluded: tuple[str, ...] = Field(default=(), strict=False)
    """Accelerator name fragments that keep the small-GPU defaults whatever their memory."""
    block_size: int = Field(gt=0)
    gpu_memory_utilization: float = Field(gt=0, le=1)
    enable_chunked_prefill: bool
    enable_prefix_caching: bool
    preemption: Literal["recompute"]
    iteration_overhead_s: float = Field(ge=0)
    """Host time per iteration with CUDA graphs."""
    iteration_overhead_eager_s: float = Field(ge=0)
    block_overhead_s: float = Field(default=3e-5, ge=0, le=1e-2)
    """Fixed GPU time per block (attention, MLP, LM head) per iteration: kernel launches and
    the small kernels between GEMMs (replaces the cluster's training `kernel_overhead`)."""
    cuda_graphs: bool
    fitted_from: str = ""
    """Where the fitted overheads came from (`presets/serving_calibration.toml`), "" if none."""

    def batch_defaults(self, accelerator: Accelerator) -> tuple[int, int]:
        """(max_num_seqs, max_num_batched_tokens) the engine starts with on `accelerator`."""
        large = accelerator.memory_bytes >= self.large_gpu_memory_gib * 2**30 and not any(
            x.lower() in accelerator.name.lower() for x in self.large_gpu_excluded)
        if large:
            return self.large_gpu_max_num_seqs, self.large_gpu_max_num_batched_tokens
        return self.max_num_seqs, self.max_num_batched_tokens


def engine_names() -> list[str]:
    return sorted(p.stem for p in ENGINES_DIR.glob("*.toml"))


def fitted_overheads(path: Path = SERVING_CALIBRATION) -> dict[str, dict[str, Any]]:
    """The fitted tables of a serving calibration file ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise MeshplanError(f"{path}: not a TOML file ({err})") from None
    for name, table in data.items():
        unknown = set(table) - set(FITTED_KEYS) - {"source"} if isinstance(table, dict) else {""}
        if unknown:
            raise MeshplanError(f"{path}: [{name}] must hold only {', '.join(FITTED_KEYS)}")
    return data


def load_engine(name: str, calibration: Path | None = SERVING_CALIBRATION) -> EngineProfile:
    """An engine profile, with the fitted overheads of `calibration` (None: the profile's
    own first guesses)."""
    path = ENGINES_DIR / f"{name}.toml"
    if not path.is_file():
        raise unknown_name("engine", name, engine_names())
    data = tomllib.loads(path.read_text())
    fitted = fitted_overheads(calibration).get(name, {}) if calibration else {}
    data.update({k: v for k, v in fitted.items() if k in FITTED_KEYS})
    if fitted:
        data["fitted_from"] = str(fitted.get("source", calibration))
    try:
        return EngineProfile.model_validate(data)
    except ValidationError as err:  # a shipped file: a bug, but say where
        raise from_validation_error(err, f"engine profile {name}") from None
