"""Compare a prediction with a published run on the quantity the source measured.

The compared metric is the first of `METRICS` that the row reports itself (not one the dataset
derived from another figure). FLOP-based metrics (TFLOP/s, MFU, HFU) are predicted with the
source's own FLOP accounting (`ACCOUNTING`) divided by meshplan's step time, so a difference in
FLOP counting never shows up as a speed error.

error = (predicted - measured) / measured on the compared metric (for iteration time a positive
error means meshplan predicts a slower step). throughput_error = (predicted throughput -
measured throughput) / measured throughput on every row, so it has the same sign convention
whatever the metric: positive means meshplan is optimistic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from meshplan.cost.flops import forward_flops, head_flops, megatron_eq3_flops
from meshplan.cost.params import count_params
from meshplan.cost.train.allocator import reported
from meshplan.cost.train.recompute import full_share
from meshplan.estimate import GIB, Estimate
from meshplan.specs.job import Job
from meshplan.specs.plan import PlanArrays
from meshplan.validate.rows import Case
from meshplan.validate.rules import LEGACY_MEGATRON, NOT_MCORE, Rule, first

METRICS = ("iteration_time_s", "tokens_per_sec_per_gpu", "tokens_per_sec_total",
           "samples_per_sec_per_gpu", "tflops_per_gpu", "mfu", "hfu")


@dataclass(frozen=True)
class Comparison:
    metric: str
    measured: float
    predicted: float
    error: float
    throughput_error: float
    measured_tokens_per_s_per_gpu: float
    predicted_tokens_per_s_per_gpu: float
    notes: tuple[str, ...]
    memory: dict[str, Any] | None


def pick_metric(row: dict[str, Any]) -> str | None:
    """The first metric the source reports itself (fields in `derived` were computed)."""
    derived = row["derived"] if isinstance(row["derived"], dict) else {}
    for key in METRICS:
        value = row[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 \
                and key not in derived:
            return key
    return None


# --- FLOPs per step as each source counts them -------------------------------------------

FlopFn = Callable[[Case, bool], tuple[float, str]]
"""(case, hardware) -> (FLOPs per step, note); hardware=True counts recomputation (HFU)."""


def _tokens(case: Case) -> int:
    return case.job.global_batch_size * case.job.seq_len


def _megatron_eq3(case: Case, hardware: bool) -> tuple[float, str]:
    m = case.source_model
    return megatron_eq3_flops(m, case.job.global_batch_size, case.job.seq_len), ""


def _bloom(case: Case, hardware: bool) -> tuple[float, str]:
    n = count_params(case.source_model).total
    return 4 * 2 * n * _tokens(case), ""


def _recomputed(case: Case) -> float:
    """The share of layers fully recomputed (block recompute: `train.recompute.full_share`)."""
    plans = PlanArrays.from_plans([case.plan])
    return float(full_share(plans, case.source_model.num_layers)[0])


def _palm(case: Case, hardware: bool, exclude_embedding: bool = False) -> float:
    """6N + 12 L H Q T per token (PaLM Appendix B; nanoGPT, torchtitan); for HFU a recomputed
    forward adds 2N + 4 L H Q T (full) or the attention core 4 L H Q T (selective)."""
    m = case.source_model
    n = count_params(m).total - (m.vocab_size * m.hidden_size if exclude_embedding else 0)
    attn = 4 * m.num_layers * m.num_attention_heads * m.head_size * case.job.seq_len
    per_token = float(6 * n + 3 * attn)
    if hardware:
        per_token += {"full": _recomputed(case) * (2 * n + attn),
                      "selective": float(attn)}.get(case.plan.recompute, 0.0)
    return per_token * _tokens(case)


def _llmfoundry(case: Case, hardware: bool) -> tuple[float, str]:
    """(3*2*N*seq + 3*L*2*2*h*seq^2) per sequence; HFU uses 4 instead of 3 with checkpointing."""
    m, s = case.source_model, case.job.seq_len
    other = case.row["other_metrics"] if isinstance(case.row["other_metrics"], dict) else {}
    n = other.get("num_params") or count_params(m).total
    k = 3 + (_recomputed(case) if hardware else 0.0)
    per_seq = k * 2 * n * s + k * m.num_layers * 2 * 2 * m.hidden_size * s * s
    return per_seq * case.job.global_batch_size, ""


def _model_flops(case: Case, hardware: bool) -> tuple[float, str]:
    m = case.source_model
    fwd = forward_flops(m, case.job.global_batch_size, case.job.seq_len)
    total = 3 * fwd
    if hardware and case.plan.recompute == "full":
        total += _recomputed(case) * (fwd - head_flops(m, _tokens(case)))
    return float(total), "source FLOP formula not given: meshplan model FLOPs (PaLM) used"


ACCOUNTING: tuple[Rule, ...] = (
    # The source's FLOP formula, read from its `flops_accounting` text (first match wins).
    Rule(_megatron_eq3, "", {"flops_accounting": r"Eq\.?\s*3|96\s*\*?\s*B\s*\*?\s*s"}),
    Rule(_bloom, "", {"flops_accounting": r"4\s*\*\s*2\s*\*\s*N"}),
    Rule(_llmfoundry, "", {"flops_accounting": r"3\s*\*\s*2\s*\*\s*N\s*\*\s*seq"}),
    Rule(lambda c, h: (_palm(c, h, exclude_embedding=True), ""), "",
         {"flops_accounting": r"non-embedding|get_num_flop_per_token"}),
    Rule(lambda c, h: (_palm(c, h), ""), "", {"flops_accounting": r"PaLM|nanoGPT|6\s*\*?\s*N"}),
    Rule(lambda c, h: (_megatron_eq3(c, h)[0], "source FLOP formula not given: Megatron Eq. 3 "
                                              "(the Megatron-LM / Megatron-DeepSpeed 2021-22 "
                                              "convention)"), "",
         {"flops_accounting": r"^$", **LEGACY_MEGATRON}, NOT_MCORE),
)
"""Each source's FLOP accounting, keyed by how the row describes it; otherwise meshplan's
model FLOPs (`_model_flops`)."""
SOURCE_PEAKS = {"A100": 312e12, "H100": 989e12}
"""Dense BF16 peaks the sources divide by (torchtitan's MFU uses the H100 SXM figure even for
its 500 W parts)."""


def _source_peak(case: Case) -> float:
    for name, peak in SOURCE_PEAKS.items():
        if case.gpu.startswith(name):
            return peak
    return case.cluster.accelerator.rated_peak("bf16")


# --- the comparison ----------------------------------------------------------------------

def compare(case: Case, est: Estimate, metric: str) -> Comparison:
    row, g = case.row, case.num_gpus
    measured = float(row[metric])
    tokens = _tokens(case)
    step = est.step_time_s
    notes: list[str] = []
    if metric == "iteration_time_s":
        predicted, meas_step = step, measured
    elif metric == "tokens_per_sec_per_gpu":
        predicted, meas_step = tokens / step / g, tokens / measured / g
    elif metric == "tokens_per_sec_total":
        predicted, meas_step = tokens / step, tokens / measured
    elif metric == "samples_per_sec_per_gpu":
        gbs = case.job.global_batch_size
        predicted, meas_step = gbs / step / g, gbs / measured / g
    else:
        rule = first(ACCOUNTING, row)
        fn: FlopFn = rule.value if rule is not None else _model_flops
        flops, note = fn(case, metric == "hfu")
        if note:
            notes.append(note)
        scale = 1e12 if metric == "tflops_per_gpu" else _source_peak(case)
        predicted = flops / step / g / scale
        meas_step = flops / (measured * scale * g)
        if metric == "tflops_per_gpu" and (tps := row["tokens_per_sec_per_gpu"]):
            ratio = measured * 1e12 / tps / (flops / tokens)
            notes.append(f"source TFLOP/s / tokens/s = {ratio:.3f} x the FLOPs per token used "
                         "here")
    error = (predicted - measured) / measured
    meas_tps, pred_tps = tokens / meas_step / g, tokens / step / g
    return Comparison(metric, measured, predicted, error, pred_tps / meas_tps - 1, meas_tps,
                      pred_tps, tuple(notes), _memory(row, est))


ENGINE_MEMORY: dict[str, dict[str, Any]] = {
    # torchtitan's run_train.sh exports PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True";
    # its loss is F.cross_entropy on the fp32 upcast (torchtitan `cross_entropy_loss`).
    "torchtitan": {"expandable_segments": True, "loss_kernel": "upcast"},
    # llm-foundry's MPT uses `loss_fn: fused_crossentropy` (flash-attn's CrossEntropyLoss).
    "llm-foundry": {"loss_kernel": "fused"},
}
"""Allocator and loss settings of the engines whose defaults differ from meshplan's (matched
in the row's `framework`); a rebuild rule for memory only."""


def memory_job(case: Case) -> Job:
    """The case's job with the engine's allocator and loss settings (`ENGINE_MEMORY`)."""
    framework = str(case.row.get("framework") or "").lower()
    for name, settings in ENGINE_MEMORY.items():
        if name in framework:
            return case.job.model_copy(update=settings)
    return case.job


def reported_kind(row: dict[str, Any]) -> Literal["reserved", "allocated"]:
    """What the row's peak memory is: max allocated if its notes say so, else max reserved
    (torchtitan's and Megatron's memory logs report the reserved peak)."""
    text = " ".join(str(row.get(k) or "") for k in ("notes", "other_metrics")).lower()
    return "allocated" if "allocated" in text else "reserved"


def _memory(row: dict[str, Any], est: Estimate) -> dict[str, Any] | None:
    measured = row["peak_memory_gb"]
    if not isinstance(measured, (int, float)) or measured <= 0:
        return None
    kind = reported_kind(row)
    predicted = reported(est.memory_bytes, kind) / GIB
    return {"measured_gib": float(measured), "predicted_gib": predicted,
            "error": (predicted - measured) / measured, "reported": kind}
