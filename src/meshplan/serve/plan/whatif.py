"""What-if over GPU counts: the same plan search for each count, and what serving a million
requests at the SLOs costs with its best plan.

Cost: the best plan keeps `num_gpus` GPUs busy to serve `max_rate_per_s` requests a second
within the SLOs, so a million requests take num_gpus x 1e6 / max_rate_per_s GPU-seconds,
/ 3600 for GPU-hours (`PlanEntry.gpu_hours_per_million_requests`), and that times the price
of a GPU-hour in currency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.serve.plan.executor import executor
from meshplan.serve.plan.search import NoDeployment, ServePlan, prepare


def parse_counts(text: str) -> list[int]:
    """`8,16,32` -> [8, 16, 32]: positive integers, each once."""
    parts = [p.strip() for p in text.split(",")]
    counts: list[int] = []
    for p in parts:
        if not p.isdigit() or int(p) < 1:
            raise MeshplanError(f"--num-gpus={text!r}: a positive GPU count or a comma-separated "
                                f"list of them (got {p!r})")
        if int(p) in counts:
            raise MeshplanError(f"--num-gpus={text!r}: {p} is listed twice")
        counts.append(int(p))
    return counts


def check_price(price: float | None) -> None:
    if price is not None and not (math.isfinite(price) and price > 0):
        raise MeshplanError(f"--gpu-hour-price={price}: must be a positive finite price")


@dataclass(frozen=True)
class WhatIfRow:
    """One GPU count: its search's result (None when no deployment met the SLOs, `reason`)."""

    num_gpus: int
    result: ServePlan | None
    reason: str | None
    gpu_hour_price: float | None

    @property
    def gpu_hours_per_million_requests(self) -> float | None:
        return None if self.result is None else self.result.best.gpu_hours_per_million_requests

    @property
    def cost_per_million_requests(self) -> float | None:
        hours = self.gpu_hours_per_million_requests
        return None if hours is None or self.gpu_hour_price is None \
            else hours * self.gpu_hour_price

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {"num_gpus": self.num_gpus,
                "best": None if r is None else r.best.to_json(self.gpu_hour_price),
                "max_rate_per_s": None if r is None else r.best.max_rate_per_s,
                "goodput_per_gpu": None if r is None else r.best.goodput_per_gpu,
                "gpu_hours_per_million_requests": self.gpu_hours_per_million_requests,
                "cost_per_million_requests": self.cost_per_million_requests,
                "reason": self.reason,
                "result": None if r is None else r.to_json(self.gpu_hour_price)}


@dataclass(frozen=True)
class WhatIf:
    rows: list[WhatIfRow]
    gpu_hour_price: float | None

    def to_json(self) -> dict[str, Any]:
        first = next((r.result for r in self.rows if r.result is not None), None)
        head = {} if first is None else {
            k: v for k, v in first.to_json().items()
            if k in ("model", "cluster", "objective", "workload", "slo")}
        return {**head, "gpu_hour_price": self.gpu_hour_price,
                "what_if": [r.to_json() for r in self.rows]}


def what_if(model: Any, cluster: Any, counts: list[int], input_len: int, output_len: int,
            slo_ttft_ms: float, slo_tpot_ms: float, gpu_hour_price: float | None = None,
            workers: int | None = None, ray_address: str | None = None,
            **search: Any) -> WhatIf:
    """`plan` for each GPU count in `counts` (every count checked before any search; one
    executor for all), with the cost per million requests of each count's best plan.
    `search`: `plan`'s other keywords (slo_percentile, objective, top, engine, ...)."""
    check_price(gpu_hour_price)
    if not counts:
        raise MeshplanError("--num-gpus: give at least one GPU count")
    searches = [prepare(model, cluster, n, input_len, output_len, slo_ttft_ms, slo_tpot_ms,
                        **search) for n in counts]
    rows: list[WhatIfRow] = []
    with executor(workers, ray_address) as mapper:
        for s in searches:
            try:
                rows.append(WhatIfRow(s.num_gpus, s.run(mapper), None, gpu_hour_price))
            except NoDeployment as err:
                rows.append(WhatIfRow(s.num_gpus, None, str(err), gpu_hour_price))
    return WhatIf(rows, gpu_hour_price)
