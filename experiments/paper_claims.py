"""SpecMD's three headline claims against each assumption that moves them.

    python -m experiments.paper_claims      # writes experiments/results/paper_claims.md and paper_claims.png

The claims (Hoang et al., ICML 2026, abstract): over 88% hit rate at 5% capacity; up to 85x fewer
collision misses than LRU with Least-Stale (at 1%); up to 34.7% lower time to first token (TTFT), on
OLMoE at 5% capacity. Setting: `olmoe-synthetic` (every request, in order, batch size 1), hardware
`paper-a100-5gbps`, score prefetch one layer ahead (mass 0.8); every run is deterministic (seed 0).

The assumptions, each a named option of the environment:

* hit definition: ``hit_rate`` (per layer event), ``token_hit_rate`` (per token), ``prefetch_covered_rate``
  (resident or already on its way);
* prefetch accounting: ``copy_engine`` fifo (one queue), demand-first (demand loads overtake queued
  prefetches), separate (prefetches on a channel of their own at full bandwidth: UNPHYSICAL for one link);
* where LRU puts a prefetched, unused expert: ``lru:prefetch_at=lru-end`` / ``mru-end``;
* compute calibration: the profile's ``engine`` -- roofline (peak: unattained), vllm (the default), hf-eager;
* Least-Stale's reading: ``order=touch`` / ``order=insert``;
* the TTFT baseline: LRU without prefetch, or LRU with the same score prefetch.

A combination *reproduces* a claim when it reaches the paper's figure (hit rate >= 88%, ratio >= 85x,
TTFT cut >= 34.7%). The search for a setting in which Least-Stale + score beats LRU + score on both TTFT
and collisions is experiments/paper_claims_search.py.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

COMMAND = "python -m experiments.paper_claims"
TRACE = "olmoe-synthetic"
HARDWARE = "paper-a100-5gbps"
RESULTS = Path(__file__).resolve().parent / "results"

HIT = {"per event (hit_rate)": "hit_rate", "per token (token_hit_rate)": "token_hit_rate",
       "resident or in flight (prefetch_covered_rate)": "prefetch_covered_rate"}
COPY = ("fifo", "demand-first", "separate")
UNPHYSICAL_COPY = {"separate"}
LRU_AT = ("lru-end", "mru-end")
ENGINES = ("roofline", "vllm", "hf-eager")
LS_ORDER = ("touch", "insert")
BASELINES = ("LRU + none", "LRU + score")
PAPER = {"hit": 0.88, "collisions": 85.0, "ttft": 0.347}


@lru_cache(maxsize=64)
def profile(name: str, engine: str):
    """A package hardware profile with another compute calibration (``engine``)."""
    from specmd_env.hardware import get_profile
    base = get_profile(name)
    return base if base.engine == engine else replace(base, engine=engine, name=f"{name}+{engine}")


@lru_cache(maxsize=4)
def _trace(name: str):
    from specmd_env.catalog import get_trace
    return get_trace(name)


METRICS = ("hit_rate", "token_hit_rate", "prefetch_covered_rate", "collision_misses", "mean_ttft_seconds",
           "mean_tpot_seconds", "stall_seconds", "prefetches_issued", "prefetches_used")


def measure(job: tuple) -> dict:
    """One replay: (trace, hardware, engine, capacity, eviction, prefetch, copy_engine, lookahead, mass,
    requests or None) -> its metrics."""
    from specmd_env.simulate import simulate
    trace, hardware, engine, capacity, eviction, prefetch, copy_engine, lookahead, mass, requests = job
    r = simulate(_trace(trace), hardware=profile(hardware, engine), capacity=capacity, eviction=eviction,
                 prefetch=prefetch, copy_engine=copy_engine, lookahead=lookahead, prefetch_mass=mass,
                 requests=None if requests is None else list(requests))
    return {m: float(getattr(r, m)) for m in METRICS}


def lru(at: str) -> str:
    return "lru" if at == "lru-end" else "lru:prefetch_at=mru-end"


def least_stale(order: str) -> str:
    return "least-stale" if order == "touch" else "least-stale:order=insert"


# -- the grid of assumptions -----------------------------------------------------------------------------
def runs(pool) -> dict:
    """Every replay the claims need, keyed by (copy, engine, capacity, eviction, prefetch)."""
    keys = []
    for ce, eng, cap in itertools.product(COPY, ENGINES, (0.01, 0.05)):
        keys.append((ce, eng, cap, "lru", "none"))
        keys += [(ce, eng, cap, lru(at), "score") for at in LRU_AT]
        keys += [(ce, eng, cap, least_stale(o), "score") for o in LS_ORDER]
    jobs = [(TRACE, HARDWARE, eng, cap, ev, pf, ce, 1, 0.8, None) for ce, eng, cap, ev, pf in keys]
    return dict(zip(keys, pool.map(measure, jobs)))


def combinations(res: dict) -> dict[str, list[dict]]:
    """Per claim, one record per combination of the assumptions that move it: its settings and value."""
    out = {"hit": [], "collisions": [], "ttft": []}
    for ce, eng, order in itertools.product(COPY, ENGINES, LS_ORDER):
        ls5 = res[(ce, eng, 0.05, least_stale(order), "score")]
        for label, metric in HIT.items():
            out["hit"].append(dict(hit=label, copy=ce, engine=eng, ls=order, value=ls5[metric]))
        ls1 = res[(ce, eng, 0.01, least_stale(order), "score")]
        for at in LRU_AT:
            lru1 = res[(ce, eng, 0.01, lru(at), "score")]
            ratio = lru1["collision_misses"] / ls1["collision_misses"] if ls1["collision_misses"] else np.inf
            out["collisions"].append(dict(copy=ce, engine=eng, ls=order, lru=at, value=ratio,
                                          detail=f"{lru1['collision_misses']:,.0f} / {ls1['collision_misses']:,.0f}"))
            for base in BASELINES:
                ref = res[(ce, eng, 0.05, "lru", "none")] if base == "LRU + none" else res[(ce, eng, 0.05, lru(at), "score")]
                if base == "LRU + none" and at == "mru-end":
                    continue  # LRU without prefetch has no insertion point to vary
                cut = (ref["mean_ttft_seconds"] - ls5["mean_ttft_seconds"]) / ref["mean_ttft_seconds"]
                out["ttft"].append(dict(copy=ce, engine=eng, ls=order, lru=at if base == "LRU + score" else "-",
                                        base=base, value=cut,
                                        detail=f"{ref['mean_ttft_seconds']:.3f} s -> {ls5['mean_ttft_seconds']:.3f} s"))
    return out


def reproduces(claim: str, value: float) -> bool:
    return value >= PAPER[claim] - 1e-12


def physical(rec: dict) -> bool:
    return rec["copy"] not in UNPHYSICAL_COPY and rec["engine"] != "roofline"


# -- report ----------------------------------------------------------------------------------------------
def fmt(claim: str, value: float) -> str:
    if claim == "collisions":
        return "inf" if not np.isfinite(value) else f"{value:.2f}x"
    if claim == "ttft":
        return f"{100 * value + 0.0:+.2f}%"
    return f"{100 * value + 0.0:.1f}%"


def cell(claim: str, recs: list[dict]) -> str:
    if not recs:
        return "--"
    values = [r["value"] for r in recs]
    lo, hi = min(values), max(values)
    span = fmt(claim, lo) if np.isclose(lo, hi) else f"{fmt(claim, lo)} to {fmt(claim, hi)}"
    n = sum(reproduces(claim, v) for v in values)
    return f"{span}" + (f" (**{n} of {len(values)} reproduce**)" if n else "")


AXES = [  # (row label, field, values, label of each value)
    ("hit definition", "hit", list(HIT), None),
    ("copy engine (prefetch accounting)", "copy", list(COPY), {"separate": "separate (UNPHYSICAL)"}),
    ("LRU: a prefetched expert enters at", "lru", list(LRU_AT), None),
    ("compute calibration (engine)", "engine", list(ENGINES), {"roofline": "roofline (peak, unattained)"}),
    ("Least-Stale reading (order=)", "ls", list(LS_ORDER), None),
    ("TTFT baseline", "base", list(BASELINES), None),
]


def claims_table(combos: dict) -> str:
    lines = ["| assumption | value | hit rate at 5% (paper: over 88%) | collision misses LRU / Least-Stale at 1% "
             "(paper: up to 85x) | TTFT cut at 5% (paper: up to 34.7%) |", "|---|---|---|---|---|"]
    lines.append("| (all) | every combination | " + " | ".join(cell(c, combos[c]) for c in ("hit", "collisions", "ttft"))
                 + " |")
    for label, field, values, names in AXES:
        for value in values:
            cells = [cell(c, [r for r in combos[c] if r.get(field) == value]) if any(field in r for r in combos[c])
                     else "--" for c in ("hit", "collisions", "ttft")]
            lines.append(f"| {label} | {(names or {}).get(value, value)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reproducing(combos: dict) -> str:
    names = {"hit": "hit rate over 88% at 5%", "collisions": "85x fewer collision misses at 1%",
             "ttft": "34.7% lower TTFT at 5%"}
    out = []
    for claim, recs in combos.items():
        good = [r for r in recs if reproduces(claim, r["value"])]
        best = max(recs, key=lambda r: r["value"])
        settings = lambda r: ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("value", "detail"))  # noqa: E731
        if not good:
            out.append(f"- **{names[claim]}: no combination reproduces it.** Closest: {fmt(claim, best['value'])} "
                       f"({settings(best)}{'; ' + best['detail'] if 'detail' in best else ''}).")
            continue
        phys = [r for r in good if physical(r)]
        out.append(f"- **{names[claim]}: {len(good)} of {len(recs)} combinations reproduce it"
                   + (f", {len(phys)} of them physical.**" if phys else
                      ", every one of them with an unphysical assumption "
                      f"({', '.join(sorted({a for r in good for a in unphysical_parts(r)}))}).**"))
        for r in good:
            out.append(f"  - ✔ {fmt(claim, r['value'])}: {settings(r)}"
                       + ("" if physical(r) else f" -- UNPHYSICAL: {', '.join(unphysical_parts(r))}"))
    return "\n".join(out)


def unphysical_parts(rec: dict) -> list[str]:
    parts = []
    if rec["copy"] in UNPHYSICAL_COPY:
        parts.append("copy_engine=separate (a second, unthrottled channel for prefetches on one link)")
    if rec["engine"] == "roofline":
        parts.append("engine=roofline (peak compute no engine attains)")
    return parts


def full_grid(combos: dict) -> str:
    out = []
    for claim, title in (("hit", "Hit rate of Least-Stale + score at 5%"),
                         ("collisions", "Collision misses at 1%, LRU + score / Least-Stale + score"),
                         ("ttft", "TTFT cut at 5%, Least-Stale + score against the baseline")):
        recs = combos[claim]
        fields = [k for k in recs[0] if k not in ("value", "detail")]
        out += [f"### {title}", "", "| " + " | ".join(fields) + " | value | | reproduces |",
                "|" + "---|" * (len(fields) + 3)]
        for r in recs:
            out.append("| " + " | ".join(str(r[f]) for f in fields) + f" | {fmt(claim, r['value'])} | "
                       f"{r.get('detail', '')} | {'✔' if reproduces(claim, r['value']) else ''} |")
        out.append("")
    return "\n".join(out)


def plot(combos: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = {"roofline": "tab:gray", "vllm": "tab:blue", "hf-eager": "tab:orange"}
    markers = {"touch": "o", "insert": "^"}
    panels = (("hit", "hit", "hit rate of Least-Stale + score, 5%", [h.split(" (")[0] for h in HIT]),
              ("collisions", ("copy", "lru"), "collision misses LRU / Least-Stale, 1%",
               [f"{c}\n{a}" for c in COPY for a in LRU_AT]),
              ("ttft", ("copy", "base"), "TTFT cut, Least-Stale + score, 5%",
               [f"{c}\n{b}" for c in COPY for b in BASELINES]))
    for ax, (claim, field, title, ticks) in zip(axes, panels):
        keys = list(HIT) if claim == "hit" else [(c, v) for c in COPY for v in (LRU_AT if claim == "collisions" else BASELINES)]
        for x, key in enumerate(keys):
            sel = [r for r in combos[claim] if (r[field] == key if isinstance(field, str)
                                                 else tuple(r[f] for f in field) == key)]
            for k, r in enumerate(sel):
                value = r["value"] if np.isfinite(r["value"]) else np.nan
                hollow = r["copy"] in UNPHYSICAL_COPY
                ax.scatter(x + 0.08 * (k - len(sel) / 2), 100 * value if claim != "collisions" else value,
                           edgecolors=colors[r["engine"]], facecolors="none" if hollow else colors[r["engine"]],
                           marker=markers[r["ls"]], s=28, zorder=3)
        paper = PAPER[claim] * (100 if claim != "collisions" else 1)
        ax.axhline(paper, color="tab:red", linestyle="--", label=f"paper: {fmt(claim, PAPER[claim])}")
        ax.set_xticks(range(len(keys)), ticks, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ratio (log)" if claim == "collisions" else "%")
        if claim == "collisions":
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper left")
    handles = [plt.Line2D([], [], color=c, marker="s", linestyle="", label=f"engine={e}") for e, c in colors.items()]
    handles += [plt.Line2D([], [], color="k", marker=m, linestyle="", label=f"Least-Stale order={o}")
                for o, m in markers.items()]
    handles.append(plt.Line2D([], [], color="k", marker="o", markerfacecolor="none", linestyle="",
                              label="hollow: copy_engine=separate (UNPHYSICAL)"))
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8)
    fig.suptitle(f"SpecMD's claims under each assumption ({TRACE}, {HARDWARE}); separate = UNPHYSICAL", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def report(combos: dict, res: dict, seconds: float) -> str:
    ls5 = res[("fifo", "vllm", 0.05, "least-stale", "score")]
    return f"""# SpecMD's claims under the assumptions that move them

