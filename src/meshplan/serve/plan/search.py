"""Serving plan search: the deployment of N GPUs that sustains the highest request rate
within TTFT and TPOT SLOs, every number shown from the request-level simulator.

1. Enumerate (`space.enumerate_space`) colocated and disaggregated deployments at the
   engine's default knobs; rule out, without simulating, those whose memory, lone-request
   TTFT or lone-request TPOT cannot meet the SLOs, and estimate the rate each other one can
   sustain (`bounds.bound`).
2. Simulate in order of that estimate, in waves of `WAVE` deployments (run by the
   `executor`: processes or Ray tasks, results in candidate order); before
   each wave, skip every deployment whose estimate (times `BOUND_SLACK`, and times the
   largest found / estimated rate ratio of its kind's simulated plans when below 1: the
   estimates of one kind err alike) cannot beat both the K-th best simulated plan and the
   best simulated plan of its own kind (colocated or disaggregated), so that the best of
   each kind is still found.
3. Simulate the other knob values (`space.knob_variants`) of the best `REFINE` layouts of
   each kind.

For one deployment, `max_rate` bisects the Poisson rate: the SLOs hold at a rate when the
chosen percentile of TTFT and of TPOT, over the requests arriving in the second half of
`num_requests` (fixed lengths, fixed seed; the first half warms the batch up from empty), is
within its bound. It starts at the steady-state estimate, steps by `BRACKET` until one rate
holds and the next fails (`BRACKET` up, `BRACKET_DOWN` down), and bisects until they are
within `RATE_TOLERANCE`. How many
requests: a run must last a few request lifetimes (`Query.requests_at`: arrivals over
`STEADY_LIFETIMES` x the estimated time a request spends in the system, at least
`num_requests` = 1,000, at most 8,000), or its decode batch never grows to the size it would
keep (a 70B model decoding 256 tokens lives ~15 s: 1,000 requests at 40 req/s last 25 s,
and such a run holds the SLOs ~1.7x above what 4,000 requests sustain). The measured half
then holds 500 to 4,000 requests, a p99 their 5th to 40th worst; a deployment overloaded
by a fraction e queues about e x duration / 2 s of work in it, so a p99 TTFT SLO of S s
detects overload above ~2 S / duration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import DeploymentSpec, DisaggregatedSpec, load_serving_cluster
from meshplan.serve.engines import load_engine
from meshplan.serve.loop import simulate as simulate_requests
from meshplan.serve.metrics import RequestMetrics
from meshplan.serve.plan.bounds import Bound, bound
from meshplan.serve.plan.executor import Mapper, executor
from meshplan.serve.plan.pareto import frontier
from meshplan.serve.plan.space import (
    AnySpec,
    enumerate_space,
    knob_variants,
    label,
    layout_class,
    num_gpus,
)
from meshplan.serve.workload import Lengths, Workload, draw
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import load_model
from meshplan.specs.model import Model

Objective = Literal["goodput-per-gpu", "throughput", "cost"]
OBJECTIVES: tuple[str, ...] = ("goodput-per-gpu", "throughput", "cost")
WAVE = 4
"""Deployments simulated between two skip decisions: fixed, so the result does not depend on
the number of cores."""
BOUND_SLACK = 1.25
"""The estimate ignores how prefill chunks and decodes slow each other down, in either
direction; the search skips only a deployment that this much above it cannot win."""
BRACKET = 1.25
"""Factor between the rates tried upwards before the bisection."""
BRACKET_DOWN = 1.6
"""Downwards (an estimate that fails is often far too high: it ignores prefill stalls)."""
REFINE = 1
RATE_TOLERANCE = 0.05
MAX_STEPS = 12
STEADY_LIFETIMES = 3.0
STEADY_SLACK = 0.20
"""A rate holds only if the deployment keeps up with it: the requests finishing while the
second half of the arrivals comes in are at least 1 - this share of those arriving meanwhile
(the batch still growing from empty accounts for the rest), and the queueing delay does not
grow from the third to the last quarter of the arrivals by more than QUEUE_GROWTH times
(plus QUEUE_FLOOR of the TTFT SLO, for delays near zero; a queue growing linearly from the
start gives 1.4). A deployment that falls behind does
not sustain the rate, even when a short run's late requests still met the SLOs: its queue
grows for as long as the traffic lasts."""
QUEUE_GROWTH = 1.2
QUEUE_FLOOR = 0.05
MAX_RUN = 8
"""A probe reruns with more requests (up to this many times `num_requests`) when requests live
longer than the run was sized for."""
DEFAULT_NUM_REQUESTS = 1000


@dataclass(frozen=True)
class Query:
    """What is searched for: the traffic's shape and the SLOs (seconds)."""

    input_len: int
    output_len: int
    slo_ttft_s: float
    slo_tpot_s: float
    percentile: float = 99.0
    num_requests: int = DEFAULT_NUM_REQUESTS
    seed: int = 0
    lifetime_s: float | None = None
    """A request's estimated time in the system (the deployment's bound), else the SLOs'."""

    def requests_at(self, rate: float) -> int:
        """Requests simulated at `rate`: `num_requests`, or enough for the arrivals to span
        `STEADY_LIFETIMES` request lifetimes (`lifetime_s`, else at most the TTFT SLO and
        (O - 1) x the TPOT SLO), so that the measured second half sees the batch at its
        steady size (up to MAX_RUN x num_requests; `probe` reruns longer when the measured
        lifetime is longer)."""
        life = self.lifetime_s if self.lifetime_s is not None else \
            (self.output_len - 1) * self.slo_tpot_s + self.slo_ttft_s
        need = math.ceil(STEADY_LIFETIMES * rate * life)
        return max(self.num_requests, min(need, MAX_RUN * self.num_requests))

    def workload(self, rate: float, num_requests: int | None = None) -> Workload:
        n = self.requests_at(rate) if num_requests is None else num_requests
        return Workload(arrival="poisson", rate=rate, num_requests=n,
                        seed=self.seed, input=Lengths(mean=self.input_len),
                        output=Lengths(mean=self.output_len))


