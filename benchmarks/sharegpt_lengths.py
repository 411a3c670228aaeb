"""Prompt and output length statistics of ShareGPT as the serving benchmarks sample it, behind
the ShareGPT length shape of `meshplan serve validate` (`serve/validate/rebuild.py`,
`SHAREGPT`).

vLLM's `benchmarks/benchmark_serving.py` (`sample_sharegpt_requests`, copied by SGLang's
`bench_serving.py`) takes each conversation's first human turn as the prompt and the first
gpt turn's length as the output, and drops a pair when either is under 4 tokens, the prompt
over 1024 or the two over 2048 tokens. No tokenizer ships with meshplan, so a token is taken
as `--chars-per-token` characters; the shape ratios (median / mean, p99 / mean) move by a few
hundredths between 3.5 and 5 characters per token (2026-12-01, the first 17,400 first turns
of ShareGPT_V3_unfiltered_cleaned_split.json: prompt median / mean 0.48-0.50, output
0.66-0.68; at 5 characters, where the filtered means are 202 / 187 tokens, close to the vLLM
blog's 202 / 179: prompt p99 856 (4.2x the mean), output p99 763 (4.1x)).

Run: python benchmarks/sharegpt_lengths.py ShareGPT_V3_unfiltered_cleaned_split.json
     [--chars-per-token 5]   (a truncated file is read up to its last whole conversation)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MIN_TOKENS, MAX_PROMPT, MAX_TOTAL = 4, 1024, 2048
"""vLLM benchmark_serving.py's ShareGPT filter."""


def first_turns(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Characters of each conversation's first two turns."""
    text = Path(path).read_text(encoding="utf-8")
    dec, i, prompts, outputs = json.JSONDecoder(), text.index("[") + 1, [], []
    while True:
        while i < len(text) and text[i] in " \n\r\t,":
            i += 1
        try:
            conv, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        turns = conv.get("conversations") or []
        if len(turns) >= 2:
            prompts.append(len(turns[0]["value"]))
            outputs.append(len(turns[1]["value"]))
    return np.array(prompts, dtype=float), np.array(outputs, dtype=float)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--chars-per-token", type=float, default=5.0)
    args = ap.parse_args()
    chars_in, chars_out = first_turns(args.path)
    p = np.rint(chars_in / args.chars_per_token)
    o = np.rint(chars_out / args.chars_per_token)
    keep = (p >= MIN_TOKENS) & (o >= MIN_TOKENS) & (p <= MAX_PROMPT) & (p + o <= MAX_TOTAL)
    print(f"{len(p)} first turns, {int(keep.sum())} kept by the filter")
    for name, x in (("prompt", p[keep]), ("output", o[keep])):
        q = np.percentile(x, [10, 50, 90, 99])
        print(f"  {name}: mean {x.mean():.0f}, p10 {q[0]:.0f}, median {q[1]:.0f}, p90 {q[2]:.0f}, "
              f"p99 {q[3]:.0f}; median / mean {q[1] / x.mean():.2f}, p99 / mean "
              f"{q[3] / x.mean():.2f}")


if __name__ == "__main__":
    main()
