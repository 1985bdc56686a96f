"""The leaderboard's figures (matplotlib, Agg backend, no timestamps in the files).

* ``hit_rate_vs_capacity.png``: per-event and per-token hit rate against cache capacity, one line per
  eviction policy, without prefetching and with score-based prefetching (mean over traces, profiles, seeds).
* ``collisions_least_stale_vs_lru.png``: collision misses of Least-Stale and LRU per capacity, with and
  without score-based prefetching, one panel per trace (mean over profiles and seeds).
* ``ttft_by_hardware.png``: mean time to first token per hardware profile for a few policies
  (mean over traces, capacities and seeds).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PNG_META = {"Software": None}  # no matplotlib version in the file: identical bytes across runs


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_META)
    plt.close(fig)
    return path


def hit_rate_vs_capacity(df: pd.DataFrame, path: Path) -> Path | None:
    hand = df[df["agent"] == ""]
    prefetches = [p for p in ("none", "score") if p in set(hand["prefetch"])]
    if not prefetches:
        return None
    fig, axes = plt.subplots(2, len(prefetches), figsize=(5.2 * len(prefetches), 7.5), squeeze=False)
    for j, pf in enumerate(prefetches):
        sub = hand[hand["prefetch"] == pf]
        for i, metric in enumerate(("hit_rate", "token_hit_rate")):
            ax = axes[i][j]
            table = sub.groupby(["eviction", "capacity"])[metric].mean().unstack("capacity")
            for eviction, row in table.iterrows():
                label = f"{eviction} (oracle)" if eviction.startswith("belady") else eviction
                ax.plot(row.index, row.values, marker="o", label=label,
                        linestyle="--" if eviction.startswith("belady") else "-")
            ax.set_xscale("log")
            ax.set_xticks(list(table.columns), [f"{c:g}" for c in table.columns])
            ax.set_xlabel("capacity (fraction of all routed experts)")
            ax.set_ylabel("per-event hit rate" if metric == "hit_rate" else "per-token hit rate")
            ax.set_ylim(0, 1)
            ax.set_title(f"{'per-event' if metric == 'hit_rate' else 'per-token'} hit rate, prefetch {pf}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def collisions_least_stale_vs_lru(df: pd.DataFrame, path: Path) -> Path | None:
    hand = df[(df["agent"] == "") & df["eviction"].isin(["lru", "least-stale"])
              & df["prefetch"].isin(["none", "score"])]
    if hand.empty:
        return None
    traces = sorted(set(hand["trace"]))
    fig, axes = plt.subplots(1, len(traces), figsize=(5.2 * len(traces), 4.2), squeeze=False)
    combos = [("lru", "none"), ("least-stale", "none"), ("lru", "score"), ("least-stale", "score")]
    for ax, trace in zip(axes[0], traces):
        sub = hand[hand["trace"] == trace]
        caps = sorted(set(sub["capacity"]))
        x = np.arange(len(caps))
        width = 0.8 / len(combos)
        for k, (ev, pf) in enumerate(combos):
            means = [sub[(sub["eviction"] == ev) & (sub["prefetch"] == pf) & (sub["capacity"] == c)]
                     ["collision_misses"].mean() for c in caps]
            ax.bar(x + (k - (len(combos) - 1) / 2) * width, np.nan_to_num(means), width, label=f"{ev} + {pf}")
        ax.set_xticks(x, [f"{c:g}" for c in caps])
        ax.set_xlabel("capacity")
        ax.set_ylabel("collision misses per replay")
        ax.set_title(trace)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


TTFT_POLICIES = [("random", "none"), ("lru", "none"), ("lfu", "none"), ("least-stale", "score"), ("lru", "score"),
                 ("belady", "none"), ("belady-bypass", "none")]


def ttft_by_hardware(df: pd.DataFrame, path: Path) -> Path | None:
    hand = df[df["agent"] == ""]
    combos = [(e, p) for e, p in TTFT_POLICIES if ((hand["eviction"] == e) & (hand["prefetch"] == p)).any()]
    if not combos:
        return None
    profiles = sorted(set(hand["hardware"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.4 * len(profiles)), 4.5))
    x = np.arange(len(profiles))
    width = 0.8 / len(combos)
    for k, (ev, pf) in enumerate(combos):
        sel = hand[(hand["eviction"] == ev) & (hand["prefetch"] == pf)]
        means = [sel[sel["hardware"] == h]["mean_ttft_seconds"].mean() for h in profiles]
        label = f"{ev} + {pf}" + (" (oracle)" if ev.startswith("belady") else "")
        ax.bar(x + (k - (len(combos) - 1) / 2) * width, np.nan_to_num(means), width, label=label)
    ax.set_xticks(x, profiles)
    ax.set_ylabel("mean time to first token (s)")
    ax.set_yscale("log")
    ax.set_title("TTFT per hardware profile (mean over traces, capacities, seeds)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def make_all(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    made = [hit_rate_vs_capacity(df, out_dir / "hit_rate_vs_capacity.png"),
            collisions_least_stale_vs_lru(df, out_dir / "collisions_least_stale_vs_lru.png"),
            ttft_by_hardware(df, out_dir / "ttft_by_hardware.png")]
    return [p for p in made if p is not None]