@dataclass(frozen=True)
class Probe:
    """One simulation at one rate."""

    rate_per_s: float
    ttft_ms: float
    tpot_ms: float
    ok: bool
    metrics: dict[str, Any]
    """The whole run's aggregates (`RequestMetrics.aggregate`: what `serve simulate` of the
    same workload reports)."""
    steady: dict[str, Any]
    """The measured window's (`steady_state`): the basis of every figure a plan shows."""

    def to_json(self) -> dict[str, Any]:
        """The point it adds to a throughput-against-rate curve."""
        w = self.steady
        return {"rate_per_s": self.rate_per_s, "requests_per_s": w["requests_per_s"],
                "goodput_requests_per_s": w["goodput_requests_per_s"],
                "output_tokens_per_s": w["output_tokens_per_s"], "ttft_ms": self.ttft_ms,
                "tpot_ms": self.tpot_ms, "keeps_up": w["keeps_up"], "meets_slo": self.ok}


def probe(model: Model, cluster: Cluster, spec: AnySpec, q: Query, rate: float) -> Probe:
    """Simulate `spec` at Poisson `rate` and check the SLOs at the query's percentile."""
    from meshplan.serve import resolve_any

    d = resolve_any(model, cluster, spec)
    n = q.requests_at(rate)
    while True:
        m = simulate_requests(d, draw(q.workload(rate, n))).metrics
        assert m is not None, "memory fit is checked by the bounds first"
        w = steady_state(m, q)
        # The lifetime the run was sized by is an estimate; under load requests live longer
        # (a bigger batch decodes slower): rerun long enough for the one measured.
        need = math.ceil(STEADY_LIFETIMES * rate * w["e2e_mean_s"])
        if n >= need or n >= MAX_RUN * q.num_requests:
            break
        n = min(max(need, 2 * n), MAX_RUN * q.num_requests)
    w["num_requests"] = n
    ok = w["keeps_up"] and w["ttft_ms"] <= q.slo_ttft_s * 1e3 \
        and w["tpot_ms"] <= q.slo_tpot_s * 1e3
    return Probe(rate, w["ttft_ms"], w["tpot_ms"], ok,
                 m.aggregate(d.num_gpus, q.slo_ttft_s, q.slo_tpot_s), w)


