"""Where a deployment's instances sit on the cluster's GPUs, and what crossing between them
costs: the network tier between two GPU ranges, a pipeline stage's hand-off tier and the
KV-cache transfer of disaggregated serving.

Instances are packed on consecutive GPUs in order (a disaggregated deployment's prefill
instances first, then its decode instances), a stage's tp GPUs together and the stages of an
instance one after the other, as `vllm serve` / SGLang number ranks.
"""

from __future__ import annotations

import numpy as np

from meshplan.cost import comm
from meshplan.serve.deployment import AnyDeployment, Deployment
from meshplan.serve.iteration import kv_bytes_per_token_per_gpu
from meshplan.specs.cluster import Cluster


def instance_ranges(d: AnyDeployment) -> list[tuple[int, int, Deployment]]:
    """(first GPU, GPU count, pool) of every instance, in the loop's instance order."""
    out, start = [], 0
    for pool in d.pools:
        for _ in range(pool.instances):
            out.append((start, pool.gpus_per_instance, pool))
            start += pool.gpus_per_instance
    return out


def tier_between(cluster: Cluster, a: tuple[int, int], b: tuple[int, int]) -> int:
    """Index of the innermost network tier one of whose domains holds both GPU ranges
    (first GPU, count): 0 when they share an NVLink node."""
    lo, hi = min(a[0], b[0]), max(a[0] + a[1], b[0] + b[1]) - 1
    for i, tier in enumerate(cluster.network):
        if lo // tier.domain_size == hi // tier.domain_size:
            return i
    return len(cluster.network) - 1


def stage_send_tiers(cluster: Cluster, first_gpu: int, tp: int, pp: int) -> list[int]:
    """Tier of each stage-to-stage hand-off of an instance starting at `first_gpu`."""
    return [tier_between(cluster, (first_gpu + s * tp, tp), (first_gpu + (s + 1) * tp, tp))
            for s in range(pp - 1)]


def kv_transfer_bytes(src: Deployment, dst: Deployment, tokens: int) -> float:
    """Bytes the busiest GPU of the transfer moves for `tokens` prompt tokens: every GPU of
    the prefill instance sends its own layers' and heads' share of the blocks and every GPU of
    the decode instance receives its own (NIXL / Mooncake move blocks GPU to GPU, each over
    its own link), so the larger per-GPU share sets the time."""
    return tokens * max(kv_bytes_per_token_per_gpu(src), kv_bytes_per_token_per_gpu(dst))


def kv_transfer_time(cluster: Cluster, tier: int, nbytes: float) -> float:
    """One point-to-point transfer on that tier (`cost.comm.p2p_time`): bytes over the tier's
    bandwidth at its bus efficiency for that size, plus its per-message latency from the
    cluster file (e.g. dgx-h100: NVLink 450 GB/s and 2.5 us, NDR InfiniBand 50 GB/s per GPU
    and 8 us). Connector overheads (NIXL handshakes, notifications) are not modelled."""
    return float(comm.p2p_time(cluster, np.asarray(tier), nbytes))
