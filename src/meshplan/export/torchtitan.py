"""torchtitan: a TOML job config (`--job.config_file`) for a registered model flavor.

Keys and their meaning mirror torchtitan 0.2.2, the last PyPI release that reads TOML job
configs (`torchtitan/config/job_config.py`, `config/manager.py`); 0.3.0 replaced them with Python
config registries. Constraints mirror `distributed/parallel_dims.py` (mesh and EP rules),
`distributed/pipeline_parallel.py` (stages per rank), `models/*/infra/parallelize.py` (FSDP2,
HSDP, DDP only for 1-D meshes, async TP needs compile) and each model's `__init__.py` (flavors).
Schedule names are those of torch's `pipelining.schedules.get_schedule_class`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import tomli_w

from meshplan.export._common import (
    DEFAULT_AXIS_ORDER,
    Refusal,
    check,
    constant,
    field_value,
    header,
    order_refusal,
    schedule_refusals,
    uneven,
    uneven_value,
)
from meshplan.schedules.registry import SCHEDULE_SPECS, schedule_spec
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import MOE_DISPATCHERS, Plan, PlanArrays

ENGINE = "torchtitan 0.2.2"
SOURCE = "torchtitan 0.2.2 torchtitan/config/job_config.py"


class Flavor(NamedTuple):
    """A registered torchtitan model flavor and the shape it builds."""

    name: str
    flavor: str
    shape: tuple[Any, ...]
    """(layers, hidden, heads, kv heads, head dim, ffn, vocab, tied, qk_norm, moe, mla)."""
    numerics: dict[str, Any]
    """RoPE, norm and router settings the flavor's ModelArgs fix (`_numerics`)."""
    hf_repo: str
    """Hugging Face repository of the tokenizer (torchtitan's scripts/download_hf_assets.py)."""
    pipelining: bool = True
    """TrainSpec.pipelining_fn is set (qwen3 has none in 0.2.2)."""
    sdpa: bool = True
    """SDPA attention (context parallelism refuses flex attention)."""


def _shape(layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int, head_dim: int = 0,
           tied: bool = False, qk_norm: bool = False, moe: tuple[int, ...] | None = None,
           mla: tuple[int, ...] | None = None) -> tuple[Any, ...]:
    return (layers, hidden, heads, kv, head_dim or hidden // heads, ffn, vocab, tied, qk_norm,
            moe, mla)


NUMERIC_FIELDS = ("rope_theta", "rope_scaling", "norm_eps", "mtp_layers", "router")


def _numerics(theta: float, eps: float, scaling: tuple[Any, ...] | None = None,
              router: tuple[Any, ...] | None = None) -> dict[str, Any]:
    """A flavor's numerics in `model_numerics` form. scaling: (type, factor, original length);
    router: (score, normalised, groups, group top-k, scale). torchtitan has no MTP."""
    return {"rope_theta": float(theta), "rope_scaling": scaling, "norm_eps": eps,
            "mtp_layers": 0, "router": router}


# models/llama3/model/args.py: norm_eps 1e-5, RoPEScalingArgs (8, 1, 4, 8192) always applied.
_LLAMA3 = _numerics(500000, 1e-5, ("llama3", 8.0, 8192))
# models/qwen3/model/args.py norm_eps 1e-6; __init__.py rope_theta, MoEArgs(softmax, route_norm).
_QWEN3, _QWEN3_MOE = _numerics(1e6, 1e-6), _numerics(1e6, 1e-6, router=("softmax", True, 0, 0,
                                                                          1.0))
# models/deepseek_v3/model/args.py: norm_eps 1e-5, YaRN (factor 40, original_seq_len 4096);
# __init__.py MoEArgs per flavor.
_DSV3_YARN = ("yarn", 40.0, 4096)

_QWEN3_235B = _numerics(5e6, 1e-6, router=("softmax", True, 0, 0, 1.0))
_DSV3_16B = _numerics(1e4, 1e-5, _DSV3_YARN, ("softmax", False, 0, 0, 1.0))
_DSV3_236B = _numerics(1e4, 1e-5, _DSV3_YARN, ("softmax", False, 8, 3, 16.0))
_DSV3_671B = _numerics(1e4, 1e-5, _DSV3_YARN, ("sigmoid", True, 8, 4, 2.5))