def steady_state(m: RequestMetrics, q: Query) -> dict[str, Any]:
    """The run measured once the batch has warmed up from empty: latencies (at the query's
    percentile, and TPOT's mean) of the requests arriving in the second half of the arrivals,
    and rates over that half's span (from the median to the last arrival) — requests and
    output tokens finishing in it, those within the SLOs, and whether the deployment keeps up
    (`STEADY_SLACK`). A stable deployment completes what arrives: its rates then equal the
    offered rate and its tokens that rate times the output length, with no drain diluting
    them."""
    t0, t1 = float(np.median(m.arrival_s)), float(m.arrival_s.max())
    late = m.arrival_s >= t0
    many = late & (m.output_len > 1)
    q3, q4 = np.quantile(m.arrival_s, [0.5, 0.75])
    third, last = (m.arrival_s >= q3) & (m.arrival_s < q4), m.arrival_s >= q4
    wait = m.queueing_s
    # Once the deployment has settled, the last quarter of the arrivals waits (at admission,
    # before the drain) about as long as the third (up to noise); longer means it falls behind.
    growing = float(wait[last].mean()) > QUEUE_GROWTH * float(wait[third].mean()) \
        + QUEUE_FLOOR * q.slo_ttft_s
    tpot_s = m.request_tpot_s[many]
    good = m.within_slo(q.slo_ttft_s, q.slo_tpot_s)
    span = max(t1 - t0, 1e-9)
    done = (m.finish_s >= t0) & (m.finish_s <= t1)
    arrived = int(((m.arrival_s > t0) & (m.arrival_s <= t1)).sum())
    return {"window_s": span,
            "ttft_ms": float(np.percentile(m.ttft_s[late], q.percentile)) * 1e3,
            "tpot_ms": float(np.percentile(tpot_s, q.percentile)) * 1e3 if len(tpot_s)
            else 0.0,
            "tpot_mean_ms": float(tpot_s.mean()) * 1e3 if len(tpot_s) else 0.0,
            "requests_per_s": float(done.sum()) / span,
            "goodput_requests_per_s": float((done & good).sum()) / span,
            "output_tokens_per_s": float(m.output_len[done].sum()) / span,
            "e2e_mean_s": float(m.e2e_s[late].mean()),
            "keeps_up": bool(done.sum() >= (1 - STEADY_SLACK) * arrived and not growing)}


@dataclass(frozen=True)
class RateSearch:
    """The bisection's outcome: the highest rate found to hold (None: none did) and the
    lowest found to fail above it (None: every rate tried held)."""

    held: Probe | None
    failed: Probe | None
    simulations: int
    tried: tuple[Probe, ...] = ()
    """Every rate simulated, in the order tried."""


def max_rate(model: Model, cluster: Cluster, spec: AnySpec, q: Query,
             start: float) -> RateSearch:
    """The highest Poisson rate at which `spec` meets the SLOs: from `start` (the
    steady-state estimate), up or down by `BRACKET` until one rate holds and the next fails,
    then bisection until they are within `RATE_TOLERANCE` of each other."""
    tried: list[Probe] = []

    def at(rate: float) -> Probe:
        tried.append(probe(model, cluster, spec, q, rate))
        return tried[-1]

    held: Probe | None = None
    failed: Probe | None = None
    p = at(start)
    for _ in range(MAX_STEPS):
        if p.ok:
            held = p
            if failed is not None:
                break
            if p.rate_per_s >= start * BRACKET ** 3:  # held far above the estimate: stop there
                return RateSearch(held, None, len(tried), tuple(tried))
            p = at(p.rate_per_s * BRACKET)
        else:
            failed = p
            if held is not None:
                break
            p = at(p.rate_per_s / BRACKET_DOWN)
    if held is None or failed is None:
        return RateSearch(held, failed, len(tried), tuple(tried))
    for _ in range(MAX_STEPS):
        if failed.rate_per_s - held.rate_per_s <= RATE_TOLERANCE * failed.rate_per_s:
            break
        p = at(0.5 * (held.rate_per_s + failed.rate_per_s))
        if p.ok:
            held = p
        else:
            failed = p
    return RateSearch(held, failed, len(tried), tuple(tried))


