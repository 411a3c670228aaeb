"""Rebuild rules are keyed by what a run says about itself, never by its source: the shipped
runs with every source id, title, location and url replaced by unknown values are rebuilt and
predicted exactly as the shipped ones."""

from __future__ import annotations

import copy

import pytest

from meshplan.validate import build_case, load_runs, rules, validate
from meshplan.validate.rows import Case, Skip


@pytest.fixture(scope="module")
def shipped() -> list[dict]:
    return load_runs()


def _anonymised(rows: list[dict]) -> list[dict]:
    out = copy.deepcopy(rows)
    names = {s: f"unseen_source_{i}" for i, s in enumerate(sorted({r["source_id"] for r in rows}))}
    for r in out:
        r["source_id"] = names[r["source_id"]]
        r["source_title"] = "A table meshplan has never seen"
        r["source_location"] = "Table 1"
        r["source_url"] = "https://example.org/unseen"
    return out


def test_every_row_rebuilt_identically_without_its_source(shipped):
    unseen = _anonymised(shipped)
    for row, anon in zip(shipped, unseen, strict=True):
        a, b = build_case(row), build_case(anon)
        assert type(a) is type(b), row["id"]
        if isinstance(a, Skip):
            assert isinstance(b, Skip) and a.reason == b.reason, row["id"]
            continue
        assert isinstance(b, Case)
        for attr in ("model", "source_model", "cluster", "job", "plan", "num_gpus", "gpu"):
            assert getattr(a, attr) == getattr(b, attr), (row["id"], attr)
        swap = [s.replace(row["source_id"], anon["source_id"]) for s in a.assumptions]
        assert swap == b.assumptions, row["id"]


def test_every_row_predicted_identically_without_its_source(shipped):
    before, after = validate(shipped), validate(_anonymised(shipped))
    assert [s["id"] for s in before["skipped"]] == [s["id"] for s in after["skipped"]]
    assert len(before["rows"]) == len(after["rows"]) > 400
    for a, b in zip(before["rows"], after["rows"], strict=True):
        assert a["id"] == b["id"]
        assert (a["metric"], a["predicted"], a["error"], a["fits"]) == \
            (b["metric"], b["predicted"], b["error"], b["fits"]), a["id"]


@pytest.mark.parametrize(("text", "expected"), [
    # torchtitan --parallelism.pipeline_parallel_schedule names
    ("1F1B", "1f1b"), ("Interleaved1F1B", "interleaved-1f1b"), ("GPipe", "gpipe"),
    ("LoopedBFS", "looped-bfs"), ("ZBVZeroBubble", "zb-v"), ("InterleavedZeroBubble", "zb-h1"),
    ("DualPipeV", "dualpipe-v"),
    # Megatron-LM, DeepSpeed and papers
    ("interleaved 1F1B (virtual pipeline)", "interleaved-1f1b"), ("PipeDream-Flush", "1f1b"),
    ("DeepSpeed pipeline (1F1B)", "1f1b"), ("ZB-H1", "zb-h1"), ("ZB-H2", "zb-h2"),
    ("Zero Bubble, activation memory limit 2p*M_B", "zb-h2"), ("zero bubble", "zb-h1"),
    ("DualPipe (DeepSeek-V3)", "dualpipe-v"),
])
def test_schedule_names_of_the_engines(text, expected):
    assert rules.first(rules.SCHEDULES, {"pipeline_schedule": text}).value == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("--recompute-granularity full --recompute-method uniform", "full"),
    ("--recompute-granularity selective", "selective"),
    ("--recompute-modules moe_act layernorm", "selective"),
    ("recompute mla_up_proj", "selective"),
    ("selective op (torchtitan)", "selective"), ("selective layer, ac_freq 2", "blocks"),
    ("selective (every n blocks)", "blocks"),
    ("DeepSpeed activation checkpointing", "full"), ("--checkpoint-activations", "full"),
    ("FULL", "full"), ("None", "none"), ("off", "none"),
])
def test_recompute_names_of_the_engines(text, expected):
    assert rules.first(rules.RECOMPUTE_NAMES, {"activation_recompute": text}).value == expected


def _row(**fields: object) -> dict:
    base = {"framework": None, "source_version": None, "gpu_type": None, "notes": None,
            "optimizations": None, "activation_recompute": None, "model_name": None,
            "model_family": None}
    return {**base, **fields}


def test_era_from_version_or_hardware():
    assert rules.year(_row(source_version="commit 8e3d65d (2024-09-09)")) == 2024
    assert rules.year(_row(source_version="25.09 NeMo container")) == 2025
    assert rules.year(_row(source_version="commit 641316d743c24de0ebe9a7180a1e84223e916b2e")) \
        is None
    assert rules.era(_row(gpu_type="NVIDIA A100 SXM 80GB")) == "legacy"
    assert rules.era(_row(gpu_type="NVIDIA A100", source_version="Megatron-LM 2023-06")) \
        == "modern"
    assert rules.era(_row(gpu_type="NVIDIA H100 SXM")) == "modern"


