"""Uneven pipeline splits (Megatron-LM --decoder-first/last-pipeline-num-layers)."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.api import estimate
from meshplan.errors import MeshplanError
from meshplan.search.space import enumerate_plans
from meshplan.specs import Job, Plan
from meshplan.specs.io import load_model
from meshplan.specs.stages import default_uneven_split, rank_layers
from tests.conftest import arrays


def test_llama_405b_on_16_stages_splits_7_8x14_7():
    """126 layers on 16 ranks: the end ranks take 7, the 14 middle ranks 8 each."""
    assert default_uneven_split(126, 16) == (7, 7)
    first, mid, last = rank_layers(126, arrays(pp=16, first_stage_layers=7, last_stage_layers=7))
    assert (first[0], mid[0], last[0]) == (7, 8, 7)
    assert first[0] + 14 * mid[0] + last[0] == 126


def test_even_split_is_unchanged():
    first, mid, last = rank_layers(96, arrays(pp=12))
    assert first[0] == mid[0] == last[0] == 8


def test_lighter_end_ranks_speed_up_the_step_and_shrink_their_memory():
    job = Job(global_batch_size=64, seq_len=2048)
    even = estimate("llama3-8b", "dgx-h100", job, Plan(pp=4, dp=2), simulate=False)
    light = estimate("llama3-8b", "dgx-h100", job,
                     Plan(pp=4, dp=2, first_stage_layers=7, last_stage_layers=7),
                     simulate=False)
    assert light.step_time_s < even.step_time_s
    assert light.memory_bytes["weights"] <= even.memory_bytes["weights"]


def test_a_split_the_other_ranks_cannot_share_is_refused():
    with pytest.raises(MeshplanError, match="share the rest"):
        estimate("llama3.1-405b", "dgx-h100", Job(global_batch_size=2048, seq_len=8192),
                 Plan(tp=8, pp=16, dp=128, first_stage_layers=5))
    with pytest.raises(MeshplanError, match="must divide num_layers"):
        estimate("llama3.1-405b", "dgx-h100", Job(global_batch_size=2048, seq_len=8192),
                 Plan(tp=8, pp=16, dp=128))


def test_search_offers_pipeline_degrees_that_do_not_divide_the_layers():
    P, _ = enumerate_plans(load_model("llama3.1-405b"), Job(global_batch_size=2048,
                                                              seq_len=8192), 16384)
    sixteen = P.pp == 16
    assert sixteen.any()
    assert np.all(P.first_layers[sixteen] == 7) and np.all(P.last_layers[sixteen] == 7)


def test_megatron_export_carries_the_split():
    from meshplan.export.api import export

    text = export(Plan(tp=8, pp=16, dp=128, first_stage_layers=7, last_stage_layers=7),
                  "megatron", model=load_model("llama3.1-405b"),
                  job=Job(global_batch_size=2048, seq_len=8192))
    assert "--decoder-first-pipeline-num-layers 7" in text
    assert "--decoder-last-pipeline-num-layers 7" in text


def test_executor_stage_ranges():
    from meshplan.specs.stages import stage_layer_ranges

    even = stage_layer_ranges(8, 4, (0, 1, 0, 1), 2, None, None)
    assert [list(r) for r in even] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    uneven = stage_layer_ranges(10, 4, (0, 1, 2, 3), 4, 2, 2)
    assert [len(r) for r in uneven] == [2, 3, 3, 2] and uneven[-1].stop == 10
    with pytest.raises(MeshplanError, match="virtual"):
        stage_layer_ranges(10, 8, tuple(range(4)) * 2, 4, 2, 2)