def _evaluate(args: tuple[Model, Cluster, AnySpec, Query, float]) -> RateSearch:
    model, cluster, spec, q, start = args
    return max_rate(model, cluster, spec, q, start)


VERIFY_RUN = MAX_RUN
"""The plans shown are run again at their rate with this many times `num_requests`: near a
layout's capacity a queue can grow too slowly for the search's runs to see (a random walk
at a load just under one), and the rate a plan shows must hold for longer than a minute."""
VERIFY_STEPS = 4
VERIFY_STEP = 1.1
"""A shown plan that fails its long run steps down by this factor until one holds."""


def verify(model: Model, cluster: Cluster, spec: AnySpec, q: Query, rate: float
           ) -> tuple[Probe, ...]:
    """Long-run probes (`VERIFY_RUN`) from `rate` down until one holds (at most
    `VERIFY_STEPS`), then bisected to `RATE_TOLERANCE`; the last is the verdict."""
    longer = replace(q, num_requests=VERIFY_RUN * q.num_requests)
    tried = [probe(model, cluster, spec, longer, rate)]
    while not tried[-1].ok and len(tried) < VERIFY_STEPS:
        tried.append(probe(model, cluster, spec, longer, tried[-1].rate_per_s / VERIFY_STEP))
    held = tried[-1]
    if held.ok and len(tried) > 1:  # bisect the last step back to the search's tolerance
        failed = tried[-2].rate_per_s
        while failed - held.rate_per_s > RATE_TOLERANCE * failed:
            p = probe(model, cluster, spec, longer, 0.5 * (held.rate_per_s + failed))
            tried.append(p)
            if p.ok:
                held = p
            else:
                failed = p.rate_per_s
        tried.remove(held)
        tried.append(held)  # the verdict last
    return tuple(tried)


def _verify(args: tuple[Model, Cluster, AnySpec, Query, float]) -> tuple[Probe, ...]:
    return verify(*args)


def shown_plans(ranked: list[PlanEntry], top: int) -> list[PlanEntry]:
    """The plans a search shows: the `top` best, and the best colocated and the best
    disaggregated one even when `top` would cut them."""
    shown = ranked[:top]
    for kind in (False, True):
        best = next((p for p in ranked if p.disaggregated == kind), None)
        if best is not None and best not in shown:
            shown.append(best)
    return shown


def _verify_shown(m: Model, c: Cluster, plans: list[PlanEntry],
                  key: Callable[[PlanEntry], Any], top: int, mapper: Mapper,
                  prune: Callable[[AnySpec, str, str, bool], None]) -> int:
    """Verify (`verify`) the plans that would be shown — the `top` best and the best of each
    kind — until every one shown is verified, in place (a plan that holds at no rate tried
    is dropped, pruned as an overload); the simulations it ran."""
    checked: set[str] = set()
    runs = 0
    while True:
        shown = shown_plans(sorted(plans, key=key), top)
        todo = [p for p in shown if p.label not in checked]
        if not todo:
            return runs
        results = mapper(_verify, [(m, c, p.spec, p.query, p.max_rate_per_s) for p in todo])
        for p, tried in zip(todo, results, strict=True):
            runs += len(tried)
            checked.add(p.label)
            plans.remove(p)
            last = tried[-1]
            if not last.ok:
                prune(p.spec, "overload", f"falls behind in a {VERIFY_RUN}x longer run even at "
                      f"{last.rate_per_s:.3g} req/s", True)
                continue
            fails = [t.rate_per_s for t in tried if not t.ok and t.rate_per_s > last.rate_per_s]
            plans.append(replace(
                p, max_rate_per_s=last.rate_per_s,
                failed_rate_per_s=min(fails) if fails else p.failed_rate_per_s,
                metrics=last.metrics, simulations=p.simulations + len(tried),
                query=replace(p.query, num_requests=VERIFY_RUN * p.query.num_requests),
                slo_ttft_ms=last.ttft_ms, slo_tpot_ms=last.tpot_ms, steady=last.steady,
                probes=tuple(sorted([*p.probes, *(t.to_json() for t in tried)],
                                    key=lambda x: x["rate_per_s"]))))


