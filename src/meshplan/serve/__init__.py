"""Serving: request-level simulation of LLM inference deployments on the layer-cost core.

`simulate(model, cluster, deployment, workload)` draws the workload's requests, runs them
through the engine's scheduler on every instance and returns per-request latencies and
throughput (`ServeResult`).
"""

from __future__ import annotations

from pathlib import Path

from meshplan.serve.deployment import Deployment, DeploymentSpec, resolve
from meshplan.serve.loop import ServeResult
from meshplan.serve.loop import simulate as simulate_requests
from meshplan.serve.workload import Lengths, Requests, Workload, draw
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.model import Model


def simulate(model: str | Path | Model, cluster: str | Path | Cluster,
             deployment: DeploymentSpec, workload: Workload) -> ServeResult:
    """Simulate `workload` on `deployment` of `model` on `cluster` (presets, files or specs)."""
    d = resolve(load_model(model), load_cluster(cluster), deployment)
    return simulate_requests(d, draw(workload))


__all__ = ["Deployment", "DeploymentSpec", "Lengths", "Requests", "ServeResult", "Workload",
           "draw", "resolve", "simulate", "simulate_requests"]
