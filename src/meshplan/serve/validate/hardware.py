"""The cluster of a published serving run: its GPU's name mapped to a cluster preset, else to
the shipped accelerator catalog (`specs.catalog`); the row's HBM size and power cap applied.

Presets load as serving loads them (`deployment.load_serving_cluster`: without the training
calibration).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from meshplan.serve.deployment import load_serving_cluster
from meshplan.serve.validate.case import Unbuildable, count
from meshplan.specs.catalog import catalog_cluster, catalog_key
from meshplan.specs.cluster import Cluster
from meshplan.specs.power import clock_fraction

GIB = 1024**3

PRESETS: tuple[tuple[str, str], ...] = (
    # (regex on hardware.gpu_type, cluster preset); PCIe parts go to the catalog first
    (r"GB200", "gb200-nvl72"),
    (r"H200", "dgx-h200"),
    (r"(?<!G)B200", "dgx-b200"),
    (r"MI300X", "mi300x"),
    (r"H100", "dgx-h100"),
    (r"A100", "dgx-a100"),
)

@cache
def _preset(name: str) -> Cluster:
    return load_serving_cluster(name)


def power_fraction(hw: dict[str, Any]) -> float | None:
    """The power cap as a fraction of the uncapped figure, from the row's text."""
    text = " ".join(str(hw.get(k) or "") for k in ("gpu_type", "system", "notes"))
    if not re.search(r"power[- ]?cap", text, re.IGNORECASE):
        return None
    m = re.search(r"(\d+(?:\.\d+)?)\s*%", text)
    return float(m.group(1)) / 100 if m else None


def build_cluster(row: dict[str, Any], notes: list[str]) -> Cluster:
    hw = row["hardware"]
    gpu = str(hw.get("gpu_type") or hw.get("gpu_key") or "")
    gpn = count(hw, "gpus_per_node", count(hw, "num_gpus", 1))
    key = catalog_key(gpu) if re.search(r"PCIe|RTX|L40|\bL4\b|V100", gpu, re.IGNORECASE) \
        else None
    preset = next((p for pat, p in PRESETS if re.search(pat, gpu, re.IGNORECASE)), None)
    if key is None and preset is None:
        key = catalog_key(gpu)
        if key is None:
            raise Unbuildable(f"GPU {gpu!r}: no cluster preset and not in the accelerator "
                              "catalog")
    if key is not None:
        cluster, more = catalog_cluster(key, gpn)
        notes.extend(more)
    else:
        assert preset is not None
        cluster = _preset(preset)
        if re.search(r"not stated|variant", gpu, re.IGNORECASE):
            notes.append(f"GPU variant not stated: the {preset} preset's "
                         f"{cluster.accelerator.name}")
    acc = cluster.accelerator
    mem = hw.get("gpu_memory_gb")
    if mem is None:
        m = re.search(r"(\d+)\s*GB", gpu)
        mem = float(m.group(1)) if m else None
    if mem is not None and not float(mem) > 0:
        raise Unbuildable(f"gpu_memory_gb={mem!r}: must be positive")
    if mem is not None and round(float(mem)) != round(acc.memory_bytes / GIB):
        acc = acc.model_copy(update={"memory_bytes": float(mem) * GIB})
        notes.append(f"{acc.name} with {float(mem):g} GB HBM (read as GiB)")
    frac = power_fraction(hw)
    if frac is not None:
        scale = clock_fraction(frac)  # the one power-cap model (specs.power); HBM unclocked
        acc = acc.model_copy(update={"peak_flops": {k: v * scale
                                                    for k, v in acc.peak_flops.items()}})
        notes.append(f"power-capped to {frac:.0%}: compute peaks x {scale:.3f} "
                     "(sustained clock, specs.power), memory bandwidth unchanged")
    return cluster.model_copy(update={"accelerator": acc})
