"""Which modules a plan's selective recompute rebuilds in the backward pass, per plan.

Names and semantics are Megatron-Core's --recompute-modules (TransformerConfig.recompute_modules,
megatron/core/transformer/transformer_config.py): "core_attn" the attention core (scores,
softmax, dropout; normal checkpointing), "layernorm" the input and pre-MLP norms, "mla_up_proj"
MLA's up-projections and RoPE, "moe_act" the routed experts' activation function (all three
output-discarding: the module's output is dropped once consumed and rebuilt for the backward),
"mlp" the dense MLP, "moe" the whole MoE layer, "shared_experts" the shared experts (normal
checkpointing: only the module's input is kept). A plan without a module list runs meshplan's
default selective policy: the attention core when attention is unfused (Korthikanti et al. 2022
Sec. 5), else the norms and every MLP's activation function (torchtitan's op-level SAC;
Megatron-Core `layernorm` + `moe_act`).

What each module's recompute drops from memory is in `cost.train.memory`; what it adds to the
backward's time in `cost.train.passes`.
"""

from __future__ import annotations

import numpy as np

from meshplan.specs.job import Job
from meshplan.specs.plan import RECOMPUTE_MODULES, PlanArrays, recompute_mask

DENSE_ACT = 1 << len(RECOMPUTE_MODULES)
"""The dense MLP's activation function: part of the default fused policy (torchtitan SAC);
Megatron-Core has no module name for it (its `moe_act` covers routed experts only)."""


def default_mask(job: Job) -> int:
    """The default selective policy's modules for this job's attention kernel."""
    if not job.flash_attention:
        return recompute_mask(("core_attn",))
    return recompute_mask(("layernorm", "moe_act")) | DENSE_ACT


def module_masks(P: PlanArrays, job: Job) -> np.ndarray:
    """Per plan, the bit mask of modules selective recompute rebuilds (0 without selective
    recompute; full recompute rebuilds whole layers and is handled apart)."""
    given = (np.zeros(len(P), dtype=np.int64) if P.recompute_modules is None
             else P.recompute_modules)
    mask = np.where(given == 0, default_mask(job), given)
    return np.where(P.recompute == 1, mask, 0)


def rebuilds(masks: np.ndarray, module: str) -> np.ndarray:
    """Per plan, whether `module` ("dense_act" for DENSE_ACT) is recomputed."""
    bit = DENSE_ACT if module == "dense_act" else 1 << RECOMPUTE_MODULES.index(module)
    return (masks & bit) != 0


def full_share(P: PlanArrays, num_layers: int) -> np.ndarray:
    """Per plan, the share of layers fully recomputed: 1 under full recompute of every layer,
    min(N, c) / c under Megatron-LM's --recompute-method block --recompute-num-layers N
    (megatron/core/transformer/transformer_block.py `_checkpointed_forward`: the first N
    layers of each pipeline stage's model chunk of c = L / (pp x vpp) layers are recomputed,
    the rest keep their activations), 0 without full recompute. Uneven first / last stages
    are counted at the even chunk size."""
    full = (P.recompute == 2).astype(float)
    if P.recompute_layers is None:
        return full
    chunk = num_layers / (P.pp * P.vpp)
    n = P.recompute_layers
    return full * np.where(n > 0, np.minimum(n, chunk) / chunk, 1.0)
