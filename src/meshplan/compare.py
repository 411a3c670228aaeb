"""Compare estimates term by term: where one plan's step time and memory differ from another's.

Pure functions on `Estimate`s (no cost code), shared by `plan --explain` and any side-by-side
view of plans.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplan.estimate import Estimate


@dataclass(frozen=True)
class Difference:
    """How `other` differs from `base`: step time and peak memory, and the terms behind it."""

    base: Estimate
    other: Estimate
    time_terms: list[tuple[str, float]]
    """(term, other - base seconds) for the time terms that differ, largest change first."""
    memory_terms: list[tuple[str, float]]
    """(term, other - base bytes) for the memory terms that differ, largest change first."""

    @property
    def step_delta_s(self) -> float:
        return self.other.step_time_s - self.base.step_time_s

    def why(self, terms: int = 2) -> str:
        """One line: why `other` ranks where it does against `base`."""
        if not self.other.fits:
            return f"does not fit: {self.other.fit_reason}"
        parts = [f"{k} {v:+.3f} s" for k, v in self.time_terms[:terms]]
        if abs(self.step_delta_s) <= 1e-6 * self.base.step_time_s:
            return "same step time" + (f" ({', '.join(parts)})" if parts else "")
        sign = "slower" if self.step_delta_s > 0 else "faster"
        lead = f"{abs(self.step_delta_s):.3f} s {sign}"
        return lead + (f" ({', '.join(parts)})" if parts else "")


def difference(base: Estimate, other: Estimate, rel_tol: float = 1e-6) -> Difference:
    """The terms in which `other` differs from `base`, largest first."""
    def changed(a: dict[str, float], b: dict[str, float], scale: float) -> list[tuple[str, float]]:
        deltas = [(k, b[k] - a[k]) for k in a if k in b and k != "peak"]
        deltas = [(k, d) for k, d in deltas if abs(d) > rel_tol * scale]
        return sorted(deltas, key=lambda kd: -abs(kd[1]))

    return Difference(base, other,
                      changed(base.time_breakdown_s, other.time_breakdown_s, base.step_time_s),
                      changed(base.memory_bytes, other.memory_bytes, base.memory_bytes["peak"]))