@dataclass(frozen=True)
class PlanEntry:
    """A simulated deployment at the highest rate where it met the SLOs."""

    spec: AnySpec
    deployment: dict[str, Any]
    num_gpus: int
    max_rate_per_s: float
    failed_rate_per_s: float | None
    bound_rate_per_s: float
    metrics: dict[str, Any]
    simulations: int
    query: Query
    """The query its simulations used (with its lifetime estimate: `probe` re-runs them)."""
    slo_ttft_ms: float
    slo_tpot_ms: float
    """The SLO percentile of TTFT / TPOT over the measured (second) half at that rate."""
    probes: tuple[dict[str, Any], ...] = ()
    """Every rate its search simulated (`Probe.to_json`), by rate."""
    steady: dict[str, Any] = field(default_factory=dict)
    """The measured window at max_rate_per_s (`steady_state`)."""

    @property
    def disaggregated(self) -> bool:
        return isinstance(self.spec, DisaggregatedSpec)

    @property
    def workload(self) -> Workload:
        """The workload it was simulated with at max_rate_per_s (to re-simulate it)."""
        return self.query.workload(self.max_rate_per_s, self.steady.get("num_requests"))

    @property
    def label(self) -> str:
        return label(self.spec)

    @property
    def goodput_per_gpu(self) -> float:
        return self.max_rate_per_s / self.num_gpus

    @property
    def gpu_hours_per_million_requests(self) -> float:
        return self.num_gpus * 1e6 / (self.max_rate_per_s * 3600.0)

    @property
    def tokens_per_s_per_gpu(self) -> float:
        """Output tokens per second per GPU in the measured window (at max_rate_per_s)."""
        return float(self.steady["output_tokens_per_s"]) / self.num_gpus

    @property
    def tokens_per_s_per_user(self) -> float:
        """Interactivity: output tokens per second one request sees (1 / mean TPOT)."""
        tpot = self.steady["tpot_mean_ms"]
        return 1e3 / tpot if tpot else 0.0

    def to_json(self, gpu_hour_price: float | None = None) -> dict[str, Any]:
        """With a `gpu_hour_price`, also `cost_per_million_requests` (GPU-hours x price)."""
        cost = {} if gpu_hour_price is None else {
            "cost_per_million_requests": self.gpu_hours_per_million_requests * gpu_hour_price}
        return {"label": self.label, "deployment": self.deployment,
                "disaggregated": self.disaggregated, "num_gpus": self.num_gpus,
                "max_rate_per_s": self.max_rate_per_s,
                "failed_rate_per_s": self.failed_rate_per_s,
                "bound_rate_per_s": self.bound_rate_per_s,
                "goodput_per_gpu": self.goodput_per_gpu,
                "gpu_hours_per_million_requests": self.gpu_hours_per_million_requests,
                **cost,
                "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
                "tokens_per_s_per_user": self.tokens_per_s_per_user,
                "metrics": self.metrics, "simulations": self.simulations,
                "num_requests": self.workload.num_requests, "seed": self.workload.seed,
                "slo_measured": {"ttft_ms": self.slo_ttft_ms, "tpot_ms": self.slo_tpot_ms},
                "steady_state": self.steady, "probes": list(self.probes),
                "simulated": True}


@dataclass(frozen=True)
class Pruned:
    """A class of layouts that lost, with why: memory, TTFT or TPOT (by the bounds, or
    `simulated`: no rate met it), or rate (its estimate could not beat the plans found)."""

    layout_class: str
    reason: str
    detail: str
    count: int
    example: str
    simulated: bool

    def to_json(self) -> dict[str, Any]:
        return {"class": self.layout_class, "reason": self.reason, "detail": self.detail,
                "count": self.count, "example": self.example, "simulated": self.simulated}


