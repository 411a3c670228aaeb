"""Does the plan search order layouts as measured? Groups of published runs that differ only in
layout (same source, model, GPU, engine, precision, scenario and workload; tp / pp / ep / dp /
GPU count differ), each layout simulated the way the search simulates a candidate
(`resolve_any` + the request loop, as `plan.search.probe` does) on the run's own workload,
and ranked by the search's two objectives: throughput (output tokens/s) and goodput per GPU
(output tokens/s per GPU). Spearman of simulated against measured, per group.

What is measured: a row's output tokens/s when it reports one; for a static batch that
reports only its prefill time and decode step (profiling sweeps), the batch's throughput
follows from them: B x O / (prefill + (O - 1) x step), the same identity as the closed form
in `predict.static_batch`. A static batch simulates as a burst of B requests with the
batch's lengths, every request admitted at once (max_num_seqs and the token budget at least
B and B x I: the benchmark batched all prompts in one prefill).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.serve import resolve_any
from meshplan.serve.loop import simulate as simulate_requests
from meshplan.serve.validate.case import ServeCase, StaticBatch, Unbuildable
from meshplan.serve.validate.rebuild import build_case
from meshplan.serve.workload import Lengths, Workload, draw
from meshplan.validate.report import spearman

LAYOUT_KEYS = ("tp", "pp", "ep", "dp")


def layout(row: dict[str, Any]) -> tuple[Any, ...]:
    p = row["parallelism"]
    return (*(p.get(k) for k in LAYOUT_KEYS), row["hardware"].get("num_gpus"))


def group_key(row: dict[str, Any]) -> str:
    """Everything but the layout and the metrics (and the row's id, notes and provenance)."""
    h = {k: v for k, v in row["hardware"].items() if k != "num_gpus"}
    rest = {"source": (row.get("source") or {}).get("source_id"), "model": row["model"],
            "hardware": h, "engine": row["engine"], "precision": row["precision"],
            "scenario": row["scenario"], "workload": row["workload"],
            "scheduler": {k: v for k, v in row["scheduler"].items() if k != "max_batch_size"}}
    return json.dumps(rest, sort_keys=True, default=str)


def layout_groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Groups of at least two rows with different layouts and otherwise the same run."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(group_key(r), []).append(r)
    return [g for g in by.values() if len({layout(r) for r in g}) == len(g) >= 2]


def measured_throughput(row: dict[str, Any]) -> float | None:
    m, w = row["metrics"], row["workload"]
    if isinstance(m.get("output_tokens_per_s"), (int, float)):
        return float(m["output_tokens_per_s"])
    pre, step = m.get("prefill_time_ms"), m.get("decode_step_ms")
    b, o = w.get("batch_size"), w.get("output_len")
    if row["scenario"] == "static_batch" and all(isinstance(x, (int, float))
                                                 for x in (pre, step, b, o)):
        return b * o / ((pre + (o - 1) * step) / 1e3)
    return None


def simulated(case: ServeCase) -> dict[str, float] | None:
    """Output tokens/s and per GPU of the case's layout on its workload (None: no fit)."""
    spec, w = case.spec, case.workload
    if isinstance(w, StaticBatch):
        budget = max(w.size * w.input_len, spec.max_num_batched_tokens or 0)
        spec = spec.model_copy(update={"max_num_seqs": max(w.size, spec.max_num_seqs or 0),
                                       "max_num_batched_tokens": budget})
        w = Workload(arrival="burst", num_requests=w.size, input=Lengths(mean=w.input_len),
                     output=Lengths(mean=w.output_len))
    d = resolve_any(case.model, case.cluster, spec)
    r = simulate_requests(d, draw(w))
    if r.metrics is None:
        return None
    agg = r.metrics.aggregate(d.num_gpus)
    return {"throughput": float(agg["output_tokens_per_s"]),
            "per_gpu": float(agg["output_tokens_per_s_per_gpu"])}


@dataclass(frozen=True)
class GroupRank:
    label: str
    layouts: list[str]
    measured: list[float]
    """Output tokens/s per layout (per GPU: divided by `gpus`)."""
    simulated: list[float]
    gpus: list[int]

    def rho(self, per_gpu: bool) -> float | None:
        if per_gpu:
            return spearman([m / g for m, g in zip(self.measured, self.gpus, strict=True)],
                            [s / g for s, g in zip(self.simulated, self.gpus, strict=True)])
        return spearman(self.measured, self.simulated)


def rank_group(rows: list[dict[str, Any]]) -> GroupRank | None:
    """The group's layouts that rebuild, fit and have a measured throughput (None: < 2)."""
    names, meas, sim, gpus = [], [], [], []
    for r in sorted(rows, key=lambda r: str(layout(r))):
        truth = measured_throughput(r)
        if truth is None:
            continue
        try:
            case = build_case(r)
            s = simulated(case)
        except (Unbuildable, MeshplanError):
            continue
        if s is None:
            continue
        p = r["parallelism"]
        names.append(f"tp{p.get('tp')} pp{p.get('pp')} dp{p.get('dp')}")
        meas.append(truth)
        sim.append(s["throughput"])
        gpus.append(case.spec.tp * case.spec.pp * case.spec.instances)
    if len(names) < 2:
        return None
    r0 = rows[0]
    w = r0["workload"]
    size = f"b{w.get('batch_size')}" if r0["scenario"] == "static_batch" else \
        f"rate {w.get('request_rate_per_s')}"
    label = (f"{r0['model'].get('key')} {r0['hardware'].get('gpu_key')} {r0['scenario']} "
             f"{size} {w.get('input_len') or w.get('input_len_mean')}/"
             f"{w.get('output_len') or w.get('output_len_mean')}")
    return GroupRank(label, names, meas, sim, gpus)


def pairs_agree(g: GroupRank, per_gpu: bool) -> tuple[int, int]:
    """(layout pairs ordered alike by measurement and simulation, pairs)."""
    div = g.gpus if per_gpu else [1] * len(g.gpus)
    m = [x / d for x, d in zip(g.measured, div, strict=True)]
    s = [x / d for x, d in zip(g.simulated, div, strict=True)]
    n = len(m)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    return sum((m[i] - m[j]) * (s[i] - s[j]) > 0 for i, j in pairs), len(pairs)
