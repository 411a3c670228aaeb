"""Hardware of a published run: its GPU type mapped to a cluster preset, adjusted to what the
row states (HBM size, GPUs per node, scale-out bandwidth per GPU).

Table-driven: `GPUS` maps a `gpu_type` pattern to a preset; `LINKS` parses the
`inter_node_interconnect` text into Gb/s per GPU. Every adjustment or unstated figure is
returned as a note for the row's `assumptions`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from meshplan.specs.catalog import catalog_entries
from meshplan.specs.cluster import Accelerator, Cluster
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef, load_cluster

GIB = 1024**3


@dataclass(frozen=True)
class GpuRule:
    pattern: str
    """Regex on `gpu_type` (case-insensitive)."""
    preset: str | None
    """Cluster preset; None: no preset (the row is skipped with `why`)."""
    label: str
    """Accelerator name used in summaries; `{mem}` is replaced by the HBM size in GB."""
    notes: tuple[str, ...] = ()
    why: str = ""


def _catalog_rules() -> tuple[GpuRule, ...]:
    """One rule per accelerator-catalog entry with a cluster preset (its `match` patterns, in
    file order: PCIe parts before their SXM namesakes)."""
    return tuple(GpuRule("|".join(f"(?:{p})" for p in e["match"]), e["preset"],
                         e.get("label", key))
                 for key, e in catalog_entries().items() if "preset" in e)


GPUS: tuple[GpuRule, ...] = (
    GpuRule(r"GB300", "gb300-nvl72", "GB300"),
    GpuRule(r"GB200", "gb200-nvl72", "GB200"),
    *_catalog_rules(),
    GpuRule(r"H100.*HBM2e", "h100-hbm2e-500w", "H100 {mem}GB",
            ("H100 SXM with HBM2e: the h100-hbm2e-500w preset (H100 factors, HBM2e "
             "bandwidth)",)),
    GpuRule(r"H100", "dgx-h100", "H100 {mem}GB"),
    GpuRule(r"H200", "dgx-h200", "H200"),
    GpuRule(r"(?<!G)B200", "dgx-b200", "B200"),
    GpuRule(r"MI300X", "mi300x", "MI300X"),
    GpuRule(r"A100", "dgx-a100", "A100 {mem}GB"),
)

_NUM = r"(\d+(?:\.\d+)?)\s*Gb/s"
LINKS: tuple[tuple[str, str, str], ...] = (
    # (regex, how the figure scales to one GPU, note)
    (_NUM + r"\s*per GPU", "gpu", ""),
    (_NUM + r"\s*(?:x|×)\s*(\d+)\s*per node", "node_x", ""),
    (_NUM + r",?\s*(\d+)\s*(?:HCAs|NICs)\s*per node", "node_x", ""),
    (_NUM + r"\s*(?:node-to-node|per node)", "node", ""),
    (_NUM + r"\s*inter-node", "node",
     "inter-node figure read as per node (shared by its GPUs)"),
)


POWER_LIMIT = re.compile(
    r"(\d{2,4}(?:\.\d+)?)\s*W\s*(?:power\s*|TDP\s*)?(?:limit|cap)"
    r"|power[- ]?(?:limit|cap)\w*\s*(?:of|at|to|=|:)?\s*(\d{2,4}(?:\.\d+)?)\s*W\b",
    re.IGNORECASE)
"""A board power limit stated in the row's GPU or system text ("500W power limit",
"power-capped to 450 W")."""


def stated_power_limit(row: dict[str, Any]) -> float | None:
    """The power limit (W) the row's `gpu_type` or `system` states, or None."""
    text = " ".join(str(row.get(k) or "") for k in ("gpu_type", "system"))
    m = POWER_LIMIT.search(text)
    return float(m.group(1) or m.group(2)) if m else None