@dataclass(frozen=True)
class ServePlan:
    """The search's answer: ranked plans, the Pareto frontier and the pruned classes."""

    plans: list[PlanEntry]
    pareto: list[PlanEntry]
    pruned: list[Pruned]
    objective: str
    query: Query
    model: str
    cluster: str
    candidates: int
    simulated: int
    simulations: int
    all_plans: list[PlanEntry] = field(default_factory=list)

    @property
    def best(self) -> PlanEntry:
        return self.plans[0]

    def to_json(self, gpu_hour_price: float | None = None) -> dict[str, Any]:
        q = self.query
        price = {} if gpu_hour_price is None else {"gpu_hour_price": gpu_hour_price}
        return {"model": self.model, "cluster": self.cluster, "objective": self.objective,
                "workload": {"arrival": "poisson", "input_len": q.input_len,
                             "output_len": q.output_len, "num_requests": q.num_requests,
                             "seed": q.seed},
                "slo": {"ttft_ms": q.slo_ttft_s * 1e3, "tpot_ms": q.slo_tpot_s * 1e3,
                        "percentile": q.percentile},
                "candidates": self.candidates, "simulated_candidates": self.simulated,
                "simulations": self.simulations, **price,
                "plans": [p.to_json(gpu_hour_price) for p in self.plans],
                "pareto": [{"label": p.label, "deployment": p.deployment,
                            "disaggregated": p.disaggregated,
                            "tokens_per_s_per_gpu": p.tokens_per_s_per_gpu,
                            "tokens_per_s_per_user": p.tokens_per_s_per_user,
                            "max_rate_per_s": p.max_rate_per_s} for p in self.pareto],
                "pruned": [x.to_json() for x in self.pruned]}


def score(objective: str, rate: float, gpus: int) -> float:
    """Higher is better: goodput per GPU and cost (GPU-hours per request, its inverse) rank
    alike; throughput is the rate itself."""
    return rate if objective == "throughput" else rate / gpus


def _check(model: Model, cluster: Cluster, n: int, q: Query, objective: str,
           engine: str, top: int) -> None:
    if objective not in OBJECTIVES:
        raise MeshplanError(f"--objective={objective!r}: one of {', '.join(OBJECTIVES)}")
    load_engine(engine)
    if n < 1:
        raise MeshplanError(f"--num-gpus={n}: must be positive")
    g = cluster.gpus_per_node
    if n > g and n % g:
        raise MeshplanError(f"--num-gpus={n}: must be a multiple of the {g} GPUs of a node "
                            f"of {cluster.name} when more than one node")
    if cluster.num_gpus is not None and n > cluster.num_gpus:
        raise MeshplanError(f"--num-gpus={n}: {cluster.name} has {cluster.num_gpus} GPUs")
    if top < 1:
        raise MeshplanError(f"--top={top}: must be positive")
    for name, length in (("--input-len", q.input_len), ("--output-len", q.output_len)):
        if length < 1:
            raise MeshplanError(f"{name}={length}: must be positive")
    if model.max_seq_len is not None and q.input_len + q.output_len > model.max_seq_len:
        raise MeshplanError(f"--input-len + --output-len = {q.input_len + q.output_len}: over "
                            f"{model.name}'s max length {model.max_seq_len}")
    for name, bound_s in (("--slo-ttft-ms", q.slo_ttft_s), ("--slo-tpot-ms", q.slo_tpot_s)):
        if not 0 < bound_s < math.inf:
            raise MeshplanError(f"{name}: must be a positive number of milliseconds")
    if not 0 < q.percentile <= 100:
        raise MeshplanError(f"--slo-percentile={q.percentile}: must be in (0, 100]")
    if q.num_requests < 10:
        raise MeshplanError(f"--num-requests={q.num_requests}: at least 10")


class NoDeployment(MeshplanError):
    """No deployment of the GPUs meets the SLOs (the search ran; its input was fine)."""


@dataclass(frozen=True)
class Search:
    """A checked search: what the executor's simulations are asked for."""

    model: Model
    cluster: Cluster
    num_gpus: int
    query: Query
    objective: str
    top: int
    engine: str
    disaggregation: bool

    def run(self, mapper: Mapper) -> ServePlan:
        space = enumerate_space(self.model, self.cluster, self.num_gpus, self.engine,
                                self.disaggregation)
        return _search(self.model, self.cluster, self.num_gpus, self.query, self.objective,
                       self.top, space.all(), mapper)


