"""FSDP runs rebuilt with the traffic their engine sends: fms-fsdp reduce-scatters bf16
gradients (its bfSixteen policy), by a rule keyed on the framework, never the source id."""

from __future__ import annotations

import copy

from meshplan.validate import build_case, load_runs


def _fsdp_rows(pattern: str) -> list[dict]:
    return [r for r in load_runs() if pattern in (r["framework"] or "")]


def test_fms_fsdp_reduces_in_bf16_whatever_the_source():
    rows = _fsdp_rows("fms-fsdp")
    assert rows
    for row in rows:
        unseen = copy.deepcopy(row)
        unseen.update(source_id="a_source_never_seen", id="x")
        for r in (row, unseen):
            case = build_case(r)
            assert case.job.grad_bytes == 2, r["id"]
            assert any("bfSixteen" in a for a in case.assumptions), r["id"]


def test_other_fsdp_engines_keep_fp32_reduction():
    """torchtitan and Composer reduce in fp32 unless the run says otherwise."""
    rows = [r for r in _fsdp_rows("torchtitan") + _fsdp_rows("llm-foundry")
            if "PURE" not in (r["optimizations"] or "")]
    assert rows
    for row in rows:
        case = build_case(row)
        assert getattr(case, "job", None) is None or case.job.grad_bytes == 4, row["id"]
