"""Pipeline schedules as data: per-rank lists of `Action`s, their generators, and a verifier.

A schedule is `Schedule` (a mapping rank -> list of actions such as `2F0`, `1I3`, `0SEND_F5`)
plus its stage placement. Generators are pure functions of (ranks p, microbatches m, chunks
per rank v); `generate(name, p, m, v)` picks one by its CLI name, and `schedule_spec(name)`
gives everything else known about it (`ScheduleSpec`: chunk rule, closed forms, engine names).
`verify` dry-runs a schedule and raises `ScheduleError` with a step x rank grid if it
deadlocks or is malformed.

| name             | paper [ref]        | bubble time       | unit-step idle     | peak in flight |
|------------------|--------------------|-------------------|--------------------|----------------|
| gpipe            | Huang 2019 [1]     | (p-1)(F+B)        | (p-1)/(m+p-1)      | m              |
| 1f1b             | Narayanan 2021 [2] | (p-1)(F+B)        | (p-1)/(m+p-1)      | p (p-r on r)   |
| interleaved-1f1b | Narayanan 2021 [3] | (p-1)(F+B)/v      | (p-1)/(v*m+p-1)    | p + (p-1)/v    |
| looped-bfs       | Lamy-Poirier [4]   | (p-1)(F+B)/v      | (p-1)/(v*m+p-1)    | m              |
| zb-h1            | Qi 2024 [5]        | (p-1)(F+I-W) +    | (p-1)/(3m+p-1)     | p (every rank) |
| zb-h2            | Qi 2024 [5]        | (p-1)(F+I-2W) +   | (p-1)/(3m+p-1) *   | 2p-1           |
| zb-v             | Qi 2024 [6]        | 0 if F=I=W +      | (p-1)/(6m+p-1) *   | p              |
| dualpipe-v       | DeepSeek 2024 [7]  | (p-1)(F&B+B-3W) + | -                  | p + 1/2        |

[1] Huang et al., "GPipe", NeurIPS 2019. [2] Narayanan et al., "Memory-Efficient
Pipeline-Parallel DNN Training" (PipeDream-Flush), ICML 2021. [3] Narayanan et al., "Efficient
Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", SC21, Sec. 2.2.2.
[4] Lamy-Poirier, "Breadth-First Pipeline Parallelism", arXiv:2211.05953, 2022. [5] Qi et al.,
"Zero Bubble Pipeline Parallelism", ICLR 2024, Sec. 3.1. [6] Qi et al., "Pipeline Parallelism
with Controllable Memory", NeurIPS 2024. [7] DeepSeek-AI, "DeepSeek-V3 Technical Report",
arXiv:2412.19437, with the DualPipeV variant of github.com/deepseek-ai/DualPipe.

- p ranks, m microbatches, v chunks (virtual stages) per rank; V-shaped schedules have v = 2.
- Bubble time is the paper's closed form, with F, B, I, W the times of one forward, full
  backward, input-gradient and weight-gradient pass of one rank's share of the model (per
  chunk for the two V-shaped rows; F&B is an overlapped forward-and-backward pair).
- `+`: the paper's form where it holds (m >= 2p - 1, F = I = W; DualPipe-V's generated orders
  beat its F&B = F + B form by (p - 1) F_c even there); the closed forms meshplan uses (each
  spec's `pipeline_time`) follow the generated orders: the warm-up's
  extra bubble when m < 2p - 1 (`spec.warm_up_bubble`) and an input gradient slower than its
  forward, within 6 % of the simulated step on equal stages (tests/unit/test_schedule_specs.py).
- Unit-step idle is what `verify` measures when every compute action takes one step (F = B,
  or F = I = W): `VerifyReport.bubble_fraction`. `*`: once m >= 2p-1, every idle step sits
  before a rank's first action or after its last (`VerifyReport.interior_idle` is 0), where
  the papers overlap it with the optimizer step (ZB's post-validation), so the schedule
  itself has no bubble. DualPipeV mixes B with I and W, which one step each cannot weigh.
- Peak in flight is the most microbatches whose activations rank 0 holds (F done, B or W not),
  in units of one rank's full share of the model; `VerifyReport.peak_in_flight` counts
  stage-microbatches, i.e. v times this. DualPipeV's p + 1/2 is the DualPipe README's "PP+1"
  chunks with PP = 2p.
"""

from meshplan.schedules.ir import (
    Action,
    ActionKind,
    RankOrders,
    Schedule,
    add_communication,
    compute_only,
    from_csv,
    to_csv,
)
from meshplan.schedules.registry import (
    SCHEDULE_GENERATORS,
    SCHEDULE_NAMES,
    SCHEDULE_SPECS,
    generate,
    schedule_code,
    schedule_spec,
    spec_by_code,
    stage_to_rank,
)
from meshplan.schedules.spec import PipelineTerms, ScheduleSpec
from meshplan.schedules.verify import ScheduleError, VerifyReport, verify

__all__ = [
    "SCHEDULE_GENERATORS",
    "SCHEDULE_NAMES",
    "SCHEDULE_SPECS",
    "Action",
    "ActionKind",
    "PipelineTerms",
    "RankOrders",
    "Schedule",
    "ScheduleError",
    "ScheduleSpec",
    "VerifyReport",
    "add_communication",
    "compute_only",
    "from_csv",
    "generate",
    "schedule_code",
    "schedule_spec",
    "spec_by_code",
    "stage_to_rank",
    "to_csv",
    "verify",
]
