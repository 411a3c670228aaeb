"""Full recompute of only some layers (Megatron-LM --recompute-method block
--recompute-num-layers N): the share recomputed, what it keeps, what it redoes, its HFU."""

from __future__ import annotations

import pydantic
import pytest

from meshplan.cost import flops as F
from meshplan.cost.kernels import Kernels
from meshplan.cost.train import memory, passes
from meshplan.cost.train.recompute import full_share
from meshplan.cost.train.step import evaluate
from meshplan.mesh import Mesh
from meshplan.specs import Job, Plan
from meshplan.specs.io import load_cluster, load_model
from tests.conftest import arrays, scalar

S = 4096


@pytest.fixture(scope="module")
def llama():
    return load_model("llama3-8b")  # 32 layers


def _job():
    return Job(global_batch_size=64, seq_len=S, flash_attention=True)


@pytest.mark.parametrize(("plan", "share"), [
    ({"pp": 4, "recompute": "full", "recompute_num_layers": 2}, 2 / 8),   # 8 layers a stage
    ({"pp": 4, "schedule": "interleaved-1f1b", "vpp": 2, "recompute": "full",
      "recompute_num_layers": 2}, 2 / 4),                                  # 4 a chunk
    ({"pp": 4, "recompute": "full", "recompute_num_layers": 20}, 1.0),     # capped at a stage
    ({"pp": 4, "recompute": "full"}, 1.0),
    ({"pp": 4, "recompute": "selective"}, 0.0),
])
def test_share_is_first_n_layers_of_each_chunk(llama, plan, share):
    assert scalar(full_share(arrays(**plan), llama.num_layers)) == pytest.approx(share)


def test_recomputed_layers_keep_only_their_input(llama):
    """A quarter of the layers keep the layer input (2 bytes x h per token, bf16, no TP), the
    other three quarters everything they keep without recompute."""
    job = _job()

    def act(**plan):
        return scalar(memory.layer_activation_bytes(llama, job, Mesh(arrays(pp=4, **plan)),
                                                    moe=False))
    assert act(recompute="full") == pytest.approx(2.0 * S * llama.hidden_size)
    block = act(recompute="full", recompute_num_layers=2)
    assert block == pytest.approx(0.25 * 2.0 * S * llama.hidden_size
                                  + 0.75 * act(recompute="none"))


def test_recompute_time_is_the_share_of_the_forward(llama):
    job = _job()
    K = Kernels(load_cluster("dgx-h100"), job.precision)
    mesh = Mesh(arrays(pp=4, recompute="full", recompute_num_layers=2))
    mlp = passes.mlp_times(llama, job, K, mesh, moe=False)
    attn = passes.attention_times(llama, job, K, mesh)
    assert scalar(mlp.recompute) == pytest.approx(0.25 * scalar(mlp.forward))
    assert scalar(attn.recompute) == pytest.approx(0.25 * scalar(attn.forward))


def test_hfu_counts_only_the_recomputed_layers(llama):
    """Hardware FLOPs = model FLOPs + the share x the full recompute's extra forward; under
    6N accounting HFU / MFU = 1 + f / 3 (IBM FSDP blog: 0.64 / 0.47 with full recompute)."""
    job = _job()
    cluster = load_cluster("dgx-h100")
    full = evaluate(llama, cluster, job, arrays(pp=4, dp=2, recompute="full"))
    none = evaluate(llama, cluster, job, arrays(pp=4, dp=2))
    half = evaluate(llama, cluster, job, arrays(pp=4, dp=2, recompute="full",
                                                recompute_num_layers=4))
    extra = scalar(full.hardware_flops) - scalar(none.hardware_flops)
    assert scalar(half.hardware_flops) - scalar(none.hardware_flops) == pytest.approx(extra / 2)
    assert extra == pytest.approx(scalar(F.recompute_flops_per_step(
        llama, 64, S, full.stages.unit.forward * 0 + 2, causal=True)))
    assert scalar(none.step_time) < scalar(half.step_time) < scalar(full.step_time)
    assert scalar(full.memory["activations"]) < scalar(half.memory["activations"]) \
        < scalar(none.memory["activations"])


def test_only_with_full_recompute():
    with pytest.raises(pydantic.ValidationError, match="needs recompute='full'"):
        Plan(recompute="selective", recompute_num_layers=2)
    with pytest.raises(pydantic.ValidationError):
        Plan(recompute="full", recompute_num_layers=0)
    plan = Plan(pp=2, recompute="full", recompute_num_layers=3)
    assert "rc=full(3/chunk)" in plan.describe()
    assert arrays(**plan.model_dump()).plan(0) == plan


def test_exports_write_the_block_method():
    from meshplan import MeshplanError
    from meshplan.export import export
    job = Job(global_batch_size=64, seq_len=8192)
    plan = Plan(pp=2, dp=4, zero_stage=3, recompute="full", recompute_num_layers=4)
    script = export(plan.model_copy(update={"zero_stage": 1}), "megatron", model="llama3-8b",
                    job=job, cluster="dgx-h100")
    assert "--recompute-method block" in script and "--recompute-num-layers 4" in script
    # N at or above a stage's 16 layers is every layer: Megatron-Core refuses N above the layers
    # per pipeline rank, so the export writes the every-layer form
    every = export(plan.model_copy(update={"zero_stage": 1, "recompute_num_layers": 40}),
                   "megatron", model="llama3-8b", job=job, cluster="dgx-h100")
    assert "--recompute-method uniform" in every and "--recompute-num-layers 1" in every
    assert "--recompute-num-layers 40" not in every
    toml = export(plan, "torchtitan", model="llama3.1-8b", job=job, cluster="dgx-h100",
                  engine_version="0.2.2")
    assert 'selective_ac_option = "4"' in toml  # 16 layers a stage, one in 4 recomputed
    odd = plan.model_copy(update={"recompute_num_layers": 3})
    with pytest.raises(MeshplanError, match="recompute_num_layers.*every k-th block"):
        export(odd, "torchtitan", model="llama3.1-8b", job=job, cluster="dgx-h100",
               engine_version="0.2.2")
    with pytest.raises(MeshplanError, match="recompute_num_layers"):
        export(plan, "torchtitan", model="llama3.1-8b", job=job, cluster="dgx-h100",
               engine_version="0.3.0")
