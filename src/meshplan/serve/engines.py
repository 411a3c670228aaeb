"""Engine profiles: each engine's scheduler knobs with their real defaults, how its memory
fraction is meant, and its host overhead per iteration, as data (`presets/engines/*.toml`)."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from meshplan.errors import MeshplanError, from_validation_error, unknown_name
from meshplan.specs._base import Spec
from meshplan.specs.cluster import Accelerator
from meshplan.specs.io import PRESETS

ENGINES_DIR = PRESETS / "engines"
SERVING_CALIBRATION = PRESETS / "serving_calibration.toml"
"""Overheads fitted by `meshplan serve calibrate` on published serving runs, one table per
engine profile, merged over the profile's own values."""
FITTED_KEYS = ("iteration_overhead_s", "iteration_overhead_eager_s", "block_overhead_s")
MIB = 2**20


class MemoryTier(Spec):
    """Defaults for GPUs with less than `below_gib` of memory (SGLang's
    `ServerArgs._handle_gpu_memory_settings`: larger GPUs get larger chunks and graphs)."""

    below_gib: float = Field(gt=0)
    max_num_batched_tokens: int = Field(gt=0)
    cuda_graph_max_bs: int = Field(gt=0)
    cuda_graph_max_bs_tp4: int = Field(gt=0)
    """For tp >= 4."""


class ReservedMemoryRule(Spec):
    """SGLang's default `mem_fraction_static` = (GPU memory - reserved) / GPU memory, with
    reserved (MiB) = base + per_chunk_token x max(chunked_prefill_size, 2048)
    + per_graph_bs x cuda_graph_max_bs + per_tp x tp, at least `min_large_mib` on GPUs above
    `large_gpu_gib`, rounded to 3 decimals (`ServerArgs._handle_gpu_memory_settings`)."""

    base_mib: float = Field(ge=0)
    per_chunk_token_mib: float = Field(ge=0)
    min_chunk_tokens: int = Field(ge=0)
    per_graph_bs_mib: float = Field(ge=0)
    per_tp_mib: float = Field(ge=0)
    large_gpu_gib: float = Field(gt=0)
    min_large_mib: float = Field(ge=0)


class SGLangKnobs(Spec):
    """SGLang's prefill admission and retraction constants (`server_args.py`, `environ.py`)."""

    max_prefill_tokens: int = Field(gt=0)
    schedule_policy: Literal["fcfs"]
    init_new_token_ratio: float = Field(gt=0, le=1)
    min_new_token_ratio_factor: float = Field(gt=0, le=1)
    new_token_ratio_decay_steps: int = Field(gt=0)
    clip_max_new_tokens: int = Field(gt=0)
    retract_decode_steps: int = Field(gt=0)
    request_pool_per_context: float = Field(gt=0)
    """max_running_requests by default: min(KV tokens / 2, the request pool), the pool
    being KV tokens / context length x this, clamped to [request_pool_min, max_num_seqs]
    (`ModelRunner` `max_num_reqs`, `TpModelWorker` `max_running_requests`)."""
    request_pool_min: int = Field(gt=0)


