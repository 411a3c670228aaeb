"""Cluster: accelerator, nodes and network tiers, with efficiency curves kept as data.

Efficiency figures live here (and in the preset files), never inside formulas, so that
calibration changes data, not code (DESIGN.md, Conventions).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from meshplan.errors import MeshplanError
from meshplan.specs._base import Spec

MAX_PEAK_FLOPS = 1e18
"""Upper bound of any peak FLOP/s: 100x the best dense peak of today's accelerators (GB200,
FP4 10 PFLOP/s, hardware_catalog.yaml). A figure above it is a typo or a unit slip."""
MAX_BANDWIDTH = 1e15
"""Upper bound of any bandwidth, bytes/s: 100x the fastest memory today (B200 / MI355X HBM3e,
8 TB/s, hardware_catalog.yaml); network and host links are slower still."""
MAX_MEMORY_BYTES = 3e13
"""Upper bound of any memory size: about 100x the largest HBM today (288 GB, MI355X / B300)."""
MIN_EFFICIENCY = 1e-4
"""Lower bound of any efficiency (achieved / peak): below 0.01 % is a unit slip, and times
divided by it stay finite. Rates (FLOP/s, bytes/s, parameters/s) are at least 1 per second."""
MAX_LATENCY_S = 1.0
"""Upper bound of a per-step latency or per-layer overhead: today's are microseconds."""


class Curve(Spec):
    """A piecewise-linear curve in log10(x), clamped at both ends.

    Used for GEMM efficiency against the FLOPs of one GEMM and for collective bus-bandwidth
    efficiency against the message size in bytes.
    """

    x: tuple[float, ...] = Field(min_length=1, strict=False)
    y: tuple[float, ...] = Field(min_length=1, strict=False)

    @model_validator(mode="after")
    def _check(self) -> Curve:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} points but y has {len(self.y)}")
        if any(b <= a for a, b in zip(self.x, self.x[1:], strict=False)) or min(self.x) <= 0:
            raise ValueError(f"x must be positive and strictly increasing, got {self.x}")
        if any(not MIN_EFFICIENCY <= v <= 1.5 for v in self.y):
            raise ValueError(f"efficiencies must be in [{MIN_EFFICIENCY:g}, 1.5], got {self.y}")
        return self

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        """Interpolate at x (scalar or array); returns an array."""
        logx = np.log10(np.maximum(np.asarray(x, dtype=float), 1e-30))
        return np.interp(logx, np.log10(self.x), self.y)

    @classmethod
    def constant(cls, value: float) -> Curve:
        return cls(x=(1.0,), y=(value,))


class BusCurve(Curve):
    """A network tier's nccl-tests busbw / bandwidth against the message size in bytes, with
    the ring it was measured on."""

    ranks: int | None = Field(default=None, gt=1)
    """Ranks of the ring sweep the curve comes from, or None (no rescaling). Each step of a
    ring all-gather / reduce-scatter over n ranks moves one rank's share, S / n (NCCL
    src/device/all_gather.h runRing), so `comm` reads such a ring at the size that gives the
    same per-step share on the measured ring: S x ranks / n."""


