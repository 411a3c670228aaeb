"""Accelerator facts kept in one place (`presets/accelerators.toml`: vendor peaks, memory,
PCIe rate, each with its source) and the clusters built from them.

Two uses: a cluster preset whose `[accelerator]` says `catalog = "KEY"` takes these facts
instead of repeating them (`expand_catalog`, applied by `specs.io.load_cluster`), and an
accelerator without any cluster preset gets a PCIe box (`catalog_cluster`, serving).

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


def catalog_entries() -> dict[str, dict[str, Any]]:
    """Every catalog entry by key, in file order (the order `match` patterns are tried)."""
    return dict(_catalog())


def catalog_key(gpu_name: str) -> str | None:
    """The catalog entry whose `match` patterns match `gpu_name`, or None."""
    for key, entry in _catalog().items():
        if any(re.search(p, gpu_name, re.IGNORECASE) for p in entry["match"]):
            return key
    return None


CATALOG_FACTS = ("peak_flops", "memory_bytes", "memory_bandwidth", "tdp_w")
"""What an accelerator's catalog entry states (the vendor figures; `tdp_w` where sourced, never
taken from the template); the rest of an
`[accelerator]` table is achievable fractions, measured or borrowed from a template preset."""


def catalog_entry(key: object) -> dict[str, Any]:
    entry = _catalog().get(key) if isinstance(key, str) else None
    if entry is None:
        raise MeshplanError(f"accelerator {key!r} is not in the catalog; known: "
                            f"{', '.join(sorted(_catalog()))}")
    return entry


def _template(name: str) -> dict[str, Any]:
    return read_file(PRESETS / "clusters" / f"{name}.toml")


def _curve_ref(ref: str) -> Any:
    """`"preset/tier"`: the bus-efficiency curve of another preset's network tier."""
    preset, _, tier = ref.partition("/")
    from meshplan.specs.io import preset_names

    if preset not in preset_names("clusters"):
        raise MeshplanError(f"bus_efficiency {ref!r}: no cluster preset {preset!r}")
    for t in _template(preset).get("network", []):
        if isinstance(t, dict) and t.get("name") == tier:
            return t["bus_efficiency"]
    raise MeshplanError(f"bus_efficiency {ref!r}: preset {preset} has no tier {tier!r}")


def expand_catalog(data: dict[str, Any]) -> dict[str, Any]:
    """A cluster's data with its catalog accelerator filled in (unchanged without one).

    `[accelerator] catalog = "KEY"` takes the entry's peaks, memory and bandwidth (the one
    place they are written), its `silicon` (whose calibration table the cluster reads) and
    the achievable fractions of the entry's `efficiency_template` preset; keys the file sets
    itself win. Tables the file omits (`host`, `overlap`, `kernel_overhead`) come from the
    template too, the host link at the entry's PCIe rate. A network tier's `bus_efficiency`
    may name another preset's tier ("dgx-a100/nvlink3") instead of repeating its curve.
    """
    acc = data.get("accelerator")
    out = dict(data)
    if isinstance(out.get("network"), list):
        out["network"] = [
            {**t, "bus_efficiency": _curve_ref(t["bus_efficiency"])}
            if isinstance(t, dict) and isinstance(t.get("bus_efficiency"), str) else t
            for t in out["network"]]
    if not isinstance(acc, dict) or "catalog" not in acc:
        return out
    key = acc["catalog"]
    entry = catalog_entry(key)
    template = _template(entry["efficiency_template"])
    base = {k: v for k, v in template["accelerator"].items()
            if k not in ("silicon", "tdp_w", "power_limit_w")}
    if "fp8" not in entry["peak_flops"]:
        base.pop("fp8_gemm_efficiency", None)
    facts = {k: entry[k] for k in CATALOG_FACTS if k in entry}
    own = {k: v for k, v in acc.items() if k != "catalog"}
    out["accelerator"] = {**base, "name": key, "silicon": entry.get("silicon", key),
                          **facts, **own}
    for name in ("kernel_overhead", "overlap"):
        if name not in out and name in template:
            out[name] = template[name]
    if "host" not in out and "host" in template:
        out["host"] = {**template["host"], "bandwidth": entry["pcie_bandwidth"]}
    return out


def catalog_cluster(key: str, gpus_per_node: int = 8) -> tuple[Cluster, list[str]]:
    """A cluster of `key` GPUs, `gpus_per_node` to a box on PCIe, and the notes saying what
    was borrowed."""
    entry = catalog_entry(key)
    template_name = entry["efficiency_template"]
    template = expand_catalog(_template(template_name))
    # silicon = key: a catalog box reads no other accelerator's fitted serving factors
    acc = expand_catalog({"accelerator": {"catalog": key, "silicon": key}})["accelerator"]
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
