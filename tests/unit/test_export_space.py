"""The export targets' refusals filter a whole plan space with the code that refuses one plan:
a plan passes the vectorised filter exactly when its export is written."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.errors import MeshplanError
from meshplan.export import deepspeed, megatron, torchtitan
from meshplan.export._common import expressible
from meshplan.search.space import SpaceOptions, enumerate_plans
from meshplan.specs import Job
from meshplan.specs.io import load_model

TARGETS = [(megatron, megatron.REFUSALS), (torchtitan, torchtitan.REFUSALS),
           (deepspeed, deepspeed.REFUSALS)]
SPACES = [("llama3-8b", Job(global_batch_size=64, seq_len=4096), 16),
          ("qwen3-30b-a3b", Job(global_batch_size=64, seq_len=4096), 16),
          ("llama3-8b", Job(global_batch_size=32, seq_len=4096, precision="fp8"), 8)]


@pytest.mark.parametrize(("name", "job", "gpus"), SPACES)
@pytest.mark.parametrize(("module", "refusals"), TARGETS, ids=lambda x: getattr(x, "ENGINE", ""))
def test_filter_agrees_with_the_single_plan_export(name, job, gpus, module, refusals):
    model = load_model(name)
    opts = SpaceOptions(schedules=("1f1b", "gpipe", "interleaved-1f1b", "looped-bfs", "zb-h1",
                                   "zb-h2", "zb-v", "dualpipe-v"))
    P, _ = enumerate_plans(model, job, gpus, opts)
    mask = expressible(refusals, model, job, P)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(P), size=min(300, len(P)), replace=False)
    for i in sample:
        plan = P.plan(int(i))
        try:
            module.render(model, job, plan)
            written = True
        except MeshplanError:
            written = False
        assert written == bool(mask[i]), (module.ENGINE, plan.describe())
    assert mask.sum() < len(P)  # every target refuses some plans of these spaces
