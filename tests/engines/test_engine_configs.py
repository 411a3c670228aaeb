"""Each export, loaded by its engine's own parser: torchtitan 0.2.2's ConfigManager, DeepSpeed's
DeepSpeedConfig, Megatron-Core's TransformerConfig and DistributedDataParallelConfig, and
Megatron-LM's argument parser.

Megatron-LM's `megatron/training/arguments.py` ships in no PyPI package (megatron-core has only
`megatron/core`). When it is importable it parses the flags itself; otherwise the flags go through
an argparse rebuilt from its add_argument calls (Megatron-LM tag core_v0.16.1: same names, types,
choices, actions and dests) and the `validate_args` checks they touch. At core_v0.16.1 the
TransformerConfig flags are generated from the dataclass (`argument_utils.ArgumentGroupFactory`:
`--` + the field name with dashes, store_true for a False bool, `argparse_meta` overrides); those
come here from the installed megatron-core's own TransformerConfig by that rule (`config_flag`),
so a flag meshplan writes for a field the release does not have fails to parse.

Install the engines with scripts/install-engines.sh; each test skips when its engine is missing.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import math
import os
import re
import shlex
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest

from meshplan import Job, Plan
from meshplan.export import export
from meshplan.export.api import pick

pytestmark = pytest.mark.engines

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "export"
EXTRA: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("megatron", "gpt-1.7b", {"global_batch_size": 512, "seq_len": 2048, "precision": "fp16"},
     {"pp": 2, "dp": 8, "zero_stage": 0, "micro_batch_size": 2}),
    ("megatron", "llama3-8b", {"global_batch_size": 256, "seq_len": 4096},
     {"tp": 2, "pp": 2, "dp": 4, "axis_order": ("tp", "cp", "ep", "pp", "dp"),
      "offload_optimizer": True, "dp_shard": 2}),
    ("megatron", "qwen3-30b-a3b", {"global_batch_size": 512, "seq_len": 4096},
     {"pp": 2, "dp": 8, "ep": 8, "schedule": "interleaved-1f1b", "vpp": 24,
      "micro_batch_size": 2}),
    ("megatron", "llama3-8b", {"global_batch_size": 64, "seq_len": 8192},
     {"dp": 8, "zero_stage": 2, "dp_shard": 4}),
    # The checks: Llama 3.1 405B with an uneven split (7 + 14 x 8 + 7 layers), Qwen3 MoE.
    ("megatron", "llama3.1-405b", {"global_batch_size": 2048, "seq_len": 8192},
     {"tp": 8, "pp": 16, "dp": 8, "first_stage_layers": 7, "last_stage_layers": 7}),
    ("megatron", "qwen3-235b-a22b", {"global_batch_size": 1024, "seq_len": 4096},
     {"tp": 4, "pp": 4, "dp": 16, "ep": 16, "first_stage_layers": 22, "last_stage_layers": 24}),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 64, "seq_len": 4096},
     {"dp": 8, "zero_stage": 0}),
    ("torchtitan", "llama3.1-405b", {"global_batch_size": 2048, "seq_len": 8192},
     {"tp": 8, "pp": 2, "dp": 32, "zero_stage": 3}),
    ("deepspeed", "llama3.1-405b", {"global_batch_size": 2048, "seq_len": 8192},
     {"dp": 256, "zero_stage": 3, "recompute": "full"}),
    ("deepspeed", "deepseek-v3", {"global_batch_size": 4096, "seq_len": 4096},
     {"dp": 256, "ep": 64, "zero_stage": 1}),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 64, "seq_len": 8192},
     {"cp": 2, "tp": 2, "dp": 2, "zero_stage": 3, "recompute": "full"}),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 64, "seq_len": 4096},
     {"pp": 4, "dp": 2, "zero_stage": 3, "schedule": "zb-v"}),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 64, "seq_len": 4096},
     {"pp": 2, "dp": 4, "zero_stage": 3, "schedule": "gpipe", "offload_optimizer": True}),
    ("deepspeed", "llama3-8b", {"global_batch_size": 64, "seq_len": 4096},
     {"dp": 8, "zero_stage": 1, "overlap_grad_reduce": False}),
    ("deepspeed", "llama3-8b", {"global_batch_size": 64, "seq_len": 4096, "grad_bytes": 2},
     {"dp": 8, "zero_stage": 2, "offload_optimizer": True}),
    # MoE dispatcher and forced routing (appended: the extra-N ids above keep their numbers).
    ("megatron", "qwen3-30b-a3b", {"global_batch_size": 512, "seq_len": 4096},
     {"dp": 16, "ep": 16, "moe_dispatcher": "hybridep", "moe_force_balanced": True}),
]


VERSION = {"torchtitan": "0.2.2"}
"""The release installed here (scripts/install-engines.sh); 0.3.0 is checked in its own venv
(test_torchtitan_03_loads)."""


def exports(target: str) -> list[tuple[str, str]]:
    """(name, text) of every golden export of `target` plus the extra cases."""
    suffix = pick(target, VERSION.get(target)).suffix
    found = [(p.name, p.read_text()) for p in sorted(GOLDEN.glob(f"{target}-*{suffix}"))]
    for i, (tgt, model, job, plan) in enumerate(EXTRA):
        if tgt == target:
            found.append((f"extra-{i}", export(Plan(**plan), target, model=model,
                                               engine_version=VERSION.get(target),
                                               job=Job(**job))))
    assert found
    return found


def params(target: str) -> Any:
    cases = exports(target)
    return pytest.mark.parametrize(("name", "text"), cases, ids=[c[0] for c in cases])


# --- Megatron ----------------------------------------------------------------------------------

def moe_freq_type(x: Any) -> Any:
    """arguments.py `moe_freq_type` with `_eval_pattern`: an int or a checked list expression."""
    if isinstance(x, int) or "[" not in x:
        return int(x)
    assert not re.search(r"[^,\d\[\]\(\)\+\*]", x), f"invalid pattern {x}"
    return eval(x)  # noqa: S307 - the same guarded eval as Megatron-LM's _eval_pattern


def config_flag(name: str) -> tuple[str, dict[str, Any]]:
    """The flag ArgumentGroupFactory (argument_utils.py, core_v0.16.1) makes of the installed
    TransformerConfig's field `name`: its name, and how it parses."""
    import typing

    from megatron.core.transformer import TransformerConfig

    field = next(f for f in dataclasses.fields(TransformerConfig) if f.name == name)
    meta = dict(field.metadata.get("argparse_meta", {}))
    flag = meta.pop("arg_names", ["--" + name.replace("_", "-")])[0]
    hint = typing.get_type_hints(TransformerConfig)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X]: X
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    kind = hint
    kwargs: dict[str, Any] = {"dest": name, "default": field.default}
    if kind is bool:
        kwargs["action"] = "store_true" if field.default is False else "store_false"
    elif typing.get_origin(kind) is typing.Literal:
        kwargs.update(type=str, choices=typing.get_args(kind))
    else:
        kwargs["type"] = kind
    kwargs.update({k: v for k, v in meta.items() if k in ("default", "type", "choices")})
    return flag, kwargs


