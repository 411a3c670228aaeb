"""What a published serving run rebuilds into (`rebuild.build_case`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshplan.serve.deployment import DeploymentSpec
from meshplan.serve.workload import Workload
from meshplan.specs.cluster import Cluster
from meshplan.specs.model import Model


class Unbuildable(Exception):
    """This row cannot be rebuilt (its reason becomes the row's `skipped`)."""


def count(section: dict[str, Any], key: str, default: int) -> int:
    """A count field of the row (`default` when null); 0 or negative is no count at all."""
    value = section.get(key)
    if value is None:
        return default
    n = int(value)
    if n <= 0:
        raise Unbuildable(f"{key}={value!r}: must be a positive count")
    return n


@dataclass(frozen=True)
class StaticBatch:
    """One fixed batch: `size` prompts of `input_len` tokens prefilled together, then decoded
    for `output_len` tokens (static-batch benchmarks: FasterTransformer, gptSessionBenchmark,
    profiling sweeps)."""

    size: int
    input_len: int
    output_len: int


@dataclass
class ServeCase:
    row: dict[str, Any]
    model: Model
    cluster: Cluster
    spec: DeploymentSpec
    workload: Workload | StaticBatch
    assumptions: list[str] = field(default_factory=list)
    read_as: dict[str, str] = field(default_factory=dict)
    """Measured metric -> the predicted metric it is compared with, where the source's
    figure means something other than its key says (e.g. a per-GPU throughput)."""

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def scenario(self) -> str:
        return str(self.row["scenario"])
