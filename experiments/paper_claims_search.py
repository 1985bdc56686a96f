"""Search for a physically defensible setting in which Least-Stale + score prefetch beats LRU + score
prefetch on both TTFT and collision misses, outside the bootstrap confidence interval.

    python -m experiments.paper_claims_search   # writes experiments/results/paper_claims_search.md and .png

The space (olmoe-synthetic, batch size 1; every axis a named option of the environment):

* capacity 1%, 2%, 5%, 10%, 25%; hardware profiles paper-a100-5gbps, laptop-pcie4x8, a100-pcie4,
  rtx4090-pcie4, h100-pcie5, nvme-ssd; compute calibration (``engine``) vllm, hf-eager, roofline;
* copy engine fifo, demand-first, preempt, separate; lookahead 1, 2; prefetch mass 0.5, 0.8, 0.95;
* LRU's insertion point for prefetches (lru-end, mru-end) x Least-Stale's reading (touch, insert).

*Physically defensible*: not ``copy_engine="separate"`` (a second, unthrottled channel for prefetches on
one host link), not ``engine="roofline"`` (peak compute no engine attains), and lookahead 1 (lookahead 2
reads speculative scores recorded one layer later than a real predictor has them: optimistic).

Stage 1 replays every request in order once per setting (deterministic) and keeps the (LRU variant,
Least-Stale reading) pairs in which Least-Stale has both a lower mean TTFT and fewer collision misses.
Stage 2 replays the candidates on request samples (seeds 0-9: 80% of the requests each, as the
leaderboard draws them; the same sample for both policies) and takes the 95% bootstrap interval
(``scipy.stats.bootstrap``, percentile, over seeds) of the paired differences LRU - Least-Stale in mean
TTFT and in collision misses. A setting *wins* when both intervals lie above zero.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from experiments.paper_claims import LRU_AT, LS_ORDER, RESULTS, TRACE, least_stale, lru, measure

COMMAND = "python -m experiments.paper_claims_search"
CAPACITIES = (0.01, 0.02, 0.05, 0.1, 0.25)
PROFILES = ("paper-a100-5gbps", "laptop-pcie4x8", "a100-pcie4", "rtx4090-pcie4", "h100-pcie5", "nvme-ssd")
ENGINES = ("vllm", "hf-eager", "roofline")
COPY = ("fifo", "demand-first", "preempt", "separate")
LOOKAHEAD = (1, 2)
MASS = (0.5, 0.8, 0.95)
SEEDS = tuple(range(10))
SAMPLE_FRAC = 0.8
MAX_OTHERS = 10   # stage-1 candidates that are not defensible, replayed for comparison (best margins first)


def defensible(setting) -> bool:
    cap, hw, engine, copy, lookahead, mass = setting
    return copy != "separate" and engine != "roofline" and lookahead == 1


def why_not(setting) -> str:
    cap, hw, engine, copy, lookahead, mass = setting
    parts = []
    if copy == "separate":
        parts.append("separate channel")
    if engine == "roofline":
        parts.append("roofline compute")
    if lookahead != 1:
        parts.append("lookahead 2 (optimistic scores)")
    return ", ".join(parts)


def job(setting, eviction, requests=None):
    cap, hw, engine, copy, lookahead, mass = setting
    return (TRACE, hw, engine, cap, eviction, "score", copy, lookahead, mass, requests)


def stage1(pool, settings):
    evictions = [lru(a) for a in LRU_AT] + [least_stale(o) for o in LS_ORDER]
    jobs = [job(s, ev) for s in settings for ev in evictions]
    values = iter(pool.map(measure, jobs, chunksize=8))
    pairs = []
    for s in settings:
        got = {ev: next(values) for ev in evictions}
        for at, order in itertools.product(LRU_AT, LS_ORDER):
            a, b = got[lru(at)], got[least_stale(order)]
            d_ttft = (a["mean_ttft_seconds"] - b["mean_ttft_seconds"]) / a["mean_ttft_seconds"]
            d_coll = (a["collision_misses"] - b["collision_misses"]) / max(a["collision_misses"], 1.0)
            pairs.append(dict(setting=s, lru=at, ls=order, d_ttft=d_ttft, d_coll=d_coll,
                              lru_ttft=a["mean_ttft_seconds"], ls_ttft=b["mean_ttft_seconds"],
                              lru_coll=a["collision_misses"], ls_coll=b["collision_misses"]))
    return pairs


def paired_ci(diffs: np.ndarray) -> tuple[float, float, float]:
    from scipy.stats import bootstrap
    mean = float(diffs.mean())
    if np.allclose(diffs, diffs[0]):
        return mean, mean, mean
    res = bootstrap((diffs,), np.mean, n_resamples=4000, method="percentile", confidence_level=0.95,
                    rng=np.random.default_rng(0))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def stage2(pool, candidates, num_requests):
    from specmd_env.leaderboard.sweep import sample_requests
    samples = [sample_requests(num_requests, seed, SAMPLE_FRAC) for seed in SEEDS]
    jobs = []
    for c in candidates:
        for req in samples:
            jobs += [job(c["setting"], lru(c["lru"]), req), job(c["setting"], least_stale(c["ls"]), req)]
    values = list(pool.map(measure, jobs, chunksize=4))
    k = 0
    for c in candidates:
        a = values[k:k + 2 * len(SEEDS):2]
        b = values[k + 1:k + 2 * len(SEEDS):2]
        k += 2 * len(SEEDS)
        c["ttft_ci"] = paired_ci(np.array([x["mean_ttft_seconds"] - y["mean_ttft_seconds"] for x, y in zip(a, b)]))
        c["coll_ci"] = paired_ci(np.array([x["collision_misses"] - y["collision_misses"] for x, y in zip(a, b)]))
        c["wins"] = c["ttft_ci"][1] > 0 and c["coll_ci"][1] > 0
        c["ttft_rel"] = c["ttft_ci"][0] / np.mean([x["mean_ttft_seconds"] for x in a])
        c["coll_ratio"] = np.mean([x["collision_misses"] for x in a]) / max(np.mean([y["collision_misses"] for y in b]), 1e-9)
    return candidates


def describe(s) -> str:
    cap, hw, engine, copy, lookahead, mass = s
    return f"{cap:g} | {hw} | {engine} | {copy} | {lookahead} | {mass:g}"


def plot(pairs, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for ok, color, label in ((False, "tab:gray", "not defensible (separate / roofline / lookahead 2)"),
                             (True, "tab:blue", "physically defensible")):
        sel = [p for p in pairs if defensible(p["setting"]) == ok]
        ax.scatter([100 * p["d_coll"] for p in sel], [100 * p["d_ttft"] for p in sel], s=8, alpha=0.5,
                   color=color, label=f"{label} ({len(sel)})")
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("collision misses saved by Least-Stale vs LRU (% of LRU's)")
    ax.set_ylabel("TTFT saved by Least-Stale vs LRU (% of LRU's)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title("Least-Stale + score vs LRU + score, every setting (stage 1)\nwins lie top right", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def report(pairs, candidates, n_settings, seconds) -> str:
    dpairs = [p for p in pairs if defensible(p["setting"])]
    both = [p for p in pairs if p["d_ttft"] > 0 and p["d_coll"] > 0]
    dboth = [p for p in both if defensible(p["setting"])]
    winners = [c for c in candidates if c["wins"]]
    dwinners = [c for c in winners if defensible(c["setting"])]

    def count(sel, key):
        return sum(p[key] > 0 for p in sel), sum(p[key] < 0 for p in sel)

    summary = ["| | pairs | Least-Stale lower TTFT / higher | fewer / more collisions | better on both | largest TTFT saving | largest collision saving |",
               "|---|---|---|---|---|---|---|"]
    for label, sel in (("every setting", pairs), ("physically defensible", dpairs)):
        t_up, t_down = count(sel, "d_ttft")
        c_up, c_down = count(sel, "d_coll")
        bt = max(sel, key=lambda p: p["d_ttft"])
        bc = max(sel, key=lambda p: p["d_coll"])
        summary.append(f"| {label} | {len(sel)} | {t_up} / {t_down} | {c_up} / {c_down} | "
                       f"{sum(p['d_ttft'] > 0 and p['d_coll'] > 0 for p in sel)} | {100 * bt['d_ttft']:.2f}% "
                       f"({describe(bt['setting']).replace(' | ', ', ')}; lru={bt['lru']}, ls={bt['ls']}) | "
                       f"{100 * bc['d_coll']:.1f}% ({describe(bc['setting']).replace(' | ', ', ')}; "
                       f"lru={bc['lru']}, ls={bc['ls']}) |")
    by_copy = ["| copy engine | pairs | Least-Stale better on both (stage 1) | median TTFT saving | median collision saving |",
               "|---|---|---|---|---|"]
    for copy in COPY:
        sel = [p for p in pairs if p["setting"][3] == copy]
        by_copy.append(f"| {copy}{' (UNPHYSICAL)' if copy == 'separate' else ''} | {len(sel)} | "
                       f"{sum(p['d_ttft'] > 0 and p['d_coll'] > 0 for p in sel)} | "
                       f"{100 * np.median([p['d_ttft'] for p in sel]):.3f}% | {100 * np.median([p['d_coll'] for p in sel]):.2f}% |")
    rows = ["| capacity | hardware | engine | copy engine | lookahead | mass | LRU at | Least-Stale | defensible | "
            "stage 1: TTFT / collisions saved | TTFT saved, s [95% CI] | collisions saved [95% CI] | TTFT cut | "
            "collision ratio LRU / LS | wins |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in candidates:
        t, k = c["ttft_ci"], c["coll_ci"]
        rows.append(f"| {describe(c['setting'])} | {c['lru']} | {c['ls']} | "
                    f"{'yes' if defensible(c['setting']) else 'no: ' + why_not(c['setting'])} | "
                    f"{100 * c['d_ttft']:.3f}% / {100 * c['d_coll']:.1f}% | {t[0]:.4f} [{t[1]:.4f}, {t[2]:.4f}] | "
                    f"{k[0]:.1f} [{k[1]:.1f}, {k[2]:.1f}] | {100 * c['ttft_rel']:.3f}% | {c['coll_ratio']:.3f}x | "
                    f"{'**yes**' if c['wins'] else 'no'} |")
    if dwinners:
        best_t = max(dwinners, key=lambda c: c["ttft_rel"])
        best_c = max(dwinners, key=lambda c: c["coll_ratio"])
        where = sorted({(c["setting"][0], c["setting"][5], c["ls"]) for c in dwinners})
        verdict = (f"**Found: {len(dwinners)} physically defensible setting(s) in which Least-Stale + score beats "
                   f"LRU + score on both TTFT and collision misses outside the 95% bootstrap interval** (marked "
                   f"**yes** below), all at (capacity, prefetch mass, Least-Stale reading) in "
                   f"{', '.join(f'({c:g}, {m:g}, {o})' for c, m, o in where)}. **The effect is small**: the largest "
                   f"TTFT cut among them is {100 * best_t['ttft_rel']:.2f}% ({1e3 * best_t['ttft_ci'][0]:.2f} ms; "
                   f"{describe(best_t['setting']).replace(' | ', ', ')}), against the paper's 34.7%, and the largest "
                   f"collision ratio LRU / Least-Stale {best_c['coll_ratio']:.2f}x "
                   f"({describe(best_c['setting']).replace(' | ', ', ')}), against the paper's 85x.")
    else:
        verdict = (f"**No physically defensible setting was found in which Least-Stale + score beats LRU + score on "
                   f"both TTFT and collision misses outside the 95% bootstrap interval.** Of {len(dpairs)} defensible "
                   f"(setting, LRU variant, Least-Stale reading) pairs, {len(dboth)} are better on both in the single "
                   f"in-order replay of stage 1; replayed on 10 request samples, "
                   + ("none keeps both intervals above zero." if dboth else "there were none to replay.")
                   + (f" With the assumptions that are not defensible, {len(winners)} candidate(s) win." if winners else ""))
    return f"""# Searching for a setting where Least-Stale beats LRU (both with score prefetch)

