"""Serving under load: p99 TTFT and goodput against the arrival rate, for the leaderboard's causal policies.

One synthetic OLMoE-shaped trace (100 requests, prompts and outputs of 96 tokens, seeded -- synthetic, not
recorded), replayed with continuous batching (chunked prefill, ``max_num_seqs`` 256, 8192 tokens per
step) under Poisson arrivals at each rate, three arrival seeds each, on one hardware profile and cache
size. Beside it, the same policies replayed one request at a time with no load (static batching, batch
size 1), so that the closing table can say where the ranking under load differs.

    python experiments/load_sweep.py [--out experiments/results] [--hardware a100-pcie4] [--capacity 0.25]

Writes ``load_sweep.md`` (tables and the ranking comparison) and ``load_sweep.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from specmd_env import load_trace, simulate  # noqa: E402
from specmd_env.generator import write_trace  # noqa: E402
from specmd_env.reward import RewardWeights  # noqa: E402

POLICIES = [  # (label, eviction, prefetch): the leaderboard's causal policies and two literature presets
    ("lru", "lru", "none"),
    ("lfu", "lfu", "none"),
    ("least-stale + score", "least-stale", "score"),
    ("layer-distance", "layer-distance", "none"),
    ("expected-next-use (bypass, half-life 4)", "expected-next-use:bypass=yes,half_life=4", "none"),
    ("hobbit", "hobbit", "none"),
    ("preset moe-infinity", "moe-infinity", "moe-infinity"),
]
RATES = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
SEEDS = [0, 1, 2]
TTFT_SLO, TPOT_SLO = 2.0, 0.5  # seconds: a serving SLO of the kind vLLM's benchmarks report against


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "load_sweep")
    parser.add_argument("--hardware", default="a100-pcie4")
    parser.add_argument("--capacity", type=float, default=0.25)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trace = load_trace(write_trace(Path(tmp) / "load.npz", model="olmoe-1b-7b", requests_per_domain=20,
                                       prompt_len=96, decode_len=96, seed=7, with_spec_scores=True))
        rows, unloaded = [], []
        for label, eviction, prefetch in POLICIES:
            common = dict(capacity=args.capacity, hardware=args.hardware, eviction=eviction, prefetch=prefetch)
            r = simulate(trace, **common)
            unloaded.append(dict(policy=label, mean_ttft=r.mean_ttft_seconds, mean_tpot=r.mean_tpot_seconds,
                                 reward=RewardWeights().score(r)))
            for rate in RATES:
                for seed in SEEDS:
                    r = simulate(trace, scheduler="continuous", arrival_rate=rate, seed=seed, **common)
                    rows.append(dict(policy=label, rate=rate, seed=seed, p99_ttft=r.percentile("ttft", 99),
                                     p50_tpot=r.percentile("tpot", 50), goodput=r.goodput(TTFT_SLO, TPOT_SLO),
                                     throughput=r.output_tokens_per_second))
    runs = pd.DataFrame(rows)
    table = runs.groupby(["policy", "rate"], sort=False)[["p99_ttft", "p50_tpot", "goodput", "throughput"]].mean()
    base = pd.DataFrame(unloaded).set_index("policy")
    base["rank_unloaded"] = base["mean_ttft"].rank(method="min").astype(int)
    heavy = table.xs(RATES[-1], level="rate")
    base["rank_p99_ttft_at_max_rate"] = heavy["p99_ttft"].rank(method="min").astype(int)
    base["rank_goodput_at_max_rate"] = heavy["goodput"].rank(ascending=False, method="min").astype(int)
    elapsed = time.perf_counter() - started

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, *_ in POLICIES:
        part = table.xs(label, level="policy")
        axes[0].plot(part.index, part["p99_ttft"], marker="o", label=label)
        axes[1].plot(part.index, part["goodput"], marker="o", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="arrival rate (requests/s)", ylabel="p99 TTFT (s)")
    axes[1].set(xscale="log", xlabel="arrival rate (requests/s)",
                ylabel=f"goodput (requests/s, TTFT <= {TTFT_SLO:g} s, TPOT <= {TPOT_SLO * 1e3:g} ms)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"continuous batching, synthetic OLMoE trace, {args.hardware}, cache {args.capacity:g}")
    fig.tight_layout()
    fig.savefig(args.out / "load_sweep.png", dpi=120)

    with open(args.out / "load_sweep.md", "w") as out:
        out.write(f"# Load sweep\n\n```bash\npython experiments/load_sweep.py --out {args.out} --hardware {args.hardware} "
                  f"--capacity {args.capacity:g}\n```\n\n")
        out.write(f"A synthetic OLMoE-shaped trace ({trace.num_requests} requests, prompts and outputs of 96 tokens, "
                  f"seed 7 -- synthetic, not recorded), continuous batching (chunked prefill, max_num_seqs 256, "
                  f"8192 tokens per step), Poisson arrivals (seeds {SEEDS}, means shown), hardware {args.hardware}, "
                  f"cache {args.capacity:g} of routed-expert bytes. Goodput: requests per second meeting TTFT <= "
                  f"{TTFT_SLO:g} s and TPOT <= {TPOT_SLO * 1e3:g} ms. Took {elapsed:.0f} s.\n\n")
        out.write("## p99 TTFT (s) by arrival rate\n\n")
        out.write(table["p99_ttft"].unstack("rate").to_markdown(floatfmt=".3f") + "\n\n")
        out.write("## Goodput (requests/s) by arrival rate\n\n")
        out.write(table["goodput"].unstack("rate").to_markdown(floatfmt=".3f") + "\n\n")
        out.write("## Median TPOT (s) by arrival rate\n\n")
        out.write(table["p50_tpot"].unstack("rate").to_markdown(floatfmt=".3f") + "\n\n")
        out.write("## Ranking: one request at a time (no load) against the highest rate\n\n")
        out.write(base.to_markdown(floatfmt=".3f") + "\n\n")
        moved = base.index[(base["rank_unloaded"] != base["rank_p99_ttft_at_max_rate"])]
        out.write("Policies whose rank by p99 TTFT at the highest rate differs from their rank by mean TTFT "
                  f"without load: {', '.join(moved) if len(moved) else 'none'}.\n")
    print((args.out / "load_sweep.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
