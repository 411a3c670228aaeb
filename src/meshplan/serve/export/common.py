"""What both engines' launch scripts share: where each instance runs and the model's id."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from meshplan.serve.deployment import AnyDeployment, Deployment
from meshplan.serve.placement import instance_ranges

BASE_PORT = 8100
ROUTER_PORT = 8000


@dataclass(frozen=True)
class Slot:
    """One instance: its role, its node, its node-local GPUs and its port."""

    role: str
    pool: Deployment
    node: int
    gpus: tuple[int, ...]
    port: int


def slots(d: AnyDeployment) -> list[Slot]:
    """Every instance where the simulator places it (`placement.instance_ranges`)."""
    per_node = d.cluster.gpus_per_node
    first_pool = d.pools[0].instances  # the prefill pool's instances come first
    return [Slot(("prefill" if k < first_pool else "decode") if d.disaggregated else "serve",
                 pool, first // per_node,
                 tuple(range(first % per_node, first % per_node + size)), BASE_PORT + k)
            for k, (first, size, pool) in enumerate(instance_ranges(d))]


def instance_lines(s: Slot, args: list[str]) -> list[str]:
    """One instance's lines of the script: where it runs, then its command in the
    background on its GPUs."""
    gpus = ",".join(map(str, s.gpus))
    return ["", f"# {s.role} instance on node {s.node}, GPUs {gpus}",
            f"CUDA_VISIBLE_DEVICES={gpus} " + line(args) + " &"]


def model_id(d: AnyDeployment) -> str:
    """The Hugging Face id in the model preset's `source` (its first word when it names one),
    else the preset name; the script takes $MODEL over it."""
    first = (d.model.source or "").split(" ")[0]
    return first if "/" in first else d.model.name


def line(args: list[str]) -> str:
    """A command, one flag (with its value) per continued line."""
    i = next((k for k, a in enumerate(args) if a.startswith("--")), len(args))
    parts: list[str] = [" ".join(args[:i])]
    while i < len(args):
        a = args[i]
        if a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            parts.append(f"{a} {args[i + 1]}")
            i += 2
        else:
            parts.append(a)
            i += 1
    return " \\\n    ".join(parts)


def q(v: object) -> str:
    return shlex.quote(str(v))


def header(d: AnyDeployment, engine: str, version: str) -> list[str]:
    return ["#!/usr/bin/env bash",
            f"# {engine} launch script written by meshplan (argument names of {engine} "
            f"{version}): {d.model.name} on {d.num_gpus} x {d.cluster.accelerator.name}",
            "# Instances on consecutive GPUs, node by node; run each command on its node "
            "(HOST_<node> is its address).",
            "set -euo pipefail",
            f'MODEL="${{MODEL:-{model_id(d)}}}"',
            *[f'HOST_{n}="${{HOST_{n}:-127.0.0.1}}"' for n in sorted({s.node for s in slots(d)})]]
