"""Serving plan search under TTFT / TPOT SLOs (`plan`), on the request-level simulator;
`what_if` repeats it over GPU counts with the cost per million requests."""

from meshplan.serve.plan.search import (
    NoDeployment,
    PlanEntry,
    Pruned,
    Query,
    RateSearch,
    ServePlan,
    max_rate,
    plan,
    probe,
)
from meshplan.serve.plan.whatif import WhatIf, WhatIfRow, what_if

__all__ = ["NoDeployment", "PlanEntry", "Pruned", "Query", "RateSearch", "ServePlan",
           "WhatIf", "WhatIfRow", "max_rate", "plan", "probe", "what_if"]
