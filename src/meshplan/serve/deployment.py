"""A serving deployment: the model on its GPUs, how each instance is split, how many there are,
and the engine's scheduler knobs (each knob a user leaves out takes the engine's default).

Layout of one instance (SGLang's convention, `--tp-size` / `--dp-size` / `--ep-size`): `tp` GPUs
per pipeline stage, `pp` stages, so tp x pp GPUs an instance. Attention runs on `tp /
dp_attention` GPUs per data-parallel attention rank (each rank its own requests and KV cache);
the routed experts of a MoE layer are split over `ep` of the stage's tp GPUs and tensor-split
over the other tp / ep. vLLM's equivalent: `--tensor-parallel-size tp/dp_attention
--data-parallel-size dp_attention`, `--enable-expert-parallel` for ep = tp.

A disaggregated deployment (`DisaggregatedSpec`) is two such pools, prefill and decode, placed
on consecutive GPUs (prefill instances first) so the KV transfer's network tier follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from meshplan.errors import MeshplanError
from meshplan.serve.engines import EngineProfile, load_engine
from meshplan.specs._base import Spec
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import load_cluster
from meshplan.specs.model import Model

DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0}


def load_serving_cluster(ref: str | Path | Cluster) -> Cluster:
    """A cluster (preset, file or spec) as serving uses it: its efficiency curves without the
    training calibration, whose factors were fitted to training steps (backward passes,
    optimizer, bubbles); serving fits its own engine overheads
    (`presets/serving_calibration.toml`). A Cluster object is taken as it is."""
    return load_cluster(ref, calibration=None)
Router = Literal["round-robin", "least-requests", "least-tokens"]


class DeploymentSpec(Spec):
    """What a user sets; None takes the engine profile's default."""

    tp: int = Field(default=1, gt=0)
    """Tensor-parallel degree of one instance (GPUs per pipeline stage)."""
    pp: int = Field(default=1, gt=0)
    """Pipeline stages of one instance (layers split as vLLM's `get_pp_indices`)."""
    ep: int = Field(default=1, gt=0)
    """GPUs of a stage the routed experts are split over (MoE only; divides tp)."""
    dp_attention: int = Field(default=1, gt=0)
    """Data-parallel attention ranks inside a stage (MoE only; divides tp)."""
    instances: int = Field(default=1, gt=0)
    """Replicas of the instance (data parallel), behind the router."""
    engine: str = "vllm"
    router: Router = "round-robin"
    weights_dtype: Literal["bf16", "fp16", "fp8"] = "bf16"
    kv_cache_dtype: Literal["bf16", "fp16", "fp8"] = "bf16"
    max_num_seqs: int | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    block_size: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    cuda_graphs: bool | None = None
    num_scheduler_steps: int = Field(default=1, gt=0, le=64)
    """vLLM V0's multi-step scheduling (`--num-scheduler-steps`, vllm-v0 profile only): a decode
    batch runs this many steps per scheduling, its host overhead paid once for them all and
    new prompts admitted only between groups."""
    num_gpu_blocks: int | None = Field(default=None, gt=0)
    """KV blocks per instance (per attention rank) instead of the memory estimate (vLLM's
    `--num-gpu-blocks-override`; also how a measured run's reported block count is used)."""