CONFIG_FLAGS = ("layernorm_epsilon", "mtp_num_layers", "moe_router_score_function",
                "moe_router_pre_softmax", "moe_router_num_groups", "moe_router_group_topk",
                "moe_router_topk_scaling_factor", "moe_router_enable_expert_bias",
                "moe_expert_capacity_factor")
"""TransformerConfig fields whose flags meshplan writes and the hand-written table lacks."""


def megatron_parser() -> argparse.ArgumentParser:
    """Megatron-LM's own parser when importable, else the add_argument calls it makes for every
    flag meshplan emits (arguments.py, by group)."""
    try:
        from megatron.training.arguments import add_megatron_arguments
    except ImportError:
        pass
    else:
        return add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    from megatron.core.transformer.enums import AttnBackend

    true, num = {"action": "store_true"}, {"type": int, "default": None}
    table: list[tuple[str, dict[str, Any]]] = [
        # _add_distributed_args
        ("--tensor-model-parallel-size", {"type": int, "default": 1}),
        ("--pipeline-model-parallel-size", {"type": int, "default": 1}),
        ("--num-layers-per-virtual-pipeline-stage", num),
        ("--num-virtual-stages-per-pipeline-rank", num),
        ("--overlap-grad-reduce", true), ("--overlap-param-gather", true),
        ("--use-distributed-optimizer", true), ("--use-megatron-fsdp", true),
        ("--data-parallel-sharding-strategy", {"type": str, "default": "no_shard", "choices": [
            "no_shard", "optim", "optim_grads", "optim_grads_params"]}),
        ("--num-distributed-optimizer-instances", {"type": int, "default": 1}),
        ("--context-parallel-size", {"type": int, "default": 1}),
        ("--use-tp-pp-dp-mapping", true),
        # _add_training_args
        ("--micro-batch-size", num), ("--global-batch-size", num), ("--train-samples", num),
        ("--recompute-granularity", {"type": str, "default": None,
                                     "choices": ["full", "selective"]}),
        ("--recompute-method", {"type": str, "default": None, "choices": ["uniform", "block"]}),
        ("--recompute-num-layers", num),
        ("--recompute-modules", {"nargs": "*", "type": str, "default": None}),
        ("--tp-comm-overlap", true),
        ("--disable-bias-linear", {"action": "store_false", "dest": "add_bias_linear"}),
        ("--add-qkv-bias", {"action": "store_true", "dest": "add_qkv_bias"}),
        ("--optimizer-cpu-offload", true), ("--sequence-parallel", true),
        ("--no-gradient-accumulation-fusion", {"action": "store_false",
                                               "dest": "gradient_accumulation_fusion"}),
        # _add_network_size_args
        ("--num-layers", num), ("--hidden-size", num), ("--ffn-hidden-size", num),
        ("--num-attention-heads", num), ("--kv-channels", num),
        ("--attention-backend", {"type": lambda b: AttnBackend[b], "default": AttnBackend.auto,
                                 "choices": list(AttnBackend)}),
        ("--group-query-attention", true), ("--num-query-groups", {"type": int, "default": 1}),
        ("--max-position-embeddings", num),
        ("--position-embedding-type", {"type": str, "default": "learned_absolute", "choices": [
            "learned_absolute", "rope", "mrope", "relative", "none"]}),
        ("--normalization", {"default": "LayerNorm", "choices": ["LayerNorm", "RMSNorm"]}),
        ("--swiglu", true), ("--untie-embeddings-and-output-weights", true),
        ("--multi-latent-attention", true),
        # _add_regularization_args, _add_mixed_precision_args, _add_transformer_engine_args
        ("--attention-dropout", {"type": float, "default": 0.1}),
        ("--hidden-dropout", {"type": float, "default": 0.1}),
        ("--fp16", true), ("--bf16", true), ("--grad-reduce-in-bf16", true),
        ("--accumulate-allreduce-grads-in-fp32", true),
        ("--fp8-format", {"default": None, "choices": ["e4m3", "hybrid"], "dest": "fp8"}),
        # _add_tokenizer_args, _add_data_args, _add_checkpointing_args, _add_vision_args
        ("--padded-vocab-size", num), ("--seq-length", num),
        ("--ckpt-format", {"default": "torch_dist", "choices": [
            "torch", "torch_dist", "zarr", "torch_dcp", "fsdp_dtensor"]}),
        ("--qk-layernorm", true),
        # _add_moe_args, _add_mla_args, _add_experimental_args
        ("--expert-model-parallel-size", {"type": int, "default": 1}),
        ("--expert-tensor-parallel-size", num), ("--num-experts", num),
        ("--moe-layer-freq", {"type": moe_freq_type, "default": 1}),
        ("--moe-ffn-hidden-size", num), ("--moe-shared-expert-intermediate-size", num),
        ("--moe-grouped-gemm", true), ("--moe-router-topk", {"type": int, "default": 2}),
        ("--moe-token-dispatcher-type", {"type": str, "default": "allgather",
                                         "choices": ["allgather", "alltoall", "flex"]}),
        ("--moe-flex-dispatcher-backend", {"type": str, "default": "deepep",
                                           "choices": ["deepep", "hybridep"]}),
        ("--moe-router-force-load-balancing", true),
        ("--overlap-moe-expert-parallel-comm", true),
        ("--q-lora-rank", num), ("--kv-lora-rank", {"type": int, "default": 32}),
        ("--qk-head-dim", {"type": int, "default": 128}),
        ("--qk-pos-emb-head-dim", {"type": int, "default": 64}),
        ("--v-head-dim", {"type": int, "default": 128}),
        ("--use-precision-aware-optimizer", true),
        # _add_distributed_args: layers on the first / last pipeline stage, None = even split
        ("--decoder-first-pipeline-num-layers", num), ("--decoder-last-pipeline-num-layers", num),
        # _add_network_size_args: RoPE base (an int) and Llama 3.x scaling
        ("--rotary-base", {"type": int, "default": 10000}),
        ("--rotary-seq-len-interpolation-factor", num),
        ("--use-rope-scaling", true), ("--rope-scaling-factor", {"type": float, "default": 8.0}),
        # _add_training_args, _add_mla_args
        ("--rope-type", {"type": str, "default": None, "choices": ["rope", "yarn"]}),
        ("--rotary-scaling-factor", {"type": float, "default": 1.0}),
        ("--mscale", {"type": float, "default": 1.0}),
        ("--mscale-all-dim", {"type": float, "default": 0.0}),
        *(config_flag(name) for name in CONFIG_FLAGS),
    ]
    parser = argparse.ArgumentParser(allow_abbrev=False)
    for flag, kwargs in table:
        parser.add_argument(flag, **kwargs)
    return parser


