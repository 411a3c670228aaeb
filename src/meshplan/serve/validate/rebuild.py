"""Rebuild a published serving run (one row of `published_serving_runs.json`'s schema) as a
meshplan model, cluster, deployment and workload.

Every rule is keyed by a field's content (the GPU's name, the engine's name and version, the
dataset's name, the precision text), never by a source's id, and every default it applies is
written to the case's `assumptions`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from meshplan.serve.deployment import DeploymentSpec
from meshplan.serve.engines import load_engine
from meshplan.serve.validate.case import ServeCase, StaticBatch, Unbuildable, count
from meshplan.serve.validate.hardware import build_cluster
from meshplan.serve.workload import Lengths, Workload
from meshplan.specs.model import Model, MoE

# -- model -----------------------------------------------------------------------------------

FAMILY_STYLES: tuple[tuple[str, dict[str, Any]], ...] = (
    # (regex on model.family, Model fields): the families' public configs
    (r"^bloom", {"mlp_type": "gelu", "position_embedding": "alibi", "norm": "layernorm",
                 "linear_bias": True, "tied_embeddings": True}),
    (r"^gpt-j", {"mlp_type": "gelu", "position_embedding": "rope", "norm": "layernorm",
                 "linear_bias": True}),  # GPT-J: parallel attention + MLP, rotary, biased MLP
    (r"^falcon", {"mlp_type": "gelu", "position_embedding": "rope", "norm": "layernorm"}),
    (r"^gpt", {"mlp_type": "gelu", "position_embedding": "learned", "norm": "layernorm",
               "linear_bias": True, "tied_embeddings": True}),
    (r"^qwen3", {"mlp_type": "swiglu", "qk_norm": True}),
    (r"llama|qwen|mistral|mixtral", {"mlp_type": "swiglu"}),
)


def build_model(row: dict[str, Any], notes: list[str]) -> Model:
    m = row["model"]
    missing = [k for k in ("layers", "hidden", "heads", "vocab") if m.get(k) is None]
    if missing:
        raise Unbuildable(f"model {', '.join(missing)} not given")
    family = str(m.get("family") or "")
    style = next((s for p, s in FAMILY_STYLES if re.search(p, family, re.IGNORECASE)), None)
    if style is None:
        style = {"mlp_type": "swiglu"}
        notes.append(f"model family {family!r} unknown: Llama-style layers (SwiGLU, RoPE)")
    moe = None
    if m.get("moe_experts"):
        step = int(m.get("moe_layer_step") or 1)
        layers = int(m["layers"])
        moe = MoE(num_experts=int(m["moe_experts"]), top_k=int(m["moe_top_k"]),
                  expert_ffn_hidden_size=int(m["moe_ffn"]),
                  num_shared_experts=int(m.get("moe_shared_experts") or 0),
                  shared_expert_ffn_hidden_size=int(m["moe_ffn"])
                  if m.get("moe_shared_experts") else 0,
                  num_dense_layers=layers - layers // step)
        if m.get("moe_shared_experts"):
            notes.append("shared expert as wide as a routed expert (moe_ffn)")
    ffn = m.get("ffn") or m.get("moe_ffn")
    if ffn is None:
        raise Unbuildable("model ffn not given")
    return Model(name=str(m.get("name") or m.get("key") or row["id"]),
                 num_layers=int(m["layers"]), hidden_size=int(m["hidden"]),
                 ffn_hidden_size=int(ffn), num_attention_heads=int(m["heads"]),
                 num_kv_heads=int(m["kv_heads"]) if m.get("kv_heads") else None,
                 head_dim=int(m["head_dim"]) if m.get("head_dim") else None,
                 vocab_size=int(m["vocab"]), moe=moe,
                 source=f"published serving run {row['id']}", **style)


# -- engine ----------------------------------------------------------------------------------

ENGINES: tuple[tuple[str, str, str], ...] = (
    # (regex on engine.name, profile, why when it is not the engine itself)
    (r"vllm", "vllm", ""),
    (r"sglang", "sglang", ""),
    (r"tensorrt|trt-?llm", "trtllm", ""),
    (r"fastertransformer", "trtllm",
     "FasterTransformer has no profile: TensorRT-LLM's (its successor, same fused kernels)"),
    (r"lmdeploy|turbomind", "trtllm",
     "LMDeploy has no profile: TensorRT-LLM's (TurboMind's persistent batch is in-flight "
     "batching)"),
)
UNKNOWN_ENGINE = "vllm"


def engine_profile(row: dict[str, Any], notes: list[str]) -> str:
    """The engine profile closest to the row's engine (an assumption, never an error)."""
    name = str(row["engine"].get("name") or "")
    profile, why = next(((p, w) for pat, p, w in ENGINES
                         if re.search(pat, name, re.IGNORECASE)), (None, ""))
    if profile is None:
        profile = UNKNOWN_ENGINE
        why = (f"engine {name!r} has no profile" if name else "engine not documented") \
            + f": the {UNKNOWN_ENGINE} profile"
    if why:
        notes.append(why)
    return profile


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return None if m is None else tuple(int(g) for g in m.groups() if g is not None)