@dataclass(frozen=True)
class Deployment:
    """A deployment with every knob resolved."""

    model: Model
    cluster: Cluster
    spec: DeploymentSpec
    engine: EngineProfile
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    gpu_memory_utilization: float
    enable_chunked_prefill: bool
    cuda_graphs: bool

    @property
    def tp(self) -> int:
        return self.spec.tp

    @property
    def pp(self) -> int:
        return self.spec.pp

    @property
    def ep(self) -> int:
        return self.spec.ep

    @property
    def dp_attention(self) -> int:
        return self.spec.dp_attention

    @property
    def limit_ranks(self) -> int:
        """Schedulers the instance's limits are multiplied over (dp_attention where each
        attention rank applies max_num_seqs and the token budget itself, else 1)."""
        return self.spec.dp_attention if self.engine.limits_per_attention_rank else 1

    @property
    def tp_attention(self) -> int:
        """GPUs one attention rank's heads are split over."""
        return self.spec.tp // self.spec.dp_attention

    @property
    def instances(self) -> int:
        return self.spec.instances

    @property
    def gpus_per_instance(self) -> int:
        return self.spec.tp * self.spec.pp

    @property
    def num_gpus(self) -> int:
        return self.gpus_per_instance * self.spec.instances

    @property
    def stage_layers(self) -> tuple[int, ...]:
        return stage_layers(self.model.num_layers, self.spec.pp)

    @property
    def disaggregated(self) -> bool:
        return False

    @property
    def pools(self) -> tuple[Deployment, ...]:
        """Its pools of instances: itself (a disaggregated deployment: prefill, decode)."""
        return (self,)

    @property
    def iteration_overhead_s(self) -> float:
        """Host time per step: the profile's, shared by a multi-step group's steps."""
        e = self.engine
        per = e.iteration_overhead_s if self.cuda_graphs else e.iteration_overhead_eager_s
        return per / self.spec.num_scheduler_steps

    def to_json(self) -> dict[str, object]:
        return {"model": self.model.name, "cluster": self.cluster.name, "tp": self.tp,
                "pp": self.pp, "ep": self.ep, "dp_attention": self.dp_attention,
                "instances": self.instances, "num_gpus": self.num_gpus, "disaggregated": False,
                "engine": self.engine.name, "router": self.spec.router,
                "weights_dtype": self.spec.weights_dtype,
                "kv_cache_dtype": self.spec.kv_cache_dtype,
                "max_num_seqs": self.max_num_seqs,
                "max_num_batched_tokens": self.max_num_batched_tokens,
                "block_size": self.block_size,
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "enable_chunked_prefill": self.enable_chunked_prefill,
                "cuda_graphs": self.cuda_graphs,
                "num_scheduler_steps": self.spec.num_scheduler_steps}


def stage_layers(num_layers: int, pp: int) -> tuple[int, ...]:
    """Layers of each pipeline stage, vLLM's rule (`vllm/distributed/utils.py`,
    `get_pp_indices`): num_layers // pp each, the remainder one more each on the stages just
    before the last (the last holds the final norm and LM head)."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return tuple(parts)


def _check_layout(model: Model, cluster: Cluster, spec: DeploymentSpec, where: str) -> None:
    """The layout rules, each a one-line error (`where` names the pool)."""
    tp, pp, ep, dp = spec.tp, spec.pp, spec.ep, spec.dp_attention
    if tp % dp:
        raise MeshplanError(f"{where}dp_attention={dp}: must divide tp ({tp})")
    tpa = tp // dp
    heads, kv = model.num_attention_heads, model.kv_heads
    # vLLM ModelConfig.verify_with_parallel_config: heads divisible by the TP size; KV heads
    # split evenly, or replicated a whole number of times when TP exceeds them
    # (QKVParallelLinear: num_kv_head_replicas = tp // num_kv_heads).
    if heads % tpa:
        raise MeshplanError(f"{where}tp={tp}"
                            + (f" / dp_attention={dp}" if dp > 1 else "")
                            + f": the attention's TP size {tpa} must divide "
                            f"num_attention_heads ({heads})")
    if model.mla is None and (kv % tpa if tpa <= kv else tpa % kv):
        raise MeshplanError(f"{where}tp={tp}: the attention's TP size {tpa} must divide, or be a "
                            f"multiple of, num_kv_heads ({kv})")
    if tp > cluster.gpus_per_node:
        raise MeshplanError(f"{where}tp={tp}: an instance's tensor-parallel group must fit in "
                            f"one node ({cluster.gpus_per_node} GPUs on {cluster.name})")
    if pp > model.num_layers:
        raise MeshplanError(f"{where}pp={pp}: more pipeline stages than layers "
                            f"({model.num_layers})")
    if (ep > 1 or dp > 1) and model.moe is None:
        flag = "ep" if ep > 1 else "dp_attention"
        raise MeshplanError(f"{where}{flag}={ep if ep > 1 else dp}: only for MoE models "
                            f"({model.name} is dense; use instances for data parallelism)")
    if ep > 1:
        assert model.moe is not None
        if tp % ep:
            raise MeshplanError(f"{where}ep={ep}: must divide tp ({tp}); experts are split over "
                                "the stage's GPUs")
        if model.moe.num_experts % ep:
            raise MeshplanError(f"{where}ep={ep}: must divide num_experts "
                                f"({model.moe.num_experts})")


def _resolve_pool(model: Model, cluster: Cluster, spec: DeploymentSpec,
                  where: str = "") -> Deployment:
    engine = load_engine(spec.engine)
    _check_layout(model, cluster, spec, where)
    if spec.weights_dtype == "fp8" and "fp8" not in cluster.accelerator.peak_flops:
        raise MeshplanError(f"weights_dtype='fp8': {cluster.accelerator.name} has no FP8 "
                            "peak in its cluster data")
    if spec.num_scheduler_steps > 1 and engine.scheduler != "vllm-v0":
        raise MeshplanError(f"{where}num_scheduler_steps={spec.num_scheduler_steps}: multi-step "
                            f"scheduling is vLLM V0's (engine vllm-v0), not {engine.name}'s")
    seqs, tokens = engine.batch_defaults(cluster.accelerator)
    ranks = spec.dp_attention if engine.limits_per_attention_rank else 1
    # each attention rank's scheduler applies the limits (EngineProfile.limits_per_attention_rank)

    def flag(value: bool | None, default: bool) -> bool:
        return default if value is None else value

    return Deployment(
        model, cluster, spec, engine,
        max_num_seqs=(spec.max_num_seqs or seqs) * ranks,
        max_num_batched_tokens=(spec.max_num_batched_tokens or tokens) * ranks,
        block_size=spec.block_size or engine.block_size,
        gpu_memory_utilization=spec.gpu_memory_utilization or engine.memory_fraction(
            cluster.accelerator, spec.tp, spec.max_num_batched_tokens or tokens),
        enable_chunked_prefill=flag(spec.enable_chunked_prefill, engine.enable_chunked_prefill),
        cuda_graphs=flag(spec.cuda_graphs, engine.cuda_graphs),
    )


def _check_gpus(cluster: Cluster, used: int, what: str) -> None:
    if cluster.num_gpus is not None and used > cluster.num_gpus:
        raise MeshplanError(f"{what} = {used} GPUs exceeds the cluster's {cluster.num_gpus}")


class DisaggregatedSpec(Spec):
    """Prefill/decode disaggregation: requests are prefilled (their first token sampled) on
    the prefill pool, their prompt's KV cache sent to a decode instance, decoded there."""

    prefill: DeploymentSpec
    decode: DeploymentSpec