def test_engine_defaults_follow_the_engine_not_the_source():
    legacy = _row(framework="Megatron-LM", gpu_type="NVIDIA A100 80GB")
    modern = _row(framework="Megatron-LM", gpu_type="NVIDIA H100 80GB")
    mcore = _row(framework="NeMo 2.0 / Megatron-Core", gpu_type="NVIDIA A100 80GB")
    assert rules.first(rules.SEQUENCE_PARALLEL, legacy).value is False
    assert rules.first(rules.SEQUENCE_PARALLEL, modern).value is True
    assert rules.first(rules.FLASH_ATTENTION, legacy).value is False
    assert rules.first(rules.FLASH_ATTENTION, mcore).value is True
    assert rules.first(rules.ZERO_STAGE, mcore).value == 1
    assert rules.first(rules.ZERO_STAGE, modern).value == 0
    assert rules.first(rules.RECOMPUTE_DEFAULT, legacy).value == "full"
    assert rules.first(rules.RECOMPUTE_DEFAULT, modern).value == "none"
    assert rules.first(rules.MICRO_BATCH, mcore).value == 1
    assert rules.first(rules.MICRO_BATCH, _row(framework="Composer / llm-foundry")) is None


def test_gpt2_vocab_padding_matches_megatron_2021():
    # Narayanan et al. 2021, Table 1 / Eq. 3: V = 51,200 with tp = 8 (50,257 padded to 1,024).
    rule = rules.first(rules.VOCAB, _row(model_family="GPT (dense)", framework="Megatron-LM"))
    assert rule.value(8) == 51200 and rule.value(1) == 50304
    llama3 = _row(model_name="Llama-3.1-70B")
    assert rules.first(rules.VOCAB, llama3).value == 128256
    assert rules.first(rules.VOCAB, _row(model_name="Llama 30B")) is None


def test_plain_gpt_ffn_default_but_not_for_gated_mlps():
    gpt = _row(model_family="GPT (dense, ReLU)", mlp_type="relu")
    assert rules.first(rules.FFN_WIDTH, gpt).value == 4
    assert rules.first(rules.FFN_WIDTH, _row(model_family="GPT", mlp_type="swiglu")) is None
    assert rules.first(rules.FFN_WIDTH, _row(model_family="Llama", mlp_type="swiglu")) is None


def _pp_row(shipped: list[dict]) -> dict:
    return copy.deepcopy(next(r for r in shipped if r["pipeline_schedule"] == "1F1B"
                              and r["framework"] == "torchtitan"))


@pytest.mark.parametrize(("text", "schedule", "vpp"), [
    ("ZBVZeroBubble", "zb-v", 2), ("DualPipeV", "dualpipe-v", 2), ("GPipe", "gpipe", 1),
    ("Interleaved1F1B", "interleaved-1f1b", 2), ("LoopedBFS", "looped-bfs", 2),
])
def test_engine_schedule_names_are_rebuilt_not_skipped(shipped, text, schedule, vpp):
    row = _pp_row(shipped)
    row["pipeline_schedule"] = text
    case = build_case(row)
    assert isinstance(case, Case), case
    assert (case.plan.schedule, case.plan.vpp) == (schedule, vpp)


def test_missing_micro_batch_of_a_megatron_engine_is_one_and_recorded(shipped):
    row = copy.deepcopy(next(r for r in shipped if r["framework"].startswith("NeMo")))
    row["micro_batch_size"] = None
    case = build_case(row)
    assert isinstance(case, Case) and case.plan.micro_batch_size == 1
    assert any("micro-batch not given: 1" in a for a in case.assumptions)
    row["framework"] = "some in-house trainer"
    assert isinstance(build_case(row), Skip)


def test_recompute_named_in_the_optimizations_text(shipped):
    row = copy.deepcopy(next(r for r in shipped if r["framework"].startswith("NeMo")))
    row["optimizations"] = "--recompute-granularity full --recompute-method uniform"
    case = build_case(row)
    assert isinstance(case, Case) and case.plan.recompute == "full"
    assert any("recompute read from the row's text" in a for a in case.assumptions)


@pytest.mark.parametrize(("notes", "expected"), [
    ("recompute moe_act+layernorm on GB200 and H100. MoE benchmarks use force-balanced routing.",
     ("layernorm", "moe_act")),
    ("recompute up_proj+mlp (App. B.2) or mlp+mla_up_proj+moe_act+layernorm (Table 17).",
     ("layernorm", "mla_up_proj", "moe_act", "mlp")),
    ("selective recompute; MoE benchmarks use force-balanced routing", None),
])
def test_recompute_modules_read_from_the_row(notes, expected):
    """Megatron-Core --recompute-modules names (and the MoE report's short forms) in the
    notes; the word "MoE" is no module; alternatives give their union."""
    from meshplan.validate.layout import recompute_modules

    assert recompute_modules(_row(notes=notes), "selective", []) == expected
    assert recompute_modules(_row(notes=notes), "full", []) is None


def test_every_nth_block_is_full_recompute_of_that_share(shipped):
    """The IBM FSDP blog's 13B rows: HFU / MFU = 0.59 / 0.51 = 1 + f/3 gives f = 0.47, one
    block in 2 of the 40 recomputed whole; a stated n wins; without HFU the default, recorded."""
    row = copy.deepcopy(next(r for r in shipped
                             if r["activation_recompute"] == "selective (every n blocks)"
                             and r["hfu"] == 0.59))
    case = build_case(row)
    assert isinstance(case, Case)
    assert (case.plan.recompute, case.plan.recompute_num_layers) == ("full", 20)
    assert any("HFU / MFU = 1.157" in a for a in case.assumptions)
    row["activation_recompute"] = "selective layer, ac_freq 4"
    assert build_case(row).plan.recompute_num_layers == 10
    row["activation_recompute"], row["hfu"] = "selective (every n blocks)", None
    case = build_case(row)
    assert case.plan.recompute_num_layers == 20
    assert any("every 2nd block assumed" in a for a in case.assumptions)
