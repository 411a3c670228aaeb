"""Clusters for accelerators that have no cluster preset, built from the shipped accelerator
catalog (`presets/accelerators.toml`: vendor peaks, memory, PCIe rate, each with its source).

A catalog GPU gets the achievable fractions (GEMM and attention efficiency curves, memory
efficiency, reserved memory) of its `efficiency_template` preset, because no kernel
measurements of these cards are shipped, and one PCIe tier between cards (no NVLink). Both
choices are returned as notes for a caller's assumptions.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import PRESETS, _validate, read_file

CATALOG_FILE = PRESETS / "accelerators.toml"
PCIE_LATENCY_S = 10e-6
"""Per-hop latency of a PCIe peer transfer through the host bridge (order of NCCL's PCIe
base latency; meshplan assumption)."""


@cache
def _catalog() -> dict[str, dict[str, Any]]:
    return read_file(CATALOG_FILE)


def catalog_key(gpu_name: str) -> str | None:
    """The catalog entry whose `match` patterns match `gpu_name`, or None."""
    for key, entry in _catalog().items():
        if any(re.search(p, gpu_name, re.IGNORECASE) for p in entry["match"]):
            return key
    return None


def catalog_cluster(key: str, gpus_per_node: int = 8) -> tuple[Cluster, list[str]]:
    """A cluster of `key` GPUs, `gpus_per_node` to a box on PCIe, and the notes saying what
    was borrowed."""
    entry = _catalog().get(key)
    if entry is None:
        raise MeshplanError(f"accelerator {key!r} is not in the catalog; known: "
                            f"{', '.join(sorted(_catalog()))}")
    template_name = entry["efficiency_template"]
    template = read_file(PRESETS / "clusters" / f"{template_name}.toml")
    acc = dict(template["accelerator"])
    acc.update(name=key, silicon=key, peak_flops=entry["peak_flops"],
               memory_bytes=entry["memory_bytes"], memory_bandwidth=entry["memory_bandwidth"])
    if "fp8" not in entry["peak_flops"]:
        acc.pop("fp8_gemm_efficiency", None)
    inner = template["network"][0]
    pcie = {"name": "pcie", "domain_size": 1 << 20, "bandwidth": entry["pcie_bandwidth"],
            "latency": PCIE_LATENCY_S, "bus_efficiency": inner["bus_efficiency"]}
    data = {**template, "name": f"{key.lower()}-pcie", "gpus_per_node": gpus_per_node,
            "accelerator": acc, "network": [pcie],
            "source": f"presets/accelerators.toml [{key}] on {template_name}'s efficiencies"}
    cluster = _validate(Cluster, data, f"accelerator catalog [{key}]")
    notes = [f"{key}: no cluster preset; vendor peaks from the accelerator catalog, kernel "
             f"efficiencies of the {template_name} preset (none measured for this GPU)",
             f"{key}: cards linked by PCIe ({entry['pcie_bandwidth'] / 1e9:g} GB/s per "
             "direction), no NVLink"]
    return cluster, notes
