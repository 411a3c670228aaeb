"""Analytic cost model, vectorised with numpy.

The layer-cost core (`kernels`, `layer`, `collectives`, `comm`, `flops`, `params`) prices one
layer's forward, the embedding, the head and the KV cache for any batch shape, for training
and serving alike; `cost.train` composes the training step on top of it. Every function takes
plain numbers or numpy arrays (one entry per plan) and broadcasts, so `estimate` (one plan)
and `search` (a whole space) run the same code.

Symbols used across the modules (Korthikanti et al. 2022 notation):
    b micro-batch size, s sequence length, h hidden size, a attention heads, k KV heads,
    d head dimension, f FFN size, V vocabulary, L layers, E experts, K top-k,
    t tensor-parallel, c context-parallel, p pipeline-parallel, v virtual stages,
    e expert-parallel, m micro-batches per step.
"""
