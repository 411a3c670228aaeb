"""torchtitan 0.3: a launch script, `torchrun -m torchtitan.train --module M --config C` plus
command-line overrides, as torchtitan 0.3.0 starts a job.

0.3.0 replaced 0.2's TOML job files with Python config registries: `--module` names the model
package, `--config` one of its `config_registry.py` functions (`llama3_8b`, ...), and tyro
reads `--section.key value` overrides on top (`torchtitan/config/manager.py` ConfigManager).
Activation checkpointing is a tyro subcommand (`activation_checkpoint:none|selective|full`,
`distributed/activation_checkpoint.py`), async TP moved to `compile.enable_async_tensor_parallel`,
and `expert_tensor_parallel_degree`, `disable_loss_parallel` and the `[model]` name/flavor
keys are gone (ParallelDims has no expert TP). Float8 lives in a config function's model_spec
converters, which the command line cannot set, so fp8 plans are refused here (0.2.2 can).

The flavors, their shapes and numerics, and every 0.2.2 rule still in force come from
`export.torchtitan`; the config functions are 0.3.0's `models/*/config_registry.py`.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from meshplan.export import torchtitan as v02
from meshplan.export._common import Refusal, check, field_value, header
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan

ENGINE = "torchtitan 0.3.0"
SOURCE = "torchtitan 0.3.0 torchtitan/config/manager.py, config/configs.py"
CONFIGS: dict[tuple[str, str], str] = {
    ("llama3", "8B"): "llama3_8b", ("llama3", "70B"): "llama3_70b",
    ("llama3", "405B"): "llama3_405b",
    ("qwen3", "0.6B"): "qwen3_0_6b", ("qwen3", "1.7B"): "qwen3_1_7b",
    ("qwen3", "14B"): "qwen3_14b", ("qwen3", "32B"): "qwen3_32b",
    ("qwen3", "30B-A3B"): "qwen3_30b_a3b",
    ("deepseek_v3", "16B"): "deepseek_v3_16b", ("deepseek_v3", "671B"): "deepseek_v3_671b",
}
"""(model, flavor) -> the 0.3.0 config_registry function that trains it."""
FLOAT8_FUNCTIONS = frozenset({"llama3_405b"})
"""Config functions whose model_spec swaps in Float8 linears (llama3_405b:
Float8LinearConverter, with compile): they train fp8 whatever the command line says."""
GONE = ("enable_async_tensor_parallel", "expert_tensor_parallel_degree", "disable_loss_parallel")
"""0.2.2 [parallelism] keys 0.3.0's ParallelismConfig no longer has."""


def config_function(model: Model) -> tuple[str, str] | None:
    """(--module, --config) for the model's flavor, or None."""
    flavor = v02._flavor(model)
    if flavor is None or (flavor.name, flavor.flavor) not in CONFIGS:
        return None
    return flavor.name, CONFIGS[(flavor.name, flavor.flavor)]


def _function(model: Model) -> str:
    picked = config_function(model)
    return "" if picked is None else picked[1]


def _float8(model: Model) -> bool:
    return _function(model) in FLOAT8_FUNCTIONS


_WITH_FUNCTION = ", ".join(f"{m}/{f}" for m, f in CONFIGS)

