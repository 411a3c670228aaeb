"""The deployments a serving plan search considers on N GPUs.

Per-instance layouts: tp over the divisors of a node's GPUs, pp in 1, 2, 4 at tp = a node
(colocated instances only), and for a MoE model ep and dp_attention each 1 or tp; every
layout passes the simulator's own layout rules (`deployment._check_layout`, through
`resolve`). Colocated: as many instances of one layout as fit in N GPUs. Disaggregated
(xPyD): x prefill instances of one layout and y decode instances of another (pp = 1 each),
every (x, y) that leaves no room for another instance of either pool. The engine's
scheduler knobs start at its defaults;
`knob_variants` gives the few values the search tries on its best layouts (max_num_seqs
bounds the decode batch and so TPOT; max_num_batched_tokens is the prefill chunk, trading
TTFT against the decodes sharing an iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import DeploymentSpec, DisaggregatedSpec, resolve_disaggregated
from meshplan.serve.deployment import resolve as resolve_pool
from meshplan.specs.cluster import Cluster
from meshplan.specs.model import Model

AnySpec = DeploymentSpec | DisaggregatedSpec

PIPELINE_STAGES = (1, 2, 4)
MAX_NUM_SEQS_VARIANTS = (256,)
"""Tried below the engine default (vLLM's 1024 on large GPUs, 256 elsewhere)."""
BATCHED_TOKENS_VARIANTS = (2048,)
"""Below vLLM V1's / SGLang's 8192 default chunk on H100-class GPUs (`presets/engines`)."""


def pool_label(s: DeploymentSpec) -> str:
    """`tp4 pp1` (with ep / dp-attention when set): the layout class of one pool."""
    out = f"tp{s.tp} pp{s.pp}"
    if s.ep > 1:
        out += f" ep{s.ep}"
    if s.dp_attention > 1:
        out += f" dpa{s.dp_attention}"
    if s.max_num_seqs is not None:
        out += f" seqs{s.max_num_seqs}"
    if s.max_num_batched_tokens is not None:
        out += f" tokens{s.max_num_batched_tokens}"
    return out


def label(spec: AnySpec) -> str:
    """A deployment in one short line: `4 x tp4 pp1` or `2P tp4 pp1 + 1D tp8 pp1`."""
    if isinstance(spec, DisaggregatedSpec):
        return (f"{spec.prefill.instances}P {pool_label(spec.prefill)} + "
                f"{spec.decode.instances}D {pool_label(spec.decode)}")
    return f"{spec.instances} x {pool_label(spec)}"


def _layout(s: DeploymentSpec) -> str:
    return pool_label(s.model_copy(update={"max_num_seqs": None,
                                           "max_num_batched_tokens": None}))


def layout_class(spec: AnySpec) -> str:
    """The class a pruned deployment is reported under (its layout, not counts or knobs)."""
    if isinstance(spec, DisaggregatedSpec):
        return f"disaggregated P {_layout(spec.prefill)} / D {_layout(spec.decode)}"
    return f"colocated {_layout(spec)}"


def num_gpus(spec: AnySpec) -> int:
    if isinstance(spec, DisaggregatedSpec):
        return num_gpus(spec.prefill) + num_gpus(spec.decode)
    return spec.tp * spec.pp * spec.instances


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def instance_layouts(model: Model, cluster: Cluster, engine: str, max_gpus: int,
                     pipeline: bool = True) -> list[DeploymentSpec]:
    """One-instance layouts the simulator accepts, within `max_gpus` GPUs."""
    out: list[DeploymentSpec] = []
    moe = model.moe is not None
    for tp in _divisors(cluster.gpus_per_node):
        for pp in PIPELINE_STAGES if pipeline else (1,):
            # pipeline stages only past a node's tensor parallelism (where a model needs
            # them to fit): below it, more TP or more instances serve better and a pp > 1
            # instance simulates batch by batch (slow)
            if tp * pp > max_gpus or (pp > 1 and tp < cluster.gpus_per_node):
                continue
            for ep in sorted({1, tp}) if moe else (1,):
                for dpa in sorted({1, tp}) if moe else (1,):
                    spec = DeploymentSpec(tp=tp, pp=pp, ep=ep, dp_attention=dpa, engine=engine)
                    try:
                        resolve_pool(model, cluster, spec)
                    except MeshplanError:
                        continue
                    out.append(spec)
    return out


@dataclass(frozen=True)
class Space:
    colocated: list[DeploymentSpec]
    disaggregated: list[DisaggregatedSpec]

    def all(self) -> list[AnySpec]:
        return [*self.colocated, *self.disaggregated]


def enumerate_space(model: Model, cluster: Cluster, n: int, engine: str,
                    disaggregation: bool = True) -> Space:
    """Every colocated and disaggregated deployment of `n` GPUs at the engine's defaults."""
    layouts = instance_layouts(model, cluster, engine, n)
    colocated = [s.model_copy(update={"instances": n // (s.tp * s.pp)}) for s in layouts]
    disagg: list[DisaggregatedSpec] = []
    if disaggregation:
        pools = instance_layouts(model, cluster, engine, n - 1, pipeline=False)
        for p in pools:
            for d in pools:
                for x in range(1, n // p.tp + 1):
                    left = n - x * p.tp
                    y = left // d.tp
                    if y < 1 or left - y * d.tp >= p.tp:  # room for another prefill instance
                        continue
                    spec = DisaggregatedSpec(prefill=p.model_copy(update={"instances": x}),
                                             decode=d.model_copy(update={"instances": y}))
                    try:
                        resolve_disaggregated(model, cluster, spec)
                    except MeshplanError:
                        continue
                    disagg.append(spec)
    return Space(colocated, disagg)


def knob_variants(spec: AnySpec, default_seqs: int, default_tokens: int) -> list[AnySpec]:
    """`spec` with the other values of the knobs that matter (not `spec` itself): a colocated
    deployment's max_num_seqs and max_num_batched_tokens, a prefill pool's token budget and a
    decode pool's max_num_seqs."""
    seqs = [v for v in MAX_NUM_SEQS_VARIANTS if v < default_seqs]
    tokens = [v for v in BATCHED_TOKENS_VARIANTS if v != default_tokens]
    out: list[AnySpec] = []
    if isinstance(spec, DisaggregatedSpec):
        for t in tokens:
            out.append(spec.model_copy(update={
                "prefill": spec.prefill.model_copy(update={"max_num_batched_tokens": t})}))
        for s in seqs:
            out.append(spec.model_copy(update={
                "decode": spec.decode.model_copy(update={"max_num_seqs": s})}))
        return out
    for s in seqs:
        out.append(spec.model_copy(update={"max_num_seqs": s}))
    for t in tokens:
        out.append(spec.model_copy(update={"max_num_batched_tokens": t}))
    return out
