"""Serving: request-level simulation of LLM inference deployments on the layer-cost core.

`simulate(model, cluster, deployment, workload)` draws the workload's requests, runs them
through the engine's scheduler on every instance and returns per-request latencies and
throughput (`ServeResult`). `deployment` is one pool of instances (`DeploymentSpec`) or a
prefill pool and a decode pool (`DisaggregatedSpec`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshplan.serve.deployment import (
    AnyDeployment,
    Deployment,
    DeploymentSpec,
    DisaggregatedDeployment,
    DisaggregatedSpec,
    load_serving_cluster,
    resolve,
    resolve_disaggregated,
)
from meshplan.serve.loop import ServeResult
from meshplan.serve.loop import simulate as simulate_requests
from meshplan.serve.workload import Lengths, Requests, Workload, draw
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import load_model
from meshplan.specs.model import Model

if TYPE_CHECKING:
    from meshplan.serve.plan import ServePlan


def resolve_any(model: Model, cluster: Cluster,
                spec: DeploymentSpec | DisaggregatedSpec) -> AnyDeployment:
    """`resolve` or `resolve_disaggregated`, by the spec's kind."""
    if isinstance(spec, DisaggregatedSpec):
        return resolve_disaggregated(model, cluster, spec)
    return resolve(model, cluster, spec)


def plan(*args: Any, **kwargs: Any) -> ServePlan:
    """Serving plan search under SLOs (`meshplan.serve.plan.search.plan`)."""
    from meshplan.serve.plan import plan as search

    return search(*args, **kwargs)


def simulate(model: str | Path | Model, cluster: str | Path | Cluster,
             deployment: DeploymentSpec | DisaggregatedSpec, workload: Workload,
             trace: str | Path | None = None) -> ServeResult:
    """Simulate `workload` on `deployment` of `model` on `cluster` (presets, files or specs);
    `trace`: also write a Perfetto trace-event JSON file there. The cluster loads without
    the training calibration (`load_serving_cluster`)."""
    d = resolve_any(load_model(model), load_serving_cluster(cluster), deployment)
    return simulate_requests(d, draw(workload), trace=trace)


__all__ = ["AnyDeployment", "Deployment", "DeploymentSpec", "DisaggregatedDeployment",
           "DisaggregatedSpec", "Lengths", "plan", "Requests", "ServeResult", "Workload", "draw",
           "load_serving_cluster", "resolve", "resolve_any", "resolve_disaggregated",
           "simulate", "simulate_requests"]
