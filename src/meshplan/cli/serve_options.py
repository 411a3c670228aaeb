"""What `serve simulate` and `serve export` share: the options that describe a deployment,
and the spec they build (one place for the rules: both pools or neither, a pool's tp
defaulting to --tp, pool flags only with pools)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshplan.cli import complete
from meshplan.errors import MeshplanError
from meshplan.serve import DeploymentSpec, DisaggregatedSpec


def option(flag: str, help_text: str, **kw: Any) -> Any:
    """A typer option with its help (the serving commands' shorthand)."""
    return typer.Option(flag, help=help_text, **kw)


ModelOpt = Annotated[str, option("--model", "Model: preset name, meshplan file or HF config",
                                 autocompletion=complete.models)]
ClusterOpt = Annotated[str, option("--cluster", "Cluster: preset name or cluster file",
                                   autocompletion=complete.clusters)]
TpOpt = Annotated[int, option("--tp", "Tensor-parallel degree of one instance")]
PpOpt = Annotated[int, option("--pp", "Pipeline stages of one instance")]
EpOpt = Annotated[int, option("--ep", "Expert-parallel GPUs of a stage (MoE)")]
DpAttentionOpt = Annotated[int, option("--dp-attention",
                                     "Data-parallel attention ranks of a stage (MoE)")]
InstancesOpt = Annotated[int, option("--instances", "Instances behind the router")]
PrefillInstancesOpt = Annotated[int | None, option(
    "--prefill-instances", "Disaggregated: prefill instances (with --decode-instances)")]
DecodeInstancesOpt = Annotated[int | None, option("--decode-instances",
                                                "Disaggregated: decode instances")]
PrefillTpOpt = Annotated[int | None, option("--prefill-tp", "Prefill pool's tp (default --tp)")]
DecodeTpOpt = Annotated[int | None, option("--decode-tp", "Decode pool's tp (default --tp)")]
MaxNumSeqsOpt = Annotated[int | None, option("--max-num-seqs", "Engine max sequences")]
MaxNumBatchedTokensOpt = Annotated[int | None, option("--max-num-batched-tokens",
                                                    "Engine token budget per iteration")]
GpuMemoryUtilizationOpt = Annotated[float | None, option("--gpu-memory-utilization",
                                                       "Share of HBM the engine may use")]
NoChunkedPrefillOpt = Annotated[bool, option("--no-chunked-prefill", "Prefill prompts whole")]
KvCacheDtypeOpt = Annotated[str, option("--kv-cache-dtype", "bf16, fp16 or fp8")]


SAME_NAME = {"tp", "pp", "ep", "dp_attention", "instances", "engine", "router", "rate", "cv",
             "clients", "think_s", "num_requests", "seed", "lengths_file", "prefix_len",
             "prefix_group_size", "max_num_seqs", "max_num_batched_tokens",
             "gpu_memory_utilization", "kv_cache_dtype", "weights_dtype", "num_gpu_blocks",
             "num_scheduler_steps"}
"""Deployment and workload fields set by the flag of the same name."""
RENAMED = {"arrival": "--workload", "input.mean": "--input-len", "output.mean": "--output-len",
           "input.kind": "--lengths", "output.kind": "--lengths", "input.spread": "--spread",
           "output.spread": "--spread"}


def serve_flag(field: str) -> str | None:
    """The serving flag that set a spec field (for error messages), None if none did."""
    if field in RENAMED:
        return RENAMED[field]
    return "--" + field.replace("_", "-") if field in SAME_NAME else None


def deployment_spec(tp: int, instances: int, prefill_instances: int | None,
                    decode_instances: int | None, prefill_tp: int | None,
                    decode_tp: int | None, **knobs: Any) -> DeploymentSpec | DisaggregatedSpec:
    """One pool of `instances`, or prefill and decode pools when both counts are given;
    `knobs` are every pool's other DeploymentSpec fields. Pydantic errors propagate (the
    command names them)."""
    if (prefill_instances, decode_instances) == (None, None):
        for flag, value in (("--prefill-tp", prefill_tp), ("--decode-tp", decode_tp)):
            if value is not None:
                raise MeshplanError(f"{flag}: only with --prefill-instances and "
                                    "--decode-instances")
        return DeploymentSpec(tp=tp, instances=instances, **knobs)
    if prefill_instances is None or decode_instances is None:
        raise MeshplanError("--prefill-instances and --decode-instances: give both for a "
                            "disaggregated deployment")
    return DisaggregatedSpec(
        prefill=DeploymentSpec(tp=tp if prefill_tp is None else prefill_tp,
                               instances=prefill_instances, **knobs),
        decode=DeploymentSpec(tp=tp if decode_tp is None else decode_tp,
                              instances=decode_instances, **knobs))
