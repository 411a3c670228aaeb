"""Export to Megatron-LM, torchtitan and DeepSpeed: golden files, read-back of every setting,
honest refusals, the Python API and the `meshplan export` command.

Golden files compare byte for byte; `UPDATE_GOLDENS=1 pytest tests/unit/test_export.py`
rewrites them.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from meshplan import Job, MeshplanError, Plan, estimate, load_model
from meshplan.cli.export_cmd import register, write
from meshplan.cli.options import build_inputs
from meshplan.export import TARGETS, export
from meshplan.export.api import pick

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "export"
UPDATE = os.environ.get("UPDATE_GOLDENS") == "1"


def megatron_argv(text: str) -> list[str]:
    """The pretrain_gpt.py arguments of an exported script, as the shell would pass them."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("pretrain_gpt.py"))
    argv: list[str] = []
    for line in lines[start + 1:]:
        if line.strip() == '"$@"':
            return argv
        argv += shlex.split(line.strip().removesuffix("\\"))
    raise AssertionError('script does not end with "$@"')


def megatron_flags(text: str) -> dict[str, str | None]:
    argv, flags = megatron_argv(text), {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            flags[token] = None if nxt is None or nxt.startswith("--") else nxt
    return flags


CASES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    # name: (target, model, job, plan)
    "megatron-llama3-8b-tp2-pp2": ("megatron", "llama3-8b",
                                   {"global_batch_size": 512, "seq_len": 8192},
                                   {"tp": 2, "pp": 2, "dp": 16, "recompute": "selective"}),
    "megatron-llama3-70b-interleaved-cp-fp8": (
        "megatron", "llama3-70b", {"global_batch_size": 512, "seq_len": 8192, "precision": "fp8",
                                   "token_budget": 1e12},
        {"tp": 4, "pp": 4, "cp": 2, "dp": 8, "schedule": "interleaved-1f1b", "vpp": 5,
         "recompute": "full", "tp_comm_overlap": True}),
    "megatron-deepseek-v3-ep64": ("megatron", "deepseek-v3",
                                  {"global_batch_size": 4096, "seq_len": 4096},
                                  {"tp": 2, "dp": 128, "ep": 64, "etp": 1, "dp_shard": 64}),
    "megatron-llama3-8b-fsdp": ("megatron", "llama3-8b", {"global_batch_size": 64, "seq_len": 8192},
                                {"dp": 8, "zero_stage": 3, "recompute": "full"}),
    "torchtitan-llama3-8b-fsdp": ("torchtitan", "llama3.1-8b",
                                  {"global_batch_size": 16, "seq_len": 8192},
                                  {"dp": 8, "zero_stage": 3, "micro_batch_size": 2,
                                   "recompute": "selective"}),
    "torchtitan-llama3-70b-hsdp-pp-fp8": (
        "torchtitan", "llama3.1-70b", {"global_batch_size": 512, "seq_len": 8192,
                                     "precision": "fp8", "token_budget": 1e12},
        {"tp": 8, "pp": 4, "dp": 16, "dp_shard": 8, "zero_stage": 3,
         "schedule": "interleaved-1f1b", "recompute": "full", "tp_comm_overlap": True}),
    "torchtitan-qwen3-30b-a3b-ep8": ("torchtitan", "qwen3-30b-a3b",
                                     {"global_batch_size": 512, "seq_len": 4096},
                                     {"dp": 64, "ep": 8, "zero_stage": 2}),
    "deepspeed-llama3-8b-zero3-offload": ("deepspeed", "llama3-8b",
                                          {"global_batch_size": 512, "seq_len": 8192},
                                          {"dp": 64, "zero_stage": 3, "micro_batch_size": 2,
                                           "recompute": "full", "offload_optimizer": True}),
    "deepspeed-gpt-1.7b-pp4-fp16": ("deepspeed", "gpt-1.7b",
                                    {"global_batch_size": 512, "seq_len": 2048,
                                     "precision": "fp16"},
                                    {"pp": 4, "dp": 16, "micro_batch_size": 4}),
    "deepspeed-llama3-8b-autotp": ("deepspeed", "llama3-8b",
                                   {"global_batch_size": 256, "seq_len": 4096},
                                   {"tp": 2, "dp": 32, "sequence_parallel": False,
                                    "tp_comm_overlap": True}),
    "deepspeed-qwen3-30b-a3b-autoep": ("deepspeed", "qwen3-30b-a3b",
                                       {"global_batch_size": 512, "seq_len": 4096},
                                       {"dp": 64, "ep": 4, "zero_stage": 2}),
}


