"""Workloads: when requests arrive, how long their prompts and outputs are and which prompt
prefixes they share, drawn from a seed (numpy's PCG64), so the same workload gives the same
requests; or replayed from a trace file of lengths (and arrival times)."""

from __future__ import annotations

import csv
import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from meshplan.errors import MeshplanError
from meshplan.specs._base import Spec

Arrival = Literal["poisson", "gamma", "constant", "burst", "closed", "replay"]
LengthKind = Literal["fixed", "uniform", "normal", "lognormal", "zipf"]
ZIPF_MAX_TOKENS = 1 << 20
"""Longest length a zipf distribution may reach (a million tokens, above any context)."""


def zipf_support(mean: float, a: float) -> np.ndarray:
    """P(L = l) for l = 1..L_max, proportional to l^-a, with L_max the smallest whose mean
    reaches `mean` (a bounded Zipf law; Vidur's `ZipfRequestLengthGenerator` bounds it by
    a maximum length likewise)."""
    lengths = np.arange(1, ZIPF_MAX_TOKENS + 1, dtype=float)
    w = lengths ** -a
    means = np.cumsum(w * lengths) / np.cumsum(w)
    top = int(np.searchsorted(means, mean))
    if top >= ZIPF_MAX_TOKENS:
        raise MeshplanError(f"zipf with exponent {a:g}: no length cap up to "
                            f"{ZIPF_MAX_TOKENS} tokens gives a mean of {mean:g}; lower the "
                            "exponent or the mean")
    p = w[: top + 1]
    return p / p.sum()


class Lengths(Spec):
    """A token-length distribution with mean `mean` (integers >= 1 once drawn)."""

    kind: LengthKind = "fixed"
    mean: int = Field(gt=0)
    spread: float = Field(default=0.0, ge=0)
    """uniform: half-width as a share of the mean; normal: standard deviation as a share of
    the mean; lognormal: sigma of the underlying normal; zipf: the exponent a > 0 of
    P(l) ~ l^-a over 1..L_max, L_max set by the mean (`zipf_support`)."""
    max: int | None = Field(default=None, gt=0)
    """lognormal only: the longest length; longer draws are drawn again (a benchmark that
    drops requests over its caps, as vLLM's ShareGPT sampler does), `mean` being the mean
    after that (`truncated_lognormal_mu`)."""

    @model_validator(mode="after")
    def _check(self) -> Lengths:
        if self.kind == "zipf" and self.spread <= 0:
            raise ValueError("zipf lengths need spread > 0 (the exponent a of P(l) ~ l^-a)")
        if self.max is not None:
            if self.kind != "lognormal" or self.spread <= 0:
                raise ValueError("a length cap (max) is for lognormal lengths (spread > 0)")
            if self.max <= self.mean:
                raise ValueError(f"the length cap ({self.max}) must exceed the mean "
                                 f"({self.mean})")
        return self

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        m, s = float(self.mean), self.spread
        if self.kind == "zipf":
            p = zipf_support(m, s)
            return np.searchsorted(np.cumsum(p), rng.random(n) * p.sum(),
                                   side="right").clip(0, len(p) - 1).astype(np.int64) + 1
        if self.kind == "fixed" or s == 0:
            x = np.full(n, m)
        elif self.kind == "uniform":
            x = rng.uniform(m * (1 - s), m * (1 + s), n)
        elif self.kind == "normal":
            x = rng.normal(m, s * m, n)
        elif self.max is None:  # lognormal with the given mean: mu = ln(m) - sigma^2 / 2
            x = rng.lognormal(np.log(m) - s * s / 2, s, n)
        else:
            mu = truncated_lognormal_mu(m, s, self.max)
            x = rng.lognormal(mu, s, n)
            over = x > self.max + 0.5
            while over.any():  # redrawn (acceptance >= ~50 % for a cap above the mean)
                x[over] = rng.lognormal(mu, s, int(over.sum()))
                over = x > self.max + 0.5
        return np.maximum(np.rint(x), 1).astype(np.int64)


def truncated_lognormal_mean(mu: float, sigma: float, cap: float) -> float:
    """E[X | X <= cap] for ln X ~ N(mu, sigma^2): exp(mu + sigma^2 / 2) Phi(z - sigma) / Phi(z),
    z = (ln cap - mu) / sigma (the partial expectation of the lognormal)."""
    z = (math.log(cap) - mu) / sigma
    phi = NormalDist()
    return math.exp(mu + sigma * sigma / 2) * phi.cdf(z - sigma) / max(phi.cdf(z), 1e-300)


