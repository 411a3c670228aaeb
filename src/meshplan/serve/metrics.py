"""Per-request latencies and their aggregates, as vLLM's benchmark defines them
(`benchmarks/benchmark_serving.py`): TTFT from arrival to the first output token, TPOT over
the output tokens after the first ((E2E - TTFT) / (output - 1)), inter-token latency (ITL)
over every gap between consecutive tokens, E2E from arrival to the last token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summary(x: np.ndarray, scale: float = 1.0) -> dict[str, float | None]:
    """mean and p50/p90/p95/p99 of `x` times `scale` (None when empty)."""
    if len(x) == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    v = np.asarray(x, dtype=float) * scale
    return {"mean": float(v.mean()), **{f"p{p}": float(np.percentile(v, p))
                                        for p in PERCENTILES}}


def weighted_summary(values: np.ndarray, weights: np.ndarray,
                     scale: float = 1.0) -> dict[str, float | None]:
    """`summary` of the sample in which each of `values` appears `weights` times (integers),
    without expanding it: the same linear-interpolation percentiles as numpy's default."""
    n = int(np.sum(weights, dtype=np.int64))
    if n == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ends = np.cumsum(np.asarray(weights)[order], dtype=np.int64)  # [end - w, end) hold v

    def at(i: int) -> float:
        return float(values[order[int(np.searchsorted(ends, i, side="right"))]]) * scale

    mean = float(np.dot(values, np.asarray(weights, dtype=float))) / n * scale
    out: dict[str, float | None] = {"mean": mean}
    for p in PERCENTILES:
        h = (n - 1) * p / 100.0
        lo = int(np.floor(h))
        a, b = at(lo), at(min(lo + 1, n - 1))
        t = h - lo
        out[f"p{p}"] = a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)
    return out


CDF_POINTS = 101


def quantile_curve(x: np.ndarray, scale: float = 1.0) -> list[float]:
    """The 0th..100th percentiles of `x` times `scale` (`CDF_POINTS` values, [] when empty):
    a distribution's CDF in a fixed size whatever the number of requests."""
    if len(x) == 0:
        return []
    q = np.percentile(np.asarray(x, dtype=float) * scale, np.linspace(0, 100, CDF_POINTS))
    return [float(v) for v in q]


@dataclass(frozen=True)
class RequestMetrics:
    """Per request (arrays aligned with the workload's requests)."""

    arrival_s: np.ndarray
    first_scheduled_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    itl_values_s: np.ndarray
    itl_weights: np.ndarray
    """Every gap between consecutive output tokens of a request, all requests together, as
    distinct values with their counts (a decode step's gap is the same for its whole batch)."""

    @property
    def itl_s(self) -> np.ndarray:
        """The gaps one by one (expanded: as many floats as output tokens)."""
        return np.repeat(self.itl_values_s, self.itl_weights.astype(np.int64))

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        many = self.output_len > 1
        return (self.e2e_s[many] - self.ttft_s[many]) / (self.output_len[many] - 1)

    @property
    def queueing_s(self) -> np.ndarray:
        return self.first_scheduled_s - self.arrival_s

    @property
    def request_tpot_s(self) -> np.ndarray:
        """TPOT of every request, aligned with the requests (0 for a one-token output)."""
        return np.where(self.output_len > 1, (self.e2e_s - self.ttft_s)
                        / np.maximum(self.output_len - 1, 1), 0.0)

    def within_slo(self, slo_ttft_s: float | None, slo_tpot_s: float | None) -> np.ndarray:
        """Per request: TTFT and TPOT within the bounds given (None: that one unbounded)."""
        good = np.ones(len(self.finish_s), dtype=bool)
        if slo_ttft_s is not None:
            good &= self.ttft_s <= slo_ttft_s
        if slo_tpot_s is not None:
            good &= self.request_tpot_s <= slo_tpot_s
        return good

    def aggregate(self, num_gpus: int, slo_ttft_s: float | None = None,
                  slo_tpot_s: float | None = None) -> dict[str, Any]:
        """Latency summaries (ms), throughput (per s and per GPU) and goodput under SLOs."""
        duration = float(self.finish_s.max() - self.arrival_s.min()) if len(self.finish_s) \
            else 0.0
        n, out = len(self.finish_s), float(self.output_len.sum())
        total = out + float(self.input_len.sum())
        rate = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
        norm = self.e2e_s / self.output_len
        good = self.within_slo(slo_ttft_s, slo_tpot_s)
        return {
            "ttft_ms": summary(self.ttft_s, 1e3),
            "tpot_ms": summary(self.tpot_s, 1e3),
            "itl_ms": weighted_summary(self.itl_values_s, self.itl_weights, 1e3),
            "e2e_ms": summary(self.e2e_s, 1e3),
            "queueing_ms": summary(self.queueing_s, 1e3),
            "normalized_latency_s_per_token": summary(norm),
            "duration_s": duration,
            "requests_per_s": rate(n),
            "output_tokens_per_s": rate(out),
            "total_tokens_per_s": rate(total),
            "output_tokens_per_s_per_gpu": rate(out) / num_gpus,
            "goodput_requests_per_s": rate(float(good.sum())),
            "slo_attainment": float(good.mean()) if n else None,
        }

    def distributions(self) -> dict[str, list[float]]:
        """TTFT, TPOT and E2E (ms) as percentile curves (`quantile_curve`)."""
        return {"ttft_ms": quantile_curve(self.ttft_s, 1e3),
                "tpot_ms": quantile_curve(self.tpot_s, 1e3),
                "e2e_ms": quantile_curve(self.e2e_s, 1e3)}
