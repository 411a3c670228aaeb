"""Launch scripts for vLLM and SGLang: every flag written is one of the engine's real
arguments (pinned below from vLLM 0.11 `vllm/engine/arg_utils.py` and SGLang 0.5
`python/sglang/srt/server_args.py`, the routers' own parsers; the engines are not installed
here), and each layout maps to the right sizes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from meshplan.errors import MeshplanError
from meshplan.serve import DeploymentSpec, DisaggregatedSpec, load_serving_cluster, resolve_any
from meshplan.serve.export import export, refuse
from meshplan.specs.io import load_model

VLLM_FLAGS = {
    "--host", "--port", "--tensor-parallel-size", "--pipeline-parallel-size",
    "--data-parallel-size", "--enable-expert-parallel", "--max-num-seqs",
    "--max-num-batched-tokens", "--enable-chunked-prefill", "--no-enable-chunked-prefill",
    "--gpu-memory-utilization", "--block-size", "--kv-cache-dtype", "--quantization",
    "--enforce-eager", "--kv-transfer-config",
}
VLLM_PROXY_FLAGS = {"--port", "--prefiller-hosts", "--prefiller-ports", "--decoder-hosts",
                    "--decoder-ports"}
SGLANG_FLAGS = {
    "--model-path", "--host", "--port", "--tp-size", "--pp-size", "--dp-size",
    "--enable-dp-attention", "--ep-size", "--max-running-requests", "--chunked-prefill-size",
    "--max-prefill-tokens", "--mem-fraction-static", "--kv-cache-dtype", "--quantization",
    "--disable-cuda-graph", "--disaggregation-mode", "--disaggregation-transfer-backend",
    "--disaggregation-bootstrap-port",
}
SGLANG_ROUTER_FLAGS = {"--host", "--port", "--pd-disaggregation", "--prefill", "--decode",
                       "--worker-urls"}


def deploy(model: str, spec):  # type: ignore[no-untyped-def]
    return resolve_any(load_model(model), load_serving_cluster("dgx-h100"), spec)


def commands(script: str) -> list[str]:
    """The script's commands, continuation lines joined."""
    body = script.replace("\\\n", " ")
    return [ln for ln in body.splitlines()
            if ln and not ln.startswith("#") and not re.match(r"[A-Z_0-9]+=\S*$", ln)]


def flags(cmd: str) -> list[str]:
    return re.findall(r"(?<![\w-])(--[a-z0-9-]+)", cmd)


def value(cmd: str, flag: str) -> str:
    m = re.search(rf"{flag} (\S+)", cmd)
    assert m, (flag, cmd)
    return m.group(1)


def test_vllm_flags_are_real_and_every_size_written():
    s = export(deploy("llama3-70b", DeploymentSpec(tp=4, pp=2, instances=2)), "vllm")
    serves = [c for c in commands(s) if "vllm serve" in c]
    assert len(serves) == 2
    for c in serves:
        assert set(flags(c)) <= VLLM_FLAGS
        assert value(c, "--tensor-parallel-size") == "4"
        assert value(c, "--pipeline-parallel-size") == "2"
        assert value(c, "--data-parallel-size") == "1"
        assert "--enable-chunked-prefill" in flags(c)
    assert serves[0].startswith("CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 ")
    assert serves[1].startswith("CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 ")  # the second node


def test_vllm_moe_maps_dp_attention_and_expert_parallel():
    spec = DeploymentSpec(tp=8, ep=8, dp_attention=8)
    c = next(c for c in commands(export(deploy("qwen3-30b-a3b", spec), "vllm"))
             if "vllm serve" in c)
    d = deploy("qwen3-30b-a3b", spec.model_copy(update={"engine": "sglang"}))
    assert value(c, "--tensor-parallel-size") == "1"
    assert value(c, "--data-parallel-size") == "8"
    assert "--enable-expert-parallel" in flags(c)
    s = next(c for c in commands(export(d, "sglang")) if "launch_server" in c)
    assert (value(s, "--tp-size"), value(s, "--dp-size"), value(s, "--ep-size")) == \
        ("8", "8", "8")
    assert "--enable-dp-attention" in flags(s)


