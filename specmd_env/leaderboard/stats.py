"""Leaderboard statistics: the normalised score and stratified bootstrap confidence intervals.

Normalised score. In each cell (trace, capacity, hardware, seed), with R the replay's reward
(``RewardWeights().score``, higher is better)::

    normalised = (R - R_random) / (R_belady - R_random)

where R_random is the Random eviction policy *without prefetching* and R_belady is Belady's MIN oracle
(``belady``: always admit, evict the farthest next use) *without prefetching*, both with the same seed
(so the same request sample and Random's victims). Random + none scores 0 and Belady + none scores 1 in
every cell; above 1 beats the demand-only MIN oracle (``belady-bypass``, or any prefetching that pays).
Cells where the two anchors tie (|R_belady - R_random| < 1e-9 x max(1, |R_random|)) have no scale: they
are left out of the normalised mean (their count is reported).

Means and intervals. A policy's number is the mean over the (trace, capacity, hardware) strata of the
mean over seeds within the stratum. Its 95% interval is a stratified percentile bootstrap
(``scipy.stats.bootstrap`` with one sample per stratum, resampling seeds -- i.e. request samples and
Random's draws -- within each stratum), so it is an interval over seeds and requests, not over the
fixed design (traces, capacities, profiles).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

ANCHOR_LOW = ("random", "none")
ANCHOR_HIGH = ("belady", "none")
CELL = ["trace", "capacity", "hardware", "seed"]
STRATUM = ["trace", "capacity", "hardware"]
N_RESAMPLES = 2000


def add_normalised(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (one row per run) with a ``policy`` and a ``normalised`` column."""
    from specmd_env.leaderboard.rows import row_label
    df = df.copy()
    if "preset" not in df:
        df["preset"] = ""
    df["preset"] = df["preset"].fillna("")
    df["policy"] = [row_label(e, p, s, bool(o)) for e, p, s, o in
                    zip(df["eviction"], df["prefetch"], df["preset"], df["oracle"])]

    def anchor(eviction, prefetch):
        sel = df[(df["eviction"] == eviction) & (df["prefetch"] == prefetch) & (df["agent"] == "")
                 & (df["preset"] == "")]
        return sel.set_index(CELL)["reward"]

    low, high = anchor(*ANCHOR_LOW), anchor(*ANCHOR_HIGH)
    index = pd.MultiIndex.from_frame(df[CELL])
    lo = low.reindex(index).to_numpy(float)
    hi = high.reindex(index).to_numpy(float)
    span = hi - lo
    tiny = 1e-9 * np.maximum(1.0, np.abs(lo))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(np.abs(span) > tiny, (df["reward"].to_numpy(float) - lo) / span, np.nan)
    df["normalised"] = norm
    return df


def _stratified_mean(*samples, axis=-1):
    return np.mean([np.mean(s, axis=axis) for s in samples], axis=0)


def mean_ci(df: pd.DataFrame, column: str, *, seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, low, high, strata) of ``column`` for one policy's rows: mean over strata of the mean over
    seeds; 95% stratified percentile bootstrap over seeds. NaNs are dropped; strata left empty are out."""
    samples = []
    for _, group in df.groupby(STRATUM, sort=True):
        values = group.sort_values("seed")[column].to_numpy(float)
        values = values[~np.isnan(values)]
        if len(values):
            samples.append(values)
    if not samples:
        return math.nan, math.nan, math.nan, 0
    point = float(np.mean([s.mean() for s in samples]))
    if max(len(s) for s in samples) < 2:
        return point, math.nan, math.nan, len(samples)
    # One-value strata cannot be resampled by scipy: two copies of the value resample to the value.
    data = tuple(s if len(s) >= 2 else np.repeat(s, 2) for s in samples)
    if all(np.all(s == s[0]) for s in data):
        return point, point, point, len(samples)
    res = bootstrap(data, _stratified_mean, n_resamples=N_RESAMPLES, vectorized=True, method="percentile",
                    confidence_level=0.95, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return point, min(low, point), max(high, point), len(samples)


SUMMARY_METRICS = ("normalised", "reward", "hit_rate", "token_hit_rate", "collision_misses", "stall_seconds",
                   "mean_ttft_seconds", "mean_tpot_seconds", "p99_ttft_seconds", "p99_tpot_seconds",
                   "degraded_mass_fraction")


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per policy: mean, ci_low, ci_high of every summary metric, ranked by normalised score;
    lossy rows (some gate mass dropped, substituted or served in low precision, which the reward does
    not charge) rank after every lossless one, so no row wins by skipping work."""
    records = []
    for policy, group in df.groupby("policy", sort=True):
        rec = {"policy": policy, "oracle": bool(group["oracle"].iloc[0]), "runs": len(group),
               "eviction": group["eviction"].iloc[0], "prefetch": group["prefetch"].iloc[0],
               "preset": group["preset"].iloc[0] if "preset" in group else ""}
        for metric in SUMMARY_METRICS:
            mean, low, high, strata = mean_ci(group, metric)
            rec[metric], rec[f"{metric}_low"], rec[f"{metric}_high"] = mean, low, high
            if metric == "normalised":
                rec["strata"] = strata
        records.append(rec)
    out = pd.DataFrame.from_records(records)
    out["lossy"] = out["degraded_mass_fraction"] > 0
    out = out.sort_values(["lossy", "normalised", "policy"], ascending=[True, False, True], na_position="last",
                          kind="mergesort")
    out.insert(0, "rank", range(1, len(out) + 1))
    return out.reset_index(drop=True)


def pivot_normalised(df: pd.DataFrame, by: str, order: list[str]) -> pd.DataFrame:
    """Mean normalised score per policy (rows, in ``order``) and value of ``by`` (columns)."""
    table = df.groupby(["policy", by])["normalised"].mean().unstack(by)
    return table.reindex(order)
