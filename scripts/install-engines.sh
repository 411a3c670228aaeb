#!/usr/bin/env bash
# Install the training engines whose own parsers tests/engines/test_engine_configs.py loads
# meshplan's exports with: Megatron-Core 0.16.1 (the newest for Python 3.11), torchtitan 0.2.2
# (the last release that reads TOML job configs; 0.3.0 in its own venv, below) and DeepSpeed
# 0.19.8; and transformers 5.24.0,
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

# torchtitan 0.3.0 (the current release, Python config registries) cannot share an environment
# with 0.2.2, so it gets its own venv on top of this one's packages (torch included), for
# tests/engines' test_torchtitan_03_loads. Its config registry imports the trainer, hence
# triton, datasets and tensorboard; the versions are those this import was checked with
# (datasets newer than torchtitan's <4.8 pin: only the config code runs here).
TT3=${TORCHTITAN03_VENV:-"$(dirname "$0")/../.venv-torchtitan03"}
"$PYTHON" -m venv --system-site-packages "$TT3"
"$TT3/bin/python" -m pip install --quiet --no-deps "torchtitan==0.3.0" "spmd_types==0.2.3" \
  "torch_checkpointing==0.1.1" "torchdata==0.11.0" "triton==3.9.0" "tensorboard==2.21.0" \
  "tensorboard-data-server==0.7.2" "protobuf==7.36.2" "absl-py==2.5.1" "grpcio==1.85.3" \
  "Markdown==3.11.3" "wandb==0.31.0" "datasets==5.2.0" "multiprocess==0.70.19" \
  "pandas==3.1.1" "pyarrow==26.0.1" "dill==0.4.1" "xxhash==4.1.0" "aiohttp==3.14.5"
"$TT3/bin/python" -c "import torchtitan.models.llama3.config_registry; \
from importlib.metadata import version; print('torchtitan', version('torchtitan'), '(venv)')"