def truncated_lognormal_mu(mean: float, sigma: float, cap: float) -> float:
    """The mu whose lognormal, cut at `cap`, has mean `mean` (< cap): bisection on
    `truncated_lognormal_mean`, which rises with mu from 0 towards cap."""
    lo, hi = math.log(mean) - 4 * sigma * sigma - 10, math.log(cap) + 4 * sigma
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if truncated_lognormal_mean(mid, sigma, cap) < mean else (lo, mid)
    return (lo + hi) / 2


class Workload(Spec):
    """A request stream: arrivals, lengths, shared prefixes and a seed."""

    arrival: Arrival = "poisson"
    rate: float | None = Field(default=None, ge=1e-6, le=1e9)
    """Requests per second (poisson, gamma, constant); from one request in ~12 days to 10^9
    per second, so that arrival times stay finite."""
    cv: float = Field(default=1.0, gt=0)
    """Coefficient of variation of the gaps (gamma arrivals; 1 is Poisson)."""
    clients: int | None = Field(default=None, gt=0)
    """Closed loop: concurrent clients, each sending its next request when its previous one
    ends (plus `think_s`); request i belongs to client i mod clients, the first of each at 0."""
    think_s: float = Field(default=0.0, ge=0, le=1e6)
    num_requests: int | None = Field(default=None, gt=0, le=10_000_000)
    """None: every row of `lengths_file`, else 1000."""
    input: Lengths | None = None
    output: Lengths | None = None
    lengths_file: Path | None = None
    """A CSV (header) or JSONL trace with input_len and output_len per request and, for
    `replay` arrivals, arrival_s (seconds) or timestamp (any origin); its rows are taken in
    order (cycled when num_requests exceeds them) instead of `input` / `output`."""
    prefix_len: int = Field(default=0, ge=0)
    """Tokens of a prompt prefix shared by each group of `prefix_group_size` consecutive
    requests (parallel sampling, agent fan-out), placed before the drawn prompt."""
    prefix_group_size: int = Field(default=1, gt=0)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Workload:
        if self.arrival in ("poisson", "gamma", "constant") and self.rate is None:
            raise ValueError(f"arrival {self.arrival} needs a rate (requests per second)")
        if self.arrival == "closed" and self.clients is None:
            raise ValueError("arrival closed needs clients (concurrent clients)")
        if self.arrival == "replay" and self.lengths_file is None:
            raise ValueError("arrival replay needs a lengths_file with arrival times")
        if self.lengths_file is None and (self.input is None or self.output is None):
            raise ValueError("give input and output lengths, or a lengths_file")
        return self


@dataclass(frozen=True)
class Requests:
    """The drawn requests, sorted by arrival (closed loop: by client turn)."""

    arrival_s: np.ndarray
    """Closed loop: 0 for each client's first request, NaN for the others (they arrive when
    the client's previous request ends: `ArrivalFeed`)."""
    input_len: np.ndarray
    output_len: np.ndarray
    prefix_group: np.ndarray | None = None
    """Per request, the group whose prompt prefix it shares (None: no shared prefixes)."""
    prefix_len: np.ndarray | None = None
    clients: int = 0
    """Closed loop: the number of clients (0: open loop, `arrival_s` given)."""
    think_s: float = 0.0

    def __len__(self) -> int:
        return len(self.arrival_s)


class ArrivalFeed:
    """The order requests arrive in, one at a time: `next_s` is when the next one arrives
    (inf: none pending), `pop` returns its id. Open loop: by `arrival_s`. Closed loop: each
    client's next request arrives `think_s` after `finished` reports its previous one."""

    def __init__(self, r: Requests):
        self.n = len(r)
        self.arrival = r.arrival_s.astype(float)
        self.clients, self.think = r.clients, r.think_s
        self.k = 0
        if self.clients:
            self._heap = [(0.0, i) for i in range(min(self.clients, self.n))]
            self.next_s = 0.0 if self.n else math.inf
        else:
            self._times = self.arrival.tolist()
            self.next_s = self._times[0] if self.n else math.inf

    def pop(self) -> int:
        if self.clients:
            _, rid = heapq.heappop(self._heap)
            self.next_s = self._heap[0][0] if self._heap else math.inf
            return rid
        rid = self.k
        self.k += 1
        self.next_s = self._times[self.k] if self.k < self.n else math.inf
        return rid

    def finished(self, rid: int, t: float) -> None:
        nxt = rid + self.clients
        if self.clients and nxt < self.n:
            at = t + self.think
            self.arrival[nxt] = at
            heapq.heappush(self._heap, (at, nxt))
            self.next_s = self._heap[0][0]


TRACE_TIME_KEYS = ("arrival_s", "timestamp")