FLAVORS = (
    # models/llama3/__init__.py: ffn = multiple_of-rounded ffn_dim_multiplier * 8/3 * dim
    Flavor("llama3", "8B", _shape(32, 4096, 32, 8, 14336, 128256), _LLAMA3,
           "meta-llama/Llama-3.1-8B"),
    Flavor("llama3", "70B", _shape(80, 8192, 64, 8, 28672, 128256), _LLAMA3,
           "meta-llama/Llama-3.1-70B"),
    Flavor("llama3", "405B", _shape(126, 16384, 128, 8, 53248, 128256), _LLAMA3,
           "meta-llama/Llama-3.1-405B"),
    # models/qwen3/__init__.py (moe: experts, top_k, expert ffn, shared, dense layers)
    Flavor("qwen3", "0.6B", _shape(28, 1024, 16, 8, 3072, 151936, 128, True, True),
           _QWEN3, "Qwen/Qwen3-0.6B", pipelining=False),
    Flavor("qwen3", "1.7B", _shape(28, 2048, 16, 8, 6144, 151936, 128, True, True),
           _QWEN3, "Qwen/Qwen3-1.7B", pipelining=False),
    Flavor("qwen3", "4B", _shape(36, 2560, 32, 8, 9728, 151936, 128, True, True),
           _QWEN3, "Qwen/Qwen3-4B", pipelining=False),
    Flavor("qwen3", "8B", _shape(36, 4096, 32, 8, 12288, 151936, 128, False, True),
           _QWEN3, "Qwen/Qwen3-8B", pipelining=False),
    Flavor("qwen3", "14B", _shape(40, 5120, 40, 8, 17408, 151936, 128, False, True),
           _QWEN3, "Qwen/Qwen3-14B", pipelining=False),
    Flavor("qwen3", "32B", _shape(64, 5120, 64, 8, 25600, 151936, 128, False, True),
           _QWEN3, "Qwen/Qwen3-32B", pipelining=False),
    Flavor("qwen3", "30B-A3B", _shape(48, 2048, 32, 4, 6144, 151936, 128, False, True,
                                      (128, 8, 768, 0, 0)),
           _QWEN3_MOE, "Qwen/Qwen3-30B-A3B", pipelining=False),
    Flavor("qwen3", "235B-A22B", _shape(94, 4096, 64, 4, 12288, 151936, 128, False, True,
                                        (128, 8, 1536, 0, 0)),
           _QWEN3_235B, "Qwen/Qwen3-235B-A22B", pipelining=False),
    # models/deepseek_v3/__init__.py (mla: q_lora, kv_lora, qk nope, qk rope, v); flex attention
    Flavor("deepseek_v3", "16B", _shape(27, 2048, 16, 16, 10944, 102400, 192, moe=(
        64, 6, 1408, 2, 1), mla=(0, 512, 128, 64, 128)), _DSV3_16B,
        "deepseek-ai/deepseek-moe-16b-base", sdpa=False),
    Flavor("deepseek_v3", "236B", _shape(60, 5120, 128, 128, 12288, 102400, 192, moe=(
        160, 6, 1536, 2, 1), mla=(1536, 512, 128, 64, 128)), _DSV3_236B,
        "deepseek-ai/DeepSeek-V2", sdpa=False),
    Flavor("deepseek_v3", "671B", _shape(61, 7168, 128, 128, 18432, 129280, 192, moe=(
        256, 8, 2048, 1, 3), mla=(1536, 512, 128, 64, 128)), _DSV3_671B,
        "deepseek-ai/DeepSeek-V3.1-Base", sdpa=False),
)


def model_shape(model: Model) -> tuple[Any, ...]:
    """The meshplan model in the same tuple form as `Flavor.shape`."""
    moe = mla = None
    if model.moe is not None:
        m = model.moe
        moe = (m.num_experts, m.top_k, m.expert_ffn_hidden_size, m.num_shared_experts,
               m.num_dense_layers)
    if model.mla is not None:
        a = model.mla
        mla = (a.q_lora_rank, a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim,
               a.v_head_dim)
    return (model.num_layers, model.hidden_size, model.num_attention_heads, model.kv_heads,
            model.head_size, model.ffn_hidden_size, model.vocab_size, model.tied_embeddings,
            model.qk_norm, moe, mla)


def model_numerics(model: Model) -> dict[str, Any]:
    """The meshplan model's numerics in the same form as `Flavor.numerics`. The expert-bias
    (aux-loss-free) balancing is not compared: torchtitan's load_balance_coeff turns it on for
    every MoE flavor, a training setting (`_notes` says so) rather than a different network."""
    sc, moe = model.rope_scaling, model.moe
    return {"rope_theta": model.rope_theta,
            "rope_scaling": None if sc is None else (sc.type, sc.factor,
                                                     sc.original_max_position_embeddings),
            "norm_eps": model.norm_eps, "mtp_layers": model.mtp_layers,
            "router": None if moe is None else (moe.router_score, moe.normalize_top_k,
                                                moe.router_groups, moe.router_group_top_k,
                                                moe.router_scaling)}


