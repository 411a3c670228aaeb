"""Round trip through published runs: each Megatron or torchtitan row of
published_training_runs.json (shipped copy) becomes a model, job and plan; its export, read
back, must carry the row's degrees, virtual stages, micro-batch, global batch and recompute.

Rows whose needed fields are null, or whose layout meshplan cannot represent (uneven pipeline
splits, activations meshplan does not model), skip with the reason, so `pytest -rs` lists them.
The row -> spec builder is private to this test.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meshplan import Job, MeshplanError, Model, Plan
from meshplan.export import export
from meshplan.specs.io import load_model
from meshplan.specs.model import MLA, MoE
from meshplan.specs.plan import PlanArrays
from meshplan.specs.rules import check_plan

# The copy shipped with meshplan (src/meshplan/data), identical to shared/reference's.
RUNS = Path(__file__).resolve().parents[2] / "src/meshplan/data/published_training_runs.json"
ROWS = json.loads(RUNS.read_text())
SELECTED = [r for r in ROWS if "Megatron" in r["framework"] or "torchtitan" in r["framework"]]
NEEDED = ("tp", "pp", "dp", "micro_batch_size", "global_batch_size", "seq_length", "num_layers",
          "hidden_size", "ffn_hidden_size", "num_attention_heads")
PLACEHOLDER_VOCAB = 32000
"""Stands in for a null vocab_size: the vocabulary changes no setting this test reads back."""
MLPS = {"SwiGLU": "swiglu", "SwiGLU experts": "swiglu", "GeLU (4h)": "gelu"}
MLA_NOTE = re.compile(r"MLA \(q_lora (\d+), kv_lora (\d+), qk_head (\d+) \+ rope (\d+), "
                      r"v_head (\d+)\)")


LLAMA31_NUMERICS = {k: getattr(load_model("llama3.1-8b"), k)
                    for k in ("rope_theta", "rope_scaling", "norm_eps")}
"""The torchtitan rows are its own benchmarks of its llama3 flavors, which fix Llama 3.1's RoPE
(base 500,000 with its scaling) and norm epsilon; the rows do not restate them."""


VERSION = {"torchtitan": "0.2.2"}
"""The torchtitan rows are read back from the 0.2.2 TOML."""


def target_of(row: dict[str, Any]) -> str:
    return "torchtitan" if "torchtitan" in row["framework"] else "megatron"


def build_model(row: dict[str, Any]) -> Model:
    notes = row["arch_notes"] or ""
    gated = MLPS[row["mlp_type"]] == "swiglu"
    mla = MLA_NOTE.search(notes)
    head_dim = re.search(r"head dim (\d+)", notes)
    moe = None
    if row["moe_num_experts"]:
        shared = row["moe_shared_expert_ffn"] or 0
        moe = MoE(num_experts=row["moe_num_experts"], top_k=row["moe_top_k"],
                  expert_ffn_hidden_size=row["moe_ffn_hidden_size"],
                  num_shared_experts=1 if shared else 0, shared_expert_ffn_hidden_size=shared,
                  num_dense_layers=row["moe_dense_layers"] or 0)
    return Model(
        name=row["id"], num_layers=row["num_layers"], hidden_size=row["hidden_size"],
        ffn_hidden_size=row["ffn_hidden_size"], mlp_type=MLPS[row["mlp_type"]],
        num_attention_heads=row["num_attention_heads"], num_kv_heads=row["num_kv_heads"],
        head_dim=int(head_dim.group(1)) if head_dim else None,
        vocab_size=row["vocab_size"] or PLACEHOLDER_VOCAB,
        tied_embeddings=not gated, position_embedding="rope" if gated else "learned",
        norm="rmsnorm" if gated else "layernorm", linear_bias=not gated,
        qk_norm="QK-LayerNorm" in notes, moe=moe,
        mla=MLA(**dict(zip(("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                            "qk_rope_head_dim", "v_head_dim"), map(int, mla.groups()),
                       strict=True))) if mla else None,
        **(LLAMA31_NUMERICS if target_of(row) == "torchtitan" else {}))


def precision(row: dict[str, Any]) -> str:
    text = (row["precision"] or "bf16").lower()
    return "fp8" if "fp8" in text or "float8" in text else "fp16" if "16-bit" in text else "bf16"


def recompute(row: dict[str, Any]) -> str | None:
    text = (row["activation_recompute"] or "").lower()
    return next((mode for mode in ("selective", "full") if mode in text), None)


def schedule(row: dict[str, Any]) -> str:
    text = (row["pipeline_schedule"] or "").lower()
    if "zero bubble" in text:
        return "zb-h2" if "2p" in text else "zb-h1"
    return "interleaved-1f1b" if "interleaved" in text or (row["vpp"] or 1) > 1 else "1f1b"


def build_plan(row: dict[str, Any]) -> Plan:
    sharded = row["fsdp"] or "FSDP" in str(row["zero_stage"])
    vpp = row["vpp"] if (row["vpp"] or 1) > 1 else None
    return Plan(tp=row["tp"], pp=row["pp"], dp=row["dp"], cp=row["cp"] or 1, ep=row["ep"] or 1,
                etp=row["expert_tp"], sequence_parallel=row["sequence_parallel"],
                zero_stage=3 if sharded else 1, micro_batch_size=row["micro_batch_size"],
                schedule=schedule(row), vpp=vpp, recompute=recompute(row) or "none",
                tp_comm_overlap="AsyncTP" in (row["optimizations"] or ""))


def build(row: dict[str, Any]) -> tuple[Model, Job, Plan]:
    """The row as specs, or pytest.skip with the reason."""
    missing = [name for name in NEEDED if row[name] is None]
    if missing:
        pytest.skip(f"null {', '.join(missing)}")
    if row["mlp_type"] not in MLPS:
        pytest.skip(f"mlp_type {row['mlp_type']!r} has no meshplan equivalent")
    try:
        model, plan = build_model(row), build_plan(row)
        job = Job(global_batch_size=row["global_batch_size"], seq_len=row["seq_length"],
                  precision=precision(row))  # type: ignore[arg-type]
        check_plan(model, job, plan.num_gpus, PlanArrays.from_plans([plan]))
    except (MeshplanError, ValidationError) as err:
        pytest.skip(f"meshplan cannot represent it: {str(err).splitlines()[0]}")
    return model, job, plan


def megatron_settings(text: str) -> dict[str, Any]:
    start = text.index("pretrain_gpt.py")
    argv = shlex.split(text[start:].replace("\\\n", " "))[1:-1]
    flags = {a: (b if not b.startswith("--") else None) for a, b in zip(argv, [*argv[1:], "--"],
                                                                        strict=True)
             if a.startswith("--")}
    world = int(re.search(r"GPUS_PER_NODE:-(\d+)", text)[1]) * int(  # type: ignore[index]
        re.search(r"NNODES:-(\d+)", text)[1])  # type: ignore[index]
    tp, pp, cp = (int(flags[f"--{n}-parallel-size"]) for n in (
        "tensor-model", "pipeline-model", "context"))
    return {"tp": tp, "pp": pp, "cp": cp, "dp": world // (tp * pp * cp),
            "ep": int(flags.get("--expert-model-parallel-size") or 1),
            "etp": flags.get("--expert-tensor-parallel-size"),
            "vpp": int(flags.get("--num-virtual-stages-per-pipeline-rank") or 1),
            "mbs": int(flags["--micro-batch-size"]), "gbs": int(flags["--global-batch-size"]),
            "recompute": flags.get("--recompute-granularity"),
            "fsdp": "--use-megatron-fsdp" in flags}


def torchtitan_settings(text: str) -> dict[str, Any]:
    cfg = tomllib.loads(text)
    par, train = cfg["parallelism"], cfg["training"]
    pp = par["pipeline_parallel_degree"]
    mbs = par["pipeline_parallel_microbatch_size"] if pp > 1 else train["local_batch_size"]
    mode = cfg["activation_checkpoint"]["mode"]
    return {"tp": par["tensor_parallel_degree"], "pp": pp, "cp": par["context_parallel_degree"],
            "dp": par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"],
            "ep": par["expert_parallel_degree"], "mbs": mbs, "gbs": train["global_batch_size"],
            "recompute": None if mode == "none" else mode,
            "schedule": par.get("pipeline_parallel_schedule"),
            "fsdp": par["data_parallel_shard_degree"] > 1 or par["context_parallel_degree"] > 1,
            "async_tp": par["enable_async_tensor_parallel"]}


def expected(row: dict[str, Any]) -> dict[str, Any]:
    want = {"tp": row["tp"], "pp": row["pp"], "cp": row["cp"] or 1, "dp": row["dp"],
            "ep": row["ep"] or 1, "mbs": row["micro_batch_size"],
            "gbs": row["global_batch_size"]}
    if recompute(row):
        want["recompute"] = recompute(row)
    return want


@pytest.mark.skipif(not SELECTED, reason=f"{RUNS} not found")
def test_rows_were_selected() -> None:
    assert len(SELECTED) >= 50


@pytest.mark.parametrize("row", SELECTED, ids=[r["id"] for r in SELECTED])
def test_export_reproduces_published_layout(row: dict[str, Any]) -> None:
    model, job, plan = build(row)
    target = target_of(row)
    if plan.schedule.startswith("zb"):
        with pytest.raises(MeshplanError, match="^schedule="):
            export(plan, target, model=model, job=job, engine_version=VERSION.get(target))
        return
    text = export(plan, target, model=model, job=job, engine_version=VERSION.get(target))
    got = (megatron_settings if target == "megatron" else torchtitan_settings)(text)
    assert {k: got[k] for k in expected(row)} == expected(row)
    if target == "megatron":
        assert got["vpp"] == (row["vpp"] or 1)
        if row["expert_tp"] is not None:
            assert got["etp"] == str(row["expert_tp"])
        assert got["fsdp"] == bool(row["fsdp"])
    else:
        assert got["fsdp"] and got["async_tp"] == ("AsyncTP" in (row["optimizations"] or ""))
        if row["pipeline_schedule"]:
            assert got["schedule"] == row["pipeline_schedule"].replace(" ", "")


def test_enough_rows_round_trip() -> None:
    """The builder must not skip its way to a green test: most exportable rows must run."""
    ran = 0
    for row in SELECTED:
        try:
            build(row)
        except pytest.skip.Exception:
            continue
        ran += 1
    assert ran >= 15 or not SELECTED, ran