```bash
{COMMAND}
```

Setting: `{TRACE}` (synthetic, calibrated to AllenAI's OLMoE routing statistics; every request, in order,
batch size 1), hardware `{HARDWARE}` (A100, transfers at 5 GB/s), score prefetch one layer ahead (mass
0.8), deterministic replays; {len(res)} replays in {seconds:.0f} s. The claims are those of the paper's
abstract (Hoang et al., ICML 2026); the paper released no code, so Least-Stale and the settings it does not
state are the environment's named options. Each cell: the range of the claim's figure over every
combination of the *other* assumptions with this one fixed, and how many combinations reach the paper's
figure. Plot: [paper_claims.png](paper_claims.png).

{claims_table(combos)}

## Which combinations reproduce each claim

{reproducing(combos)}

## Why

* **Per-event hits need the next layers resident; at 5% they never are.** 5% of OLMoE's 1,024 routed
  experts is 51 slots; a decode step needs 16 layers x 8 experts = 128. Any recency order then sweeps the
  cache every forward pass (LRU's cyclic worst case), so `hit_rate` is {100 * ls5['hit_rate']:.1f}% with the
  physical copy engines. Per token it is {100 * ls5['token_hit_rate']:.1f}%: a prefill's tokens share one
  transfer per expert. Only a prefetch channel that does not compete with demand loads
  (`copy_engine="separate"`) brings in enough of the next layer to lift the rates.
* **Least-Stale differs from LRU only through prefetching**, and at 5 GB/s one expert takes 2.5 ms to copy
  while a decode layer computes in about 0.2 ms: the copy engine is busy with demand loads, so almost no
  prefetch is issued on a shared link and the two policies evict the same experts. With a separate channel
  prefetched experts arrive, and both policies keep them (Least-Stale as touched, LRU at the
  most-recent end; at the least-recent end LRU loses them), so the ratio stays near 1x.
* **TTFT is the prefill's demand loads.** A prompt routes its tokens to nearly every expert of every layer;
  at 5% they cannot all stay, and the prefill waits for about 1,024 transfers whatever the eviction order.
  No combination moves TTFT by more than a fraction of a percent.

Beyond the paper's cell, [paper_claims_search.md](paper_claims_search.md) (`python -m
experiments.paper_claims_search`) searches 2,160 settings -- capacities, hardware, compute calibrations,
copy engines, lookahead, prefetch mass, both LRU insertion points and both Least-Stale readings -- for one
where Least-Stale + score beats LRU + score on TTFT and collision misses at once, outside the bootstrap
interval.

## Every combination

{full_grid(combos)}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "paper_claims.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        res = runs(pool)
    combos = combinations(res)
    md = report(combos, res, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    plot(combos, args.out.with_suffix(".png"))
    print(claims_table(combos))
    print()
    print(reproducing(combos))
    print(f"\npaper_claims: wrote {args.out} and {args.out.with_suffix('.png').name} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
