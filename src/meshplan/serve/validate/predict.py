"""Predict a rebuilt serving run: a static batch in closed form, a request stream through the
simulator; either way the metrics keyed as the runs file keys them (`ttft_ms.mean`, ...)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from meshplan.serve.deployment import Deployment, resolve
from meshplan.serve.iteration import IterationCost, kv_capacity
from meshplan.serve.loop import simulate as simulate_requests
from meshplan.serve.validate.case import ServeCase, StaticBatch
from meshplan.serve.workload import draw

Metrics = dict[str, float]


@dataclass(frozen=True)
class Prediction:
    metrics: Metrics
    """Predicted values by the runs file's metric keys."""
    fits: bool
    why_not: str | None = None


Overheads = dict[str, float]
"""Engine-profile overheads to use instead of the profile's (`EngineProfile.FITTED_KEYS`)."""


def deployment(case: ServeCase, overheads: Overheads | None = None) -> Deployment:
    """The resolved deployment with `overheads` in its engine profile."""
    d = resolve(case.model, case.cluster, case.spec)
    return replace(d, engine=d.engine.model_copy(update=overheads)) if overheads else d


def static_batch(d: Deployment, batch: StaticBatch) -> Prediction:
    """One batch prefilled in one iteration, then decoded step by step (every member for the
    whole output): TTFT = the prefill iteration, each later token one decode step over the
    growing context, throughput = the batch's output tokens over its wall time."""
    B, L, n_out = batch.size, batch.input_len, batch.output_len
    cap = kv_capacity(d)
    need = B * -(-(L + n_out) // d.block_size)
    if need > cap.num_blocks:
        return Prediction({}, False, f"a batch of {B} x {L + n_out} tokens needs {need} KV blocks; "
                          f"{cap.num_blocks} fit")
    cost = IterationCost(d)
    prefill = cost.time_reference(B, float(B * L), 0.0, float(B * L * L), float(B * L), B)
    steps = cost.decode_times(B, float(B * L), n_out - 1) if n_out > 1 else np.zeros(0)
    total = prefill + float(steps.sum())
    out: Metrics = {"prefill_time_ms": prefill * 1e3, "ttft_ms.mean": prefill * 1e3,
                    "e2e_ms.mean": total * 1e3, "output_tokens_per_s": B * n_out / total,
                    "output_tokens_per_s_per_gpu": B * n_out / total / d.num_gpus,
                    "requests_per_s": B / total, "total_tokens_per_s": B * (L + n_out) / total}
    if n_out > 1:
        step = float(steps.mean())
        out.update({"decode_step_ms": step * 1e3, "tpot_ms.mean": step * 1e3})
    return Prediction(out, True)


def flatten(metrics: dict[str, Any], prefix: str = "") -> Metrics:
    """{'ttft_ms': {'mean': 1.0}} -> {'ttft_ms.mean': 1.0}, numbers only."""
    out: Metrics = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def request_stream(d: Deployment, case: ServeCase) -> Prediction:
    assert not isinstance(case.workload, StaticBatch)
    result = simulate_requests(d, draw(case.workload))
    if result.metrics is None:
        return Prediction({}, False, result.why_not)
    agg = result.metrics.aggregate(d.num_gpus)
    return Prediction(flatten(agg), True)


def predict(case: ServeCase, overheads: Overheads | None = None) -> Prediction:
    d = deployment(case, overheads)
    if isinstance(case.workload, StaticBatch):
        return static_batch(d, case.workload)
    return request_stream(d, case)