class Accelerator(Spec):
    """One GPU (or other accelerator): peaks and achievable fractions."""

    name: str
    peak_flops: dict[str, float]
    """Dense peak FLOP/s per precision (bf16, fp16, fp8, fp32)."""
    memory_bytes: float = Field(gt=0, le=MAX_MEMORY_BYTES)
    """HBM capacity."""
    memory_bandwidth: float = Field(ge=1, le=MAX_BANDWIDTH)
    """Peak HBM bandwidth, bytes/s."""
    gemm_efficiency: Curve
    """Achieved / peak for one GEMM, against that GEMM's FLOPs."""
    fp8_gemm_efficiency: Curve | None = None
    """Same for FP8 GEMMs (defaults to `gemm_efficiency`)."""
    attention_efficiency: float = Field(ge=MIN_EFFICIENCY, le=1)
    """Fused (flash) attention forward kernel: achieved / peak of the compute dtype."""
    attention_backward_efficiency: float = Field(ge=MIN_EFFICIENCY, le=1)
    memory_efficiency: float = Field(ge=MIN_EFFICIENCY, le=1)
    """Achieved / peak HBM bandwidth for element-wise kernels."""
    reserved_memory_bytes: float = Field(ge=0, le=MAX_MEMORY_BYTES)
    """Memory lost outside the model: in serving, the CUDA context, allocator fragmentation
    and workspaces; in training, the CUDA context unless `context_memory_bytes` is given (on a
    CPU: the baseline resident set)."""
    context_memory_bytes: float | None = Field(default=None, ge=0, le=MAX_MEMORY_BYTES)
    """Training: the CUDA context and loaded kernel modules alone, outside PyTorch's caching
    allocator and NCCL (their terms: `cost.train.allocator`); None: reserved_memory_bytes."""
    caching_allocator: bool | None = None
    """Memory goes through PyTorch's CUDA caching allocator and NCCL (fragmentation, cuBLAS
    workspaces and NCCL buffers count); None: True unless the name starts with "cpu"."""
    silicon: str | None = None
    """The silicon (die and operating point) whose fitted factors this accelerator uses: the
    table of a calibration file it reads (`calibration_key`). Accelerators on the same die
    whose peaks are quoted at their own clocks share one (H200 with H100, B200 with GB200);
    None: the accelerator's `name` is the key."""
    tdp_w: float | None = Field(default=None, gt=0, le=1e5)
    """Rated board power (W) at which `peak_flops` are quoted; None: not stated (a power
    limit then cannot be applied)."""
    power_limit_w: float | None = Field(default=None, gt=0, le=1e5)
    """Enforced board power limit (W), e.g. `nvidia-smi -pl`; below `tdp_w` the sustained
    compute clock, hence every compute peak, drops by `specs.power.clock_fraction` (HBM
    bandwidth does not). None: runs at its rating."""

    @property
    def clock_fraction(self) -> float:
        """Sustained compute clock over the clock the peaks are quoted at (power limit)."""
        if self.power_limit_w is None or self.tdp_w is None:
            return 1.0
        from meshplan.specs.power import clock_fraction

        return clock_fraction(self.power_limit_w / self.tdp_w)

    @property
    def training_context_bytes(self) -> float:
        return self.reserved_memory_bytes if self.context_memory_bytes is None \
            else self.context_memory_bytes

    @property
    def uses_caching_allocator(self) -> bool:
        if self.caching_allocator is not None:
            return self.caching_allocator
        return not self.name.startswith("cpu")

    @property
    def calibration_key(self) -> str:
        """The calibration-file table this accelerator's fitted factors come from."""
        return self.silicon or self.name

    @field_validator("peak_flops")
    @classmethod
    def _peaks(cls, peaks: dict[str, float]) -> dict[str, float]:
        for precision, value in peaks.items():
            if not 1 <= value <= MAX_PEAK_FLOPS:
                raise ValueError(f"{precision}={value!r}: must be in [1, {MAX_PEAK_FLOPS:g}] "
                                 "FLOP/s")
        return peaks

    @model_validator(mode="after")
    def _check(self) -> Accelerator:
        if "bf16" not in self.peak_flops and "fp16" not in self.peak_flops:
            raise ValueError("peak_flops needs at least bf16 or fp16")
        if self.power_limit_w is not None and self.tdp_w is None:
            raise ValueError("power_limit_w needs tdp_w (the board power the peaks are quoted "
                             "at) to derate the peaks")
        return self

    def rated_peak(self, precision: str) -> float:
        """Peak FLOP/s for a compute precision as quoted at the rating (`peak_flops`): the
        denominator of MFU / HFU, as the sources and engines report them; bf16 and fp16 stand
        in for each other."""
        if precision in self.peak_flops:
            return self.peak_flops[precision]
        if precision in ("bf16", "fp16"):
            return self.peak_flops.get("bf16") or self.peak_flops["fp16"]
        raise MeshplanError(f"precision={precision!r}: accelerator {self.name} has no "
                            f"{precision} peak; its peaks: {', '.join(self.peak_flops)}")

    def peak(self, precision: str) -> float:
        """What the kernels run against: the rated peak at the sustained clock
        (`clock_fraction`, below 1 under a power limit)."""
        return self.rated_peak(precision) * self.clock_fraction

    def gemm_curve(self, precision: str) -> Curve:
        if precision == "fp8" and self.fp8_gemm_efficiency is not None:
            return self.fp8_gemm_efficiency
        return self.gemm_efficiency