def megatron_argv(text: str) -> tuple[list[str], int]:
    """pretrain_gpt.py arguments and world size (torchrun defaults) of a script."""
    argv = shlex.split(text[text.index("pretrain_gpt.py"):].replace("\\\n", " "))
    assert argv[0] == "pretrain_gpt.py" and argv[-1] == "$@"
    per_node = int(re.search(r"GPUS_PER_NODE:-(\d+)", text)[1])  # type: ignore[index]
    return argv[1:-1], per_node * int(re.search(r"NNODES:-(\d+)", text)[1])  # type: ignore[index]


def validate(args: argparse.Namespace, world: int) -> None:
    """The `validate_args` checks (arguments.py) that the emitted flags reach."""
    model = args.tensor_model_parallel_size * args.pipeline_model_parallel_size \
        * args.context_parallel_size
    assert world % model == 0
    args.data_parallel_size = world // model
    if args.expert_tensor_parallel_size is None:
        args.expert_tensor_parallel_size = args.tensor_model_parallel_size
    assert args.global_batch_size % (args.micro_batch_size * args.data_parallel_size) == 0
    assert args.num_layers_per_virtual_pipeline_stage is None
    vpp = args.num_virtual_stages_per_pipeline_rank
    args.virtual_pipeline_model_parallel_size = vpp if vpp and vpp > 1 else None
    if args.virtual_pipeline_model_parallel_size:
        assert args.pipeline_model_parallel_size > 1
        micro = args.global_batch_size // (args.micro_batch_size * args.data_parallel_size)
        assert micro % args.pipeline_model_parallel_size == 0
    elif args.decoder_first_pipeline_num_layers is None and \
            args.decoder_last_pipeline_num_layers is None:
        assert args.num_layers % args.pipeline_model_parallel_size == 0
    if args.overlap_param_gather:
        assert args.use_distributed_optimizer or args.use_megatron_fsdp
        assert args.overlap_grad_reduce
    if args.use_megatron_fsdp:
        assert args.ckpt_format == "fsdp_dtensor"
    assert not (args.fp16 and args.bf16)
    if args.recompute_granularity == "selective":
        assert args.recompute_method is None
    if args.tensor_model_parallel_size == 1:
        assert not args.sequence_parallel
    if args.tp_comm_overlap:
        assert args.sequence_parallel
    if args.context_parallel_size > 1:
        assert args.seq_length % (2 * args.context_parallel_size) == 0
    assert args.max_position_embeddings >= args.seq_length
    for name in ("num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings"):
        assert getattr(args, name) is not None, name
    if args.expert_model_parallel_size > 1:
        assert args.num_experts % args.expert_model_parallel_size == 0 and not args.fp16
    if args.moe_grouped_gemm:
        assert args.bf16
    if args.optimizer_cpu_offload:
        assert args.use_precision_aware_optimizer
    assert args.padded_vocab_size % args.tensor_model_parallel_size == 0