def test_fp8_and_knobs():
    knobs = dict(tp=1, weights_dtype="fp8", kv_cache_dtype="fp8", max_num_seqs=64,
                 max_num_batched_tokens=2048, gpu_memory_utilization=0.85,
                 enable_chunked_prefill=False)
    d = deploy("llama3-8b", DeploymentSpec(**knobs))
    c = next(c for c in commands(export(d, "vllm")) if "vllm serve" in c)
    assert (value(c, "--quantization"), value(c, "--kv-cache-dtype")) == ("fp8", "fp8")
    assert (value(c, "--max-num-seqs"), value(c, "--max-num-batched-tokens")) == \
        ("64", "2048")
    assert value(c, "--gpu-memory-utilization") == "0.85"
    assert "--no-enable-chunked-prefill" in flags(c)
    d = deploy("llama3-8b", DeploymentSpec(**knobs, engine="sglang"))
    s = next(c for c in commands(export(d, "sglang")) if "launch_server" in c)
    assert set(flags(s)) <= SGLANG_FLAGS
    assert value(s, "--kv-cache-dtype") == "fp8_e4m3"
    assert value(s, "--chunked-prefill-size") == "-1"
    assert value(s, "--max-running-requests") == "64"


def test_disaggregated_one_command_per_role_and_the_router():
    spec = DisaggregatedSpec(prefill=DeploymentSpec(tp=2, instances=2),
                             decode=DeploymentSpec(tp=4, instances=1))
    d = deploy("llama3-8b", spec)
    v = commands(export(d, "vllm"))
    both = {"engine": "sglang"}
    sg = deploy("llama3-8b", DisaggregatedSpec(prefill=spec.prefill.model_copy(update=both),
                                               decode=spec.decode.model_copy(update=both)))
    serves = [c for c in v if "vllm serve" in c]
    assert len(serves) == 3 and all("NixlConnector" in c for c in serves)
    assert [value(c, "--tensor-parallel-size") for c in serves] == ["2", "2", "4"]
    proxy = next(c for c in v if "toy_proxy_server.py" in c)
    assert set(flags(proxy)) <= VLLM_PROXY_FLAGS
    assert value(proxy, "--prefiller-ports") == "8100"
    s = commands(export(sg, "sglang"))
    servers = [c for c in s if "launch_server" in c]
    assert [value(c, "--disaggregation-mode") for c in servers] == \
        ["prefill", "prefill", "decode"]
    assert all(set(flags(c)) <= SGLANG_FLAGS for c in servers)
    router = next(c for c in s if "sglang_router.launch_router" in c)
    assert set(flags(router)) <= SGLANG_ROUTER_FLAGS and "--pd-disaggregation" in router
    assert router.count("--prefill ") == 2 and router.count("--decode ") == 1


def test_a_layout_vllm_cannot_express_is_refused():
    d = deploy("qwen3-30b-a3b", DeploymentSpec(tp=4, ep=2))
    assert refuse(d, "vllm") is not None and "expert" in str(refuse(d, "vllm"))
    assert refuse(d, "sglang") is not None  # simulated with the vLLM profile
    sg = deploy("qwen3-30b-a3b", DeploymentSpec(tp=4, ep=2, engine="sglang"))
    assert refuse(sg, "sglang") is None
    with pytest.raises(MeshplanError, match="--to vllm"):
        export(d, "vllm")
    with pytest.raises(MeshplanError, match="--to="):
        export(d, "trtllm")


def test_cli_export_to_stdout_and_bad_target():
    run = [sys.executable, "-m", "meshplan", "serve", "export"]
    out = subprocess.run([*run, "--to", "sglang", "--model", "llama3-8b", "--tp", "2",
                          "--instances", "2", "--out", "-"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("sglang.launch_server") == 2 and "--worker-urls" in out.stdout
    bad = subprocess.run([*run, "--to", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    bad = subprocess.run([*run, "--to", "vllm", "--model", "qwen3-30b-a3b", "--tp", "4",
                          "--ep", "2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expert" in bad.stderr


def test_an_unwritable_out_is_refused_before_the_search(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "meshplan", "serve", "plan", "--num-gpus", "8",
                        "--input-len", "512", "--output-len", "64", "--slo-ttft-ms", "1000",
                        "--slo-tpot-ms", "50", "--export", "vllm",
                        "--out", str(tmp_path / "missing" / "x.sh")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr
