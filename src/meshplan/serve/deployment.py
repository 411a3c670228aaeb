"""A serving deployment: the model on its GPUs, how each instance is split, how many there are,
and the engine's scheduler knobs (each knob a user leaves out takes the engine's default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from meshplan.errors import MeshplanError
from meshplan.serve.engines import EngineProfile, load_engine
from meshplan.specs._base import Spec
from meshplan.specs.cluster import Cluster
from meshplan.specs.model import Model

DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
Router = Literal["round-robin", "least-requests", "least-tokens"]


class DeploymentSpec(Spec):
    """What a user sets; None takes the engine profile's default."""

    tp: int = Field(default=1, gt=0)
    """Tensor-parallel degree of one instance."""
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
    def instances(self) -> int:
        return self.spec.instances

    @property
    def num_gpus(self) -> int:
        return self.spec.tp * self.spec.instances

    @property
    def iteration_overhead_s(self) -> float:
        e = self.engine
        return e.iteration_overhead_s if self.cuda_graphs else e.iteration_overhead_eager_s

    def to_json(self) -> dict[str, object]:
        return {"model": self.model.name, "cluster": self.cluster.name, "tp": self.tp,
                "pp": 1, "instances": self.instances, "num_gpus": self.num_gpus,
                "engine": self.engine.name, "router": self.spec.router,
                "weights_dtype": self.spec.weights_dtype,
                "kv_cache_dtype": self.spec.kv_cache_dtype,
                "max_num_seqs": self.max_num_seqs,
                "max_num_batched_tokens": self.max_num_batched_tokens,
                "block_size": self.block_size,
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "enable_chunked_prefill": self.enable_chunked_prefill,
                "cuda_graphs": self.cuda_graphs}


def resolve(model: Model, cluster: Cluster, spec: DeploymentSpec) -> Deployment:
    """Fill the knobs from the engine profile and check the layout against the model."""
    engine = load_engine(spec.engine)
    if model.num_attention_heads % spec.tp:
        raise MeshplanError(f"tp={spec.tp}: must divide num_attention_heads "
                            f"({model.num_attention_heads})")
    if spec.tp > cluster.gpus_per_node:
        raise MeshplanError(f"tp={spec.tp}: an instance's tensor-parallel group must fit in "
                            f"one node ({cluster.gpus_per_node} GPUs on {cluster.name})")
    if cluster.num_gpus is not None and spec.tp * spec.instances > cluster.num_gpus:
        raise MeshplanError(f"instances={spec.instances}: tp x instances = "
                            f"{spec.tp * spec.instances} exceeds the cluster's "
                            f"{cluster.num_gpus} GPUs")
    if spec.weights_dtype == "fp8" and "fp8" not in cluster.accelerator.peak_flops:
        raise MeshplanError(f"weights_dtype='fp8': {cluster.accelerator.name} has no FP8 "
                            "peak in its cluster data")
    seqs, tokens = engine.batch_defaults(cluster.accelerator)

    def flag(value: bool | None, default: bool) -> bool:
        return default if value is None else value

    return Deployment(
        model, cluster, spec, engine,
        max_num_seqs=spec.max_num_seqs or seqs,
        max_num_batched_tokens=spec.max_num_batched_tokens or tokens,
        block_size=spec.block_size or engine.block_size,
        gpu_memory_utilization=spec.gpu_memory_utilization or engine.memory_fraction(
            cluster.accelerator, spec.tp, spec.max_num_batched_tokens or tokens),
        enable_chunked_prefill=flag(spec.enable_chunked_prefill, engine.enable_chunked_prefill),
        cuda_graphs=flag(spec.cuda_graphs, engine.cuda_graphs),
    )