V1_FROM = (0, 8)
"""vLLM's V1 engine is the default from 0.8.0 (release notes of v0.8.0); before it, V0's
prefill-first scheduler (the `vllm-v0` profile) unless chunked prefill was turned on."""


def engine_knobs(row: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """DeploymentSpec knobs the row states."""
    s = row["scheduler"]
    knobs: dict[str, Any] = {}
    if s.get("max_batch_size"):
        knobs["max_num_seqs"] = int(s["max_batch_size"])
    if s.get("max_num_batched_tokens"):
        knobs["max_num_batched_tokens"] = int(s["max_num_batched_tokens"])
    if s.get("kv_block_size"):
        knobs["block_size"] = int(s["kv_block_size"])
    fraction = s.get("kv_memory_fraction")
    if isinstance(fraction, str):
        m = re.search(r"0?\.\d+", fraction)
        if m:
            notes.append(f"KV memory fraction {fraction!r}: {float(m.group()):g}")
            fraction = float(m.group())
        else:
            fraction = None
    if isinstance(fraction, (int, float)):
        knobs["gpu_memory_utilization"] = float(fraction)
    chunked = s.get("chunked_prefill")
    if isinstance(chunked, str):
        chunked = not re.search(r"\boff\b|false|disabled", chunked, re.IGNORECASE)
    if isinstance(chunked, bool):
        knobs["enable_chunked_prefill"] = chunked
    if isinstance(s.get("prefix_caching"), bool):
        knobs["enable_prefix_caching"] = s["prefix_caching"]
    return knobs


def engine_version_profile(row: dict[str, Any], engine: str, knobs: dict[str, Any],
                           notes: list[str]) -> str:
    """The profile of the engine's version: vLLM before V1 schedules prefill-first."""
    version = version_tuple(row["engine"].get("version"))
    if engine == "vllm" and version is not None and version < V1_FROM \
            and not knobs.get("enable_chunked_prefill"):
        notes.append(f"vLLM {row['engine']['version']}: the V0 engine (vllm-v0 profile: "
                     "prefill-first iterations, no chunked prefill)")
        return "vllm-v0"
    if engine == "trtllm" and _cpp_runtime(row):
        notes.append(f"{row['engine'].get('name')} {row['engine'].get('version') or ''}".strip()
                     + ": a C++ runtime (trtllm-engine profile: prompt steps without Python "
                     "kernel launches)")
        return "trtllm-engine"
    return engine


TRTLLM_PYTORCH_FROM = (1, 0)
"""TensorRT-LLM's PyTorch backend is the default from 1.0 (release notes of 1.0); before it,
`trtllm-build` TensorRT engines."""


def _cpp_runtime(row: dict[str, Any]) -> bool:
    """A TensorRT engine or another C++ runtime behind the TensorRT-LLM profile: named
    FasterTransformer / LMDeploy / TurboMind, or TensorRT-LLM before its PyTorch backend (a
    version read as `v0.11` before a bare `24.07`, the Triton container's tag)."""
    name = str(row["engine"].get("name") or "")
    if re.search(r"fastertransformer|lmdeploy|turbomind", name, re.IGNORECASE):
        return True
    if re.search(r"pytorch", name, re.IGNORECASE):
        return False
    text = str(row["engine"].get("version") or "")
    m = re.search(r"\bv(\d+)\.(\d+)", text)
    version = (int(m.group(1)), int(m.group(2))) if m else version_tuple(text)
    return version is not None and version < TRTLLM_PYTORCH_FROM


def scheduler_steps(row: dict[str, Any]) -> int:
    """vLLM's multi-step scheduling (`--num-scheduler-steps N`): the host schedules once per N
    decode steps."""
    other = row["scheduler"].get("other") or {}
    steps = other.get("num_scheduler_steps")
    if steps is None:
        m = re.search(r"num-scheduler-steps\s+(\d+)", str(row["engine"].get("version") or ""))
        steps = m.group(1) if m else 1
    return max(int(steps), 1)


# -- precision -------------------------------------------------------------------------------

def precision(row: dict[str, Any], notes: list[str]) -> tuple[str, str]:
    """(weights dtype, KV-cache dtype)."""
    p = row["precision"]
    w = str(p.get("weights") or "")
    if re.search(r"fp8", w, re.IGNORECASE):
        weights = "fp8"
    elif re.search(r"fp16|float16", w, re.IGNORECASE) and not re.search("bf", w, re.IGNORECASE):
        weights = "fp16"
    else:
        weights = "bf16"
        if not w:
            notes.append("precision not stated: 16-bit weights (the engines' default dtype)")
    kv_text = str(p.get("kv_cache") or "")
    if re.search(r"fp8|int8", kv_text, re.IGNORECASE):
        kv = "fp8"
    elif kv_text and not re.search(r"auto", kv_text, re.IGNORECASE):
        kv = "fp16" if re.search(r"fp16", kv_text, re.IGNORECASE) else "bf16"
    else:
        kv = "fp8" if weights == "fp8" else ("fp16" if weights == "fp16" else "bf16")
        if not kv_text or weights == "fp8":
            notes.append(f"KV cache dtype not stated: {kv}"
                         + (" (FP8 checkpoints quantise the KV cache too)" if kv == "fp8"
                            else " (the weights' dtype)"))
    return weights, kv


# -- workload --------------------------------------------------------------------------------

SHAREGPT: dict[str, tuple[float, int | None]] = {"input": (0.56, None), "output": (0.9, 2044)}
"""(lognormal sigma, cap) of ShareGPT prompt and output lengths when a row gives only the
means. Outputs: the benchmarks' own filtered ShareGPT (`benchmarks/sharegpt_lengths.py`:
median / mean 0.68, p99 4.1x the mean, i.e. sigma ~0.9) cut at the 2044 tokens the sampler
leaves a reply (`sample_sharegpt_requests` drops prompt + output over 2048, prompts and
replies under 4 tokens): at QPS = inf the longest replies set the drain, so a narrow shape
predicted the vLLM 0.6 blog's ShareGPT throughput 35-61 % high. Prompts: sigma 0.56 =
sqrt(2 ln(mean / median)) of a ShareGPT sample whose mean and median are published (input
857.5 / 731.5 tokens, LLMServingSim's sharegpt workload file); the measured prompt shape
(median / mean 0.49, sigma ~1.6 cut at 1024) moved 14 of the blog's 3-row throughput groups
out of their measured order (docs/validation.md), so it is not the default."""
MEAN_MEDIAN = re.compile(r"(input|output)\s+mean\s+([\d.]+)\s*/\s*median\s+([\d.]+)")


def lengths(row: dict[str, Any], notes: list[str]) -> tuple[Lengths, Lengths]:
    w = row["workload"]
    if w.get("input_len") and w.get("output_len"):
        return Lengths(mean=int(w["input_len"])), Lengths(mean=int(w["output_len"]))
    if not (w.get("input_len_mean") and w.get("output_len_mean")):
        raise Unbuildable("workload lengths not given")
    mi, mo = float(w["input_len_mean"]), float(w["output_len_mean"])
    text = f"{w.get('dataset') or ''} {w.get('length_distribution') or ''}"
    shape: dict[str, tuple[float, int | None]] = dict(SHAREGPT) \
        if re.search("sharegpt", text, re.IGNORECASE) else {}
    for kind, mean, median in MEAN_MEDIAN.findall(text):
        shape[kind] = (math.sqrt(2 * max(math.log(float(mean) / float(median)), 0.0)), None)
    if shape:
        (si, ci), (so, co) = shape["input"], shape["output"]
        notes.append(f"lengths lognormal with the stated means, sigma {si:.2f} (input) / "
                     f"{so:.2f} (output) from "
                     + ("the stated medians" if MEAN_MEDIAN.search(text)
                        else "a published ShareGPT sample's mean and median")
                     + (f", cut at {ci} / {co} tokens as the benchmark's sampler drops longer "
                        "requests" if ci or co else ""))
        return (Lengths(kind="lognormal", mean=round(mi), spread=si,
                        max=ci if ci and ci > mi else None),
                Lengths(kind="lognormal", mean=round(mo), spread=so,
                        max=co if co and co > mo else None))
    notes.append(f"lengths fixed at the stated means ({mi:g} / {mo:g}): a synthetic dataset")
    return Lengths(mean=round(mi)), Lengths(mean=round(mo))


def workload(row: dict[str, Any], notes: list[str]) -> Workload | StaticBatch:
    w = row["workload"]
    inp, out = lengths(row, notes)
    if row["scenario"] == "static_batch":
        return StaticBatch(count(w, "batch_size", 1), inp.mean, out.mean)
    n = count(w, "num_requests", 1000)
    if w.get("num_requests") is None:
        notes.append("number of requests not stated: 1000")
    rate = w.get("request_rate_per_s")
    if rate not in (None, "inf") and not float(rate) > 0:
        raise Unbuildable(f"request_rate_per_s={rate!r}: must be positive or 'inf'")
    if rate in (None, "inf") or row["scenario"] == "offline":
        return Workload(arrival="burst", num_requests=n, input=inp, output=out)
    process = str(w.get("arrival_process") or "")
    if not re.search("poisson", process, re.IGNORECASE):
        notes.append(f"arrival process {process or 'not stated'!r}: Poisson")
    return Workload(arrival="poisson", rate=float(rate), num_requests=n, input=inp, output=out)


# -- the whole case --------------------------------------------------------------------------

def layout(row: dict[str, Any], model: Model, notes: list[str]) -> dict[str, int]:
    """tp (GPUs per stage), ep, dp_attention and instances from the row's parallelism (tp,
    pp, ep, dp: dp model replicas, or with expert parallelism over them, data-parallel
    attention ranks of one instance)."""
    par = row["parallelism"]
    tp, pp = count(par, "tp", 1), count(par, "pp", 1)
    dp, ep = count(par, "dp", 1), count(par, "ep", 1)
    other = row["scheduler"].get("other") or {}
    if model.moe is None:
        return {"tp": tp, "pp": pp, "instances": dp}
    if ep > 1 and dp > 1 and ep == tp * dp:
        notes.append(f"dp={dp} with ep={ep}: one instance of {ep} GPUs, data-parallel "
                     "attention, experts over all of them")
        return {"tp": ep, "pp": pp, "ep": ep, "dp_attention": dp, "instances": 1}
    if other.get("enable_attention_dp"):
        if ep == 1:
            notes.append(f"attention data parallelism, EP size not given: experts over the "
                         f"instance's {tp} GPUs (ep = tp)")
        return {"tp": tp, "pp": pp, "ep": ep if ep > 1 else tp, "dp_attention": tp,
                "instances": dp}
    return {"tp": tp, "pp": pp, "ep": ep, "instances": dp}


def longest_prompt(w: Workload | StaticBatch) -> int | None:
    """The longest prompt when the lengths are fixed, else None."""
    if isinstance(w, StaticBatch):
        return w.input_len
    return w.input.mean if w.input is not None and w.input.kind == "fixed" else None


def build_case(row: dict[str, Any]) -> ServeCase:
    """The row's specs, or `Unbuildable` with the reason."""
    notes: list[str] = []
    model = build_model(row, notes)
    cluster = build_cluster(row, notes)
    knobs = engine_knobs(row, notes)
    engine = engine_version_profile(row, engine_profile(row, notes), knobs, notes)
    weights, kv = precision(row, notes)
    work = workload(row, notes)
    profile = load_engine(engine)
    chunked = knobs.get("enable_chunked_prefill", profile.enable_chunked_prefill)
    longest = longest_prompt(work)
    if not chunked and "max_num_batched_tokens" not in knobs and longest is not None \
            and longest > profile.batch_defaults(cluster.accelerator)[1]:
        seqs = knobs.get("max_num_seqs", profile.batch_defaults(cluster.accelerator)[0])
        knobs["max_num_batched_tokens"] = longest + seqs
        notes.append(f"token budget not stated and chunked prefill off: the {longest}-token "
                     f"prompt plus one token per sequence of the batch limit ({seqs}), so a "
                     "prompt can join a full decode batch (harnesses size it to the dataset)")
    blocks = (row["scheduler"].get("other") or {}).get("num_gpu_blocks")
    if blocks:
        knobs["num_gpu_blocks"] = int(blocks)
        notes.append(f"KV blocks as the engine reported them ({int(blocks)})")
    steps = scheduler_steps(row)
    if steps > 1:
        if engine == "vllm-v0":
            knobs["num_scheduler_steps"] = steps
        else:
            notes.append(f"num_scheduler_steps={steps} ignored: multi-step is V0's")
    par = layout(row, model, notes)
    spec = DeploymentSpec.model_validate({"engine": engine, "weights_dtype": weights,
                                          "kv_cache_dtype": kv, **par, **knobs})
    return ServeCase(row, model, cluster, spec, work, notes,
                     read_as(row, spec.tp * spec.pp * spec.instances, notes))


def read_as(row: dict[str, Any], gpus: int, notes: list[str]) -> dict[str, str]:
    """Metrics whose figure is not what its key says, by engine and scenario."""
    engine = str(row["engine"].get("name") or "")
    if re.search(r"tensorrt|trt-?llm", engine, re.IGNORECASE) \
            and row["scenario"] == "static_batch" and gpus > 1 \
            and row["metrics"].get("output_tokens_per_s") is not None:
        notes.append("static-batch output tok/s read per GPU: TensorRT-LLM's performance "
                     "tables (gptSessionBenchmark) label the column 'Throughput (out "
                     "tok/s/GPU)' (docs/source/performance.md, v0.6.1)")
        return {"output_tokens_per_s": "output_tokens_per_s_per_gpu"}
    return {}
