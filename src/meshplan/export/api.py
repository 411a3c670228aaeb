"""`export(estimate_or_plan, target, model=..., job=...)`: hand a plan to a training engine.

Each target is a pure `(model, job, plan, cluster) -> str` in its own module, with the refusals
that say what it cannot express; `REGISTRY` maps the CLI names to them. Before any target runs,
the plan passes the same legality rules as `meshplan.estimate` (`specs.rules.check_plan`), so
an export never carries an illegal plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshplan.errors import MeshplanError, unknown_name
from meshplan.estimate import Estimate
from meshplan.export import deepspeed, megatron, torchtitan, torchtitan_03
from meshplan.export._common import Refusal, expressible, first_refusal
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan, PlanArrays
from meshplan.specs.rules import check_plan

Render = Callable[[Model, Job, Plan, Cluster | None], str]


@dataclass(frozen=True)
class Target:
    """One export target: its engine's name, renderer, refusals and file suffix."""

    engine: str
    render: Render
    refusals: tuple[Refusal, ...]
    suffix: str


VERSIONS: dict[str, dict[str, Target]] = {
    "megatron": {"core_v0.16": Target(megatron.ENGINE, megatron.render, megatron.REFUSALS,
                                      ".sh")},
    "torchtitan": {
        "0.3.0": Target(torchtitan_03.ENGINE, torchtitan_03.render, torchtitan_03.REFUSALS,
                        ".sh"),
        "0.2.2": Target(torchtitan.ENGINE, torchtitan.render, torchtitan.REFUSALS, ".toml"),
    },
    "deepspeed": {"0.19.8": Target(deepspeed.ENGINE, deepspeed.render, deepspeed.REFUSALS,
                                   ".json")},
}
"""CLI name -> engine version -> target, the current release first (the default):
Megatron-LM launch script, torchtitan 0.3 launch script or 0.2 TOML, DeepSpeed JSON. Adding a
target is a module with ENGINE, render and REFUSALS, and one entry here."""

REGISTRY: dict[str, Target] = {name: next(iter(v.values())) for name, v in VERSIONS.items()}
"""CLI name -> its default (current-release) target."""
TARGETS: dict[str, Render] = {name: t.render for name, t in REGISTRY.items()}
SUFFIXES: dict[str, str] = {name: t.suffix for name, t in REGISTRY.items()}
"""The file suffix each default target's text is meant for (`pick(...).suffix` for others)."""


def pick(name: str, version: str | None = None) -> Target:
    """The target `name` at engine `version` (None: the current release)."""
    if name not in VERSIONS:
        raise unknown_name("export target", name, TARGETS)
    if version is None:
        return REGISTRY[name]
    if version not in VERSIONS[name]:
        raise unknown_name(f"{name} version", version, VERSIONS[name])
    return VERSIONS[name][version]


def export(estimate_or_plan: Estimate | Plan, target: str, *, model: str | Path | Model,
           job: Job, cluster: str | Path | Cluster | None = None,
           engine_version: str | None = None) -> str:
    """The engine configuration of one plan, as text.

    `estimate_or_plan` is an `Estimate` (its `.plan` is exported) or a `Plan`; `model` and
    `cluster` are specs, preset names or files; `engine_version` picks an older format (e.g.
    torchtitan "0.2.2", the TOML job file; default: the current release). Raises
    `MeshplanError` for an unknown target or version, an illegal plan, or a plan the target
    cannot express (naming the field and value).
    """
    chosen = pick(target, engine_version)
    plan = estimate_or_plan.plan if isinstance(estimate_or_plan, Estimate) else estimate_or_plan
    model = load_model(model)
    cluster = None if cluster is None else load_cluster(cluster)
    check_plan(model, job, plan.num_gpus, PlanArrays.from_plans([plan]))
    return chosen.render(model, job, plan, cluster)


def expressible_mask(name: str, model: Model, job: Job, P: PlanArrays,
                     engine_version: str | None = None) -> np.ndarray:
    """True for the plans of `P` the target can express (the refusals `export` applies)."""
    return expressible(pick(name, engine_version).refusals, model, job, P)


def refusal(name: str, model: Model, job: Job, plan: Plan,
            engine_version: str | None = None) -> MeshplanError | None:
    """Why the target cannot express `plan` (one line), or None when it can."""
    t = pick(name, engine_version)
    return first_refusal(t.engine, t.refusals, model, job, plan)