def numeric_differences(model: Model) -> str:
    """'field (flavor value vs model value), ...' where the flavor of the model's shape fixes
    other numerics than the model has; '' when they agree (or no flavor has the shape)."""
    flavor = _flavor(model)
    if flavor is None:
        return ""
    mine = model_numerics(model)
    return ", ".join(f"{k} ({flavor.numerics[k]} vs {mine[k]})" for k in NUMERIC_FIELDS
                     if flavor.numerics[k] != mine[k])


def render(model: Model, job: Job, plan: Plan, cluster: Cluster | None = None) -> str:
    """The TOML job config, opened by comment lines that name the plan and any caveats."""
    check(ENGINE, REFUSALS, model, job, plan)
    flavor = _flavor(model)
    assert flavor is not None
    notes = _notes(plan)
    config: dict[str, Any] = {
        "job": {"description": f"meshplan: {model.name} {plan.describe()}"},
        "model": _model(job, flavor),
        "training": training_section(job, plan),
        "parallelism": parallelism_section(model, plan),
        "activation_checkpoint": _activation_checkpoint(model, plan),
    }
    if job.precision == "fp8" or plan.tp_comm_overlap:
        config["compile"] = {"enable": True, "components": ["model", "loss"]}
    if job.precision == "fp8":
        config["quantize"] = {"linear": {"float8": _float8(plan)}}
    lines = [*header(ENGINE, SOURCE, model, job, plan), *notes,
             f"tokenizer: python scripts/download_hf_assets.py --repo_id {flavor.hf_repo} "
             "--assets tokenizer",
             "run: CONFIG_FILE=<this file> ./run_train.sh (torchtitan repository)"]
    return "".join(f"# {line}\n" for line in lines) + "\n" + tomli_w.dumps(config)


def _flavor(model: Model) -> Flavor | None:
    """The registered flavor with exactly this shape (torchtitan's TOML cannot carry a shape),
    or None."""
    shape = model_shape(model)
    return next((f for f in FLAVORS if f.shape == shape), None)


def _flavor_lacks(model: Model, feature: str) -> bool:
    flavor = _flavor(model)
    return flavor is not None and not getattr(flavor, feature)


def _named(model: Model, with_flavor: bool = False) -> str:
    f = _flavor(model)
    assert f is not None
    return f"{f.name}/{f.flavor}" if with_flavor else f.name


_MULTI_STAGE = [i for i, s in enumerate(SCHEDULE_SPECS) if s.takes_chunks]
_KNOWN = ", ".join(f"{f.name}/{f.flavor}" for f in FLAVORS)