def _int_field(value: object, key: str, where: str) -> int:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MeshplanError(f"{where}: {key}={value!r} is not a number") from None
    if not (math.isfinite(x) and x == int(x) and x >= 1):
        raise MeshplanError(f"{where}: {key}={value!r} must be a whole number >= 1")
    return int(x)


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(input lengths, output lengths, arrival times from 0 or None) of a CSV or JSONL
    trace, in the file's row order."""
    if not path.is_file():
        raise MeshplanError(f"lengths file {path}: not found")
    suffix = path.suffix.lower()
    text = path.read_text(errors="replace")
    rows: list[tuple[str, dict[str, object]]] = []
    if suffix in (".jsonl", ".json"):
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise MeshplanError(f"{path}:{no}: not a JSON object ({err.msg})") from None
            if not isinstance(obj, dict):
                raise MeshplanError(f"{path}:{no}: not a JSON object")
            rows.append((f"{path}:{no}", obj))
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        for no, row in enumerate(reader, 2):
            rows.append((f"{path}:{no}", dict(row)))
    else:
        raise MeshplanError(f"lengths file {path}: expected a .csv or .jsonl file")
    if not rows:
        raise MeshplanError(f"lengths file {path}: no requests in it")
    time_key = next((k for k in TRACE_TIME_KEYS if k in rows[0][1]), None)
    ins, outs, times = [], [], []
    for where, row in rows:
        for key in ("input_len", "output_len"):
            if row.get(key) in (None, ""):
                raise MeshplanError(f"{where}: missing {key} (columns: input_len, "
                                    "output_len, optionally arrival_s or timestamp)")
        ins.append(_int_field(row["input_len"], "input_len", where))
        outs.append(_int_field(row["output_len"], "output_len", where))
        if time_key is not None:
            try:
                t = float(row.get(time_key))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise MeshplanError(f"{where}: {time_key}={row.get(time_key)!r} is not a "
                                    "number") from None
            if not math.isfinite(t):
                raise MeshplanError(f"{where}: {time_key}={t} must be finite")
            times.append(t)
    t_arr = None
    if time_key is not None:
        t_arr = np.asarray(times)
        t_arr = t_arr - t_arr.min()
    return np.asarray(ins, dtype=np.int64), np.asarray(outs, dtype=np.int64), t_arr


def _gaps(w: Workload, rng: np.random.Generator, n: int) -> np.ndarray:
    assert w.rate is not None
    mean_gap = 1.0 / w.rate
    if w.arrival == "constant":
        return np.full(n, mean_gap)
    if w.arrival == "poisson":
        return rng.exponential(mean_gap, n)
    shape = 1.0 / (w.cv * w.cv)
    return rng.gamma(shape, mean_gap / shape, n)


def draw(w: Workload) -> Requests:
    """Arrivals: Poisson (exponential gaps), gamma (gaps of the given CV, mean 1/rate),
    constant (1/rate apart), burst (all at t = 0), closed (`ArrivalFeed`) or replay (the
    trace's times); lengths from their distributions or the trace; shared prefixes
    prepended to the prompts."""
    rng = np.random.default_rng(w.seed)
    times = None
    if w.lengths_file is not None:
        ins, outs, times = read_trace(w.lengths_file)
        rows = len(ins)
        n = w.num_requests or rows
        if w.arrival == "replay":
            if times is None:
                raise MeshplanError(f"replay arrivals: {w.lengths_file} has no arrival_s or "
                                    "timestamp column")
            if n > rows:
                raise MeshplanError(f"num_requests={n}: the trace {w.lengths_file} has only "
                                    f"{rows} requests to replay")
            order = np.argsort(times[:n], kind="stable")
            ins, outs, times = ins[:n][order], outs[:n][order], times[:n][order]
            times = times - times[0]
        else:
            ins, outs = np.resize(ins, n), np.resize(outs, n)
    else:
        assert w.input is not None and w.output is not None
        n = w.num_requests or 1000
    clients = 0
    if w.arrival == "replay":
        assert times is not None
        t = times
    elif w.arrival == "closed":
        assert w.clients is not None
        clients = w.clients
        t = np.full(n, np.nan)
        t[: min(clients, n)] = 0.0
    elif w.arrival == "burst":
        t = np.zeros(n)
    else:
        gaps = _gaps(w, rng, n)
        t = np.cumsum(gaps) - gaps[0]
    if w.lengths_file is None:
        assert w.input is not None and w.output is not None
        ins, outs = w.input.draw(rng, n), w.output.draw(rng, n)
    group = plen = None
    if w.prefix_len:
        group = np.arange(n, dtype=np.int64) // w.prefix_group_size
        plen = np.full(n, w.prefix_len, dtype=np.int64)
        ins = ins + w.prefix_len
    return Requests(t, ins, outs, group, plen, clients, w.think_s)
