"""Reading job configs back in: `meshplan estimate/plan --from-megatron|torchtitan|deepspeed`.

The round trip is the contract: a plan exported by meshplan and read back predicts the same
step (the same Plan, step time and memory) as the plan it came from. Hand-written files of the
same formats read with the engines' defaults; a bad file is one line and exit 2; a typed flag
wins over the file and the override is reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from meshplan import Job, Plan, api
from meshplan.export import SUFFIXES, export
from tests.conftest import invoke

CLUSTER = "dgx-h100"
CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]] | tuple[str, str, dict[str, Any],
                                                                dict[str, Any], str]] = [
    # (target, model, job, plan): the export goldens' plans and the layouts each reader maps.
    ("megatron", "llama3-8b", {"global_batch_size": 512, "seq_len": 8192},
     {"tp": 2, "pp": 2, "dp": 16, "recompute": "selective"}),
    ("megatron", "llama3-70b", {"global_batch_size": 512, "seq_len": 8192, "precision": "fp8"},
     {"tp": 4, "pp": 4, "cp": 2, "dp": 8, "schedule": "interleaved-1f1b", "vpp": 5,
      "recompute": "full", "tp_comm_overlap": True}),
    ("megatron", "deepseek-v3", {"global_batch_size": 4096, "seq_len": 4096},
     {"tp": 2, "dp": 128, "ep": 64, "etp": 1, "dp_shard": 64}),
    ("megatron", "llama3-8b", {"global_batch_size": 64, "seq_len": 8192},
     {"dp": 8, "zero_stage": 3, "recompute": "full"}),
    ("megatron", "llama3-8b", {"global_batch_size": 64, "seq_len": 8192},
     {"dp": 8, "zero_stage": 2, "dp_shard": 4}),
    ("megatron", "gpt-1.7b", {"global_batch_size": 512, "seq_len": 2048, "precision": "fp16"},
     {"pp": 2, "dp": 8, "zero_stage": 0, "micro_batch_size": 2}),
    ("megatron", "llama3-8b", {"global_batch_size": 256, "seq_len": 4096, "grad_bytes": 2},
     {"tp": 2, "pp": 2, "dp": 4, "axis_order": ("tp", "cp", "ep", "pp", "dp"),
      "offload_optimizer": True, "dp_shard": 2, "overlap_grad_reduce": False}),
    ("megatron", "llama3.1-405b", {"global_batch_size": 2048, "seq_len": 8192},
     {"tp": 8, "pp": 16, "dp": 8, "first_stage_layers": 7, "last_stage_layers": 7}),
    ("megatron", "qwen3-30b-a3b", {"global_batch_size": 512, "seq_len": 4096},
     {"pp": 2, "dp": 8, "ep": 8, "schedule": "interleaved-1f1b", "vpp": 24,
      "micro_batch_size": 2}),
    ("megatron", "deepseek-v3", {"global_batch_size": 4096, "seq_len": 4096},
     {"tp": 2, "dp": 128, "ep": 64, "etp": 1, "dp_shard": 64, "moe_dispatcher": "flex-deepep",
      "moe_force_balanced": True, "ep_comm_overlap": True}),
    ("megatron", "qwen3-30b-a3b", {"global_batch_size": 512, "seq_len": 4096},
     {"dp": 16, "ep": 16, "moe_dispatcher": "hybridep"}),
    ("megatron", "llama3-8b", {"global_batch_size": 256, "seq_len": 8192},
     {"tp": 2, "pp": 4, "dp": 4, "schedule": "interleaved-1f1b", "vpp": 2,
      "recompute": "full", "recompute_num_layers": 2}),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 64, "seq_len": 8192},
     {"pp": 2, "dp": 4, "zero_stage": 3, "recompute": "full", "recompute_num_layers": 4},
     "0.2.2"),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 16, "seq_len": 8192},
     {"dp": 8, "zero_stage": 3, "micro_batch_size": 2, "recompute": "selective"}),
    ("torchtitan", "llama3.1-70b", {"global_batch_size": 512, "seq_len": 8192,
                                    "precision": "fp8"},
     {"tp": 8, "pp": 4, "dp": 16, "dp_shard": 8, "zero_stage": 3,
      "schedule": "interleaved-1f1b", "recompute": "full", "tp_comm_overlap": True}, "0.2.2"),
    ("torchtitan", "llama3.1-70b", {"global_batch_size": 512, "seq_len": 8192},
     {"tp": 8, "pp": 4, "dp": 16, "dp_shard": 8, "zero_stage": 3,
      "schedule": "interleaved-1f1b", "recompute": "full", "tp_comm_overlap": True}, "0.2.2"),
    ("torchtitan", "qwen3-30b-a3b", {"global_batch_size": 512, "seq_len": 4096},
     {"dp": 64, "ep": 8, "zero_stage": 2}),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 64, "seq_len": 4096},
     {"dp": 8, "zero_stage": 0}),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 64, "seq_len": 4096},
     {"pp": 4, "dp": 2, "zero_stage": 3, "schedule": "zb-v"}),
    ("torchtitan", "llama3.1-8b", {"global_batch_size": 64, "seq_len": 8192},
     {"cp": 2, "tp": 2, "dp": 2, "zero_stage": 3, "offload_optimizer": True}),
    ("deepspeed", "llama3-8b", {"global_batch_size": 512, "seq_len": 8192},
     {"dp": 64, "zero_stage": 3, "micro_batch_size": 2, "recompute": "full",
      "offload_optimizer": True}),
    ("deepspeed", "gpt-1.7b", {"global_batch_size": 512, "seq_len": 2048, "precision": "fp16"},
     {"pp": 4, "dp": 16, "micro_batch_size": 4}),
    ("deepspeed", "llama3-8b", {"global_batch_size": 256, "seq_len": 4096},
     {"tp": 2, "dp": 32, "sequence_parallel": False, "tp_comm_overlap": True}),
    ("deepspeed", "qwen3-30b-a3b", {"global_batch_size": 512, "seq_len": 4096},
     {"dp": 64, "ep": 4, "zero_stage": 2}),
    ("deepspeed", "llama3-8b", {"global_batch_size": 64, "seq_len": 4096, "grad_bytes": 2},
     {"dp": 8, "zero_stage": 1, "overlap_grad_reduce": False}),
]


def estimate_from(target: str, model: str, path: Path, *extra: str) -> tuple[int, dict, str]:
    code, out, err = invoke("estimate", "--model", model, "--cluster", CLUSTER,
                            f"--from-{target}", str(path), "--json", *extra)
    return code, (json.loads(out) if code == 0 else {}), err


def versioned() -> list[tuple[str, str, dict[str, Any], dict[str, Any], str | None]]:
    """Every case; torchtitan's in both formats (0.3 launch line and 0.2.2 TOML) unless the
    case names one."""
    out: list[tuple[str, str, dict[str, Any], dict[str, Any], str | None]] = []
    for case in CASES:
        target, model, job, plan = case[:4]
        if len(case) == 5:
            out.append((target, model, job, plan, case[4]))  # type: ignore[misc]
        elif target == "torchtitan":
            out += [(target, model, job, plan, v) for v in ("0.3.0", "0.2.2")]
        else:
            out.append((target, model, job, plan, None))
    return out


@pytest.mark.parametrize(("target", "model", "job", "plan", "version"), versioned(),
                         ids=[f"{c[0]}{c[4] or ''}-{c[1]}-{i}" for i, c in enumerate(versioned())])
def test_export_read_back_predicts_the_same_step(target: str, model: str, job: dict[str, Any],
                                                 plan: dict[str, Any], version: str | None,
                                                 tmp_path: Path) -> None:
    """Also tells the two torchtitan formats apart by content: the file is named .cfg."""
    job_spec, plan_spec = Job(**job), Plan(**plan)
    path = tmp_path / ("job.cfg" if target == "torchtitan" else "job" + SUFFIXES[target])
    path.write_text(export(plan_spec, target, model=model, job=job_spec, cluster=CLUSTER,
                           engine_version=version))
    want = api.estimate(model, CLUSTER, job_spec, plan_spec).to_json()
    code, got, err = estimate_from(target, model, path)
    assert code == 0, err
    assert got["plan"] == want["plan"]
    assert (got["step_time_s"], got["memory_gib"]) == (want["step_time_s"], want["memory_gib"])
    assert "overrides" not in err


def test_a_typed_flag_wins_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "train.sh"
    path.write_text(export(Plan(tp=2, pp=2, dp=16), "megatron", model="llama3-8b",
                           job=Job(global_batch_size=512, seq_len=8192)))
    code, got, err = estimate_from("megatron", "llama3-8b", path, "--tp", "4",
                                   "--global-batch-size", "256")
    assert code == 0, err
    assert (got["plan"]["tp"], got["plan"]["pp"], got["plan"]["dp"]) == (4, 2, 8)
    assert "--tp 4 overrides tp=2" in err
    assert "--global-batch-size 256 overrides global_batch_size=512" in err


def test_hand_written_megatron_args_use_megatron_defaults(tmp_path: Path) -> None:
    """No --sequence-parallel, distributed optimizer or overlap unless given; the older
    --num-layers-per-virtual-pipeline-stage spelling; `--flag=value`; comments."""
    path = tmp_path / "args.txt"
    path.write_text(textwrap.dedent("""\
        # my job
        --tensor-model-parallel-size 4 --pipeline-model-parallel-size=2
        --num-layers 32 --num-layers-per-virtual-pipeline-stage 4
        --micro-batch-size 1 --global-batch-size 1024 --seq-length 4096
        --bf16 --use-distributed-optimizer --data-path /data/x --tokenizer-type HF
        """))
    code, got, err = estimate_from("megatron", "llama3-8b", path, "--num-gpus", "64")
    assert code == 0, err
    p = got["plan"]
    assert (p["tp"], p["pp"], p["dp"], p["vpp"], p["schedule"]) == (4, 2, 8, 4,
                                                                     "interleaved-1f1b")
    assert (p["sequence_parallel"], p["zero_stage"], p["overlap_grad_reduce"]) == (False, 1,
                                                                                   False)


@pytest.mark.parametrize(("method", "want", "noted"), [
    ("block --recompute-num-layers 3", ("full", 3), ""),
    ("uniform --recompute-num-layers 4", ("full", None), "groups of 4 layers"),
])
def test_megatron_recompute_method(tmp_path: Path, method: str, want: tuple, noted: str) -> None:
    """block: the first N layers of each stage chunk; uniform: every layer, in groups."""
    path = tmp_path / "args.txt"
    path.write_text("--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 "
                    "--micro-batch-size 1 --global-batch-size 256 --seq-length 4096 --bf16 "
                    f"--recompute-granularity full --recompute-method {method}\n")
    code, got, err = estimate_from("megatron", "llama3-8b", path, "--num-gpus", "16")
    assert code == 0, err
    assert (got["plan"]["recompute"], got["plan"]["recompute_num_layers"]) == want
    assert noted in err


def test_hand_written_torchtitan_03_line(tmp_path: Path) -> None:
    path = tmp_path / "run.sh"
    path.write_text("NGPU=16 ./run_train.sh --module llama3 --config llama3_8b "
                    "--parallelism.tensor_parallel_degree 2 --training.local_batch_size 2 "
                    "--training.global_batch_size 128 --training.seq_len 4096 "
                    "--compile.enable --compile.enable_async_tensor_parallel "
                    "activation_checkpoint:full\n")
    code, got, err = estimate_from("torchtitan", "llama3.1-8b", path, "--num-gpus", "16")
    assert code == 0, err
    p = got["plan"]
    assert (p["tp"], p["dp"], p["zero_stage"], p["micro_batch_size"], p["recompute"],
            p["tp_comm_overlap"]) == (2, 8, 3, 2, "full", True)
    assert "llama3_8b may set others" in err


def test_torchtitan_fill_shard_degree_needs_the_gpu_count(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('[training]\nlocal_batch_size = 2\nglobal_batch_size = 256\nseq_len = 8192\n'
                    '[parallelism]\ndata_parallel_shard_degree = -1\ntensor_parallel_degree = 2'
                    '\n[activation_checkpoint]\nmode = "full"\n')
    code, got, err = estimate_from("torchtitan", "llama3.1-8b", path, "--num-gpus", "32")
    assert code == 0, err
    p = got["plan"]
    assert (p["tp"], p["dp"], p["zero_stage"], p["micro_batch_size"], p["recompute"]) == (
        2, 16, 3, 2, "full")


def test_plan_from_a_job_shows_the_distance_to_the_best(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(export(Plan(dp=8, zero_stage=1), "deepspeed", model="llama3-8b",
                           job=Job(global_batch_size=64, seq_len=4096)))
    code, out, err = invoke("plan", "--model", "llama3-8b", "--cluster", CLUSTER,
                            "--from-deepspeed", str(path), "--top", "3", "--simulate-top", "0")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("your job"))
    assert "dp8 mbs1 zero1" in line and "s/step predicted; best plan #1" in line


BAD: list[tuple[str, str, str]] = [
    ("megatron", "--tensor-model-parallel-size two --bf16", "expected an integer"),
    ("megatron", "--tensor-model-parallel-size 2", "neither --bf16 nor --fp16"),
    ("megatron", "just words", "no --flags found"),
    ("megatron", "--bf16 --global-batch-size 100 --micro-batch-size 3 'unclosed",
     "cannot split"),
    ("torchtitan", "[training\n", "not a TOML job config"),
    ("torchtitan", "[model]\nname = 'llama3'\n", "no [parallelism] or [training]"),
    ("torchtitan", "--module llama3 --config llama3_8b --parallelism.tensor_parallel_degree x",
     "expected an integer"),
    ("torchtitan", "[parallelism]\npipeline_parallel_degree = 2\n"
     "pipeline_parallel_schedule = 'Nope'\n", "schedule 'Nope'"),
    ("torchtitan", "[training]\nmixed_precision_param = 'float32'\n", "mixed_precision_param"),
    ("deepspeed", "{", "not JSON"),
    ("deepspeed", "[1, 2]", "expected a JSON object"),
    ("deepspeed", '{"train_batch_size": 10, "train_micro_batch_size_per_gpu": 3, '
     '"gradient_accumulation_steps": 1, "bf16": {"enabled": true}}', "not a multiple"),
    ("deepspeed", '{"zero_optimization": {"stage": "x"}, "bf16": {"enabled": true}}',
     "expected an integer"),
    ("deepspeed", '{"train_batch_size": 8}', "neither bf16.enabled nor fp16.enabled"),
]


@pytest.mark.parametrize(("target", "text", "message"), BAD)
def test_a_bad_file_is_one_line_and_exit_2(target: str, text: str, message: str,
                                           tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_text(text)
    code, _, err = estimate_from(target, "llama3-8b", path)
    assert code == 2
    assert err.count("\n") == 1 and message in err and str(path) in err, err


def test_missing_file_and_two_sources(tmp_path: Path) -> None:
    code, _, err = estimate_from("megatron", "llama3-8b", tmp_path / "nope.sh")
    assert code == 2 and "no such file" in err
    code, _, err = invoke("estimate", "--from-megatron", "a", "--from-deepspeed", "b")
    assert code == 2 and "give one job config" in err


def test_ci_fails_a_test_skipped_for_a_missing_engine(tmp_path: Path) -> None:
    """tests/conftest.py: under CI=true a skip for a missing dependency in an `engines` test
    fails; a skip of a case that does not apply still skips."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "conftest.py").write_text((root / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text(
        "import pytest\npytestmark = pytest.mark.engines\n"
        "def test_missing():\n    pytest.importorskip('no_such_engine_xyz')\n"
        "def test_not_applicable():\n    pytest.skip('m must be a multiple of p')\n")
    env = {**os.environ, "CI": "true", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", "-m", "", str(tmp_path)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, check=False)
    assert "1 failed, 1 skipped" in run.stdout, run.stdout
    env["CI"] = "false"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", str(tmp_path)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, check=False)
    assert "2 skipped" in run.stdout, run.stdout