def _block_every(model: Model, P: PlanArrays) -> np.ndarray:
    """Per plan, k where full recompute of N layers per chunk is torchtitan's layer SAC of
    every k-th block (selective_ac_option = "k", activation_checkpoint.py
    _apply_ac_to_transformer_block: a block is wrapped whole when its count % k == 0): k =
    chunk / N; 0 where the plan has no block recompute, -1 where N does not divide the chunk."""
    n = np.zeros(len(P), np.int64) if P.recompute_layers is None else P.recompute_layers
    chunk = model.num_layers // (P.pp * P.vpp)
    partial = (P.recompute == 2) & (n > 0) & (n < chunk)
    return np.where(partial, np.where(chunk % np.maximum(n, 1) == 0,
                                      chunk // np.maximum(n, 1), -1), 0)


def block_recompute_refusal(hint: str) -> Refusal:
    """Refuse block recompute that is no every-k-th-block SAC (`_block_every`)."""
    return Refusal("recompute_num_layers", lambda M, J, P: _block_every(M, P) < 0,
                   field_value("recompute_layers"), "checkpoints every k-th block whole "
                   "(selective_ac_option = k), so the layers recomputed per stage chunk must "
                   "divide it" + hint)


REFUSALS: tuple[Refusal, ...] = (
    Refusal("model", lambda M, J, P: _flavor(M) is None, lambda M, J, P, i: M.name,
            f"builds only its registered flavors ({_KNOWN}) and a TOML job config cannot "
            "carry other shapes"),
    Refusal("model", lambda M, J, P: bool(numeric_differences(M)), lambda M, J, P, i: M.name,
            lambda M, J, P, i: f"flavor {_named(M, True)} has the same shape but trains other "
            f"numerics (flavor vs model): {numeric_differences(M)}"),
    order_refusal({DEFAULT_AXIS_ORDER: None}),
    Refusal("precision", lambda M, J, P: J.precision == "fp16", constant("fp16"),
            "trains in bfloat16 or float32 (training.mixed_precision_param), plus float8 "
            "GEMMs for fp8"),
    Refusal("grad_bytes", lambda M, J, P: J.grad_bytes == 2, constant(2),
            "reduces gradients in float32 only (training.mixed_precision_reduce)"),
    Refusal("sequence_parallel", lambda M, J, P: (P.tp > 1) & ~P.sp, constant(False),
            "always applies sequence parallelism with tensor parallelism"),
    Refusal("pp", lambda M, J, P: (P.pp > 1) & _flavor_lacks(M, "pipelining"),
            field_value("pp"),
            lambda M, J, P, i: f"has no pipelining function for {_named(M)}"),
    Refusal("cp", lambda M, J, P: (P.cp > 1) & _flavor_lacks(M, "sdpa"), field_value("cp"),
            lambda M, J, P, i: f"context parallelism needs SDPA attention; {_named(M, True)} "
            "uses flex attention"),
    Refusal("etp", lambda M, J, P: (P.ep > 1) & (P.etp != 1) & (P.etp != P.tp),
            field_value("etp"), "supports expert tensor parallelism of 1 or tp "
            "(parallel_dims.py)"),
    Refusal("ep", lambda M, J, P: (P.dp_shard * P.cp * P.tp) % (P.ep * P.etp) > 0,
            field_value("ep"), lambda M, J, P, i: "carves experts out of dp_shard * cp * tp "
            f"= {int(P.dp_shard[i] * P.cp[i] * P.tp[i])} (parallel_dims.py)"),
    Refusal("moe_dispatcher", lambda M, J, P: (P.ep > 1) & (P.dispatchers() != 0),
            lambda M, J, P, i: MOE_DISPATCHERS[int(P.dispatchers()[i])],
            "moves expert tokens with its own all-to-all (distributed/expert_parallel.py); "
            "export DeepEP / HybridEP / allgather dispatch to Megatron-LM"),
    Refusal("moe_force_balanced", lambda M, J, P: P.balanced(), constant(True),
            "has no command-line option that forces even routing (a Megatron-LM "
            "benchmarking option, --moe-router-force-load-balancing)"),
    Refusal("zero_stage", lambda M, J, P: P.zero == 1, constant(1),
            "shards with FSDP2 (zero_stage 3, or 2 with reshard_after_forward=never) or "
            "replicates with DDP (zero_stage 0); it has no optimizer-only sharding"),
    Refusal("zero_stage", lambda M, J, P: (P.zero == 0) & (P.dp > 1)
            & (np.maximum(np.maximum(P.tp, P.pp), P.cp) > 1), constant(0),
            "runs DDP only without other parallelism (\"DDP has not supported > 1D "
            "parallelism\")"),
    Refusal("zero_stage", lambda M, J, P: (P.zero == 0) & (P.cp > 1), constant(0),
            "always shards weights over the cp ranks with FSDP2 (parallel_dims.py)"),
    block_recompute_refusal("; export to Megatron-LM (--recompute-method block)"),
    Refusal("first_stage_layers", lambda M, J, P: uneven(P), uneven_value,
            "splits layers by equal stages with a count of 'less layers' on the ends, not by "
            "explicit end-rank layer counts; export to Megatron-LM or use an even split"),
    # ScheduleSpec.torchtitan: torch's class names (pipelining.schedules.get_schedule_class).
    *schedule_refusals("torchtitan", "InterleavedZeroBubble (zb-h1) needs >= 2 stages per "
                       "rank and torch has no ZB-H2"),
    Refusal("vpp", lambda M, J, P: (P.pp > 1) & np.isin(P.schedule, _MULTI_STAGE) & (P.vpp < 2),
            field_value("vpp"), lambda M, J, P, i: f"runs "
            f"{SCHEDULE_SPECS[int(P.schedule[i])].torchtitan}, a multi-stage schedule, with "
            ">= 2 stages per rank only (distributed/pipeline_parallel.py)"),
)
"""What torchtitan 0.2.2 cannot run as planned (parallel_dims.py, pipeline_parallel.py)."""


def _notes(plan: Plan) -> list[str]:
    """Caveats worth a comment: where torchtitan runs its nearest equivalent."""
    notes = []
    if plan.ep > 1 or plan.etp > 1:
        notes.append("MoE load balancing: torchtitan's flavors balance with a per-expert bias "
                     "(MoEArgs.load_balance_coeff 1e-3)")
    if plan.zero_stage == 2:
        notes.append("zero_stage 2 -> FSDP2 with reshard_after_forward=never (ZeRO-2-like: "
                     "weights stay gathered between forward and backward)")
    if plan.offload_optimizer:
        notes.append("offload_optimizer -> training.enable_cpu_offload: FSDP2 CPUOffloadPolicy "
                     "also keeps the sharded weights and gradients on the host")
    if plan.recompute == "selective":
        notes.append("recompute selective -> op-level SAC, torchtitan's nearest policy: it "
                     "saves matmul and attention outputs (recomputes every other matmul)")
    return notes


def _model(job: Job, flavor: Flavor) -> dict[str, Any]:
    model: dict[str, Any] = {"name": flavor.name, "flavor": flavor.flavor,
                             "hf_assets_path": hf_assets(flavor)}
    if job.precision == "fp8":
        model["converters"] = ["quantize.linear.float8"]
    return model


def hf_assets(flavor: Flavor) -> str:
    """Where scripts/download_hf_assets.py puts the flavor's tokenizer."""
    return "./assets/hf/" + flavor.hf_repo.split("/")[1]


def training_section(job: Job, plan: Plan) -> dict[str, Any]:
    """local_batch_size is one forward's batch per DP rank; with pp > 1 the pipeline splits it
    into micro-batches, otherwise the trainer accumulates global / (local * dp) of them."""
    local = job.global_batch_size // plan.dp if plan.pp > 1 else plan.micro_batch_size
    training: dict[str, Any] = {"local_batch_size": local,
                                "global_batch_size": job.global_batch_size,
                                "seq_len": job.seq_len,
                                "mixed_precision_param": "bfloat16",
                                "mixed_precision_reduce": "float32"}
    if plan.offload_optimizer:
        training["enable_cpu_offload"] = True
    if job.token_budget is not None:
        training["steps"] = math.ceil(job.token_budget / job.tokens_per_step)
    return training


def parallelism_section(model: Model, plan: Plan) -> dict[str, Any]:
    if plan.zero_stage == 0:
        replicate, shard = plan.dp, 1
    else:
        replicate, shard = plan.dp // plan.dp_shard, plan.dp_shard
    par: dict[str, Any] = {
        "data_parallel_replicate_degree": replicate,
        "data_parallel_shard_degree": shard,
        "fsdp_reshard_after_forward": "never" if plan.zero_stage == 2 else "default",
        "tensor_parallel_degree": plan.tp,
        "disable_loss_parallel": False,
        "enable_async_tensor_parallel": plan.tp_comm_overlap,
        "pipeline_parallel_degree": plan.pp,
        "context_parallel_degree": plan.cp,
        "expert_parallel_degree": plan.ep,
        "expert_tensor_parallel_degree": plan.etp if plan.ep > 1 else 1,
    }
    if plan.pp > 1:
        stages = plan.pp * plan.vpp
        par.update({
            "pipeline_parallel_schedule": schedule_spec(plan.schedule).torchtitan,
            "pipeline_parallel_microbatch_size": plan.micro_batch_size,
            "pipeline_parallel_layers_per_stage": model.num_layers // stages,
            "pipeline_parallel_first_stage_less_layers": 0,
            "pipeline_parallel_last_stage_less_layers": 0,
        })
    return par


def _activation_checkpoint(model: Model, plan: Plan) -> dict[str, Any]:
    ac: dict[str, Any] = {"mode": plan.recompute}  # none, selective, full: same names
    if plan.recompute == "selective":
        ac["selective_ac_option"] = "op"
    every = int(_block_every(model, PlanArrays.from_plans([plan]))[0])
    if every > 0:  # recompute_num_layers of each chunk: layer SAC, one block in `every`
        ac.update(mode="selective", selective_ac_option=str(every))
    return ac


def _float8(plan: Plan) -> dict[str, Any]:
    """Float8 linears (torchao); tensorwise scaling with float8 all-gather under FSDP2."""
    fp8: dict[str, Any] = {"filter_fqns": ["output"]}
    if plan.zero_stage >= 2 and plan.dp_shard * plan.cp > 1:
        fp8.update({"enable_fsdp_float8_all_gather": True,
                    "precompute_float8_dynamic_scale_for_fsdp": True})
    return fp8
