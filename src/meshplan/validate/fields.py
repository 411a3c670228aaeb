"""The runs-file schema and typed access to one row's fields (shared by `rows`, `arch` and
`layout`)."""

from __future__ import annotations

import math
from typing import Any

from meshplan.errors import MeshplanError

SCHEMA_KEYS: tuple[str, ...] = (
    # provenance
    "id", "source_id", "source_title", "source_location", "source_url", "source_version",
    # model
    "model_name", "model_family", "params_b", "num_layers", "hidden_size", "ffn_hidden_size",
    "mlp_type", "num_attention_heads", "num_kv_heads", "vocab_size", "seq_length",
    "moe_num_experts", "moe_top_k", "moe_ffn_hidden_size", "moe_shared_expert_ffn",
    "moe_dense_layers", "arch_notes", "arch_source",
    # hardware
    "gpu_type", "gpu_memory_gb", "gpus_per_node", "num_gpus", "intra_node_interconnect",
    "inter_node_interconnect", "system",
    # parallelism / batch
    "tp", "pp", "dp", "cp", "sequence_parallel", "ep", "expert_tp", "vpp", "pipeline_schedule",
    "zero_stage", "fsdp", "micro_batch_size", "global_batch_size", "global_batch_tokens",
    "grad_accum_steps", "activation_recompute", "precision", "framework", "optimizations",
    # measurement
    "tflops_per_gpu", "tflops_definition", "mfu", "hfu", "pct_of_peak_reported",
    "tokens_per_sec_per_gpu", "tokens_per_sec_total", "samples_per_sec_per_gpu",
    "iteration_time_s", "aggregate_pflops", "peak_memory_gb", "other_metrics",
    # accounting
    "flops_accounting", "is_sweep", "notes", "derived",
)
"""The 66 keys every row has (null when the source does not give the value)."""

TEXT_KEYS: tuple[str, ...] = (
    "source_title", "source_location", "source_url", "source_version", "model_name",
    "model_family", "mlp_type", "arch_notes", "arch_source", "gpu_type",
    "intra_node_interconnect", "inter_node_interconnect", "system", "pipeline_schedule",
    "activation_recompute", "precision", "framework", "optimizations", "tflops_definition",
    "flops_accounting", "notes")
"""Keys whose value is text (or null)."""

class Unbuildable(Exception):
    """Internal: this row cannot be rebuilt (becomes a Skip)."""


def int_field(row: dict[str, Any], key: str) -> int | None:
    """An integer field (or null); a wrong type is the user's error, not a skip."""
    v = row[key]
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MeshplanError(f"run {row['id']!r}: {key}={v!r}: must be an integer or null")
    return v


def need(row: dict[str, Any], *keys: str) -> list[int]:
    vals = [int_field(row, k) for k in keys]
    missing = [k for k, v in zip(keys, vals, strict=True) if v is None]
    if missing:
        raise Unbuildable(f"{', '.join(missing)} not given")
    for k, v in zip(keys, vals, strict=True):
        if v <= 0:  # type: ignore[operator]
            raise Unbuildable(f"{k}={v}: must be positive")
    return vals  # type: ignore[return-value]


def text_field(row: dict[str, Any], key: str) -> str:
    v = row[key]
    return v if isinstance(v, str) else ""


MEASURED = ("tflops_per_gpu", "mfu", "hfu", "pct_of_peak_reported", "tokens_per_sec_per_gpu",
            "tokens_per_sec_total", "samples_per_sec_per_gpu", "iteration_time_s",
            "aggregate_pflops", "peak_memory_gb")
"""The measured figures a row may give; each must be positive, the fractions at most 1."""
FRACTIONS = ("mfu", "hfu", "pct_of_peak_reported")


def check_figures(row: dict[str, Any]) -> None:
    """Raise Unbuildable for a row with a non-finite number anywhere, or a measured figure
    that is not positive (or, for a fraction of peak, above 1)."""
    for key in SCHEMA_KEYS:
        v = row[key]
        if isinstance(v, float) and not math.isfinite(v):
            raise Unbuildable(f"{key}: not a finite number")
    for key in MEASURED:
        v = row[key]
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise MeshplanError(f"run {row['id']!r}: {key}={v!r}: must be a number or null")
        if v <= 0 or (key in FRACTIONS and v > 1):
            allowed = "a fraction in (0, 1]" if key in FRACTIONS else "positive"
            raise Unbuildable(f"{key}={v!r}: impossible measurement, must be {allowed}")