class EngineProfile(Spec):
    """An engine's defaults (one file per engine)."""

    name: str
    scheduler: Literal["vllm", "vllm-v0", "sglang", "trtllm", "static"]
    """Which scheduler in `meshplan.serve.schedulers` runs its iterations."""
    max_num_seqs: int = Field(gt=0)
    max_num_batched_tokens: int = Field(gt=0)
    large_gpu_memory_gib: float | None = Field(default=None, gt=0)
    """GPUs with at least this much memory get the large-GPU defaults below."""
    large_gpu_max_num_seqs: int | None = Field(default=None, gt=0)
    large_gpu_max_num_batched_tokens: int | None = Field(default=None, gt=0)
    large_gpu_excluded: tuple[str, ...] = Field(default=(), strict=False)
    """Accelerator name fragments that keep the small-GPU defaults whatever their memory."""
    memory_tiers: tuple[MemoryTier, ...] = Field(default=(), strict=False)
    """Per-memory defaults of max_num_batched_tokens and cuda_graph_max_bs (ascending
    `below_gib`; the last applies above them all)."""
    block_size: int = Field(gt=0)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """None: derived from `reserved_memory_rule`."""
    memory_fraction_of: Literal["hbm", "free", "weights_and_kv"]
    """What the fraction is a share of: `hbm`, all of it, weights, activations and KV cache
    inside (vLLM's gpu_memory_utilization); `free`, the memory left after weights and
    activations, all of it KV cache (TensorRT-LLM's free_gpu_memory_fraction); or
    `weights_and_kv`, the weights plus the KV pool, activations outside (SGLang's
    mem_fraction_static)."""
    reserved_memory_rule: ReservedMemoryRule | None = None
    enable_chunked_prefill: bool
    enable_prefix_caching: bool
    preemption: Literal["recompute", "swap"]
    """What a preempted request loses: its KV (recomputed when it resumes) or nothing (its
    KV swapped to host memory and back; the transfer is not timed yet)."""
    iteration_overhead_s: float = Field(ge=0)
    """Host time per iteration with CUDA graphs."""
    iteration_overhead_eager_s: float = Field(ge=0)
    block_overhead_s: float = Field(default=3e-5, ge=0, le=1e-2)
    """Fixed GPU time per block (attention, MLP, LM head) per iteration: kernel launches and
    the small kernels between GEMMs (replaces the cluster's training `kernel_overhead`)."""
    cuda_graphs: bool
    fit_group: str | None = None
    """The table of `serving_calibration.toml` whose fitted overheads this profile reads
    (None: its own name): versions of one engine with other scheduling policies share their
    host stack's overheads."""
    fitted_from: str = ""
    """Where the fitted overheads came from (`presets/serving_calibration.toml`), "" if none."""
    cuda_graph_max_bs: int | None = Field(default=None, gt=0)
    """Largest decode batch captured in a graph (tiers override it)."""
    cuda_graph_prefill: bool = False
    """Whether the graphs also capture steps with prompt tokens, up to cuda_graph_max_bs
    tokens (vLLM V1's piecewise graphs are keyed by the step's token count,
    `GPUModelRunner.execute_model` padding it to a capture size). Elsewhere graphs are
    decode-only — V0's `CUDAGraphRunner` (`_use_captured_graph(..., decode_only)`), SGLang's
    `CudaGraphRunner` (decode forward mode), TensorRT-LLM's PyTorch backend (generation-only
    batches) — so a step with a prompt pays the eager host overhead, and vLLM 0.6's multi-step
    runs it as a single step (multi-step issue vllm#7528, "force single step"). Also true
    where no Python launches kernels at all (a TensorRT engine, `trtllm-engine`); unset
    cuda_graph_max_bs then means any size."""
    limits_per_attention_rank: bool = False
    """Whether max_num_seqs and the token budget bind each data-parallel attention rank (the
    instance admitting dp_attention times as much): true where every rank runs its own
    scheduler with the engine's arguments."""
    sglang: SGLangKnobs | None = None

    def _tier(self, accelerator: Accelerator) -> MemoryTier | None:
        gib = accelerator.memory_bytes / 2**30
        for tier in self.memory_tiers:
            if gib < tier.below_gib:
                return tier
        return self.memory_tiers[-1] if self.memory_tiers else None

    def batch_defaults(self, accelerator: Accelerator) -> tuple[int, int]:
        """(max_num_seqs, max_num_batched_tokens) the engine starts with on `accelerator`."""
        tier = self._tier(accelerator)
        if tier is not None:
            return self.max_num_seqs, tier.max_num_batched_tokens
        if self.large_gpu_memory_gib is not None and accelerator.memory_bytes \
                >= self.large_gpu_memory_gib * 2**30 and not any(
                x.lower() in accelerator.name.lower() for x in self.large_gpu_excluded):
            return (self.large_gpu_max_num_seqs or self.max_num_seqs,
                    self.large_gpu_max_num_batched_tokens or self.max_num_batched_tokens)
        return self.max_num_seqs, self.max_num_batched_tokens

    def graph_max_bs(self, accelerator: Accelerator, tp: int) -> int | None:
        tier = self._tier(accelerator)
        if tier is not None:
            return tier.cuda_graph_max_bs_tp4 if tp >= 4 else tier.cuda_graph_max_bs
        return self.cuda_graph_max_bs

    def memory_fraction(self, accelerator: Accelerator, tp: int, batched_tokens: int) -> float:
        """The engine's default memory fraction on `accelerator` at this layout and chunk."""
        rule = self.reserved_memory_rule
        if rule is None:
            assert self.gpu_memory_utilization is not None, "validated at load"
            return self.gpu_memory_utilization
        mem = accelerator.memory_bytes / MIB
        reserved = rule.base_mib + rule.per_chunk_token_mib * max(batched_tokens,
                                                                  rule.min_chunk_tokens)
        reserved += rule.per_graph_bs_mib * (self.graph_max_bs(accelerator, tp) or 0)
        reserved += rule.per_tp_mib * tp
        if mem > rule.large_gpu_gib * 1024:
            reserved = max(reserved, rule.min_large_mib)
        return min(max(round((mem - reserved) / mem, 3), 0.01), 1.0)


@cache
def engine_names() -> list[str]:
    """The shipped engine profiles (files of the installed package: read once)."""
    return sorted(p.stem for p in ENGINES_DIR.glob("*.toml"))


def fitted_overheads(path: Path = SERVING_CALIBRATION) -> dict[str, dict[str, Any]]:
    """The fitted tables of a serving calibration file ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise MeshplanError(f"{path}: not a TOML file ({err})") from None
    for name, table in data.items():
        unknown = set(table) - set(FITTED_KEYS) - {"source"} if isinstance(table, dict) else {""}
        if unknown:
            raise MeshplanError(f"{path}: [{name}] must hold only {', '.join(FITTED_KEYS)}")
    return data


def load_engine(name: str, calibration: Path | None = SERVING_CALIBRATION) -> EngineProfile:
    """An engine profile, with the fitted overheads of `calibration` (None: the profile's
    own first guesses). Read once per calibration file version (profiles are frozen):
    every deployment a search or a validation resolves asks for one."""
    if name not in engine_names():
        raise unknown_name("engine", name, engine_names())
    stamp = calibration.stat().st_mtime_ns if calibration and calibration.is_file() else 0
    return _load_engine(name, calibration, stamp)


@cache
def _load_engine(name: str, calibration: Path | None, stamp: int) -> EngineProfile:
    data = tomllib.loads((ENGINES_DIR / f"{name}.toml").read_text())
    group = data.get("fit_group") or name
    fitted = fitted_overheads(calibration).get(group, {}) if calibration else {}
    data.update({k: v for k, v in fitted.items() if k in FITTED_KEYS})
    if fitted:
        data["fitted_from"] = str(fitted.get("source", calibration))
    try:
        profile = EngineProfile.model_validate(data)
    except ValidationError as err:  # a shipped file: a bug, but say where
        raise from_validation_error(err, f"engine profile {name}") from None
    assert (profile.gpu_memory_utilization is None) != (profile.reserved_memory_rule is None), \
        f"engine profile {name}: give gpu_memory_utilization or reserved_memory_rule"
    assert (profile.scheduler == "sglang") == (profile.sglang is not None), name
    return profile