def _power_notes(acc: Accelerator, stated: float | None) -> tuple[Accelerator, list[str]]:
    """The accelerator at the row's power limit (else its preset's), with the note saying so."""
    if stated is not None and acc.tdp_w is None:
        return acc, [f"{stated:g} W power limit stated, but the preset gives no rated power: "
                     "peaks at the preset's clocks"]
    if stated is not None and stated != acc.power_limit_w:
        acc = acc.model_copy(update={"power_limit_w": stated})
    limit = acc.power_limit_w
    if limit is None or acc.tdp_w is None or limit >= acc.tdp_w:
        return acc, []
    whose = "stated" if stated is not None else "the preset's"
    return acc, [f"{limit:g} W power limit ({whose}) of the {acc.tdp_w:g} W rating: compute "
                 f"peaks x {acc.clock_fraction:.3f} (sustained clock, specs.power), HBM "
                 "bandwidth unchanged"]


@cache
def _preset(name: str, calibration: str | None, mtime_ns: int) -> Cluster:
    return load_cluster(name, calibration)


def _preset_for(name: str, calibration: CalibrationRef) -> Cluster:
    """The preset with its factors from `calibration`, cached per file version."""
    if calibration is None or str(calibration) == "none":
        return _preset(name, None, 0)
    path = Path(calibration)
    return _preset(name, str(path), path.stat().st_mtime_ns if path.is_file() else 0)


def gpu_rule(gpu_type: str) -> GpuRule | None:
    for rule in GPUS:
        if re.search(rule.pattern, gpu_type, re.IGNORECASE):
            return rule
    return None


def inter_node_gbps_per_gpu(text: str, gpus_per_node: int) -> tuple[float | None, str]:
    """Scale-out bandwidth per GPU in Gb/s from the row's text, or None if it states none."""
    for pattern, scale, note in LINKS:
        m = re.search(pattern, text, re.IGNORECASE)
        if m is None:
            continue
        rate = float(m.group(1))
        if scale == "node_x":
            rate *= float(m.group(2))
        if scale != "gpu":
            rate /= gpus_per_node
        return rate, note
    return None, ""


def build_cluster(row: dict[str, Any], calibration: CalibrationRef = CALIBRATION_FILE
                  ) -> tuple[Cluster, str, list[str]] | str:
    """(cluster, accelerator label, notes) for a row, or the reason it cannot be built.

    The preset gets its fitted factors from `calibration` (as in `specs.io.load_cluster`)."""
    gpu_type = row["gpu_type"] or ""
    rule = gpu_rule(gpu_type)
    if rule is None:
        return f"unknown hardware {gpu_type!r}"
    if rule.preset is None:
        return rule.why
    cluster = _preset_for(rule.preset, calibration)
    notes = list(rule.notes)
    acc = cluster.accelerator
    preset_gb = round(acc.memory_bytes / GIB)
    mem = row["gpu_memory_gb"]
    if mem is None:
        notes.append(f"GPU memory not stated: {cluster.name} preset's {preset_gb} GiB")
        mem = preset_gb
    elif round(mem) != preset_gb:
        acc = acc.model_copy(update={"memory_bytes": float(mem) * GIB})
        notes.append(f"{cluster.name} with {mem:g} GiB HBM (vendor GB read as GiB)")
    acc, more = _power_notes(acc, stated_power_limit(row))
    notes += more
    update: dict[str, Any] = {"accelerator": acc}

    gpn = row["gpus_per_node"] or cluster.gpus_per_node
    network = list(cluster.network)
    if gpn != cluster.gpus_per_node:
        update["gpus_per_node"] = gpn
        if network[0].domain_size == cluster.gpus_per_node:  # node-local NVLink domain
            network[0] = network[0].model_copy(update={"domain_size": gpn})
    link = row["inter_node_interconnect"]
    gbps, note = inter_node_gbps_per_gpu(link, gpn) if link else (None, "")
    outer = network[-1]
    if gbps is not None:
        network[-1] = outer.model_copy(update={"bandwidth": gbps * 1e9 / 8})
        notes.append(f"scale-out {gbps * 1e9 / 8 / 1e9:g} GB/s per GPU from {link!r}"
                     + (f" ({note})" if note else ""))
    else:
        why = "not stated" if not link else f"{link!r} gives no rate"
        notes.append(f"scale-out bandwidth {why}: preset {outer.name} "
                     f"{outer.bandwidth / 1e9:g} GB/s per GPU")
    update["network"] = tuple(network)
    label = rule.label.format(mem=f"{mem:g}")
    return cluster.model_copy(update=update), label, notes
