"""Run by an interpreter with torchtitan 0.3.0 (test_engine_configs.test_torchtitan_03_loads):
parse each meshplan 0.3 launch script with torchtitan's own ConfigManager, build the model of
its config function on the meta device, and print what they hold, one JSON line per file."""

import json
import re
import shlex
import sys
from pathlib import Path

import torch
from torchtitan.config.manager import ConfigManager

for path in sys.argv[1:]:
    text = Path(path).read_text()
    words = shlex.split(re.sub(r"\\\n", " ", text), comments=True)
    argv = [w for w in words[words.index("torchtitan.train") + 1:] if w != "$@"]
    cfg = ConfigManager().parse_args(argv)
    par, train = cfg.parallelism, cfg.training
    with torch.device("meta"):
        model = cfg.model_spec.model.build()
    spec = str(cfg.model_spec.model.to_dict())
    ac = cfg.activation_checkpoint
    print(json.dumps({
        "path": path, "params": sum(p.numel() for p in model.parameters()),
        "degrees": [par.data_parallel_replicate_degree, par.data_parallel_shard_degree,
                    par.tensor_parallel_degree, par.pipeline_parallel_degree,
                    par.context_parallel_degree, par.expert_parallel_degree],
        "schedule": par.pipeline_parallel_schedule,
        "batch": [train.local_batch_size, train.global_batch_size, train.seq_len,
                  par.pipeline_parallel_microbatch_size],
        "ac": None if ac is None else type(ac).__qualname__.split(".")[0],
        "async_tp": cfg.compile.enable and cfg.compile.enable_async_tensor_parallel,
        "offload": train.enable_cpu_offload,
        "theta": sorted({float(t) for t in re.findall(r"'theta': ([\d.e+]+)", spec)}),
        "eps": sorted({float(t) for t in re.findall(r"'eps': ([\d.e\-]+)", spec)}),
    }))