def prepare(model: str | Path | Model, cluster: str | Path | Cluster, num_gpus_total: int,
            input_len: int, output_len: int, slo_ttft_ms: float, slo_tpot_ms: float,
            slo_percentile: float = 99.0, objective: str = "goodput-per-gpu", top: int = 5,
            engine: str = "vllm", num_requests: int = DEFAULT_NUM_REQUESTS, seed: int = 0,
            disaggregation: bool = True) -> Search:
    """Load and check a search's input (a bad value is a MeshplanError before any work)."""
    m, c = load_model(model), load_serving_cluster(cluster)
    q = Query(input_len, output_len, slo_ttft_ms / 1e3, slo_tpot_ms / 1e3, slo_percentile,
              num_requests, seed)
    _check(m, c, num_gpus_total, q, objective, engine, top)
    return Search(m, c, num_gpus_total, q, objective, top, engine, disaggregation)


def plan(model: str | Path | Model, cluster: str | Path | Cluster, num_gpus_total: int,
         input_len: int, output_len: int, slo_ttft_ms: float, slo_tpot_ms: float,
         slo_percentile: float = 99.0, objective: str = "goodput-per-gpu", top: int = 5,
         engine: str = "vllm", num_requests: int = DEFAULT_NUM_REQUESTS, seed: int = 0,
         workers: int | None = None, disaggregation: bool = True,
         ray_address: str | None = None) -> ServePlan:
    """Search the deployments of `num_gpus_total` GPUs for `model` on `cluster` under Poisson
    traffic of fixed `input_len` / `output_len` and the SLOs (ms at `slo_percentile`).
    Where the simulations run (`executor`): `workers` processes (None: every core; 1: this
    process), or Ray tasks on the cluster at `ray_address` (`"auto"`: the one the
    environment points to); the result is the same."""
    s = prepare(model, cluster, num_gpus_total, input_len, output_len, slo_ttft_ms,
                slo_tpot_ms, slo_percentile, objective, top, engine, num_requests, seed,
                disaggregation)
    with executor(workers, ray_address) as mapper:
        return s.run(mapper)