```bash
{COMMAND}
```

{__doc__.split(chr(10) * 2, 2)[2].strip()}

{n_settings} settings x 4 (LRU variant, Least-Stale reading) pairs = {len(pairs)} pairs; {seconds / 60:.1f} minutes on
this machine. Scatter of stage 1: [paper_claims_search.png](paper_claims_search.png).

{verdict}

## Stage 1: every setting, every request in order

{chr(10).join(summary)}

{chr(10).join(by_copy)}

## Stage 2: the candidates on 10 request samples

Savings are LRU minus Least-Stale (positive: Least-Stale better), mean over the samples with the 95%
percentile bootstrap interval of the paired differences; TTFT cut and collision ratio are of the sample
means. Candidates: every defensible stage-1 pair better on both, then the {MAX_OTHERS} best of the others
(by the smaller of its two relative savings).

{chr(10).join(rows) if candidates else "(no stage-1 pair is better on both)"}

## Why the differences are small

Least-Stale differs from LRU only through prefetching (insertions and prefetch hints are touches): without
prefetches the two evict the same experts. On a link shared with demand loads a prefetch is issued only when
the copy engine would otherwise idle before the next layer's router, which at these bandwidths (an OLMoE
expert is 12.6 MB: 2.5 ms at 5 GB/s, 0.25 ms at 50 GB/s, against 0.1-0.5 ms of compute per layer) happens
for a few experts per pass. Below about 12.5% capacity (128 slots: the experts of one decode pass) the
cache is swept every pass whatever the order, so the policies evict the same experts. At 25% a prefetch
hint keeps a resident expert of the next layer that LRU would evict, which saves a few percent of the
collision misses; and TTFT, the prefill's demand transfers of nearly every expert, moves only by the few
experts a prompt finds kept from the request before.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "paper_claims_search.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    from specmd_env.catalog import get_trace
    settings = list(itertools.product(CAPACITIES, PROFILES, ENGINES, COPY, LOOKAHEAD, MASS))
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        pairs = stage1(pool, settings)
        print(f"stage 1: {len(pairs)} pairs in {time.perf_counter() - start:.0f} s", flush=True)
        better = [p for p in pairs if p["d_ttft"] > 0 and p["d_coll"] > 0]
        better.sort(key=lambda p: (not defensible(p["setting"]), -min(p["d_ttft"], p["d_coll"])))
        chosen = [p for p in better if defensible(p["setting"])]
        chosen += [p for p in better if not defensible(p["setting"])][:MAX_OTHERS]
        candidates = stage2(pool, chosen, get_trace(TRACE).num_requests)
    md = report(pairs, candidates, len(settings), time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    plot(pairs, args.out.with_suffix(".png"))
    print(md)
    print(f"paper_claims_search: wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
