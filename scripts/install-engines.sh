#!/usr/bin/env bash
# Install the training engines whose own parsers tests/engines/test_engine_configs.py loads
# meshplan's exports with: Megatron-Core 0.16.1 (the newest for Python 3.11), torchtitan 0.2.2
# (the last release that reads TOML job configs) and DeepSpeed 0.19.8; and transformers 5.24.0,
# whose config classes and meta-device models tests/unit/test_hf_transformers.py checks the
# Hugging Face config loader's parameter counts against.
#
# The engines go in with --no-deps so that their pins cannot pull another torch (and gigabytes
# of CUDA wheels); the few small packages their config code imports are installed by hand.
set -euo pipefail
PYTHON=${PYTHON:-python}
install() { "$PYTHON" -m pip install --quiet "$@"; }

# torch first, and only this exact build: any other version pulls CUDA packages.
install "torch==2.13.0"
install --no-deps "megatron-core==0.16.1" "torchtitan==0.2.2"
# DeepSpeed ships as an sdist; build it against the installed torch, with no CUDA ops.
DS_BUILD_OPS=0 install --no-deps --no-build-isolation "deepspeed==0.19.8"
# Imported by megatron.core (numpy, packaging), torchtitan.config (tyro) and
# deepspeed.runtime.config (hjson, msgpack, ninja, psutil, py-cpuinfo, einops, tqdm).
install numpy "packaging>=24.2" tyro hjson msgpack ninja psutil py-cpuinfo einops tqdm
# transformers without its dependencies (none of them is torch, but --no-deps keeps it that way),
# then the small packages it imports, by name; huggingface_hub brings its own (httpx2, hf-xet...).
install --no-deps "transformers==5.24.0"
install "huggingface_hub>=1.31,<3" "tokenizers>=0.23.1,<0.24" "safetensors>=0.8" \
  "regex>=2025.10.22" "pyyaml>=5.1" filelock typer
"$PYTHON" - <<'PY'
from importlib.metadata import version
for name in ("megatron-core", "torchtitan", "deepspeed", "transformers"):
    print(f"{name} {version(name)}")
PY