def _search(m: Model, c: Cluster, n: int, q: Query, objective: str, top: int,
            specs: list[AnySpec], mapper: Mapper) -> ServePlan:
    from meshplan.serve import resolve_any

    pruned: dict[tuple[str, str, bool], list[tuple[str, str]]] = {}

    def prune(spec: AnySpec, reason: str, detail: str, simulated: bool) -> None:
        pruned.setdefault((layout_class(spec), reason, simulated), []).append(
            (label(spec), detail))

    def bounded(cands: list[AnySpec]) -> list[tuple[AnySpec, Bound]]:
        out = []
        for s in cands:
            b = bound(resolve_any(m, c, s), q.input_len, q.output_len, q.slo_ttft_s,
                      q.slo_tpot_s)
            if b.reason is not None:
                prune(s, b.reason, b.detail, False)
            else:
                out.append((s, b))
        return out

    plans: list[PlanEntry] = []
    simulations = 0

    def run(batch: list[tuple[AnySpec, Bound]]) -> None:
        nonlocal simulations
        results = mapper(_evaluate, [(m, c, s, replace(q, lifetime_s=b.lifetime_s), b.rate_per_s)
                                      for s, b in batch])
        for (s, b), r in zip(batch, results, strict=True):
            simulations += r.simulations
            if r.held is None:
                assert r.failed is not None
                f = r.failed
                why = "TTFT" if f.ttft_ms > q.slo_ttft_s * 1e3 else \
                    "TPOT" if f.tpot_ms > q.slo_tpot_s * 1e3 else "overload"
                prune(s, why, f"p{q.percentile:g} TTFT {f.ttft_ms:.0f} ms, TPOT "
                      f"{f.tpot_ms:.1f} ms{'' if f.steady['keeps_up'] else ', falling behind'}"
                      f" even at {f.rate_per_s:.3g} req/s", True)
                continue
            d = resolve_any(m, c, s)
            w = replace(q, lifetime_s=b.lifetime_s)
            plans.append(PlanEntry(s, d.to_json(), d.num_gpus, r.held.rate_per_s,
                                   None if r.failed is None else r.failed.rate_per_s,
                                   b.rate_per_s, r.held.metrics, r.simulations, w,
                                   r.held.ttft_ms, r.held.tpot_ms,
                                   probes=tuple(p.to_json() for p in
                                                sorted(r.tried, key=lambda p: p.rate_per_s)),
                                   steady=r.held.steady))

    def key(p: PlanEntry) -> tuple[float, int, str]:
        return (-score(objective, p.max_rate_per_s, p.num_gpus), p.num_gpus, p.label)

    def realized(kind: bool) -> float:
        """The largest ratio of found to estimated rate among this kind's plans (1 before
        any): the estimates of one kind err alike, so skipping scales them by it."""
        xs = [p.max_rate_per_s / p.bound_rate_per_s for p in plans
              if p.disaggregated == kind and p.bound_rate_per_s > 0]
        return min(1.0, max(xs)) if xs else 1.0

    def best_of(kind: bool) -> float:
        xs = [score(objective, p.max_rate_per_s, p.num_gpus) for p in plans
              if p.disaggregated == kind]
        return max(xs, default=-math.inf)

    live = bounded(specs)
    live.sort(key=lambda sb: (-score(objective, sb[1].rate_per_s, num_gpus(sb[0])),
                              label(sb[0])))
    candidates = len(specs)
    simulated = 0
    while live:
        ranked = sorted(plans, key=key)
        kth = -math.inf if len(ranked) < top else \
            score(objective, ranked[top - 1].max_rate_per_s, ranked[top - 1].num_gpus)
        wave: list[tuple[AnySpec, Bound]] = []
        rest: list[tuple[AnySpec, Bound]] = []
        for s, b in live:
            kind = isinstance(s, DisaggregatedSpec)
            est = score(objective, b.rate_per_s, num_gpus(s)) * BOUND_SLACK * realized(kind)
            if est < kth and est < best_of(kind):
                prune(s, "rate", f"estimated at most {b.rate_per_s:.3g} req/s "
                      f"({b.detail}), below the plans found", False)
            elif len(wave) < WAVE:
                wave.append((s, b))
            else:
                rest.append((s, b))
        run(wave)
        simulated += len(wave)
        live = rest
    # Knob refinement of the best layouts of each kind.
    refine: list[AnySpec] = []
    for kind in (False, True):
        best = [p for p in sorted(plans, key=key) if p.disaggregated == kind][:REFINE]
        for p in best:
            d = resolve_any(m, c, p.spec)
            pool = d.pools[-1]
            refine += knob_variants(p.spec, pool.max_num_seqs,
                                    d.pools[0].max_num_batched_tokens)
    candidates += len(refine)
    extra = bounded(refine)
    run(extra)
    simulated += len(extra)
    simulations += _verify_shown(m, c, plans, key, top, mapper, prune)
    if not plans:
        reasons = sorted({r for _, r, _ in pruned})
        raise NoDeployment(f"no deployment of {m.name} on {n} GPUs of {c.name} meets the SLOs "
                            f"(pruned by {', '.join(reasons) or 'nothing'}); see --json for "
                            "each class")
    ranked = sorted(plans, key=key)
    shown = shown_plans(ranked, top)
    pts = [(p.tokens_per_s_per_gpu, p.tokens_per_s_per_user) for p in ranked]
    pareto = [ranked[k] for k in frontier(pts)]
    out_pruned = [Pruned(cls, reason, xs[0][1], len(xs), xs[0][0], sim)
                  for (cls, reason, sim), xs in sorted(pruned.items())]
    return ServePlan(shown, pareto, out_pruned, objective, q, m.name, c.name, candidates,
                     simulated, simulations, ranked)


__all__ = ["DeploymentSpec", "DisaggregatedSpec", "NoDeployment", "OBJECTIVES", "PlanEntry",
           "Probe", "Pruned", "Query", "RateSearch", "Search", "ServePlan", "max_rate", "plan",
           "prepare", "probe", "score"]
