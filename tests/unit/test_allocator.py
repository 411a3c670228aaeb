"""Memory as the caching allocator sees it (cost.train.allocator): each term against the number
its source gives, the reported (reserved / allocated) figure, and the shipped runs."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.api import estimate
from meshplan.cost.train import allocator as alloc
from meshplan.cost.train.step import MEMORY_TERMS
from meshplan.mesh import Mesh
from meshplan.specs import Job, Plan
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.plan import PlanArrays

MIB = 2**20


def _mesh(**kw: object) -> Mesh:
    return Mesh(PlanArrays.from_plans([Plan(**kw)]))  # type: ignore[arg-type]


def test_loss_transient_at_the_vocabulary_size():
    """Llama 3 8B, 32,768 tokens (torchtitan Table 2): F.cross_entropy on the fp32 upcast holds
    two fp32 gradients of the logits beside the saved log-softmax: 8 bytes x 32768 x 128256."""
    model = load_model("llama3-8b")
    mesh = _mesh(dp=8)
    upcast = Job(global_batch_size=8, seq_len=32768, loss_kernel="upcast")
    got = float(alloc.loss_transient_bytes(model, upcast, mesh)[0])
    assert got == 8 * 32768 * 128256 and got / 2**30 == pytest.approx(31.3, abs=0.05)
    fused = upcast.model_copy(update={"loss_kernel": "fused"})
    assert float(alloc.loss_transient_bytes(model, fused, mesh)[0]) == 0.0
    # Vocabulary-parallel logits are split over tp.
    tp = float(alloc.loss_transient_bytes(model, upcast, _mesh(dp=1, tp=8))[0])
    assert tp == pytest.approx(got / 8)


def test_zero3_buffers_follow_the_engine_defaults():
    job = Job(global_batch_size=64, seq_len=2048)
    layer = np.array(5e9)  # a 530B-class layer: DeepSpeed never gathers it whole
    huge = float(alloc.zero_buffers(job, _mesh(dp=8, zero_stage=3), layer, np.array(0.0))[0])
    assert huge == 2.0 * alloc.ZERO3_MAX_LIVE_PARAMETERS + 4.0 * 5e8
    small = float(alloc.zero_buffers(job, _mesh(dp=8, zero_stage=3), np.array(2e8),
                                     np.array(0.0))[0])
    assert small == 2 * 2.0 * 2e8 + 4.0 * 2e8  # two bf16 layers + one fp32 gradient
    # FSDP with PP keeps the stage unsharded (torchtitan reshard_after_forward = not pp).
    pp = float(alloc.zero_buffers(job, _mesh(dp=8, pp=2, zero_stage=3), np.array(2e8),
                                  np.array(3e9))[0])
    assert pp == (2.0 + 4.0) * 3e9
    ddp = float(alloc.zero_buffers(job, _mesh(dp=8, zero_stage=1), np.array(2e8),
                                   np.array(3e9))[0])
    assert ddp == 2 * 25 * MIB


def test_nccl_buffers_per_communicator():
    assert float(alloc.nccl_bytes(_mesh(dp=1))[0]) == alloc.NCCL_COMMUNICATOR_BYTES
    # world + tp + dp + pp; each 2 x 16 channels x NCCL_BUFFSIZE (4 MiB)
    assert float(alloc.nccl_bytes(_mesh(dp=2, tp=4, pp=2))[0]) == 4 * 2 * 16 * 4 * MIB


def test_reported_reserved_and_allocated():
    mem = {"weights": 10.0, "activations": 20.0, "fragmentation": 3.0, "nccl": 0.5,
           "cuda_context": 1.0, "peak": 34.5}
    assert alloc.reported(mem) == 33.0
    assert alloc.reported(mem, "allocated") == 30.0


def _est(job: Job, cluster: str = "dgx-h100"):
    plan = Plan(dp=8, zero_stage=3, micro_batch_size=1, recompute="full")
    return estimate("llama3-8b", cluster, job, plan, simulate=False)


def test_breakdown_adds_up_and_fragmentation_is_a_share_of_the_step_allocations():
    job = Job(global_batch_size=8, seq_len=8192)
    e = _est(job)
    m = e.memory_bytes
    assert set(m) == {*MEMORY_TERMS, "peak"}
    assert sum(m[k] for k in MEMORY_TERMS) == pytest.approx(m["peak"])
    dynamic = sum(m[k] for k in alloc.DYNAMIC)
    assert m["fragmentation"] == pytest.approx(alloc.FRAGMENTATION_SHARE * dynamic)
    expandable = _est(job.model_copy(update={"expandable_segments": True})).memory_bytes
    assert expandable["fragmentation"] == pytest.approx(alloc.EXPANDABLE_SHARE * dynamic)
    assert expandable["peak"] < m["peak"]
    assert e.fits == (m["peak"] <= e.memory_capacity_bytes)


def test_a_cpu_has_no_allocator_terms():
    cluster = load_cluster("dgx-h100")
    acc = cluster.accelerator.model_copy(update={"name": "cpu-2t", "context_memory_bytes": None})
    cpu = cluster.model_copy(update={"accelerator": acc})
    plan = Plan(dp=8, zero_stage=3, recompute="full")
    e = estimate("llama3-8b", cpu, Job(global_batch_size=8, seq_len=2048), plan,
                 simulate=False)
    assert e.memory_bytes["fragmentation"] == e.memory_bytes["nccl"] == 0.0
    assert e.memory_bytes["workspace"] == 0.0
    assert e.memory_bytes["cuda_context"] == acc.reserved_memory_bytes  # no context field


def test_loss_kernel_and_expandable_segments_flags_reach_the_job() -> None:
    """`--loss-kernel` and `--expandable-segments` set the Job fields the allocator terms read:
    the upcast loss holds the fp32 logits (larger transient), expandable segments shrink the
    fragmentation to EXPANDABLE_SHARE of what FRAGMENTATION_SHARE gives."""
    import json

    from meshplan.cost.train.allocator import EXPANDABLE_SHARE, FRAGMENTATION_SHARE
    from tests.conftest import invoke

    base = ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8",
            "--global-batch-size", "8", "--seq-len", "8192", "--json"]
    code, out, err = invoke(*base)
    assert code == 0, err
    code2, out2, err2 = invoke(*base, "--loss-kernel", "upcast", "--expandable-segments")
    assert code2 == 0, err2
    a, b = json.loads(out), json.loads(out2)
    assert b["inputs"]["job"]["loss_kernel"] == "upcast" and b["inputs"]["job"][
        "expandable_segments"]
    assert b["memory_gib"]["logits"] > a["memory_gib"]["logits"]
    ratio = b["memory_gib"]["fragmentation"] / a["memory_gib"]["fragmentation"]
    assert ratio < EXPANDABLE_SHARE / FRAGMENTATION_SHARE * 1.5  # the logits grew too
    code3, _, err3 = invoke(*base, "--loss-kernel", "bogus")
    assert code3 == 2 and err3.startswith("error: --loss-kernel='bogus'")
