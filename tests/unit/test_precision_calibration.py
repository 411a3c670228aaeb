"""GEMM factors per precision and FP8 recipe (issue 13, part 2): the recipe rules, the
fallback chain recipe -> fp8 -> bf16, and which groups the fit gives a factor of their own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from meshplan.specs.cluster import Calibration, precision_chain
from meshplan.specs.io import load_cluster
from meshplan.validate import rules
from meshplan.validate.calibrate import precision_groups, precision_params, resolve

BASE = {"precision": "", "framework": "", "optimizations": "", "notes": ""}


@pytest.mark.parametrize("fields, recipe, noted", [
    ({"precision": "MXFP8"}, "mxfp8", False),
    ({"precision": "FP8-blockwise"}, "fp8_blockwise", False),
    ({"precision": "fp8 rowwise (torchao)"}, "fp8_rowwise", False),
    ({"precision": "FP8 current scaling"}, "fp8_tensorwise", False),
    ({"precision": "fp8 (inferred)", "framework": "NeMo / Megatron-Core"}, "fp8_tensorwise", True),
    ({"precision": "fp8 (Transformer Engine)", "framework": "PyTorch"}, "fp8_tensorwise", True),
    ({"precision": "bf16 + Float8 (torchao) for nn.Linear", "framework": "torchtitan"},
     "fp8_tensorwise", True),
    ({"precision": "fp8", "framework": "SomeEngine"}, None, True),
])
def test_fp8_recipe_from_the_engines_words(fields, recipe, noted):
    notes: list[str] = []
    assert rules.apply(rules.FP8_RECIPE, {**BASE, **fields}, notes) == recipe
    assert bool(notes) == noted


def test_fallback_chain():
    assert precision_chain("mxfp8") == ("mxfp8", "fp8", "bf16")
    assert precision_chain("fp8") == ("fp8", "bf16")
    cal = Calibration(gemm_scale=0.5, gemm_scale_fp8=0.7, gemm_scale_fp8_tensorwise=0.8)
    assert cal.gemm_scale_for("bf16") == 0.5
    assert cal.gemm_scale_for("fp8") == 0.7  # no recipe: the generic FP8 factor
    with_recipe = cal.model_copy(update={"fp8_recipe": "fp8_tensorwise"})
    assert with_recipe.gemm_scale_for("fp8") == 0.8
    assert with_recipe.gemm_scale_for("bf16") == 0.5
    assert cal.model_copy(update={"fp8_recipe": "mxfp8"}).gemm_scale_for("fp8") == 0.7
    assert Calibration(gemm_scale=0.5, fp8_recipe="mxfp8").gemm_scale_for("fp8") == 0.5
    assert resolve("mxfp8", {"gemm_scale", "gemm_scale_fp8"}) == "fp8"
    assert resolve("fp8_rowwise", {"gemm_scale"}) == "bf16"


def _cases(*groups: tuple[str, str, int]):
    return [SimpleNamespace(precision=p, source=s) for p, s, n in groups for _ in range(n)]


def test_groups_with_few_runs_or_one_source_fall_back():
    groups = precision_groups(_cases(("bf16", "a", 5), ("fp8_tensorwise", "a", 10),
                                     ("fp8_tensorwise", "b", 2), ("mxfp8", "c", 2)))
    assert groups["fp8_tensorwise"] == (12, 2, "fp8_tensorwise")
    assert groups["mxfp8"] == (2, 1, "bf16")  # and the fp8 pool (2 runs) is too small
    one_source = precision_groups(_cases(("bf16", "a", 4), ("fp8_tensorwise", "a", 14)))
    assert one_source["fp8_tensorwise"][2] == "bf16"
    pooled = _cases(("bf16", "a", 3), ("mxfp8", "a", 2), ("fp8_rowwise", "b", 2))
    assert precision_groups(pooled)["mxfp8"][2] == "fp8"  # 4 runs, 2 sources as FP8
    assert precision_params(pooled) == ["gemm_scale_fp8"]


def test_shipped_calibration_gives_h100_tensorwise_its_own_factor():
    cal = load_cluster("dgx-h100").calibration
    assert cal.gemm_scale_fp8_tensorwise is not None
    assert cal.gemm_scale_mxfp8 is None  # 2 runs, one source: falls back
    recipe = cal.model_copy(update={"fp8_recipe": "fp8_tensorwise"})
    assert recipe.gemm_scale_for("fp8") == cal.gemm_scale_fp8_tensorwise
    assert cal.gemm_scale_for("fp8") == cal.gemm_scale  # no generic FP8 factor fitted