class NetworkTier(Spec):
    """One level of the network: every GPU inside a domain of `domain_size` GPUs reaches the
    others at `bandwidth` (per GPU, one direction)."""

    name: str
    domain_size: int = Field(gt=0)
    """GPUs in one domain of this tier (8 for an NVLink node, 72 for NVL72, the whole
    cluster for the scale-out fabric)."""
    bandwidth: float = Field(ge=1, le=MAX_BANDWIDTH)
    """Per-GPU unidirectional bandwidth, bytes/s (compare with nccl-tests busbw)."""
    latency: float = Field(ge=0, le=MAX_LATENCY_S)
    """Per-step latency of a collective (alpha term), seconds."""
    bus_efficiency: BusCurve
    """nccl-tests busbw / `bandwidth`, against the message size in bytes."""
    all_reduce_boost: float = Field(default=1.0, ge=MIN_EFFICIENCY, le=10)
    """Extra all-reduce busbw from in-network reduction (NVLS / SHARP), as a factor."""
    oversubscription: float = Field(default=1.0, ge=1.0, le=1e4)
    """Fabric oversubscription: bandwidth is divided by this factor."""


class HostLink(Spec):
    """Host memory and the GPU-host link, for optimizer offload."""

    bandwidth: float = Field(ge=1, le=MAX_BANDWIDTH)
    """Per-GPU host link bandwidth, one direction, bytes/s (PCIe or C2C)."""
    cpu_adam_params_per_s: float = Field(ge=1, le=MAX_PEAK_FLOPS)
    """Parameters per second that the CPU Adam step of one GPU's shard processes."""
    memory_bytes: float = Field(gt=0, le=MAX_MEMORY_BYTES)
    """Host memory per GPU."""


class Overlap(Spec):
    """How much communication the engine hides behind compute, as fractions in [0, 1].

    These are software behaviour (Megatron-LM/FSDP defaults), kept as data (the `[overlap]`
    table of every cluster file, required) so that `meshplan calibrate` can fit them.
    """

    tp_backward: float = Field(ge=0, le=1)
    """Backward TP collectives hidden behind weight-gradient GEMMs (Megatron's async
    all-reduce of the input gradient)."""
    tp_overlapped: float = Field(ge=0, le=1)
    """TP collectives hidden when the plan turns on tp_comm_overlap (userbuffers / async TP)."""
    dp: float = Field(ge=0, le=1)
    """Share of the overlap window (backward of the last micro-batch, or each micro-batch's
    compute for ZeRO-3) in which data-parallel traffic can run."""
    pp: float = Field(ge=0, le=1)
    """Pipeline send/receive hidden behind compute (Megatron 1F1B exchanges synchronously)."""
    cp: float = Field(ge=0, le=1)
    """Ring-attention K/V exchange hidden behind the attention kernel."""
    ep_overlapped: float = Field(ge=0, le=1)
    """Expert all-to-all hidden when the plan turns on ep_comm_overlap (Megatron-Core
    --overlap-moe-expert-parallel-comm, DeepSeek's dual-micro-batch overlap)."""


FP8_RECIPES = ("fp8_tensorwise", "fp8_rowwise", "fp8_blockwise", "mxfp8")
"""FP8 scaling recipes with their own fitted GEMM factor: one scale per tensor (Transformer
Engine's delayed and current scaling, torchao's default `tensorwise`), per row (torchao
`rowwise`), per 1x128 / 128x128 block (DeepSeek-V3 Sec. 3.3.2; TE Float8BlockScaling), and MX
blocks of 32 with E8M0 scales (OCP MX spec v1.0; TE MXFP8BlockScaling on Blackwell)."""


def precision_chain(key: str) -> tuple[str, ...]:
    """The GEMM-factor keys a precision falls back through: recipe -> fp8 -> bf16."""
    if key in FP8_RECIPES:
        return (key, "fp8", "bf16")
    return ("fp8", "bf16") if key == "fp8" else ("bf16",)


def gemm_scale_field(key: str) -> str:
    """The calibration key holding a precision's GEMM factor (`gemm_scale` for bf16)."""
    return "gemm_scale" if key == "bf16" else f"gemm_scale_{key}"


class Calibration(Spec):
    """Factors fitted to published runs by `meshplan calibrate` (docs/validation.md).

    They scale the measured curves above rather than replace them, so the measured data and
    the fit stay separate and the fit can be redone from scratch.
    """

    gemm_scale: float = Field(default=1.0, gt=0, le=1.5)
    """Multiplies `gemm_efficiency` (real model shapes and software run below the best-case
    MAMF the curve is anchored at)."""
    attention_scale: float = Field(default=1.0, gt=0, le=1.5)
    """Multiplies both attention efficiencies."""
    gemm_scale_fp8: float | None = Field(default=None, gt=0, le=1.5)
    """Multiplies `fp8_gemm_efficiency` for FP8 GEMMs; None: `gemm_scale` (too few runs)."""
    gemm_scale_fp8_tensorwise: float | None = Field(default=None, gt=0, le=1.5)
    gemm_scale_fp8_rowwise: float | None = Field(default=None, gt=0, le=1.5)
    gemm_scale_fp8_blockwise: float | None = Field(default=None, gt=0, le=1.5)
    gemm_scale_mxfp8: float | None = Field(default=None, gt=0, le=1.5)
    """Per FP8 recipe (`FP8_RECIPES`); None: `gemm_scale_fp8`, then `gemm_scale`."""
    fp8_recipe: Literal["fp8_tensorwise", "fp8_rowwise", "fp8_blockwise", "mxfp8"] | None = None
    """The FP8 recipe the job's FP8 GEMMs use (software, like `[overlap]`), selecting its
    factor; None: the generic FP8 factor. The validator sets it from a run's precision text."""
    source: str = ""
    """How the factors were fitted (command, data, date)."""
    key: str | None = None
    """The calibration-file table merged in (the accelerator's `calibration_key`); None: no
    table was applied, the cluster's own values (raw curves unless it sets factors)."""
    file: str = ""
    """The calibration file asked for when the cluster was loaded: "shipped", "none" or a
    path ("": the cluster was built directly, not loaded)."""

    def gemm_scale_for(self, precision: str) -> float:
        """The GEMM factor at a compute precision: for FP8, the recipe's factor, else the
        generic FP8 one, else the bf16 `gemm_scale` (`precision_chain`)."""
        key = (self.fp8_recipe or "fp8") if precision == "fp8" else "bf16"
        for k in precision_chain(key):
            value = getattr(self, gemm_scale_field(k))
            if value is not None:
                return float(value)
        return self.gemm_scale


class Cluster(Spec):
    """A homogeneous GPU cluster."""

    name: str
    accelerator: Accelerator
    gpus_per_node: int = Field(gt=0)
    num_gpus: int | None = Field(default=None, gt=0)
    """Size of the cluster, if fixed (None: as many as the job asks for)."""
    network: tuple[NetworkTier, ...] = Field(min_length=1, strict=False)
    """Tiers from the innermost (NVLink) to the outermost (scale-out fabric)."""
    host: HostLink
    overlap: Overlap
    calibration: Calibration = Calibration()
    kernel_overhead: float = Field(default=0.0, ge=0, le=MAX_LATENCY_S)
    """Fixed time per transformer layer per pass (launches, small kernels), seconds."""
    source: str = ""

    @model_validator(mode="after")
    def _check(self) -> Cluster:
        sizes = [t.domain_size for t in self.network]
        if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise ValueError(f"network domain sizes must grow outward, got {sizes}")
        if any(b % a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise ValueError(f"each network domain size must divide the next, got {sizes}")
        if self.num_gpus is not None and self.num_gpus > sizes[-1]:
            raise ValueError(f"num_gpus ({self.num_gpus}) exceeds the outermost network "
                             f"domain ({sizes[-1]} GPUs)")
        return self
