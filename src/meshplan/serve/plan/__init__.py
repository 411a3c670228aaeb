"""Serving plan search under TTFT / TPOT SLOs (`plan`), on the request-level simulator."""

from meshplan.serve.plan.search import (
    PlanEntry,
    Pruned,
    Query,
    RateSearch,
    ServePlan,
    max_rate,
    plan,
    probe,
)

__all__ = ["PlanEntry", "Pruned", "Query", "RateSearch", "ServePlan", "max_rate", "plan",
           "probe"]
