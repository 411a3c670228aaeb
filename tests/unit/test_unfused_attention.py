"""Unfused attention's time (Megatron-LM CoreAttention): score GEMMs bound by the s^2 score
traffic, softmax and dropout passes counted per score, forward and backward."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost.kernels import Kernels
from meshplan.cost.layer import (
    DROPOUT_BYTES,
    SOFTMAX_BYTES,
    BatchShape,
    LayerDegrees,
    attention_parts,
    unfused_score_bytes,
    unfused_score_gemms,
)
from meshplan.specs.io import load_model


def test_score_bytes_per_pass(gpt3):
    """Forward: softmax reads and writes the fp16 scores (4), dropout reads them and writes its
    output and a 1-byte mask (5; Korthikanti et al. 2022 Sec. 4.1 count the 2 + 1 saved);
    backward: softmax 6, dropout 5."""
    assert SOFTMAX_BYTES == (4.0, 6.0) and DROPOUT_BYTES == (5.0, 5.0)
    assert unfused_score_bytes(gpt3, 1.0) == 9.0
    assert unfused_score_bytes(gpt3, 1.0, backward=True) == 11.0
    no_dropout = gpt3.model_copy(update={"dropout": False})
    assert unfused_score_bytes(no_dropout, 1.0) == 4.0


def test_score_gemms_are_bound_by_the_score_matrix_on_a100(a100):
    """GPT-2 1.5B-like heads (d = 96, the Zero Bubble paper's 1.5B model): 2d = 192 FLOPs per
    2-byte score, 96 FLOP/byte, below the A100's ridge (312 TFLOP/s over ~1.8 TB/s), so each
    GEMM takes its bytes over the bandwidth: the score matrix plus Q, K (or V, O)."""
    model = load_model("gpt-1.7b").model_copy(update={"num_attention_heads": 24,
                                                      "hidden_size": 2304})
    K = Kernels(a100, "bf16")
    s, b = 1024, 6
    shape = BatchShape.training(np.array([float(b)]), s, np.array([1.0]))
    got = float(unfused_score_gemms(model, K, shape, 1)[0])
    a, d = 24, 96
    scores = a * b * s * s
    rows = a * b * s
    expected = 2 * (2.0 * (scores + 2 * rows * d)) / K.mem_bw
    assert got == pytest.approx(expected, rel=1e-9)
    deg = LayerDegrees(tp=np.array([1.0]), seq_shard=np.array([1.0]))
    parts = attention_parts(model, K, shape, deg, fused=False)
    assert float(parts.core[0]) == pytest.approx(expected, rel=1e-9)
    assert float(parts.score_bytes[0]) == pytest.approx(9.0 * scores)

