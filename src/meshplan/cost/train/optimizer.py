"""Optimizer step time: fused Adam over this GPU's shard (memory-bound), or on the host."""

from __future__ import annotations

import numpy as np

from meshplan.mesh import Mesh
from meshplan.specs.cluster import Cluster

ADAM_STEP_BYTES = 30.0
"""HBM traffic per parameter of a fused Adam step: read fp32 grad, master, m, v (16 bytes),
write master, m, v (12) and the bf16 weight (2)."""
HOST_COPY_BYTES = 6.0
"""Offloaded optimizer (ZeRO-Offload, Ren et al. 2021): fp32 gradient down (4) and bf16
weight back up (2) per parameter."""


def optimizer_time(cluster: Cluster, mesh: Mesh, dense_p: np.ndarray,
                   expert_p: np.ndarray) -> np.ndarray:
    """Adam over the optimizer shard of `dense_p` dense and `expert_p` expert parameters."""
    P, acc = mesh.plans, cluster.accelerator
    sharded = P.zero >= 1
    params = dense_p / np.where(sharded, mesh.shard, 1) + expert_p / np.where(sharded, mesh.edp, 1)
    on_gpu = params * ADAM_STEP_BYTES / (acc.memory_bandwidth * acc.memory_efficiency)
    host = cluster.host
    offloaded = params * HOST_COPY_BYTES / host.bandwidth + params / host.cpu_adam_params_per_s
    return np.where(P.offload, offloaded, on_gpu)
