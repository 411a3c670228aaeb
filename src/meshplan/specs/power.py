"""Sustained tensor-core clock of a power-capped (or re-clocked) accelerator: the one model of
what a power limit below the rated board power (TDP) does, used by training
(`Accelerator.peak`, through the `power_limit_w` of a preset or a published run) and serving
(`serve.validate.hardware`).

Dense GEMMs are power-limited on today's GPUs: the firmware lowers the SM clock until the
board draws no more than the limit, so compute peaks scale with the clock while HBM, which is
not clocked with the SMs, keeps its bandwidth. Board power along the DVFS curve goes as
P ~ f^k: dynamic power is C V^2 f, k = 3 where the voltage rises in step with the clock and
k = 1 where it sits at its floor (Rabaey, Digital Integrated Circuits, ch. 5). The measured
H100 lies in between: SplitwiseSim's profiles (Patel et al., "Splitwise", ISCA'24; the
artifact's perf_model.csv, shipped as the `splitwise-*-pcap-*` serving runs) take every
prompt-phase (compute-bound) time x1.30 on a DGX-H100 at 70 % of its power and every
token-phase (memory-bound) time x1.00, which is k = ln 0.70 / ln(1 / 1.30) = 1.36. A cube law
(k = 3) would give x1.13 there.
"""

from __future__ import annotations

import math

from meshplan.errors import MeshplanError

SPLITWISE_POWER_FRACTION = 0.70
"""DGX-H100 power-capped to 7,140 W of 10,200 W (SplitwiseSim's SKU configs): a fraction of the
whole server's rating, read here as each GPU's share of its board power (the paper's power-cap
experiments cap the GPUs). If the 3,060 W cut fell on the eight 700 W GPUs alone they would run
at 45 %, k would be about 3 (the cube law) and a 500 W H100 would keep x0.89 of its clock
instead of x0.78; the torchtitan 500 W runs, fitted on their own table before, sat at x0.76 of
the H100 factor, which is why this reading is kept (docs/model.md, Silicon and power)."""
SPLITWISE_PROMPT_SLOWDOWN = 1.30
"""Prompt-phase time at that cap over the uncapped one (SplitwiseSim perf_model.csv)."""
POWER_CLOCK_EXPONENT = math.log(1.0 / SPLITWISE_PROMPT_SLOWDOWN) / math.log(
    SPLITWISE_POWER_FRACTION)
"""clock / clock at TDP = (limit / TDP) ** POWER_CLOCK_EXPONENT (= 1 / k, about 0.736)."""


def clock_fraction(power_fraction: float) -> float:
    """Sustained compute clock at `power_fraction` of the rated board power, as a fraction of
    the clock at that rating (1.0 at or above it: a limit above TDP buys no clock)."""
    if not power_fraction > 0:
        raise MeshplanError(f"power fraction must be positive, got {power_fraction!r}")
    return min(power_fraction, 1.0) ** POWER_CLOCK_EXPONENT
