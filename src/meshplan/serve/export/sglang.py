"""`python -m sglang.launch_server` command lines for a deployment (argument names of SGLang
0.5, `python/sglang/srt/server_args.py` `ServerArgs.add_cli_args`); disaggregated pools by
`--disaggregation-mode prefill|decode` with the NIXL transfer backend, behind
`python -m sglang_router.launch_router --pd-disaggregation`. meshplan's layout is SGLang's
own: `--tp-size tp --dp-size dp_attention --enable-dp-attention --ep-size ep`."""

from __future__ import annotations

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import AnyDeployment, Deployment
from meshplan.serve.export.common import ROUTER_PORT, header, instance_lines, line, slots

VERSION = "0.5"
KV_CACHE_DTYPE = {"bf16": "auto", "fp16": "auto", "fp8": "fp8_e4m3"}


def refuse(d: AnyDeployment) -> str | None:
    """Why SGLang cannot run `d` as meshplan laid it out (None: it can)."""
    for p in d.pools:
        if p.engine.name != "sglang":
            return f"the deployment uses engine {p.engine.name}, not SGLang"
    return None


def engine_args(p: Deployment) -> list[str]:
    s = p.spec
    args = ["--tp-size", str(p.tp), "--pp-size", str(p.pp), "--dp-size", str(p.dp_attention)]
    if p.dp_attention > 1:
        args.append("--enable-dp-attention")
    args += ["--ep-size", str(p.ep),
             "--max-running-requests", str(p.max_num_seqs),
             "--chunked-prefill-size",
             str(p.max_num_batched_tokens if p.enable_chunked_prefill else -1),
             "--max-prefill-tokens", str(p.max_num_batched_tokens),
             "--mem-fraction-static", f"{p.gpu_memory_utilization:.4g}",
             "--kv-cache-dtype", KV_CACHE_DTYPE[s.kv_cache_dtype]]
    if s.weights_dtype == "fp8":
        args += ["--quantization", "fp8"]
    if not p.cuda_graphs:
        args.append("--disable-cuda-graph")
    return args


def script(d: AnyDeployment) -> str:
    why = refuse(d)
    if why is not None:
        raise MeshplanError(f"--to sglang: {why}")
    out = header(d, "SGLang", VERSION)
    ss = slots(d)
    for k, s in enumerate(ss):
        args = ["python3", "-m", "sglang.launch_server", "--model-path", '"$MODEL"',
                "--host", "0.0.0.0", "--port", str(s.port), *engine_args(s.pool)]
        if d.disaggregated:
            args += ["--disaggregation-mode", s.role,
                     "--disaggregation-transfer-backend", "nixl"]
            if s.role == "prefill":
                args += ["--disaggregation-bootstrap-port", str(9000 + k)]
        out += instance_lines(s, args)
    router = ["python3", "-m", "sglang_router.launch_router", "--host", "0.0.0.0",
              "--port", str(ROUTER_PORT)]
    if d.disaggregated:
        router.append("--pd-disaggregation")
        for k, s in enumerate(ss):
            url = f"http://$HOST_{s.node}:{s.port}"
            router += (["--prefill", f"{url} {9000 + k}"] if s.role == "prefill"
                       else ["--decode", url])
    else:
        router += ["--worker-urls", " ".join(f"http://$HOST_{s.node}:{s.port}" for s in ss)]
    if d.disaggregated or len(ss) > 1:
        out += ["", "# the router in front", line(router) + " &"]
    out += ["wait", ""]
    return "\n".join(out)
