"""`vllm serve` command lines for a deployment (argument names of vLLM 0.11,
`vllm/engine/arg_utils.py` `EngineArgs.add_cli_args`; disaggregation by the NixlConnector
(`--kv-transfer-config`) behind vLLM's `toy_proxy_server.py`
(`tests/v1/kv_connector/nixl_integration/`, flags `--prefiller-hosts/-ports`,
`--decoder-hosts/-ports`)).

meshplan's layout is SGLang's (tp GPUs a stage, dp_attention ranks inside); vLLM's
equivalent: `--tensor-parallel-size tp / dp_attention --data-parallel-size dp_attention`,
`--enable-expert-parallel` when ep = tp (vLLM's EP spans TP x DP)."""

from __future__ import annotations

import json

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import AnyDeployment, Deployment
from meshplan.serve.export.common import ROUTER_PORT, header, instance_lines, line, q, slots

VERSION = "0.11"
KV_CACHE_DTYPE = {"bf16": "auto", "fp16": "auto", "fp8": "fp8"}
NIXL = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"},
                  separators=(",", ":"))


def refuse(d: AnyDeployment) -> str | None:
    """Why vLLM cannot run `d` as meshplan laid it out (None: it can)."""
    for p in d.pools:
        if p.ep not in (1, p.tp):
            return (f"vLLM's expert parallelism spans every GPU of a stage (ep = tp = {p.tp}); "
                    f"ep={p.ep} has no vLLM equivalent")
        if p.dp_attention > 1 and p.ep != p.tp:
            return ("vLLM's data-parallel attention without --enable-expert-parallel "
                    "replicates the experts per rank; meshplan splits them over the stage")
        if p.engine.name not in ("vllm", "vllm-v0"):
            return f"the deployment uses engine {p.engine.name}, not vLLM"
    return None


def engine_args(p: Deployment) -> list[str]:
    """The engine flags of one instance (every parallel size written, defaults included)."""
    s = p.spec
    args = ["--tensor-parallel-size", str(p.tp // p.dp_attention),
            "--pipeline-parallel-size", str(p.pp),
            "--data-parallel-size", str(p.dp_attention)]
    if p.ep > 1:
        args.append("--enable-expert-parallel")
    args += ["--max-num-seqs", str(p.max_num_seqs),
             "--max-num-batched-tokens", str(p.max_num_batched_tokens),
             "--enable-chunked-prefill" if p.enable_chunked_prefill
             else "--no-enable-chunked-prefill",
             "--gpu-memory-utilization", f"{p.gpu_memory_utilization:.4g}",
             "--block-size", str(p.block_size),
             "--kv-cache-dtype", KV_CACHE_DTYPE[s.kv_cache_dtype]]
    if s.weights_dtype == "fp8":
        args += ["--quantization", "fp8"]
    if not p.cuda_graphs:
        args.append("--enforce-eager")
    return args


def script(d: AnyDeployment) -> str:
    why = refuse(d)
    if why is not None:
        raise MeshplanError(f"--to vllm: {why}")
    out = header(d, "vLLM", VERSION)
    ss = slots(d)
    for s in ss:
        args = ["vllm", "serve", '"$MODEL"', "--host", "0.0.0.0", "--port", str(s.port),
                *engine_args(s.pool)]
        if d.disaggregated:
            args += ["--kv-transfer-config", q(NIXL)]
        out += instance_lines(s, args)
    if d.disaggregated:
        pre = [s for s in ss if s.role == "prefill"]
        dec = [s for s in ss if s.role == "decode"]
        args = ["python3", "tests/v1/kv_connector/nixl_integration/toy_proxy_server.py",
                "--port", str(ROUTER_PORT),
                "--prefiller-hosts", " ".join(f"$HOST_{s.node}" for s in pre),
                "--prefiller-ports", " ".join(str(s.port) for s in pre),
                "--decoder-hosts", " ".join(f"$HOST_{s.node}" for s in dec),
                "--decoder-ports", " ".join(str(s.port) for s in dec)]
        out += ["", "# the proxy in front: prefill on a prefiller, then decode on a decoder "
                "(from a vLLM checkout)", line(args) + " &"]
    elif len(ss) > 1:
        out += ["", f"# {len(ss)} replicas: put a load balancer (round robin) over ports "
                f"{ss[0].port}-{ss[-1].port}"]
    out += ["wait", ""]
    return "\n".join(out)