@dataclass(frozen=True)
class DisaggregatedDeployment:
    """Both pools resolved (`prefill.instances` x its layout, then the decode pool's)."""

    prefill: Deployment
    decode: Deployment

    @property
    def model(self) -> Model:
        return self.prefill.model

    @property
    def cluster(self) -> Cluster:
        return self.prefill.cluster

    @property
    def pools(self) -> tuple[Deployment, ...]:
        return (self.prefill, self.decode)

    @property
    def num_gpus(self) -> int:
        return self.prefill.num_gpus + self.decode.num_gpus

    @property
    def disaggregated(self) -> bool:
        return True

    def to_json(self) -> dict[str, object]:
        return {"model": self.model.name, "cluster": self.cluster.name, "disaggregated": True,
                "num_gpus": self.num_gpus, "prefill": self.prefill.to_json(),
                "decode": self.decode.to_json()}


def resolve(model: Model, cluster: Cluster, spec: DeploymentSpec) -> Deployment:
    """Fill the knobs from the engine profile and check the layout against the model."""
    d = _resolve_pool(model, cluster, spec)
    _check_gpus(cluster, d.num_gpus, f"instances={spec.instances}: tp x pp x instances")
    return d


def resolve_disaggregated(model: Model, cluster: Cluster,
                          spec: DisaggregatedSpec) -> DisaggregatedDeployment:
    """Both pools, checked as `resolve` does, with one KV-cache format between them (the
    transfer copies blocks as they are: NIXL / Mooncake need the same dtype both sides)."""
    p = _resolve_pool(model, cluster, spec.prefill, "prefill ")
    d = _resolve_pool(model, cluster, spec.decode, "decode ")
    if p.spec.kv_cache_dtype != d.spec.kv_cache_dtype:
        raise MeshplanError(f"kv_cache_dtype: prefill {p.spec.kv_cache_dtype} and decode "
                            f"{d.spec.kv_cache_dtype} must match (the KV cache is copied as is)")
    _check_gpus(cluster, p.num_gpus + d.num_gpus, "prefill + decode GPUs")
    return DisaggregatedDeployment(p, d)


AnyDeployment = Deployment | DisaggregatedDeployment
