"""``specmd leaderboard``: eviction policies, prefetchers, the literature's systems (presets), the oracles
and the committed learned agents, scored with ``RewardWeights`` over traces x capacities x hardware
profiles x seeds. Which (eviction, prefetch) pairs are rows: :mod:`specmd_env.leaderboard.rows`.

    specmd leaderboard                      # the default sweep on the embedded traces (minutes; README)
    specmd leaderboard --evictions lru my_policy.py:MINE --prefetches none score --presets
    specmd leaderboard --backend ray        # the same runs on Ray (local, or --address of a cluster)

Writes to ``--out`` (default ``runs/leaderboard/`` under the current directory; the committed copy in
``experiments/results/`` was made with ``--out experiments/results``):

* ``runs.csv``: one row per run (settings, reward, every metric). Rows are appended (fsync) as runs
  finish; a restarted sweep skips the runs already there (by run id) and redoes a torn last line; at
  the end the file is rewritten in canonical order, so the same sweep always gives the same bytes.
* ``leaderboard.md``: the ranked table (normalised score, reward, hit rates, collision misses, stall,
  TTFT, TPOT; mean and 95% bootstrap interval) and the normalised score by capacity, hardware, trace.
* ``hit_rate_vs_capacity.png``, ``collisions_least_stale_vs_lru.png``, ``ttft_by_hardware.png``.

Rows: :mod:`specmd_env.leaderboard.rows`. Scoring (normalisation, intervals): :mod:`specmd_env.leaderboard.stats`. Seeds and request samples, run ids and
the file: :mod:`specmd_env.leaderboard.sweep`. Backends: :mod:`specmd_env.leaderboard.backends`. Learned agents:
:mod:`specmd_env.leaderboard.learned`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd

from specmd_env.checks import no_repeats
from specmd_env.errors import SpecMDError
from specmd_env.outputs import writable_dir
from specmd_env.reward import RewardWeights

from specmd_env.leaderboard import stats
from specmd_env.leaderboard.backends import BACKENDS, default_workers, iter_results
from specmd_env.leaderboard.rows import (BEST_CAUSAL, EVICTIONS, PREFETCHES, check_eviction, check_prefetch, check_preset,
                                         presets)
from specmd_env.leaderboard.sweep import RunLog, build_grid, folder_lock, trace_label_and_ref

DEFAULT_TRACES = ["olmoe-synthetic", "mixtral-synthetic"]  # qwen3-synthetic: add with --traces (its Belady runs at 25% take minutes)
DEFAULT_CAPACITIES = [0.01, 0.05, 0.25]
DEFAULT_PROFILES = ["paper-a100-5gbps", "a100-pcie4", "h100-pcie5"]
DEFAULT_SEEDS = [0, 1, 2, 3, 4]
DEFAULT_SAMPLE_FRAC = 0.8
DEFAULT_OUT = Path("runs") / "leaderboard"  # relative to where it runs: never inside an installed package
CSV_NAME, MD_NAME = "runs.csv", "leaderboard.md"


def _seeds(text: str) -> list[int]:
    """'0 1 2', '0,1,2' or '0-4'."""
    out = []
    for part in text.replace(",", " ").split():
        if "-" in part.strip("-"):
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out



def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--traces", nargs="+", default=DEFAULT_TRACES, metavar="TRACE",
                        help="catalog names or .npz paths")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help="model per trace (default: each trace's own)")
    parser.add_argument("--capacities", nargs="+", type=float, default=DEFAULT_CAPACITIES, metavar="FRAC",
                        help="cache capacity, fraction of all routed-expert bytes")
    parser.add_argument("--hardware", "--profiles", nargs="+", default=DEFAULT_PROFILES, metavar="PROFILE",
                        dest="hardware", help="hardware profiles (specmd_env/data/hardware.toml)")
    parser.add_argument("--evictions", nargs="+", default=list(EVICTIONS), metavar="POLICY",
                        help="eviction policies: names with parameters (lru:prefetch_at=mru-end) or path/to/file.py:NAME "
                             "(belady, belady-bypass are oracles)")
    parser.add_argument("--prefetches", nargs="+", default=list(PREFETCHES), metavar="PREFETCHER",
                        help="prefetchers; none, score and oracle run with every eviction, the others with lru and "
                             "the best causal eviction only (see --cross-all; oracle and pregated are oracles)")
    parser.add_argument("--presets", nargs="*", default=None, metavar="PRESET",
                        help="literature systems as rows of their own (default: all of specmd_env/data/presets.toml; "
                             "--presets with no name: none)")
    parser.add_argument("--cross-all", action="store_true", help="run every eviction with every prefetcher")
    parser.add_argument("--seeds", type=_seeds, default=DEFAULT_SEEDS, metavar="SEEDS",
                        help="seeds: '0-4', '0,1,2' or '3'")
    parser.add_argument("--sample-frac", type=float, default=DEFAULT_SAMPLE_FRAC,
                        help="fraction of a trace's requests each seed replays (1: all, in order)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--workers", type=int, default=default_workers(), help="parallel workers")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local process pool, or Ray (pip install -e '.[ray]')")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--trained-dir", type=Path, default=None,
                        help="where learned agents (*.npz weights + *.json) are (default: the committed ones, "
                             "specmd_env/data/agents)")
    parser.add_argument("--no-learned", action="store_true", help="leave learned agents out")
    parser.add_argument("--learned-hardware", nargs="+", default=None, metavar="PROFILE",
                        help="hardware profiles learned agents are scored on (default: every profile of the sweep)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table on stdout")
    parser.add_argument("--run-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow runs down


def canonical_command(args) -> str:
    """The command, with only the settings that change results (not --out, --workers, --backend)."""
    parts = ["specmd leaderboard"]

    def add(flag, value, default):
        if value != default:
            parts.append(f"{flag} {' '.join(str(v) for v in value) if isinstance(value, list) else value}")

    add("--traces", [str(t) for t in args.traces], DEFAULT_TRACES)
    if args.models:
        add("--models", args.models, None)
    add("--capacities", [f"{c:g}" for c in args.capacities], [f"{c:g}" for c in DEFAULT_CAPACITIES])
    add("--hardware", args.hardware, DEFAULT_PROFILES)
    add("--evictions", args.evictions, list(EVICTIONS))
    add("--prefetches", args.prefetches, list(PREFETCHES))
    if args.presets != list(presets()):
        parts.append(" ".join(["--presets"] + args.presets))
    if args.cross_all:
        parts.append("--cross-all")
    add("--seeds", ",".join(map(str, args.seeds)), ",".join(map(str, DEFAULT_SEEDS)))
    add("--sample-frac", f"{args.sample_frac:g}", f"{DEFAULT_SAMPLE_FRAC:g}")
    if args.no_learned:
        parts.append("--no-learned")
    elif args.learned_hardware is not None:
        add("--learned-hardware", args.learned_hardware, None)
    return " ".join(parts)


def _validate(args) -> None:
    from specmd_env.hardware import list_profiles
    unknown = sorted(set(args.hardware) - set(list_profiles()))
    if unknown:
        raise SpecMDError(f"unknown hardware profile(s) {unknown}; known: {', '.join(list_profiles())}")
    if args.presets is None:
        args.presets = list(presets())
    for option, values, check in (("--evictions", args.evictions, check_eviction),
                                  ("--prefetches", args.prefetches, check_prefetch),
                                  ("--presets", args.presets, check_preset)):
        for value in values:
            try:
                check(value)
            except SpecMDError as exc:
                raise SpecMDError(f"{option}: {exc}") from None
    if not all(0 < c <= 1 for c in args.capacities):
        raise SpecMDError(f"capacities must be fractions in (0, 1], got {args.capacities}")
    if not 0 < args.sample_frac <= 1:
        raise SpecMDError(f"--sample-frac must be in (0, 1], got {args.sample_frac}")
    if args.models and len(args.models) != len(args.traces):
        raise SpecMDError("--models needs one model per trace")
    if args.workers < 1:
        raise SpecMDError("--workers must be >= 1")
    if not args.seeds:
        raise SpecMDError("--seeds needs at least one seed")
    outside = [h for h in args.learned_hardware or [] if h not in args.hardware]
    if outside:
        raise SpecMDError(f"--learned-hardware {' '.join(outside)} is not in --hardware ({' '.join(args.hardware)})")
    if min(args.seeds) < 0:
        raise SpecMDError(f"--seeds must be >= 0, got {min(args.seeds)}")
    for option, values in (("--seeds", args.seeds), ("--capacities", args.capacities), ("--hardware", args.hardware),
                           ("--evictions", args.evictions), ("--prefetches", args.prefetches),
                           ("--presets", args.presets)):
        no_repeats(option, values)
    labels: dict[str, str] = {}
    for trace in args.traces:
        label, ref = trace_label_and_ref(trace)
        if label in labels:
            same = labels[label] == ref
            raise SpecMDError(f"--traces: {trace!r} " + ("is given twice" if same else
                              f"and {labels[label]!r} have the same name {label!r} in the table; rename one file"))
        labels[label] = ref
    writable_dir(args.out, "--out")


# -- formatting -------------------------------------------------------------------------------------
def _num(x: float, kind: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if kind == "rate":
        return f"{x:.3f}"
    if kind == "norm":
        return f"{x:.3f}"
    if kind == "count":
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"
    if kind == "seconds":
        return f"{x:.2f}" if abs(x) >= 10 else f"{x:.3f}"
    if kind == "ms":
        return f"{x * 1e3:.2f}"
    if kind == "reward":
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"
    return f"{x:.4g}"


def _cell(rec, metric, kind) -> str:
    mean, low, high = rec[metric], rec[f"{metric}_low"], rec[f"{metric}_high"]
    if isinstance(low, float) and math.isnan(low):
        return _num(mean, kind)
    return f"{_num(mean, kind)} [{_num(low, kind)}, {_num(high, kind)}]"


TABLE_COLUMNS = [("normalised", "score (Random=0, Belady=1)", "norm"), ("reward", "reward", "reward"),
                 ("hit_rate", "hit rate", "rate"), ("token_hit_rate", "token hit rate", "rate"),
                 ("collision_misses", "collision misses", "count"), ("stall_seconds", "stall (s)", "seconds"),
                 ("mean_ttft_seconds", "TTFT (s)", "seconds"), ("p99_ttft_seconds", "p99 TTFT (s)", "seconds"),
                 ("mean_tpot_seconds", "TPOT (ms)", "ms"), ("p99_tpot_seconds", "p99 TPOT (ms)", "ms"),
                 ("degraded_mass_fraction", "degraded gate mass", "rate")]


def markdown_table(summary: pd.DataFrame, limit: int | None = None) -> str:
    head = "| rank | policy | cells | " + " | ".join(t for _, t, _ in TABLE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(TABLE_COLUMNS))]
    for _, rec in summary.iterrows():
        if limit is not None and rec["rank"] > limit:
            break
        cells = [_cell(rec, m, k) for m, _, k in TABLE_COLUMNS]
        lossy = " **(lossy)**" if rec["degraded_mass_fraction"] > 0 else ""   # it skipped or degraded experts
        lines.append(f"| {rec['rank']} | {rec['policy']}{lossy} | {rec['strata']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pivot_markdown(table: pd.DataFrame, label: str, fmt=lambda c: str(c)) -> str:
    cols = list(table.columns)
    lines = ["| policy | " + " | ".join(f"{label} {fmt(c)}" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for policy, row in table.iterrows():
        lines.append(f"| {policy} | " + " | ".join(_num(row[c], "norm") for c in cols) + " |")
    return "\n".join(lines)


PAPER_CELL = ("olmoe-synthetic", 0.05, "paper-a100-5gbps")  # SpecMD's setting, shown on its own


def render(df: pd.DataFrame, summary: pd.DataFrame, args, notes: list[str], agent_df=None, agent_summary=None) -> str:
    order = list(summary["policy"])
    n_cells = df.groupby(stats.STRATUM).ngroups
    degenerate = int(df[(df["eviction"] == "random") & (df["prefetch"] == "none")]["normalised"].isna().sum())
    parts = [
        "# Leaderboard",
        "",
        "```bash",
        canonical_command(args),
        "```",
        "",
        f"Traces: {', '.join(sorted(set(df['trace'])))}. Capacities: "
        f"{', '.join(f'{c:g}' for c in sorted(set(df['capacity'])))} of all routed-expert bytes. Hardware: "
        f"{', '.join(sorted(set(df['hardware'])))}. Seeds: {', '.join(map(str, sorted(set(df['seed']))))}; each "
        f"seed replays a sample of {args.sample_frac:g} of each trace's requests (drawn without replacement, "
        f"kept in trace order) and seeds the Random policy. {len(df)} runs in {n_cells} "
        f"(trace, capacity, hardware) cells.",
        "",
        "**Rows** (`specmd_env/leaderboard/rows.py`): every eviction policy with prefetch none, score and oracle; "
        "the literature's other prefetchers with `lru` and the strongest causal policy "
        f"(`{BEST_CAUSAL}`, its half-life fitted on the train split: experiments/results/tuning.md); each "
        "preset (`preset:NAME`: a literature system's eviction, prefetch, scope, copy engine and miss handler "
        "together, `specmd_env/data/presets.toml`) as a row of its own. *cells*: the (trace, capacity, hardware) "
        "cells a row ran in -- a preset impossible in a cell is left out there (see Notes), so its means cover "
        "fewer cells. *degraded gate mass*: the share of gate mass dropped, substituted or served in low "
        "precision (presets with a lossy miss handler or adaptive gating; such rows are marked **(lossy)**); "
        "the reward does not charge it, so a lossy row's score is not comparable with the others': lossy rows "
        "rank after every lossless row.",
        "",
        "**Score** = (R - R_random) / (R_belady - R_random), per (trace, capacity, hardware, seed), where R is "
        "`RewardWeights().score(result)` (reward = -(1 x collision misses + 100 x stall seconds); higher is "
        "better), R_random is Random eviction without prefetching and R_belady is Belady's MIN oracle "
        "(`belady`, always admits) without prefetching, both with the same seed. So Random + none = 0 and "
        "Belady + none = 1 in every cell; `belady-bypass` (which may decline to cache a missed expert) is the "
        "true demand-only optimum and can score above 1. "
        + (f"{degenerate} cell(s) where the two anchors tie are left out of the score. " if degenerate else "")
        + "Every column is the mean over (trace, capacity, hardware) cells of the mean over seeds; brackets: "
        "95% stratified percentile bootstrap (`scipy.stats.bootstrap`, resampling seeds -- request samples "
        "and Random's draws -- within each cell). Reward, collision misses and stall are totals per replay, "
        "so traces of different sizes weigh differently in those columns; the score is scale-free. "
        "Hit rate is per layer event; token hit rate per token access (see `specmd_env/result.py`). "
        "*p99 TTFT / TPOT*: the 99th percentile over a replay's requests (one at a time, no arrivals: the "
        "tail comes from long prompts and unlucky passes, not from queueing; latency under load is "
        "experiments/results/load_sweep.md). "
        "Policies marked (oracle) read the future.",
        "",
        markdown_table(summary),
        "",
        "## Score by capacity",
        "",
        pivot_markdown(stats.pivot_normalised(df, "capacity", order), "cap", lambda c: f"{c:g}"),
        "",
        "## Score by hardware profile",
        "",
        pivot_markdown(stats.pivot_normalised(df, "hardware", order), ""),
        "",
        "## Score by trace",
        "",
        pivot_markdown(stats.pivot_normalised(df, "trace", order), ""),
        "",
        "## Files",
        "",
        f"`{CSV_NAME}` (one row per run; `run_id` hashes every setting), `hit_rate_vs_capacity.png`, "
        "`collisions_least_stale_vs_lru.png`, `ttft_by_hardware.png`.",
    ]
    paper = df[(df["trace"] == PAPER_CELL[0]) & (df["capacity"] == PAPER_CELL[1]) & (df["hardware"] == PAPER_CELL[2])]
    if len(paper):
        section = [f"## The paper's cell: {PAPER_CELL[0]}, capacity {PAPER_CELL[1]:g}, {PAPER_CELL[2]} (top 20)", "",
                   "SpecMD's own setting (5% of OLMoE's routed experts = 51 slots, transfers at 5 GB/s), every "
                   "request sample as above.", "", markdown_table(stats.summarise(paper), limit=20), ""]
        parts[parts.index("## Score by capacity"):parts.index("## Score by capacity")] = section
    if agent_summary:
        section = [
            "## Learned agents",
            "",
            "A learned agent (a row scorer exported to numpy weights, run compiled inside the replay like any "
            "eviction policy) is scored on every cell, beside every prefetcher, on held-out requests only: each "
            "seed's request sample restricted to the environment's test split (agents train on its train split), "
            "with every handcrafted policy and oracle rerun on exactly those requests (same score definition, "
            "anchors from that cell). One table per cell; the notes say which traces an agent was trained on "
            "and which it sees zero-shot.",
            "",
        ]
        for (trace, capacity, hardware), table in agent_summary.items():
            section += [f"### {trace}, capacity {capacity:g}, {hardware}", "", markdown_table(table), ""]
        parts[parts.index("## Score by capacity"):parts.index("## Score by capacity")] = section
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


# -- the command --------------------------------------------------------------------------------------
def sweep(args, log=print) -> tuple[pd.DataFrame, list[str]]:
    """Run (or resume) the sweep; return the rows of this sweep's runs and notes for the report. Called by
    :func:`run`, which has validated ``args`` and holds the output folder."""
    notes: list[str] = []
    specs = build_grid(args.traces, args.capacities, args.hardware, args.evictions, args.prefetches, args.seeds,
                       sample_frac=args.sample_frac, weights=RewardWeights(), models=args.models,
                       delay=args.run_delay, presets=args.presets, cross_all=args.cross_all, skipped=notes)
    anchors = [ev for ev in (stats.ANCHOR_LOW[0], stats.ANCHOR_HIGH[0]) if ev not in args.evictions]
    if anchors:  # the score's anchors (Random + none, Belady + none) run whatever --evictions says
        specs += build_grid(args.traces, args.capacities, args.hardware, anchors, ["none"], args.seeds,
                            sample_frac=args.sample_frac, weights=RewardWeights(), models=args.models,
                            delay=args.run_delay)
    if not args.no_learned:
        from specmd_env.leaderboard.learned import agent_specs
        messages: list[str] = []

        def note(message):
            messages.append(message)
            log(message)
        hardware = None if args.learned_hardware is None else tuple(args.learned_hardware)
        specs += agent_specs(specs, args.trained_dir, log=note, hardware=hardware, prefetches=args.prefetches)
        notes += [m.removeprefix("leaderboard: ") for m in messages]
    out = Path(args.out)
    failed: list[str] = []
    with RunLog(out / CSV_NAME) as runs:
        pending = [s for s in specs if s.run_id not in runs]
        pending.sort(key=lambda s: not s.agent)   # learned-agent runs first
        log(f"leaderboard: {len(specs)} runs, {len(specs) - len(pending)} already in {out / CSV_NAME}, "
            f"{len(pending)} to run on {args.backend} ({args.workers} worker(s))")
        results = iter_results(pending, backend=args.backend, workers=args.workers, address=args.address)
        if not args.quiet and pending:
            from tqdm import tqdm
            results = tqdm(results, total=len(pending), unit="run", smoothing=0.05, file=sys.stderr)
        for row in results:
            if "error" in row:
                failed.append(row["error"])
                continue
            runs.append(row)
        runs.finalise(specs)
        wanted = [s.run_id for s in specs]
        rows = [runs.rows[r] for r in wanted if r in runs.rows]
    if failed:
        agents = sorted({f.split(":")[1] for f in failed})
        msg = f"{len(failed)} learned-agent run(s) failed and were skipped ({', '.join(agents)}): {failed[0]}"
        log("leaderboard: " + msg)
        notes.append(msg)
    return pd.DataFrame.from_records(rows), notes


def run(args) -> int:
    start = time.perf_counter()
    _validate(args)  # everything, the output folder included, before any work
    with folder_lock(Path(args.out)):
        return _run(args, start)


def _run(args, start: float) -> int:
    df, notes = sweep(args, log=print if not args.quiet else (lambda *_: None))
    if df.empty:
        raise SpecMDError("no runs: check --traces, --evictions, --prefetches")
    out = Path(args.out)
    from specmd_env.leaderboard.learned import is_agent_cell
    df = stats.add_normalised(df)
    agent_cells = df["trace"].map(is_agent_cell)
    main_df, agent_df = df[~agent_cells], df[agent_cells]
    summary = stats.summarise(main_df)
    agent_summary = {cell: stats.summarise(rows) for cell, rows in agent_df.groupby(["trace", "capacity", "hardware"])
                     if (rows["agent"] != "").any()} or None  # one table per cell: never averaged across cells
    (out / MD_NAME).write_text(render(main_df, summary, args, notes, agent_df, agent_summary))
    if not args.no_plots:
        from specmd_env.leaderboard.plots import make_all
        make_all(main_df, out)
    if not args.quiet:
        print(markdown_table(summary))
        for (trace, capacity, hardware), table in (agent_summary or {}).items():
            print(f"\nLearned agents on {trace}, capacity {capacity:g}, {hardware}:\n" + markdown_table(table))
        print(f"\nleaderboard: {len(df)} runs; wrote {out / MD_NAME}, {out / CSV_NAME}"
              f"{'' if args.no_plots else ' and plots'} in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specmd_env.leaderboard.command", description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SpecMDError as exc:
        print(f"leaderboard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