def core_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """Megatron-Core TransformerConfig (as `core_transformer_config_from_args` builds it) and
    DistributedDataParallelConfig; their __post_init__ checks run on construction."""
    import torch
    import torch.nn.functional as F
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.transformer import MLATransformerConfig, TransformerConfig

    cls = MLATransformerConfig if args.multi_latent_attention else TransformerConfig
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    dtype = torch.bfloat16 if args.bf16 else torch.half if args.fp16 else torch.float
    kw.update(num_moe_experts=args.num_experts, params_dtype=dtype, pipeline_dtype=dtype,
              num_query_groups=args.num_query_groups if args.group_query_attention else None,
              num_layers_in_first_pipeline_stage=args.decoder_first_pipeline_num_layers,
              num_layers_in_last_pipeline_stage=args.decoder_last_pipeline_num_layers)
    if args.rope_type is None:  # core_transformer_config_from_args: the class default
        kw.pop("rope_type", None)
    if args.swiglu:
        kw.update(activation_func=F.silu, gated_linear_unit=True)
    ddp = DistributedDataParallelConfig(
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        use_distributed_optimizer=args.use_distributed_optimizer,
        num_distributed_optimizer_instances=args.num_distributed_optimizer_instances,
        use_megatron_fsdp=args.use_megatron_fsdp,
        data_parallel_sharding_strategy=args.data_parallel_sharding_strategy)
    return cls(**kw), ddp


@params("megatron")
def test_megatron_loads(name: str, text: str) -> None:
    pytest.importorskip("megatron.core")
    argv, world = megatron_argv(text)
    args = megatron_parser().parse_args(argv)  # unknown flags or bad values exit
    validate(args, world)
    config, ddp = core_configs(args)
    plan = re.search(r"# plan: (.*)", text)[1]  # type: ignore[index]
    degrees = {"tp": 1, "pp": 1, "cp": 1, "dp": 1, "ep": 1} | {
        axis: int(n) for axis, n in re.findall(r"\b(tp|pp|cp|dp|ep)(\d+)\b", plan)}
    assert world == int(re.search(r"(\d+) GPUs", text)[1])  # type: ignore[index]
    assert (config.tensor_model_parallel_size, config.pipeline_model_parallel_size,
            config.context_parallel_size, args.data_parallel_size,
            config.expert_model_parallel_size) == tuple(degrees[a] for a in (
                "tp", "pp", "cp", "dp", "ep"))
    assert ddp.use_distributed_optimizer == ("zero0" not in plan)


def megatron_params(args: argparse.Namespace, config: Any) -> int:
    """Parameters of the GPT model Megatron-Core builds from `config` (gpt_layer_specs: the
    modules' weight shapes), counting the vocabulary unpadded as meshplan does; MTP excluded."""
    h, a, L = config.hidden_size, config.num_attention_heads, config.num_layers
    rms = config.normalization == "RMSNorm"
    norm = h if rms else 2 * h
    if config.multi_latent_attention:
        q_in = config.qk_head_dim + config.qk_pos_emb_head_dim
        q = (h * config.q_lora_rank + config.q_lora_rank + config.q_lora_rank * a * q_in
             if config.q_lora_rank else h * a * q_in)
        kv = h * (config.kv_lora_rank + config.qk_pos_emb_head_dim) + config.kv_lora_rank \
            + config.kv_lora_rank * a * (config.qk_head_dim + config.v_head_dim)
        attention = q + kv + a * config.v_head_dim * h
    else:
        d, g = config.kv_channels, config.num_query_groups or a
        attention = h * (a + 2 * g) * d + a * d * h
        if config.add_bias_linear:
            attention += (a + 2 * g) * d + h
        elif config.add_qkv_bias:
            attention += (a + 2 * g) * d
        attention += 2 * d if config.qk_layernorm else 0
    mats = 3 if config.gated_linear_unit else 2

    def mlp(ffn: int) -> int:
        return mats * h * ffn + ((mats - 1) * ffn + h if config.add_bias_linear else 0)

    freq = config.moe_layer_freq
    pattern = freq if isinstance(freq, list) else [int(i % freq == 0) for i in range(L)]
    moe_layers = sum(pattern) if config.num_moe_experts else 0
    per_moe = h * config.num_moe_experts + config.num_moe_experts * mlp(
        config.moe_ffn_hidden_size) + (mlp(config.moe_shared_expert_intermediate_size)
                                       if config.moe_shared_expert_intermediate_size else 0) \
        if moe_layers else 0
    layers = L * (attention + 2 * norm) + (L - moe_layers) * mlp(config.ffn_hidden_size) \
        + moe_layers * per_moe
    vocab = args.meshplan_vocab
    embedding = vocab * h + (args.max_position_embeddings * h
                             if args.position_embedding_type == "learned_absolute" else 0)
    head = 0 if not args.untie_embeddings_and_output_weights else vocab * h
    return layers + embedding + head + norm


@params("megatron")
def test_megatron_rebuilds_the_model(name: str, text: str) -> None:
    """The Megatron-Core config built from the export has meshplan's model: shape, numerics
    (RoPE, norm epsilon, routing, MTP) and parameter count."""
    pytest.importorskip("megatron.core")
    from meshplan.cost.params import count_params
    from meshplan.specs.io import load_model

    argv, world = megatron_argv(text)
    args = megatron_parser().parse_args(argv)
    validate(args, world)
    config, _ = core_configs(args)
    model = load_model(re.search(r"# model (\S+),", text)[1])  # type: ignore[index]
    args.meshplan_vocab = model.vocab_size
    assert args.padded_vocab_size >= model.vocab_size
    assert (config.num_layers, config.hidden_size, config.num_attention_heads) == (
        model.num_layers, model.hidden_size, model.num_attention_heads)
    assert config.ffn_hidden_size == model.ffn_hidden_size
    assert config.layernorm_epsilon == model.norm_eps
    assert (config.normalization == "RMSNorm") == (model.norm == "rmsnorm")
    assert config.gated_linear_unit == model.gated
    assert args.untie_embeddings_and_output_weights == (not model.tied_embeddings)
    assert (config.add_bias_linear, config.add_qkv_bias and not config.add_bias_linear,
            config.qk_layernorm) == (model.linear_bias, model.qkv_bias, model.qk_norm)
    assert (config.mtp_num_layers or 0) == model.mtp_layers
    if model.position_embedding == "rope":
        assert args.rotary_base == model.rope_theta
        sc = model.rope_scaling
        if model.mla is not None:
            assert config.rope_type == ("yarn" if sc else "rope")
            if sc is not None:  # MLATransformerConfig's YaRN settings
                assert (config.rotary_scaling_factor, config.original_max_position_embeddings,
                        config.beta_fast, config.beta_slow, config.mscale,
                        config.mscale_all_dim) == (sc.factor, sc.original_max_position_embeddings,
                                                   sc.beta_fast, sc.beta_slow, sc.mscale,
                                                   sc.mscale_all_dim)
        else:
            assert args.use_rope_scaling == (sc is not None and sc.type == "llama3")
            if sc is not None:
                assert args.rope_scaling_factor == sc.factor
    if model.mla is None:
        assert config.kv_channels == model.head_size
        assert (config.num_query_groups or config.num_attention_heads) == model.kv_heads
    else:
        m = model.mla
        assert ((config.q_lora_rank or 0), config.kv_lora_rank, config.qk_head_dim,
                config.qk_pos_emb_head_dim, config.v_head_dim) == (
                    m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim,
                    m.v_head_dim)
    if model.moe is not None:
        moe = model.moe
        assert (config.num_moe_experts, config.moe_router_topk, config.moe_ffn_hidden_size) == (
            moe.num_experts, moe.top_k, moe.expert_ffn_hidden_size)
        assert (config.moe_shared_expert_intermediate_size or 0) == \
            moe.num_shared_experts * moe.shared_expert_ffn_hidden_size
        assert (config.moe_router_score_function, config.moe_router_num_groups or 0,
                config.moe_router_group_topk or 0, config.moe_router_topk_scaling_factor or 1.0,
                config.moe_router_enable_expert_bias, config.moe_expert_capacity_factor) == (
                    moe.router_score, moe.router_groups, moe.router_group_top_k,
                    moe.router_scaling, moe.router_expert_bias, moe.capacity_factor)
        # Softmax after top-k renormalises; --moe-router-pre-softmax does not.
        assert (not config.moe_router_pre_softmax) == moe.normalize_top_k
    else:
        assert config.num_moe_experts is None
    assert megatron_params(args, config) == count_params(model).total


