"""SpecMD's headline claims beside what this environment measures in the paper's setting.

    python -m experiments.paper_claims            # prints the table, writes experiments/results/paper_claims.md

Setting: the embedded OLMoE trace (``olmoe-synthetic``, every request, in order), hardware
``paper-a100-5gbps``, capacities 1%, 5%, 25%, LRU and Least-Stale, each without prefetching and with
score-based next-layer prefetching (``prefetch='score'``, lookahead 1), batch size 1, seed 0 (no policy
here is random). 12 replays, a few seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from specmd_env.catalog import get_trace
from specmd_env.hardware import get_profile
from specmd_env.models import get_model
from specmd_env.reward import RewardWeights
from specmd_env.simulate import simulate

COMMAND = "python -m experiments.paper_claims"
TRACE = "olmoe-synthetic"
HARDWARE = "paper-a100-5gbps"
CAPACITIES = (0.01, 0.05, 0.25)
POLICIES = (("lru", "none"), ("lru", "score"), ("least-stale", "none"), ("least-stale", "score"))
OUT = Path(__file__).resolve().parent / "results" / "paper_claims.md"


def measure(trace_name: str = TRACE, hardware: str = HARDWARE, capacities=CAPACITIES) -> dict:
    trace = get_trace(trace_name)
    results = {}
    for cap in capacities:
        for ev, pf in POLICIES + (("belady-bypass", "none"),):
            results[(cap, ev, pf)] = simulate(trace, hardware=hardware, capacity=cap, eviction=ev, prefetch=pf, seed=0)
    return {"trace": trace, "results": results}


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "inf" if a else "n/a (0/0)"
    return f"{a / b:.2f}x"


def _pct(x: float) -> str:
    return f"{round(100 * x, 1) + 0.0:.1f}%"  # + 0.0: no "-0.0%"


def report(data: dict, hardware: str = HARDWARE, capacities=CAPACITIES) -> tuple[str, str]:
    """(markdown, the claims table alone)."""
    trace, res = data["trace"], data["results"]
    model, hw = get_model(trace.model), get_profile(hardware)
    w = RewardWeights()
    xfer = hw.transfer_seconds(model.expert_bytes)
    decode_layer = hw.dense_seconds(model, 1, 512, 512) + model.top_k * hw.expert_seconds(model, 1)
    prefill_layer = hw.dense_seconds(model, 256, 256 * 128, 256) + model.num_experts * hw.expert_seconds(model, 32)

    c5 = 0.05 if 0.05 in capacities else capacities[len(capacities) // 2]
    c1 = min(capacities)
    ratios = {}
    for cap in capacities:
        for pf in ("none", "score"):
            ratios[(cap, pf)] = (res[(cap, "lru", pf)].collision_misses, res[(cap, "least-stale", pf)].collision_misses)
    ttft = {}
    for cap in capacities:
        base = res[(cap, "lru", "none")].mean_ttft_seconds
        base_pf = res[(cap, "lru", "score")].mean_ttft_seconds
        ls_pf = res[(cap, "least-stale", "score")].mean_ttft_seconds
        ttft[cap] = ((base - ls_pf) / base, (base_pf - ls_pf) / base_pf)
    best_ratio_key = max(ratios, key=lambda k: (ratios[k][0] / ratios[k][1]) if ratios[k][1] else 0.0)

    lru_c1, ls_c1 = ratios[(c1, "score")]
    best_ratio = (ratios[best_ratio_key][0] / ratios[best_ratio_key][1]) if ratios[best_ratio_key][1] else 0.0
    best_red = max(max(v) for v in ttft.values())
    recency = [res[(c5, ev, pf)] for ev, pf in POLICIES]
    # "agree": the hit-rate threshold is met; the two "up to" numbers are within a factor of two.
    agree_hit = max(r.token_hit_rate for r in recency) >= 0.88  # a threshold claim: agree only if it is met
    agree_col = best_ratio >= 85 / 2
    agree_ttft = best_red >= 0.347 / 2
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    ttft_text = ", ".join(f"{_pct(ttft[c][0])} at {c:.0%}" for c in capacities)
    ttft_text_pf = ", ".join(f"{_pct(ttft[c][1])} at {c:.0%}" for c in capacities)
    claims = [
        "| claim | paper | measured here | agree? |",
        "|---|---|---|---|",
        f"| hit rate at {c5:.0%} capacity | over 88% | LRU and Least-Stale, with or without score prefetch: per-event "
        f"`hit_rate` {'/'.join(sorted({_pct(r.hit_rate) for r in recency}))}, per-token `token_hit_rate` "
        f"{'/'.join(sorted({_pct(r.token_hit_rate) for r in recency}))}; the Belady-bypass oracle (no prefetch): "
        f"{_pct(res[(c5, 'belady-bypass', 'none')].hit_rate)} per event, "
        f"{_pct(res[(c5, 'belady-bypass', 'none')].token_hit_rate)} per token | {yes(agree_hit)} |",
        f"| collision misses, LRU / Least-Stale | up to 85x (at 1%) | at {c1:.0%}: {_ratio(*ratios[(c1, 'none')])} "
        f"without prefetch, {lru_c1:,} / {ls_c1:,} = {_ratio(lru_c1, ls_c1)} with score prefetch; largest over all "
        f"capacities: {_ratio(*ratios[best_ratio_key])} ({best_ratio_key[0]:.0%}, prefetch {best_ratio_key[1]}) "
        f"| {yes(agree_col)} |",
        f"| TTFT reduction, Least-Stale + score prefetch vs LRU | up to 34.7% | vs LRU without prefetch: {ttft_text}; "
        f"vs LRU with score prefetch: {ttft_text_pf} (negative: Least-Stale is slower) | {yes(agree_ttft)} |",
    ]
    claims_md = "\n".join(claims)

    detail = ["| capacity | slots | policy | hit rate (per event) | token hit rate | collision misses | "
              "misses | late prefetch misses | prefetches issued / used | stall (s) | mean TTFT (s) | mean TPOT (ms) | reward |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cap in capacities:
        for ev, pf in POLICIES + (("belady-bypass", "none"),):
            r = res[(cap, ev, pf)]
            detail.append(f"| {cap:.0%} | {r.capacity_slots} | {ev} + {pf}{' (oracle)' if ev.startswith('belady') else ''}"
                          f" | {r.hit_rate:.3f} | {r.token_hit_rate:.3f} | {r.collision_misses:,} | {r.misses:,} | {r.late_prefetch_misses:,} | "
                          f"{r.prefetches_issued:,} / {r.prefetches_used:,} | {r.stall_seconds:.1f} | "
                          f"{r.mean_ttft_seconds:.3f} | {1e3 * r.mean_tpot_seconds:.2f} | {w.score(r):,.0f} |")
    ratio_rows = ["| capacity | prefetch | LRU collisions | Least-Stale collisions | LRU / Least-Stale | "
                  "TTFT reduction, LS+score vs LRU+none | vs LRU+score |", "|---|---|---|---|---|---|---|"]
    for cap in capacities:
        for pf in ("none", "score"):
            a, b = ratios[(cap, pf)]
            t = ttft[cap]
            ratio_rows.append(f"| {cap:.0%} | {pf} | {a:,} | {b:,} | {_ratio(a, b)} | "
                              f"{'-' if pf == 'none' else _pct(t[0])} | {'-' if pf == 'none' else _pct(t[1])} |")

    r5 = res[(c5, "least-stale", "score")]
    passes = trace.num_requests + r5.output_tokens  # batch 1: one prefill per request + one pass per decoded token
    per_layer_pf = r5.prefetches_issued / max(1, passes * model.num_layers)
    n_agree = sum((agree_hit, agree_col, agree_ttft))
    summary = ("none of the three headline numbers is reproduced." if n_agree == 0 else
               f"{n_agree} of the three headline numbers are reproduced.")
    summary += (f" At {c5:.0%} capacity LRU and Least-Stale never hit per layer event; they behave identically "
                f"at {', '.join(f'{c:.0%}' for c in capacities if ratios[(c, 'score')][0] == ratios[(c, 'score')][1] or abs(ratios[(c, 'score')][0] / max(1, ratios[(c, 'score')][1]) - 1) < 0.01)} "
                f"(collision ratio about 1x), differ by {_ratio(*ratios[(max(capacities), 'score')])} at {max(capacities):.0%}, "
                f"and the TTFT difference never exceeds {_pct(max(abs(x) for v in ttft.values() for x in v))}.")
    md = f"""# SpecMD's claims beside this environment

