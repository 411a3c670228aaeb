#!/usr/bin/env bash
# Prove the cost model on one GPU: `meshplan calibrate --local` (GEMM curve, attention, memory,
# the executor probe), then single-GPU `meshplan run`s of a ~1B Llama (Llama-3.2-1B shapes)
# with NCCL at micro-batch 1, 2 and 4, recompute none and full, and a markdown table of
# measured vs predicted step time and peak memory (torch.cuda.max_memory_allocated) that can
# be pasted into docs/validation.md.
#
# Usage: scripts/gpu-check.sh [OUT_DIR]   (default: ./gpu-check-<date>)
# Needs a CUDA GPU and the torch extra; without a GPU it stops at once with exit 3.
# Environment: PYTHON (default python), SEQ_LEN (2048), GLOBAL_BATCH (8), STEPS (10),
# RUN_TIMEOUT (600 s per run).
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M)}
SEQ_LEN=${SEQ_LEN:-2048}
GLOBAL_BATCH=${GLOBAL_BATCH:-8}
STEPS=${STEPS:-10}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}

if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        2>/dev/null; then
    echo "gpu-check: no CUDA GPU visible to torch ($PYTHON); nothing measured." >&2
    echo "gpu-check: run it on a GPU machine with the torch extra (pip install -e '.[torch]')." >&2
    exit 3
fi
mkdir -p "$OUT"
GPU=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')
echo "gpu-check: $GPU, results in $OUT" >&2

# Llama-3.2-1B shapes (meta-llama/Llama-3.2-1B config.json): 16 layers, hidden 2048, FFN 8192,
# 32 query / 8 KV heads, vocabulary 128256, tied embeddings.
cat > "$OUT/llama3.2-1b.toml" <<'TOML'
name = "llama3.2-1b"
source = "meta-llama/Llama-3.2-1B config.json (shapes only)"
num_layers = 16
hidden_size = 2048
ffn_hidden_size = 8192
mlp_type = "swiglu"
num_attention_heads = 32
num_kv_heads = 8
vocab_size = 128256
tied_embeddings = true
position_embedding = "rope"
norm = "rmsnorm"
max_seq_len = 131072
TOML

timeout 1800 "$PYTHON" -m meshplan calibrate --local --out "$OUT/local.toml" \
    2> >(tee "$OUT/calibrate.log" >&2)

for mbs in 1 2 4; do
    for rc in none full; do
        name="mbs${mbs}-rc${rc}"
        echo "gpu-check: run $name" >&2
        if ! timeout "$RUN_TIMEOUT" "$PYTHON" -m meshplan run --cluster "$OUT/local.toml" \
                --model "$OUT/llama3.2-1b.toml" --global-batch-size "$GLOBAL_BATCH" \
                --seq-len "$SEQ_LEN" --micro-batch-size "$mbs" --recompute "$rc" \
                --steps "$STEPS" --warmup 3 --json > "$OUT/$name.json" 2> "$OUT/$name.log"; then
            echo "gpu-check: $name failed: $(tail -n 1 "$OUT/$name.log")" >&2
            rm -f "$OUT/$name.json"
        fi
    done
done

"$PYTHON" - "$OUT" "$GPU" "$SEQ_LEN" "$GLOBAL_BATCH" <<'PY' | tee "$OUT/validation-gpu.md"
import json, pathlib, statistics, sys
out, gpu, seq, batch = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
print(f"### One GPU ({gpu}): `scripts/gpu-check.sh`\n")
print(f"Llama-3.2-1B shapes, batch {batch} x {seq}, bf16, AdamW, NCCL, one rank; calibrated by "
      "`meshplan calibrate --local` on the same machine. Memory: `max_memory_allocated`.\n")
print("| micro-batch | recompute | predicted ms | measured ms | error | predicted GiB "
      "| measured GiB | error |")
print("|---|---|---|---|---|---|---|---|")
errs, mems = [], []
for mbs in (1, 2, 4):
    for rc in ("none", "full"):
        f = out / f"mbs{mbs}-rc{rc}.json"
        if not f.exists():
            print(f"| {mbs} | {rc} | failed | | | | | |")
            continue
        d = json.loads(f.read_text())
        m, p = d["measured"], d["predicted"]
        mem_err = (p["memory_gib"]["peak"] - m["peak_memory_gib"]) / m["peak_memory_gib"]
        errs.append(abs(d["error"]))
        mems.append(abs(mem_err))
        print(f"| {mbs} | {rc} | {p['step_time_s'] * 1e3:.1f} | {m['step_time_s'] * 1e3:.1f} "
              f"| {d['error']:+.1%} | {p['memory_gib']['peak']:.2f} | "
              f"{m['peak_memory_gib']:.2f} | {mem_err:+.1%} |")
if errs:
    print(f"\nmedian |step-time error| {statistics.median(errs):.1%}, worst {max(errs):.1%}; "
          f"median |memory error| {statistics.median(mems):.1%}, worst {max(mems):.1%}")
PY