# --- torchtitan --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def titan() -> types.ModuleType:
    """torchtitan's config package, loaded without torchtitan/__init__.py, whose quantization
    registry imports triton and torchdata (not needed to parse a config)."""
    spec = importlib.util.find_spec("torchtitan")
    if spec is None:
        pytest.skip("torchtitan not installed (scripts/install-engines.sh)")
    pytest.importorskip("tyro")
    from importlib.metadata import version

    if not version("torchtitan").startswith("0.2."):
        pytest.skip(f"torchtitan {version('torchtitan')}: TOML job configs need 0.2.x "
                    "(scripts/install-engines.sh pins 0.2.2)")
    if "torchtitan.config" not in sys.modules:
        stub = types.ModuleType("torchtitan")
        stub.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["torchtitan"] = stub
    import torchtitan.config as config

    return config


def flavor_args(root: Path, name: str, flavor: str) -> dict[str, str]:
    """The keyword arguments of a registered flavor, read from models/<name>/__init__.py."""
    tree = ast.parse((root / "models" / name / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == flavor:
                    return {a.arg: ast.unparse(a.value) for a in value.keywords  # type: ignore
                            if a.arg}
    raise AssertionError(f"no flavor {name}/{flavor}")


@params("torchtitan")
def test_torchtitan_loads(name: str, text: str, titan: types.ModuleType,
                          tmp_path: Path) -> None:
    from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class
    from torchtitan.distributed.parallel_dims import ParallelDims

    path = tmp_path / "job.toml"
    path.write_text(text)
    cfg = titan.ConfigManager().parse_args(["--job.config_file", str(path)])
    raw = tomllib.loads(text)
    for section, values in raw.items():
        for key, value in values.items():
            if not isinstance(value, dict):
                assert getattr(getattr(cfg, section), key) == value, (section, key)
    par, train = cfg.parallelism, cfg.training
    dims = ParallelDims(dp_replicate=par.data_parallel_replicate_degree,
                        dp_shard=par.data_parallel_shard_degree, cp=par.context_parallel_degree,
                        tp=par.tensor_parallel_degree, pp=par.pipeline_parallel_degree,
                        ep=par.expert_parallel_degree, etp=par.expert_tensor_parallel_degree,
                        world_size=int(re.search(r"(\d+) GPUs", text)[1]))  # type: ignore[index]
    batch = dims.dp_replicate * dims.dp_shard
    assert train.global_batch_size % (train.local_batch_size * batch) == 0
    assert train.local_batch_size % par.pipeline_parallel_microbatch_size == 0
    root = Path(titan.__file__).parents[1]
    args = flavor_args(root, cfg.model.name, cfg.model.flavor)
    assert "dim" in args and "n_layers" in args
    if dims.pp > 1:  # distributed/pipeline_parallel.py pipeline_llm
        single = issubclass(get_schedule_class(par.pipeline_parallel_schedule),
                            PipelineScheduleSingle)
        layers = int(args["n_layers"]) + par.pipeline_parallel_first_stage_less_layers \
            + par.pipeline_parallel_last_stage_less_layers
        stages = math.ceil(layers / par.pipeline_parallel_layers_per_stage)
        assert stages % dims.pp == 0
        assert (stages // dims.pp == 1) if single else (stages // dims.pp >= 2)
    if "quantize.linear.float8" in cfg.model.converters:
        source = (root / "components/quantization/float8.py").read_text()
        assert 'register_model_converter(Float8LinearConverter, "quantize.linear.float8")' \
            in source


# --- DeepSpeed ---------------------------------------------------------------------------------

@params("deepspeed")
def test_deepspeed_loads(name: str, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepspeed")
    import deepspeed.runtime.config as ds_config
    from deepspeed.module_inject.auto_ep_config import parse_autoep_config, validate_autoep_config

    cfg = json.loads(text)
    dp = cfg["train_batch_size"] // (cfg["train_micro_batch_size_per_gpu"]
                                     * cfg["gradient_accumulation_steps"])

    class MPU:
        def get_data_parallel_world_size(self) -> int:
            return dp

    # Without torch.distributed DeepSpeedConfig falls back to world size 1; pretend rank 0.
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    ds = ds_config.DeepSpeedConfig(cfg, mpu=MPU())
    assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu,
            ds.gradient_accumulation_steps) == (cfg["train_batch_size"],
                                                cfg["train_micro_batch_size_per_gpu"],
                                                cfg["gradient_accumulation_steps"])
    zero = cfg["zero_optimization"]
    assert ds.zero_optimization_stage == zero["stage"]
    assert ds.zero_config.overlap_comm == zero["overlap_comm"]
    if "offload_optimizer" in zero:
        assert ds.zero_config.offload_optimizer.device == "cpu"
    tp = cfg.get("tensor_parallel", {}).get("autotp_size", 0)
    assert ds.tensor_parallel_config.autotp_size == tp
    world = int(re.search(r"(\d+) GPUs", cfg["_meshplan"]["header"][1])[1])  # type: ignore
    if "pipeline" in cfg:
        assert ds.pipeline["stages"] == cfg["pipeline"]["stages"]
    if "expert_parallel" in cfg:
        ep = parse_autoep_config(cfg["expert_parallel"])
        validate_autoep_config(ep, world_size=world, pp_size=cfg.get("pipeline", {}).get(
            "stages", 1), tp_size=max(tp, 1), sp_size=1, zero_stage=zero["stage"])
        assert ep.enabled and ep.autoep_size == cfg["expert_parallel"]["autoep_size"]


def class_defaults(root: Path, name: str) -> dict[str, str]:
    """Field defaults of the dataclasses in models/<name>/model/args.py (ModelArgs, and for
    llama3 RoPEScalingArgs), as source text."""
    tree = ast.parse((root / "models" / name / "model" / "args.py").read_text())
    return {node.target.id: ast.unparse(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and node.value is not None}


def flavor_numerics(root: Path, name: str, args: dict[str, str]) -> dict[str, Any]:
    """A registered flavor's numerics, read from its registry entry and ModelArgs defaults, in
    meshplan's `Flavor.numerics` form."""
    defaults = class_defaults(root, name)
    value = {**defaults, **args}
    scaling = None
    if name == "llama3":  # precompute_freqs_cis always applies RoPEScalingArgs
        scaling = ("llama3", float(defaults["scaling_factor"]),
                   int(defaults["original_max_position_embeddings"]))
    elif name == "deepseek_v3":
        scaling = ("yarn", float(value["rope_factor"]), int(value["original_seq_len"]))
    router = None
    if "moe_args" in args:
        m = dict(re.findall(r"(\w+)=([^,()]+)", args["moe_args"]))
        router = (m["score_func"].strip("'\""), m.get("route_norm", "False") == "True",
                  int(m.get("num_expert_groups", "0")), int(m.get("num_limited_groups", "0")),
                  float(m.get("route_scale", "1.0")))
    return {"rope_theta": float(value["rope_theta"]), "rope_scaling": scaling,
            "norm_eps": float(value["norm_eps"]), "mtp_layers": 0, "router": router}


def llama_ffn(dim: int, multiplier: float, multiple_of: int) -> int:
    """models/llama3/model/model.py FeedForward: hidden size from dim, multiplier, rounding."""
    hidden = int(multiplier * int(2 * 4 * dim / 3))
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def test_torchtitan_flavor_table_mirrors_the_release(titan: types.ModuleType) -> None:
    """meshplan's FLAVORS table states the shapes torchtitan's own flavor registry builds."""
    from meshplan.export.torchtitan import FLAVORS

    root = Path(titan.__file__).parents[1]
    for flavor in FLAVORS:
        a = flavor_args(root, flavor.name, flavor.flavor)
        layers, hidden, heads, kv, _, ffn, vocab, tied, qk_norm, moe, mla = flavor.shape
        assert (int(a["n_layers"]), int(a["dim"]), int(a["n_heads"])) == (layers, hidden, heads)
        assert int(a.get("n_kv_heads", heads)) == kv, flavor
        if flavor.name == "llama3":
            ffn_args = (int(a["dim"]), float(a["ffn_dim_multiplier"]), int(a["multiple_of"]))
            assert llama_ffn(*ffn_args) == ffn, flavor
        else:
            assert int(a.get("hidden_dim", a.get("inter_dim", "0"))) == ffn, flavor
        assert (a.get("qk_norm") == "True") == qk_norm, flavor
        assert int(a.get("vocab_size", "128256")) == vocab, flavor  # llama3 args.py default
        assert (a.get("enable_weight_tying") == "True") == tied, flavor
        if moe:
            numbers = dict(re.findall(r"(\w+)=(\d+)", a["moe_args"]))
            assert (int(numbers["num_experts"]), int(numbers["top_k"]),
                    int(a["moe_inter_dim"]), int(numbers["num_shared_experts"]),
                    int(a.get("n_dense_layers", "0"))) == moe, flavor
        if mla:
            assert tuple(int(a[k]) for k in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                                             "qk_rope_head_dim", "v_head_dim")) == mla, flavor
        assert (a.get("attn_type", "'sdpa'") == "'sdpa'") == flavor.sdpa, flavor
        assert flavor_numerics(root, flavor.name, a) == flavor.numerics, flavor


# --- torchtitan 0.3.0 ---------------------------------------------------------------------------

TITAN03: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("llama3.1-8b", {"global_batch_size": 512, "seq_len": 8192},
     {"dp": 64, "zero_stage": 3, "recompute": "full"}),
    ("llama3.1-8b", {"global_batch_size": 64, "seq_len": 4096},
     {"pp": 4, "dp": 16, "zero_stage": 3, "schedule": "zb-v", "offload_optimizer": True,
      "recompute": "selective"}),
    ("llama3.1-70b", {"global_batch_size": 256, "seq_len": 8192},
     {"tp": 8, "pp": 2, "dp": 4, "zero_stage": 3, "schedule": "interleaved-1f1b",
      "tp_comm_overlap": True}),
    ("llama3.1-8b", {"global_batch_size": 64, "seq_len": 8192},
     {"tp": 2, "cp": 2, "dp": 2, "zero_stage": 3, "micro_batch_size": 2}),
    ("llama3.1-8b", {"global_batch_size": 64, "seq_len": 4096}, {"dp": 8, "zero_stage": 0}),
    ("qwen3-30b-a3b", {"global_batch_size": 512, "seq_len": 4096},
     {"dp": 64, "ep": 8, "zero_stage": 2}),
    ("llama3.1-70b", {"global_batch_size": 2048, "seq_len": 8192},
     {"tp": 8, "pp": 4, "dp": 16, "zero_stage": 3, "recompute": "full"}),
]
"""Plans exported as torchtitan 0.3.0 launch scripts (Llama 3.1 and Qwen3 MoE flavors).
llama3_405b is left out: its config function builds Float8 linears when parsed, which needs
an SM89+ GPU (float8.py), so it cannot be parsed on a CPU machine."""


def titan03_python() -> str:
    """An interpreter with torchtitan 0.3.0 (it cannot share an environment with 0.2.2)."""
    python = os.environ.get("TORCHTITAN03_PYTHON") or str(
        Path(__file__).resolve().parents[2] / ".venv-torchtitan03" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip("torchtitan 0.3 not installed: scripts/install-engines.sh makes "
                    ".venv-torchtitan03 (or set TORCHTITAN03_PYTHON)")
    return python


@pytest.fixture(scope="module")
def titan03_parsed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every TITAN03 export parsed by torchtitan 0.3.0's ConfigManager, in one interpreter."""
    import subprocess

    python = titan03_python()
    folder = tmp_path_factory.mktemp("titan03")
    paths = []
    for i, (model, job, plan) in enumerate(TITAN03):
        path = folder / f"job{i}.sh"
        path.write_text(export(Plan(**plan), "torchtitan", model=model, job=Job(**job),
                               engine_version="0.3.0"))
        paths.append(str(path))
    run = subprocess.run([python, str(Path(__file__).with_name("torchtitan03_check.py")),
                          *paths], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("case", range(len(TITAN03)))
def test_torchtitan_03_loads(case: int, titan03_parsed: list[dict[str, Any]]) -> None:
    """torchtitan 0.3.0 parses the launch line and its config function builds meshplan's model:
    the parameter count (meta-device build), RoPE base and norm epsilon, the mesh, the batch."""
    from meshplan.cost.params import count_params
    from meshplan.specs.io import load_model

    name, job, plan_kw = TITAN03[case]
    got, model, plan = titan03_parsed[case], load_model(name), Plan(**plan_kw)
    assert got["params"] == count_params(model).total
    assert (got["theta"], got["eps"]) == ([model.rope_theta], [model.norm_eps])
    replicate = plan.dp // plan.dp_shard if plan.zero_stage else plan.dp
    shard = plan.dp_shard if plan.zero_stage else 1
    assert got["degrees"] == [replicate, shard, plan.tp, plan.pp, plan.cp, plan.ep]
    local, glob, seq, _ = got["batch"]
    assert (glob, seq) == (job["global_batch_size"], job["seq_len"])
    assert local == (glob // plan.dp if plan.pp > 1 else plan.micro_batch_size)
    assert got["ac"] == {"none": None, "full": "FullAC", "selective": "SelectiveAC"}[
        plan.recompute]
    assert (got["async_tp"], got["offload"]) == (plan.tp_comm_overlap, plan.offload_optimizer)
