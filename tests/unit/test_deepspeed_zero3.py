"""DeepSpeed ZeRO-3 before v0.5.5 (`validate.rules.DEEPSPEED_COALESCED_ZERO3`): which runs it
applies to, the parameter tensors it issues collectives for, and what they cost."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost import comm
from meshplan.cost.train import comm as train_comm
from meshplan.cost.train.step import evaluate
from meshplan.mesh import Group, Mesh
from meshplan.specs import Job
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.plan import Plan, PlanArrays
from meshplan.validate.rows import build_case, load_runs
from meshplan.validate.rules import deepspeed_per_parameter_zero3, zero3_tensors_per_layer

A100 = load_cluster("dgx-a100")


def _row(**kw):
    base = {"framework": "DeepSpeed ZeRO-3", "source_version": None, "notes": None,
            "gpu_type": "NVIDIA A100 SXM 80GB"}
    return {**base, **kw}


def test_rule_is_keyed_by_engine_and_version_not_source():
    assert deepspeed_per_parameter_zero3(_row()) is not None  # 2021-22 era, no version
    assert deepspeed_per_parameter_zero3(_row(framework="DeepSpeed v0.3.15")) is not None
    assert deepspeed_per_parameter_zero3(_row(framework="DeepSpeed 0.5.5")) is None
    assert deepspeed_per_parameter_zero3(_row(framework="DeepSpeed 0.14.0")) is None
    assert deepspeed_per_parameter_zero3(_row(source_version="2023-05")) is None
    assert deepspeed_per_parameter_zero3(_row(source_version="2021-04")) is not None
    assert deepspeed_per_parameter_zero3(_row(gpu_type="NVIDIA H100 SXM 80GB")) is None
    assert deepspeed_per_parameter_zero3(_row(framework="PyTorch FSDP")) is None
    assert deepspeed_per_parameter_zero3(_row(framework="llm-foundry (FSDP)")) is None


def test_gpt3_layer_gathers_its_four_weights_and_reduces_all_twelve_tensors():
    # GPT-3 175B (h 12288): biases (<= 4h = 49,152) and LayerNorms stay below the 1e5
    # persistence threshold; QKV, output, fc1, fc2 are gathered; 12 tensors have gradients.
    model = load_model("gpt3-175b")
    assert zero3_tensors_per_layer(model) == (4, 12)
    llama = load_model("llama3-8b")  # RMSNorm, no biases, gated MLP: 5 weights, 2 norms
    assert zero3_tensors_per_layer(llama) == (5, 7)


def test_only_legacy_deepspeed_zero3_rows_change():
    rows = load_runs(None)
    for r in rows:
        case = build_case(r)
        if not hasattr(case, "job"):
            continue
        legacy = case.job.zero3_collectives != (1, 1)
        assert legacy == (r["source_id"] == "megatron2021" and "ZeRO-3" in r["id"]), r["id"]
        assert case.plan.overlap_grad_reduce is not legacy


def test_each_further_collective_pays_the_ring_latency_and_list_api_host_time():
    model = load_model("gpt3-175b")
    plan = Plan(dp=1536, zero_stage=3, micro_batch_size=1, recompute="full",
                overlap_grad_reduce=False)
    plans = PlanArrays.from_plans([plan])
    base = Job(global_batch_size=1536, seq_len=2048)
    split = base.model_copy(update={"zero3_collectives": (4, 12)})
    listed = split.model_copy(update={"zero3_list_collectives": True})
    t0, t1, t2 = (float(evaluate(model, A100, j, plans).step_time[0])
                  for j in (base, split, listed))
    members = Mesh(plans).members(A100, Group.DP_SHARD)
    latency = float(comm.all_gather_time(A100, members, 0.0)[0])
    assert latency == pytest.approx(1535 * 8e-6)  # (n - 1) ring steps of the IB tier
    layers = model.num_layers
    # forward and backward gathers (3 more each) and the backward's 11 more reduce-scatters
    assert t1 - t0 == pytest.approx(layers * (3 + 3 + 11) * latency, rel=0.02)
    host = 1536 * train_comm.PER_RANK_HOST_S
    assert t2 - t1 == pytest.approx(layers * (4 + 4 + 12) * host, rel=0.02)
    assert np.isfinite([t0, t1, t2]).all()
