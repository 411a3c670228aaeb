"""Analytic bounds from the cost core that prune a deployment before it is simulated.

For one pool (`Deployment`) and a request of I prompt and O output tokens:

* memory: the instance's KV cache exists (`kv_capacity(...).fits`) and one request's I + O
  tokens fit in one attention rank's blocks (a prefill pool needs I + 1);
* TTFT: the prompt alone, in chunks of max_num_batched_tokens (the engine's own chunking),
  takes longer than the TTFT SLO (no queueing can make it faster);
* TPOT: one decode step of a lone sequence at the mean context I + O / 2 takes longer than the
  TPOT SLO (every output token after the first costs at least one step);
* rate: the steady state at the largest decode batch B that holds in the KV cache (at
  I + O / 2 tokens a request), within max_num_seqs and with a step no slower than the TPOT
  SLO: each request costs O / B decode steps of t_d(B) and its prefill's marginal time on
  top of that batch, prompts packed up to the token budget (colocated), or the pools work
  apart (disaggregated: x prefill instances at one batch-packed prefill each, y decode
  instances at B / (O t_d(B)) requests per second). It is an estimate, not a proof: it
  ignores queueing and how prefill chunks slow the decode steps they share (both lower the
  rate) but also that a decode batch can run past B with steps above the SLO's mean; the
  search simulates around it.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplan.serve.deployment import AnyDeployment, Deployment, DisaggregatedDeployment
from meshplan.serve.iteration import IterationCost, kv_capacity


@dataclass(frozen=True)
class Bound:
    """Why a deployment cannot meet the SLOs (`reason` memory / TTFT / TPOT), or the highest
    request rate it may sustain (`rate_per_s`)."""

    reason: str | None
    detail: str
    rate_per_s: float = 0.0
    lifetime_s: float = 0.0
    """A request's estimated time in the system at that rate (prefill, then O - 1 steps)."""


def prefill_time(c: IterationCost, d: Deployment, prompts: int, tokens: int) -> float:
    """Seconds to prefill `prompts` prompts of `tokens` each, packed into iterations of at
    most max_num_batched_tokens (a prompt split over consecutive chunks when longer)."""
    budget = d.max_num_batched_tokens if d.enable_chunked_prefill else max(
        d.max_num_batched_tokens, tokens)
    total, done, left = 0.0, 0, prompts * tokens
    while left > 0:
        chunk = min(budget, left)
        # the chunk's tokens sit at offset `done % tokens` of their prompt on average
        offset = float(done % tokens)
        seqs = max(1, -(-chunk // tokens))
        total += c.time(seqs, chunk, chunk * offset, chunk * min(chunk, tokens),
                        chunk * offset + chunk, seqs)
        done += chunk
        left -= chunk
    return total


def decode_step(c: IterationCost, batch: int, context: float) -> float:
    """One decode-only step of `batch` sequences at `context` cached tokens each."""
    p = batch * context
    return c.time(batch, batch, p, batch, p + batch, batch)


def _largest_batch(c: IterationCost, most: int, context: float, slo_tpot_s: float) -> int:
    """The largest batch <= most whose decode step is within the TPOT SLO (the step time
    grows with the batch), at least 1."""
    lo, hi = 1, max(1, most)
    if decode_step(c, hi, context) <= slo_tpot_s:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if decode_step(c, mid, context) <= slo_tpot_s:
            lo = mid
        else:
            hi = mid
    return lo


def _pool_memory(d: Deployment, tokens: int, role: str) -> Bound | None:
    cap = kv_capacity(d)
    if not cap.fits:
        return Bound("memory", f"{role}no room for the KV cache: weights "
                     f"{cap.weights_bytes / 2**30:.1f} GiB of a "
                     f"{cap.budget_bytes / 2**30:.1f} GiB budget per GPU")
    room = cap.blocks_per_rank * d.block_size
    if room < tokens:
        return Bound("memory", f"{role}a request of {tokens} tokens needs more than the "
                     f"{room} tokens of KV cache of one rank")
    return None


def _decode_capacity(c: IterationCost, d: Deployment, i: int, o: int,
                     slo_tpot_s: float) -> tuple[int, float]:
    """(B, requests per second of one instance's decodes) at the TPOT-feasible batch."""
    cap = kv_capacity(d)
    # paged allocation: a request holds its prompt and the tokens decoded so far, I + O / 2
    # on average over its life
    kv_seqs = int(cap.num_blocks * d.block_size // (i + o / 2))
    most = min(d.max_num_seqs * d.dp_attention, kv_seqs)
    context = i + o / 2
    b = _largest_batch(c, most, context, slo_tpot_s)
    t = decode_step(c, b, context)
    return b, b / (max(o - 1, 1) * t) * d.pp


def bound(d: AnyDeployment, input_len: int, output_len: int, slo_ttft_s: float,
          slo_tpot_s: float) -> Bound:
    """The first of memory, TTFT, TPOT that rules `d` out, else its rate estimate."""
    i, o = input_len, output_len
    if isinstance(d, DisaggregatedDeployment):
        p, q = d.prefill, d.decode
        for pool, tokens, role in ((p, i + 1, "prefill "), (q, i + o, "decode ")):
            why = _pool_memory(pool, tokens, role)
            if why is not None:
                return why
        cp, cq = IterationCost(p), IterationCost(q)
    else:
        why = _pool_memory(d, i + o, "")
        if why is not None:
            return why
        p = q = d
        cp = cq = IterationCost(d)
    t1 = prefill_time(cp, p, 1, i)
    if t1 > slo_ttft_s:
        return Bound("TTFT", f"the prompt alone takes {t1 * 1e3:.0f} ms to prefill "
                     f"(SLO {slo_ttft_s * 1e3:.0f} ms)")
    step = decode_step(cq, 1, i + o / 2)
    if step > slo_tpot_s:
        return Bound("TPOT", f"one decode step of a lone request takes {step * 1e3:.1f} ms "
                     f"(SLO {slo_tpot_s * 1e3:.0f} ms)")
    b, decode_rate = _decode_capacity(cq, q, i, o, slo_tpot_s)
    if isinstance(d, DisaggregatedDeployment):
        k = max(1, p.max_num_batched_tokens // i)
        prefill_rate = k / prefill_time(cp, p, k, i) * p.pp
        rate = min(p.instances * prefill_rate, q.instances * decode_rate)
        life = t1 + (o - 1) * decode_step(cq, b, i + o / 2)
        return Bound(None, f"prefill {p.instances * prefill_rate:.2f} req/s, decode "
                     f"{q.instances * decode_rate:.2f} req/s at batch {b}", rate, life)
    # Colocated: a prompt's marginal time on top of the decode batch it joins, with as many
    # whole prompts as the token budget packs into one iteration (k x I tokens) or one
    # budget-sized chunk of a longer prompt.
    k = max(1, d.max_num_batched_tokens // i)
    chunk = min(k * i, d.max_num_batched_tokens)
    per_seq = min(i, chunk)
    ctx = b * (i + o / 2)
    seqs = -(-chunk // per_seq)
    mixed = cq.time(b + seqs, b + chunk, ctx, b + chunk * per_seq, ctx + b + chunk, b + seqs)
    marginal = max(mixed - decode_step(cq, b, i + o / 2), 0.0) * (i / chunk)
    per_request = marginal + max(o - 1, 1) * decode_step(cq, b, i + o / 2) / b
    rate = d.instances * d.pp / per_request
    life = t1 + (o - 1) * decode_step(cq, b, i + o / 2)
    return Bound(None, f"{rate:.2f} req/s at decode batch {b}", rate, life)