REFUSALS: tuple[Refusal, ...] = (
    *v02.REFUSALS[:2],  # no flavor of this shape; a flavor with other numerics
    Refusal("model", lambda M, J, P: v02._flavor(M) is not None and config_function(M) is None,
            lambda M, J, P, i: M.name, f"0.3.0 has config functions for {_WITH_FUNCTION} "
            "only; use --engine-version 0.2.2"),
    Refusal("precision", lambda M, J, P: (J.precision == "fp8") != _float8(M),
            lambda M, J, P, i: J.precision, lambda M, J, P, i: (
                f"{_function(M)} trains with float8 linears (its model_spec converters)"
                if _float8(M) else "sets float8 in a config function's model_spec "
                "converters, not on the command line") + "; use --engine-version 0.2.2"),
    Refusal("etp", lambda M, J, P: (P.ep > 1) & (P.etp != 1), field_value("etp"),
            "has no expert tensor parallelism (ParallelDims: experts carved out of fsdp x tp)"),
    Refusal("recompute_num_layers", lambda M, J, P: v02._block_every(M, P) != 0,
            field_value("recompute_layers"), "sets only the activation_checkpoint mode on the "
            "command line (every block or none); use --engine-version 0.2.2 (selective_ac_option"
            " = k) or Megatron-LM"),
    *v02.REFUSALS[2:],
)
"""0.2.2's refusals, and what 0.3.0 dropped."""


def render(model: Model, job: Job, plan: Plan, cluster: Cluster | None = None) -> str:
    """The launch script: header comments, torchrun line, one override per line."""
    check(ENGINE, REFUSALS, model, job, plan)
    picked = config_function(model)
    flavor = v02._flavor(model)
    assert picked is not None and flavor is not None
    overrides: list[tuple[str, str | None]] = [("--hf_assets_path", v02.hf_assets(flavor))]
    training = v02.training_section(job, plan)
    if plan.pp > 1 or plan.ep > 1:
        # Trainer.Config._validate_cuda_graphs: CUDA graphs (on by default) refuse pipelines
        # and the flavors' all-to-all expert dispatcher.
        training["disable_cuda_graphs"] = True
    overrides += _section("training", training)
    overrides += _section("parallelism", {k: v for k, v in v02.parallelism_section(
        model, plan).items() if k not in GONE})
    if plan.tp_comm_overlap:
        # CompileConfig: components default to model and loss.
        overrides += _section("compile", {"enable": True, "enable_async_tensor_parallel": True})
    elif _float8(model):  # llama3_405b turns async TP on; the plan does not use it
        overrides += _section("compile", {"enable_async_tensor_parallel": False})
    per_node = min(plan.num_gpus, cluster.gpus_per_node if cluster else 8)
    lines = ["#!/usr/bin/env bash",
             *(f"# {line}" for line in [*header(ENGINE, SOURCE, model, job, plan),
                                         *v02._notes(plan)]),
             f"# tokenizer: python scripts/download_hf_assets.py --repo_id {flavor.hf_repo} "
             "--assets tokenizer",
             "set -euo pipefail",
             f'torchrun --nproc-per-node "${{NGPU:-{per_node}}}" '
             f'--nnodes "${{NNODES:-{math.ceil(plan.num_gpus / per_node)}}}" '
             '--node-rank "${NODE_RANK:-0}" \\',
             '    --master-addr "${MASTER_ADDR:-localhost}" '
             '--master-port "${MASTER_PORT:-29500}" \\',
             f"    -m torchtitan.train --module {picked[0]} --config {picked[1]} \\"]
    lines += [f"    {name}" + ("" if value is None else f" {value}") + " \\"
              for name, value in overrides]
    # Extra overrides go before the activation-checkpointing subcommand (tyro parses the
    # arguments after a subcommand as that subcommand's).
    lines += ['    "$@" \\', f"    activation_checkpoint:{plan.recompute}"]
    return "\n".join(lines) + "\n"


def _section(name: str, values: dict[str, Any]) -> list[tuple[str, str | None]]:
    """tyro overrides `--name.key value`; booleans as tyro flags (`--name.key` /
    `--name.no_key`), lists as space-separated values."""
    out: list[tuple[str, str | None]] = []
    for key, value in values.items():
        if isinstance(value, bool):
            out.append((f"--{name}.{key}" if value else f"--{name}.no_{key}", None))
        elif isinstance(value, list):
            out.append((f"--{name}.{key}", " ".join(shlex.quote(str(v)) for v in value)))
        else:
            out.append((f"--{name}.{key}", shlex.quote(str(value))))
    return out
