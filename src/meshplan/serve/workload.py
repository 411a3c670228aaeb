"""Workloads: when requests arrive and how long their prompts and outputs are, drawn from a
seed (numpy's PCG64), so the same workload gives the same requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from meshplan.specs._base import Spec

Arrival = Literal["poisson", "gamma", "constant", "burst"]
LengthKind = Literal["fixed", "uniform", "normal", "lognormal"]


class Lengths(Spec):
    """A token-length distribution with mean `mean` (integers >= 1 once drawn)."""

    kind: LengthKind = "fixed"
    mean: int = Field(gt=0)
    spread: float = Field(default=0.0, ge=0)
    """uniform: half-width as a share of the mean; normal: standard deviation as a share of
    the mean; lognormal: sigma of the underlying normal."""

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        m, s = float(self.mean), self.spread
        if self.kind == "fixed" or s == 0:
            x = np.full(n, m)
        elif self.kind == "uniform":
            x = rng.uniform(m * (1 - s), m * (1 + s), n)
        elif self.kind == "normal":
            x = rng.normal(m, s * m, n)
        else:  # lognormal with the given mean: mu = ln(m) - sigma^2 / 2
            x = rng.lognormal(np.log(m) - s * s / 2, s, n)
        return np.maximum(np.rint(x), 1).astype(np.int64)


class Workload(Spec):
    """A request stream: arrivals, lengths and a seed."""

    arrival: Arrival = "poisson"
    rate: float | None = Field(default=None, ge=1e-6, le=1e9)
    """Requests per second (all but `burst`); from one request in ~12 days to 10^9 per
    second, so that arrival times stay finite."""
    cv: float = Field(default=1.0, gt=0)
    """Coefficient of variation of the gaps (gamma arrivals; 1 is Poisson)."""
    num_requests: int = Field(default=1000, gt=0, le=10_000_000)
    input: Lengths
    output: Lengths
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Workload:
        if self.arrival != "burst" and self.rate is None:
            raise ValueError(f"arrival {self.arrival} needs a rate (requests per second)")
        return self


@dataclass(frozen=True)
class Requests:
    """The drawn requests, sorted by arrival."""

    arrival_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)


def draw(w: Workload) -> Requests:
    """Arrivals: Poisson (exponential gaps), gamma (gaps of the given CV, mean 1/rate),
    constant (1/rate apart) or burst (all at t = 0); lengths from their distributions."""
    rng = np.random.default_rng(w.seed)
    n = w.num_requests
    if w.arrival == "burst":
        t = np.zeros(n)
    else:
        assert w.rate is not None
        mean_gap = 1.0 / w.rate
        if w.arrival == "constant":
            gaps = np.full(n, mean_gap)
        elif w.arrival == "poisson":
            gaps = rng.exponential(mean_gap, n)
        else:
            shape = 1.0 / (w.cv * w.cv)
            gaps = rng.gamma(shape, mean_gap / shape, n)
        t = np.cumsum(gaps) - gaps[0]
    return Requests(t, w.input.draw(rng, n), w.output.draw(rng, n))