VERSION = {"torchtitan": "0.2.2"}
"""The goldens and refusal cases here are torchtitan 0.2.2's TOML (0.3: test_importers.py
round trips and tests/engines)."""


def render(name: str) -> str:
    target, model, job, plan = CASES[name]
    return export(Plan(**plan), target, model=model, job=Job(**job), cluster="dgx-h100",
                  engine_version=VERSION.get(target))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    text = render(name)
    target = CASES[name][0]
    path = GOLDEN / (name + pick(target, VERSION.get(target)).suffix)
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path.name}; run with UPDATE_GOLDENS=1"
    assert text == path.read_text(), f"{path.name} changed; UPDATE_GOLDENS=1 if intended"


def test_exports_are_deterministic() -> None:
    assert all(render(name) == render(name) for name in CASES)


# --- read back: every plan setting is where the engine reads it --------------------------------

def test_megatron_flags_carry_the_plan() -> None:
    text = render("megatron-llama3-70b-interleaved-cp-fp8")
    f = megatron_flags(text)
    assert (f["--tensor-model-parallel-size"], f["--pipeline-model-parallel-size"],
            f["--context-parallel-size"]) == ("4", "4", "2")
    assert f["--num-virtual-stages-per-pipeline-rank"] == "5"
    assert "--num-layers-per-virtual-pipeline-stage" not in f
    assert (f["--micro-batch-size"], f["--global-batch-size"]) == ("1", "512")
    assert (f["--recompute-granularity"], f["--recompute-method"],
            f["--recompute-num-layers"]) == ("full", "uniform", "1")
    assert f["--fp8-format"] == "hybrid" and "--bf16" in f and "--sequence-parallel" in f
    assert "--tp-comm-overlap" in f and "--use-distributed-optimizer" in f
    assert f["--train-samples"] == str(-(-10**12 // 8192))
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in text


def test_megatron_moe_mla_and_hsdp() -> None:
    f = megatron_flags(render("megatron-deepseek-v3-ep64"))
    assert (f["--num-experts"], f["--moe-router-topk"], f["--moe-ffn-hidden-size"]) == (
        "256", "8", "2048")
    assert f["--moe-layer-freq"] == "([0]*3+[1]*58)"
    assert f["--moe-shared-expert-intermediate-size"] == "2048"
    assert (f["--expert-model-parallel-size"], f["--expert-tensor-parallel-size"]) == ("64", "1")
    assert (f["--q-lora-rank"], f["--kv-lora-rank"], f["--qk-head-dim"],
            f["--qk-pos-emb-head-dim"], f["--v-head-dim"]) == ("1536", "512", "128", "64", "128")
    assert "--multi-latent-attention" in f and "--kv-channels" not in f
    assert f["--num-distributed-optimizer-instances"] == "2"


def test_megatron_fsdp_for_zero3() -> None:
    f = megatron_flags(render("megatron-llama3-8b-fsdp"))
    assert "--use-megatron-fsdp" in f and f["--data-parallel-sharding-strategy"] == \
        "optim_grads_params"
    assert f["--ckpt-format"] == "fsdp_dtensor"


def test_megatron_script_is_valid_bash(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text(render("megatron-deepseek-v3-ep64"))
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_megatron_rank_order_flag() -> None:
    job = Job(global_batch_size=64, seq_len=4096)
    plan = Plan(tp=2, pp=2, dp=4, axis_order=("tp", "cp", "ep", "pp", "dp"))
    assert "--use-tp-pp-dp-mapping" in megatron_flags(export(plan, "megatron", model="llama3-8b",
                                                             job=job))


def test_torchtitan_toml_carries_the_plan() -> None:
    text = render("torchtitan-llama3-70b-hsdp-pp-fp8")
    cfg = tomllib.loads(text)
    par, train = cfg["parallelism"], cfg["training"]
    assert (par["data_parallel_replicate_degree"], par["data_parallel_shard_degree"]) == (2, 8)
    assert (par["tensor_parallel_degree"], par["pipeline_parallel_degree"]) == (8, 4)
    assert par["pipeline_parallel_schedule"] == "Interleaved1F1B"
    assert par["pipeline_parallel_layers_per_stage"] == 80 // (4 * 2)
    assert par["enable_async_tensor_parallel"] and cfg["compile"]["enable"]
    assert (train["local_batch_size"], train["global_batch_size"]) == (512 // 16, 512)
    assert par["pipeline_parallel_microbatch_size"] == 1
    assert cfg["model"] == {"name": "llama3", "flavor": "70B", "converters": [
        "quantize.linear.float8"], "hf_assets_path": "./assets/hf/Llama-3.1-70B"}
    assert cfg["activation_checkpoint"]["mode"] == "full"
    assert train["steps"] == -(-10**12 // (512 * 8192))


def test_torchtitan_without_pipeline_accumulates_microbatches() -> None:
    cfg = tomllib.loads(render("torchtitan-llama3-8b-fsdp"))
    assert cfg["training"]["local_batch_size"] == 2 and cfg["training"]["global_batch_size"] == 16
    assert "pipeline_parallel_schedule" not in cfg["parallelism"]
    assert cfg["activation_checkpoint"] == {"mode": "selective", "selective_ac_option": "op"}


def test_torchtitan_zero2_and_ep() -> None:
    cfg = tomllib.loads(render("torchtitan-qwen3-30b-a3b-ep8"))
    assert cfg["parallelism"]["fsdp_reshard_after_forward"] == "never"
    assert cfg["parallelism"]["expert_parallel_degree"] == 8
    assert cfg["model"]["name"] == "qwen3" and cfg["model"]["flavor"] == "30B-A3B"


def test_torchtitan_ddp_for_zero0() -> None:
    job = Job(global_batch_size=64, seq_len=2048)
    cfg = tomllib.loads(export(Plan(dp=8, zero_stage=0), "torchtitan", engine_version="0.2.2",
                               model="llama3.1-8b",
                               job=job))
    par = cfg["parallelism"]
    assert (par["data_parallel_replicate_degree"], par["data_parallel_shard_degree"]) == (8, 1)


def test_deepspeed_json_carries_the_plan() -> None:
    cfg = json.loads(render("deepspeed-llama3-8b-zero3-offload"))
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"],
            cfg["gradient_accumulation_steps"]) == (512, 2, 4)
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["bf16"] == {"enabled": True} and "activation_checkpointing" in cfg
    pipe = json.loads(render("deepspeed-gpt-1.7b-pp4-fp16"))
    assert pipe["pipeline"] == {"stages": 4} and pipe["fp16"]["enabled"]
    assert pipe["gradient_accumulation_steps"] == 512 // (16 * 4)
    tp = json.loads(render("deepspeed-llama3-8b-autotp"))
    assert tp["tensor_parallel"] == {"autotp_size": 2, "tp_overlap_comm": True}
    ep = json.loads(render("deepspeed-qwen3-30b-a3b-autoep"))
    assert ep["expert_parallel"]["autoep_size"] == 4


# --- refusals: one line naming the field and the value -----------------------------------------

L8 = "llama3-8b"
T8 = "llama3.1-8b"
"""torchtitan's llama3 flavors apply Llama 3.1's RoPE scaling: Llama 3.1 is the model they build."""
J = {"global_batch_size": 256, "seq_len": 4096}
REFUSALS: list[tuple[str, str, dict[str, Any], dict[str, Any], str]] = [
    ("megatron", L8, J, {"pp": 2, "dp": 4, "schedule": "zb-h1"}, "schedule"),
    ("megatron", L8, J, {"pp": 2, "dp": 4, "schedule": "gpipe"}, "schedule"),
    ("megatron", L8, J, {"pp": 4, "dp": 2, "schedule": "dualpipe-v"}, "schedule"),
    ("megatron", L8, J, {"pp": 2, "dp": 4, "zero_stage": 3}, "zero_stage"),
    ("megatron", L8, J, {"dp": 8, "zero_stage": 3, "offload_optimizer": True},
     "offload_optimizer"),
    ("megatron", L8, J, {"dp": 8, "tp_comm_overlap": True}, "tp_comm_overlap"),
    ("megatron", L8, J, {"tp": 2, "cp": 2, "dp": 2,
                         "axis_order": ("tp", "dp", "cp", "ep", "pp")}, "axis_order"),
    ("megatron", "mixtral-8x7b", {**J, "precision": "fp16"}, {"dp": 8, "ep": 8}, "ep"),
    ("megatron", "geglu", J, {"dp": 8}, "mlp_type"),
    ("megatron", "alibi", J, {"dp": 8}, "position_embedding"),
    ("torchtitan", "gpt3-175b", J, {"dp": 8, "zero_stage": 3}, "model"),
    ("torchtitan", L8, J, {"dp": 8, "zero_stage": 3}, "model"),  # Llama 3: no RoPE scaling
    ("torchtitan", "deepseek-v3", J, {"dp": 8, "ep": 8, "zero_stage": 3}, "model"),  # eps, MTP
    ("torchtitan", T8, J, {"dp": 8, "zero_stage": 1}, "zero_stage"),
    ("torchtitan", T8, J, {"tp": 2, "dp": 4, "zero_stage": 0}, "zero_stage"),
    ("torchtitan", T8, {**J, "precision": "fp16"}, {"dp": 8, "zero_stage": 3}, "precision"),
    ("torchtitan", T8, {**J, "grad_bytes": 2}, {"dp": 8, "zero_stage": 3}, "grad_bytes"),
    ("torchtitan", T8, J, {"pp": 2, "dp": 4, "zero_stage": 3, "schedule": "zb-h1"}, "schedule"),
    ("torchtitan", T8, J, {"pp": 2, "dp": 4, "zero_stage": 3, "schedule": "zb-h2"}, "schedule"),
    ("torchtitan", T8, J, {"pp": 2, "dp": 4, "zero_stage": 3, "schedule": "looped-bfs",
                           "vpp": 1}, "vpp"),
    ("torchtitan", T8, J, {"tp": 2, "dp": 4, "zero_stage": 3, "sequence_parallel": False},
     "sequence_parallel"),
    ("torchtitan", "qwen3-8b", J, {"pp": 2, "dp": 4, "zero_stage": 3}, "pp"),
    ("torchtitan", "dsv3-titan", J, {"cp": 2, "dp": 4, "zero_stage": 3}, "cp"),
    ("torchtitan", "qwen3-30b-a3b", J, {"dp": 8, "dp_shard": 2, "ep": 8, "zero_stage": 3}, "ep"),
    ("torchtitan", T8, J, {"tp": 2, "cp": 2, "dp": 2, "zero_stage": 3,
                           "axis_order": ("cp", "tp", "ep", "dp", "pp")}, "axis_order"),
    ("deepspeed", L8, {**J, "precision": "fp8"}, {"dp": 8}, "precision"),
    ("deepspeed", L8, J, {"cp": 2, "dp": 4}, "cp"),
    ("deepspeed", L8, J, {"tp": 2, "dp": 4}, "sequence_parallel"),
    ("deepspeed", L8, J, {"dp": 8, "recompute": "selective"}, "recompute"),
    ("deepspeed", L8, J, {"dp": 8, "zero_stage": 3, "dp_shard": 4}, "dp_shard"),
    ("deepspeed", L8, J, {"pp": 2, "dp": 4, "schedule": "interleaved-1f1b"}, "schedule"),
    ("deepspeed", L8, J, {"pp": 2, "dp": 4, "zero_stage": 2}, "zero_stage"),
    ("deepspeed", L8, J, {"pp": 2, "tp": 2, "dp": 2, "sequence_parallel": False}, "tp"),
    ("deepspeed", "qwen3-30b-a3b", J, {"dp": 8, "ep": 2, "etp": 2}, "etp"),
]


def model_for(name: str) -> Any:
    base = load_model("llama3-8b")
    if name == "geglu":
        return base.model_copy(update={"mlp_type": "geglu"})
    if name == "alibi":
        return base.model_copy(update={"position_embedding": "alibi"})
    if name == "dsv3-titan":  # DeepSeek-V3 with torchtitan's 671B numerics
        return load_model("deepseek-v3").model_copy(update={"norm_eps": 1e-5, "mtp_layers": 0})
    return name


@pytest.mark.parametrize(("target", "model", "job", "plan", "field"), REFUSALS,
                         ids=[f"{r[0]}-{r[4]}-{i}" for i, r in enumerate(REFUSALS)])
def test_refusal_names_field(target: str, model: str, job: dict[str, Any],
                             plan: dict[str, Any], field: str) -> None:
    with pytest.raises(MeshplanError, match=rf"^{field}=") as err:
        export(Plan(**plan), target, model=model_for(model), job=Job(**job),
               engine_version=VERSION.get(target))
    assert "\n" not in str(err.value)


# --- Python API ---------------------------------------------------------------------------------

def test_export_accepts_an_estimate() -> None:
    job, plan = Job(global_batch_size=512, seq_len=8192), Plan(tp=2, pp=2, dp=16)
    est = estimate("llama3-8b", "dgx-h100", job, plan)
    assert export(est, "megatron", model="llama3-8b", job=job) == export(
        plan, "megatron", model="llama3-8b", job=job)


def test_unknown_target_and_illegal_plan() -> None:
    job = Job(global_batch_size=512, seq_len=8192)
    with pytest.raises(MeshplanError, match="unknown export target 'megatorn'; did you mean"):
        export(Plan(dp=8), "megatorn", model="llama3-8b", job=job)
    with pytest.raises(MeshplanError, match=r"^tp=3"):
        export(Plan(tp=3, dp=8), "megatron", model="llama3-8b", job=job)
    assert set(TARGETS) == {"megatron", "torchtitan", "deepspeed"}


# --- CLI ----------------------------------------------------------------------------------------

def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    register(app)
    return app


ARGS = ["export", "--model", "llama3-8b", "--num-gpus", "64", "--global-batch-size", "512",
        "--seq-len", "8192", "--tp", "2", "--pp", "2"]


def test_cli_prints_to_stdout() -> None:
    result = CliRunner().invoke(cli(), [*ARGS, "--to", "megatron"])
    assert result.exit_code == 0, result.output
    assert megatron_flags(result.stdout)["--tensor-model-parallel-size"] == "2"


def test_cli_writes_file(tmp_path: Path) -> None:
    out = tmp_path / "train.sh"
    result = CliRunner().invoke(cli(), [*ARGS, "--to", "megatron", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & stat.S_IXUSR and megatron_argv(out.read_text())


def test_cli_errors_are_meshplan_errors() -> None:
    result = CliRunner().invoke(cli(), [*ARGS, "--to", "deepspeed"])
    assert isinstance(result.exception, MeshplanError)  # tp2 with sequence parallelism
    result = CliRunner().invoke(cli(), [*ARGS, "--to", "megatron", "--dp", "8"])
    assert isinstance(result.exception, MeshplanError) and "--num-gpus" in str(result.exception)


def test_export_best(tmp_path: Path) -> None:
    inputs = build_inputs({"model": "llama3.1-8b", "cluster": "dgx-h100", "num_gpus": 8,
                           "global_batch_size": 64, "seq_len": 4096, "precision": "bf16",
                           "token_budget": None})
    est = estimate(inputs.model, inputs.cluster, inputs.job, Plan(dp=8, zero_stage=3))
    out = tmp_path / "job.toml"
    write(export(est, "torchtitan", engine_version="0.2.2", model=inputs.model, job=inputs.job,
                 cluster=inputs.cluster),
          out)
    assert tomllib.loads(out.read_text())["parallelism"]["data_parallel_shard_degree"] == 8


def test_megatron_pads_vocabulary_to_tp() -> None:
    model = load_model("gpt-1.7b").model_copy(update={"vocab_size": 50257})
    text = export(Plan(tp=2, dp=4), "megatron", model=model,
                  job=Job(global_batch_size=64, seq_len=2048))
    assert megatron_flags(text)["--padded-vocab-size"] == "50258"
    assert "# vocabulary 50257 padded to 50258" in text


def test_torchtitan_states_its_approximations() -> None:
    job = Job(global_batch_size=64, seq_len=4096)
    text = export(Plan(dp=8, zero_stage=2, offload_optimizer=True, recompute="selective"),
                  "torchtitan", engine_version="0.2.2", model="llama3.1-8b", job=job)
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert any("reshard_after_forward=never" in line for line in head)
    assert any("enable_cpu_offload" in line for line in head)
    assert any("op-level SAC" in line for line in head)
    assert tomllib.loads(text)["training"]["enable_cpu_offload"] is True


# --- torchtitan 0.3.0 (the default) -------------------------------------------------------------

TITAN03_REFUSALS: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    (T8, {**J, "precision": "fp8"}, {"dp": 8, "zero_stage": 3}, "precision", "model_spec"),
    ("qwen3-30b-a3b", J, {"dp": 8, "ep": 4, "etp": 2, "tp": 1, "zero_stage": 3}, "etp",
     "no expert tensor parallelism"),
    ("qwen3-8b", J, {"dp": 8, "zero_stage": 3}, "model", "config functions for"),
    (L8, J, {"dp": 8, "zero_stage": 3}, "model", "other numerics"),
    ("llama3.1-405b", J, {"tp": 8, "dp": 8, "zero_stage": 3}, "precision",
     "llama3_405b trains with float8"),
]


@pytest.mark.parametrize(("model", "job", "plan", "field", "why"), TITAN03_REFUSALS)
def test_torchtitan_03_refusals(model: str, job: dict[str, Any], plan: dict[str, Any],
                                field: str, why: str) -> None:
    with pytest.raises(MeshplanError, match=rf"^{field}=.*torchtitan 0\.3\.0.*{why}"):
        export(Plan(**plan), "torchtitan", model=model, job=Job(**job))


def test_torchtitan_03_is_the_default_and_0_2_2_the_toml() -> None:
    job, plan = Job(global_batch_size=64, seq_len=4096), Plan(dp=8, zero_stage=3,
                                                               recompute="full")
    line = export(plan, "torchtitan", model=T8, job=job)
    assert "-m torchtitan.train --module llama3 --config llama3_8b" in line
    assert line.rstrip().endswith("activation_checkpoint:full")
    assert "--parallelism.data_parallel_shard_degree 8" in line
    assert "expert_tensor_parallel_degree" not in line  # gone in 0.3.0
    assert export(plan, "torchtitan", model=T8, job=job, engine_version="0.3.0") == line
    toml = tomllib.loads(export(plan, "torchtitan", model=T8, job=job, engine_version="0.2.2"))
    assert toml["model"]["flavor"] == "8B"
    with pytest.raises(MeshplanError, match="unknown torchtitan version '0.1'"):
        export(plan, "torchtitan", model=T8, job=job, engine_version="0.1")
