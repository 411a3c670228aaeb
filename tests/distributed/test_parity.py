"""Loss parity: every plan trains to the same losses as one process on the whole batch.

Same seed, same synthetic batch, fp32, AdamW, 5 steps; the relative difference of each step's
loss must stay below 1e-4 (only the order of floating-point reductions differs). Plans of one
world size run back to back in one torchrun launch to pay torch's start-up once.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from meshplan.execute.launch import launch  # noqa: E402
from meshplan.execute.runtime import RunConfig  # noqa: E402
from meshplan.specs.io import load_model  # noqa: E402
from meshplan.specs.plan import Plan  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

PLANS: dict[str, tuple[int, Plan]] = {
    "dp2": (2, Plan(dp=2, zero_stage=0)),
    "tp2-sp": (2, Plan(tp=2, sequence_parallel=True)),
    "pp2-1f1b": (2, Plan(pp=2, micro_batch_size=2, schedule="1f1b")),
    "pp2-interleaved": (2, Plan(pp=2, micro_batch_size=2, schedule="interleaved-1f1b")),
    "pp2-zb-h1": (2, Plan(pp=2, micro_batch_size=2, schedule="zb-h1")),
    "pp2-uneven": (2, Plan(pp=2, micro_batch_size=2, first_stage_layers=1, last_stage_layers=3)),
    "fsdp4": (4, Plan(dp=4, zero_stage=3)),
    "tp2-dp2": (4, Plan(tp=2, dp=2, zero_stage=1)),
    "tp2-pp2": (4, Plan(tp=2, pp=2, micro_batch_size=2)),
}
STEPS = 5


def _config(plan: Plan) -> RunConfig:
    return RunConfig(model=load_model("debug").model_dump(mode="json"),
                     plan=plan.model_dump(mode="json"), global_batch_size=8, seq_len=32,
                     steps=STEPS, warmup=1, seed=0, dtype="fp32", optimizer="adamw")


@pytest.fixture(scope="module")
def reference() -> list[float]:
    return launch(_config(Plan()), 1)["losses"]


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for world in sorted({n for n, _ in PLANS.values()}):
        names = [k for k, (n, _) in PLANS.items() if n == world]
        runs = launch([_config(PLANS[k][1]) for k in names], world)
        out.update(zip(names, runs, strict=True))
    return out


@pytest.mark.parametrize("name", list(PLANS))
def test_loss_matches_single_process(name: str, reference: list[float],
                                     results: dict[str, dict]) -> None:
    losses = results[name]["losses"]
    assert len(losses) == len(reference) == STEPS
    assert reference[-1] < reference[0] - 0.5, "the model should be learning the batch"
    for step, (got, want) in enumerate(zip(losses, reference, strict=True)):
        assert abs(got - want) / abs(want) < 1e-4, f"step {step}: {got} vs {want}"
    assert results[name]["world_size"] == PLANS[name][0]
    assert results[name]["step_time_s"] > 0 and results[name]["peak_memory_bytes"] > 0
