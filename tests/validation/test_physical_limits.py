"""Physical limits: no prediction runs above the roofline at the run's precision, and the
hardware FLOP rate never exceeds the catalog's measured maximum achievable matmul share (MAMF,
the top of the preset's GEMM efficiency curve), on every shipped run, with calibration scales
at their upper bound, and over a hypothesis-drawn plan space."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplan.api import estimate
from meshplan.errors import MeshplanError
from meshplan.estimate import Estimate
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.plan import Plan
from meshplan.validate import build_case, load_runs
from meshplan.validate.metrics import _source_peak, compare, pick_metric
from meshplan.validate.rows import Case

TOL = 1e-9


def mamf(cluster: Cluster, precision: str) -> float:
    return min(max(cluster.accelerator.gemm_curve(precision).y), 1.0)


def flop_ceiling(cluster: Cluster, precision: str) -> float:
    """The fastest any kernel of the step may run: GEMMs at the precision's MAMF, attention
    at the bf16 MAMF (per GPU, FLOP/s)."""
    acc = cluster.accelerator
    return max(mamf(cluster, precision) * acc.peak(precision),
               mamf(cluster, "bf16") * acc.peak("bf16"))


def check(est: Estimate, cluster: Cluster, precision: str, gpus: int, what: str) -> None:
    rate = est.hardware_flops_per_step / est.step_time_s / gpus
    assert rate <= cluster.accelerator.peak(precision) * (1 + TOL), f"{what}: above roofline"
    assert rate <= flop_ceiling(cluster, precision) * (1 + TOL), f"{what}: above MAMF"
    assert est.mfu <= est.hfu * (1 + TOL), what


def _at_upper_bound(cluster: Cluster) -> Cluster:
    """The cluster with every calibration scale at the largest value a fit may give."""
    cal = cluster.calibration.model_copy(update={"gemm_scale": 1.5, "attention_scale": 1.5})
    return cluster.model_copy(update={"calibration": cal})


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    out = [c for c in map(build_case, load_runs()) if isinstance(c, Case)]
    assert len(out) > 400
    return out


def _estimate(c: Case, cluster: Cluster) -> Estimate:
    return estimate(c.model, cluster, c.job, c.plan, c.num_gpus, simulate=False)


def test_shipped_runs_within_roofline_and_mamf(cases):
    for c in cases:
        est = _estimate(c, c.cluster)
        check(est, c.cluster, c.job.precision, c.num_gpus, c.row["id"])
        metric = pick_metric(c.row)
        if metric in ("tflops_per_gpu", "mfu", "hfu"):  # the source's own FLOP count
            cmp = compare(c, est, metric)
            rate = cmp.predicted * (1e12 if metric == "tflops_per_gpu" else _source_peak(c))
            assert rate <= c.cluster.accelerator.peak(c.job.precision), c.row["id"]


def test_shipped_runs_within_mamf_at_the_largest_calibration(cases):
    # A fitted scale > 1 may lift small GEMMs but no kernel past the measured MAMF.
    for c in cases[::5]:
        cluster = _at_upper_bound(c.cluster)
        check(_estimate(c, cluster), cluster, c.job.precision, c.num_gpus, c.row["id"])


CLUSTERS = ("dgx-a100", "dgx-h100", "dgx-b200", "gb200-nvl72", "mi300x")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster=st.sampled_from(CLUSTERS), model=st.sampled_from(("llama3-8b", "gpt-1.7b")),
       fp8=st.booleans(), tp=st.sampled_from((1, 2, 4, 8)), pp=st.sampled_from((1, 2, 4)),
       dp=st.sampled_from((1, 2, 8)), mbs=st.sampled_from((1, 2, 4)),
       accum=st.sampled_from((1, 4, 16)), seq=st.sampled_from((512, 2048, 8192)),
       recompute=st.sampled_from(("none", "selective", "full")),
       schedule=st.sampled_from(("1f1b", "gpipe", "interleaved-1f1b", "zb-h1", "zb-v")),
       zero=st.sampled_from((0, 1, 3)), sp=st.booleans(), flash=st.booleans(),
       gemm_scale=st.floats(0.2, 1.5), attention_scale=st.floats(0.2, 1.5))
def test_plan_space_within_roofline_and_mamf(cluster, model, fp8, tp, pp, dp, mbs, accum, seq,
                                             recompute, schedule, zero, sp, flash,
                                             gemm_scale, attention_scale):
    c = load_cluster(cluster, None)
    cal = c.calibration.model_copy(update={"gemm_scale": gemm_scale,
                                           "attention_scale": attention_scale})
    c = c.model_copy(update={"calibration": cal})
    precision = "fp8" if fp8 and "fp8" in c.accelerator.peak_flops else "bf16"
    try:
        job = Job(global_batch_size=dp * mbs * accum * pp, seq_len=seq,
                  precision=precision, flash_attention=flash)  # type: ignore[arg-type]
        plan = Plan(dp=dp, tp=tp, pp=pp, micro_batch_size=mbs, recompute=recompute,
                    schedule=schedule if pp > 1 else "1f1b", zero_stage=zero,
                    sequence_parallel=sp and tp > 1)  # type: ignore[arg-type]
        est = estimate(load_model(model), c, job, plan, simulate=False)
    except (MeshplanError, ValueError):
        return  # an illegal combination (e.g. heads not divisible by tp)
    check(est, c, precision, plan.num_gpus, f"{cluster} {model} {plan}")