```bash
{COMMAND}
```

Setting (the paper's): OLMoE-1B-7B routing from the embedded trace `{TRACE}` ({trace.num_requests} requests,
{trace.num_tokens:,} tokens, all replayed in order, batch size 1), hardware `{hardware}` (A100, expert
transfers at {hw.h2d_bandwidth_gbps:g} GB/s), capacities {', '.join(f'{c:.0%}' for c in capacities)} of the
{model.num_routed_experts} routed experts, LRU and Least-Stale, each without prefetching and with score-based
next-layer prefetching (`prefetch='score'`: the speculative scores' top experts covering 80% of their mass).
Paper: *SpecMD: A Comprehensive Study on Speculative Expert Prefetching* (Hoang et al., ICML 2026).

## Claims

{claims_md}

**In short: {summary}** ("agree": the 88% threshold is met; for the two "up to" claims, within a factor of two.) The reasons are below;
the first two are properties of the environment's setting and definitions rather than known bugs, and are
what a reader should weigh before comparing numbers.

## Measured

{chr(10).join(detail)}

{chr(10).join(ratio_rows)}

(TTFT reduction = (TTFT_LRU - TTFT_Least-Stale+score) / TTFT_LRU; negative: Least-Stale + score is slower.)

## Why the numbers differ

1. **Hit rate definitions.** `hit_rate` counts one access per (layer event, expert needed): a prefill that
   routes 200 tokens to an expert is one access. `token_hit_rate` counts every token's use of an expert and
   lets only the access that finds it missing miss (the other tokens share that transfer), so every prefill
   turns hundreds of token accesses into hits. The paper does not say which it reports; "over 88%" is only
   reachable per token, and here only with a large cache (25%: {_pct(res[(max(capacities), 'least-stale', 'score')].token_hit_rate)}
   for Least-Stale + score; the Belady-bypass oracle reaches {_pct(res[(max(capacities), 'belady-bypass', 'none')].token_hit_rate)}).
   At 5% ({res[(c5, 'lru', 'none')].capacity_slots} slots) one decode step needs {model.num_layers} layers x
   {model.top_k} = {model.num_layers * model.top_k} experts, more than the cache holds, so a recency policy sweeps
   the cache every forward pass and never hits per event (the cyclic-access worst case of LRU); its token hit
   rate of {_pct(res[(c5, 'lru', 'none')].token_hit_rate)} comes from tokens sharing a prefill transfer. Even the
   oracle only hits {_pct(res[(c5, 'belady-bypass', 'none')].hit_rate)} of events at 5%.
2. **The timing model makes the copy engine the bottleneck.** One OLMoE expert is {model.expert_bytes / 1e6:.1f} MB;
   at {hw.h2d_bandwidth_gbps:g} GB/s it takes {1e3 * xfer:.2f} ms to transfer, while a decode layer computes in about
   {1e3 * decode_layer:.3f} ms and a 256-token prefill layer in about {1e3 * prefill_layer:.3f} ms (roofline on the A100).
   The dynamic prefetch budget (transfers the copy engine can *start* before the next layer's router runs) is
   therefore about one expert per layer, and only when the engine is idle: at 5% Least-Stale + score issued
   {r5.prefetches_issued:,} prefetches over {passes:,} forward passes x {model.num_layers} layers
   ({per_layer_pf:.2f} per layer event), and {r5.late_prefetch_misses:,} of the {r5.prefetches_used:,} that were used
   were still in flight when their layer needed them (late prefetch misses: a miss that saves only part of a
   transfer's stall). The predicted set for the next layer ({model.top_k} or more experts) can
   almost never be brought in, so prefetching, and Least-Stale's use of prefetch hints, has little to act on.
   TTFT is dominated by the prefill's demand loads (nearly every expert of every layer, {model.num_routed_experts}
   x {1e3 * xfer:.1f} ms = {model.num_routed_experts * xfer:.2f} s per prompt at most), which no eviction order
   can hide at these capacities.
3. **How Least-Stale was reconstructed** (`specmd_env/eviction/least_stale.py`, `lru.py`; the paper has no code):
   LRU over *last touch* instead of *last use*, where prefetch insertions and prefetch hints for resident
   experts are touches. Without prefetching it evicts exactly what LRU evicts, so the ratio is 1.00x by
   construction; with prefetching, the two differ only through the few prefetches the budget allows (point 2).
   A reading of the paper in which Least-Stale also protects experts by a per-layer reuse-distance rule, or in
   which LRU evicts the experts just used by the current pass, would separate them further; the paper does not
   pin that down.
4. **Trace source.** `{TRACE}` is synthetic: calibrated to AllenAI's published OLMoE routing counts (popularity,
   domain specialisation, token-to-token overlap), not recorded from OLMoE-1B-7B on the paper's prompts. Real
   routing may have more cross-layer and cross-token reuse than the calibration captures, which would raise
   every hit rate; the spec scores are synthetic too (top-k accuracy 0.9).
5. **What the paper does not state** (choices written down in docs/ARCHITECTURE.md): whether hit rate is per
   token or per layer event; the batch size and prompt/decode lengths behind each number; how collision misses
   are counted (here: an expert resident earlier in the same forward pass and evicted during it); what LRU does
   with prefetched experts (here: they enter at the least-recent end); whether prefetches may evict experts
   the current layer still needs (here: never pinned ones); how the 5 GB/s emulation overlaps transfers with
   compute (here: one FIFO copy engine overlapping compute); and which baseline the TTFT reduction is against.

Numbers are from one deterministic replay each (no policy here is random; the trace is fixed).
"""
    return md, claims_md


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the Markdown report")
    parser.add_argument("--trace", default=TRACE, help=argparse.SUPPRESS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = measure(args.trace)
    md, claims = report(data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    print(claims)
    print(md.split("## Measured", 1)[1].split("## Why", 1)[0].strip())
    print(f"\npaper_claims: wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
