"""What learning buys: three training recipes x three seeds, and one agent across cells it never saw.

    python -m experiments.learned_study train recipes          # 9 runs of `specmd train` (skips finished ones)
    python -m experiments.learned_study report recipes         # agents/trained/learned_recipes.md + PNG
    python -m experiments.learned_study train generalisation   # one agent across traces, capacities, profiles
    python -m experiments.learned_study report generalisation  # agents/trained/learned_generalisation.md

Every number is a compiled replay (``simulate`` with the exported weights as an eviction policy) on
*held-out* requests -- the environment's test split -- never on the requests the agents trained on.
An evaluation seed picks a request sample as the leaderboard does (``sample_requests(n, seed, 0.8)``),
restricted to the test split, and seeds Random; the score is the leaderboard's normalisation,
``(R - R_random) / (R_belady - R_random)`` per seed (Random = 0, Belady = 1, both without prefetching).
Intervals: 95% percentile bootstrap (``scipy.stats.bootstrap``) over evaluation seeds, and, for a
recipe, over its three training seeds (the mean over evaluation seeds per training seed, resampled).
The strongest handcrafted policy is evaluated on exactly the same requests; differences are paired.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

from specmd_env.agents.compiled import ScorerWeights, learned_eviction
from specmd_env.catalog import get_trace
from specmd_env.envs.cache_env import split_requests
from specmd_env.eviction import get_eviction
from specmd_env.leaderboard.sweep import sample_requests
from specmd_env.reward import RewardWeights
from specmd_env.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
RUNS = Path("runs/learned")
REPORTS = ROOT / "agents" / "trained"
EVAL_SEEDS = tuple(range(10))
TRAIN_SEEDS = (0, 1, 2)
PAPER_CELL = dict(trace="olmoe-synthetic", capacity=0.05, hardware="paper-a100-5gbps", prefetch="none")
# the handcrafted policies the agents are compared with (the leaderboard's strongest causal ones)
HANDCRAFTED = ("expected-next-use:bypass=yes", "expected-next-use:bypass=yes,half_life=8", "hobbit",
               "layer-distance", "lru")
ORACLES = ("belady-bypass",)

# -- the recipes --------------------------------------------------------------------------------------------
COMMON = ["--algo", "maskable_ppo", "--env", "SpecMD-OLMoE-v0", "--env-kwargs", "fixed_prefetch=none",
          "--eval-freq", "25000", "--no-progress-bar"]
BC = ["--bc-teacher", "belady-bypass", "--bc-target", "next-use", "--bc-steps", "20000", "--bc-rounds", "6"]
RECIPES = {
    "bc": BC + ["--timesteps", "0"],
    "rl": ["--timesteps", "200000"],
    "bc+rl": ["--resume", "runs/learned/recipes/bc-s{seed}/model.zip", "--timesteps", "200000"],  # RL from the BC run
}

# -- generalisation: one network across traces, capacities and hardware profiles; Mixtral never seen ----------
# (capacities up to 10%, padded to 128 rows; 25% and two of the three profiles per trace stay unseen)
GENERAL_VARIANTS = [
    "trace=olmoe-synthetic capacity=0.05 hardware=paper-a100-5gbps",
    "trace=olmoe-synthetic capacity=0.01 hardware=a100-pcie4",
    "trace=olmoe-synthetic capacity=0.1 hardware=h100-pcie5",
    "trace=olmoe-recorded capacity=0.05 hardware=a100-pcie4",
    "trace=olmoe-recorded capacity=0.1 hardware=paper-a100-5gbps",
    "trace=olmoe-recorded capacity=0.01 hardware=h100-pcie5",
    "trace=qwen3-synthetic model=qwen3-30b-a3b capacity=0.01 hardware=paper-a100-5gbps",
    "trace=qwen3-synthetic model=qwen3-30b-a3b capacity=0.02 hardware=h100-pcie5",
]
GENERAL = ["--algo", "maskable_ppo", "--env", "SpecMD-OLMoE-v0",
           "--env-kwargs", "fixed_prefetch=none", "observation_slots=128", "--variants", *GENERAL_VARIANTS,
           "--n-envs", "8", "--bc-teacher", "belady-bypass", "--bc-target", "next-use", "--bc-steps", "16000",
           "--bc-rounds", "6", "--timesteps", "0", "--no-progress-bar"]
# cells for the generalisation table: (trace, capacity, hardware); trained-on settings are marked
GENERAL_CELLS = [(t, c, h) for t in ("olmoe-synthetic", "olmoe-recorded", "qwen3-synthetic", "mixtral-synthetic")
                 for c in (0.01, 0.05, 0.25) for h in ("paper-a100-5gbps", "a100-pcie4", "h100-pcie5")]


def run_dir(study: str, name: str) -> Path:
    return RUNS / study / name


def train_commands(study: str) -> dict[str, list[str]]:
    if study == "recipes":
        out = {}
        for seed in TRAIN_SEEDS:
            for recipe, extra in RECIPES.items():
                d = run_dir(study, f"{recipe}-s{seed}")
                out[f"{recipe}-s{seed}"] = ["specmd", "train", *COMMON, *[a.format(seed=seed) for a in extra], "--seed",
                                            str(seed), "--log-dir", str(d), "--save", str(d / "model.zip"), "--name",
                                            f"{recipe}-s{seed}"]
        return out
    d = run_dir(study, "general-s0")
    return {"general-s0": ["specmd", "train", *GENERAL, "--seed", "0", "--log-dir", str(d), "--save",
                           str(d / "model.zip"), "--name", "general-s0"]}


def train(study: str, only: str | None = None) -> None:
    """Run the study's training commands (``only``: those of these comma-separated recipes), skipping
    finished runs. BC+RL continues the BC run of the same seed, so run "bc" before "bc+rl"."""
    wanted = None if only is None else set(only.split(","))
    for name, cmd in train_commands(study).items():
        if wanted is not None and name.rsplit("-s", 1)[0] not in wanted:
            continue
        if (Path(cmd[cmd.index("--save") + 1]).with_suffix(".npz")).is_file():
            print(f"{name}: done already")
            continue
        print("$ " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)


# -- evaluation ----------------------------------------------------------------------------------------
def held_out(trace_name: str, seed: int) -> list[int]:
    trace = get_trace(trace_name)
    test = set(split_requests(trace, "test").tolist())
    return [r for r in sample_requests(trace.num_requests, seed, 0.8) if r in test] or sorted(test)


def scores(policies: dict[str, object], trace: str, capacity: float, hardware: str, prefetch: str = "none",
           seeds=EVAL_SEEDS) -> dict[str, np.ndarray]:
    """Normalised score per evaluation seed of every policy, on the held-out requests of each seed (NaN
    where Random and Belady tie: a cache so large that no eviction choice matters has no scale)."""
    weights = RewardWeights()
    out = {name: [] for name in policies}
    for seed in seeds:
        kw = dict(capacity=capacity, hardware=hardware, seed=seed, requests=held_out(trace, seed))
        low = weights.score(simulate(trace, eviction="random", prefetch="none", **kw))
        high = weights.score(simulate(trace, eviction="belady", prefetch="none", **kw))
        for name, policy in policies.items():
            r = weights.score(simulate(trace, eviction=policy, prefetch=prefetch, **kw))
            out[name].append((r - low) / (high - low) if high != low else np.nan)
    return {k: np.array(v) for k, v in out.items()}


def ci(values, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): 95% percentile bootstrap of the mean (zero width for constant data)."""
    x = np.asarray(values, float)
    m = float(x.mean())
    if len(x) < 2 or np.allclose(x, x[0]):
        return m, m, m
    res = bootstrap((x,), np.mean, confidence_level=0.95, method="percentile", n_resamples=5000, random_state=seed)
    return m, float(res.confidence_interval.low), float(res.confidence_interval.high)


def fmt(triple) -> str:
    m, lo, hi = triple
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def load_agent_policy(path: Path, name: str):
    return learned_eviction(ScorerWeights.load(path), name=f"learned:{name}")


def report_recipes() -> str:
    cell = PAPER_CELL
    policies = {name: get_eviction(name) for name in HANDCRAFTED + ORACLES}
    runs = {}
    for recipe in RECIPES:
        for seed in TRAIN_SEEDS:
            path = run_dir("recipes", f"{recipe}-s{seed}") / "model.npz"
            if path.is_file():
                runs[(recipe, seed)] = path
                policies[f"{recipe}-s{seed}"] = load_agent_policy(path, f"{recipe}-s{seed}")
    s = scores(policies, cell["trace"], cell["capacity"], cell["hardware"], cell["prefetch"])
    best = max(HANDCRAFTED, key=lambda n: s[n].mean())
    lines = [
        "# Learned eviction agents: three recipes x three training seeds",
        "",
        "```bash",
        "python -m experiments.learned_study train recipes    # the 9 training runs below",
        "python -m experiments.learned_study report recipes   # this file and learned_recipes.png",
        "```",
        "",
        f"Cell: `{cell['trace']}`, capacity {cell['capacity']:g}, `{cell['hardware']}`, prefetch `{cell['prefetch']}`. "
        f"Held-out requests only (the test split, {sorted(split_requests(get_trace(cell['trace']), 'test').tolist())}); "
        f"evaluation seeds {EVAL_SEEDS[0]}-{EVAL_SEEDS[-1]}: each seed replays the test requests of its 80% "
        "request sample (as the leaderboard's seeds) and seeds Random. Score: (R - R_random) / (R_belady - "
        "R_random) per seed (Random = 0, Belady = 1, both without prefetching). Brackets: 95% percentile "
        "bootstrap over evaluation seeds (per agent), or over the three training seeds' means (per recipe). "
        "The held-out split has 4 requests, so the seeds' samples overlap: the intervals understate how much "
        "a different workload could move the numbers.",
        "",
        "Training commands (each run's exact command is also in its `model.json`):",
        "",
        "```bash",
    ]
    for name, cmd in train_commands("recipes").items():
        lines.append(shlex.join(cmd))
    lines += ["```", "", "## Per recipe (mean over training seeds of the mean over evaluation seeds)", "",
              "| recipe | score | paired difference vs best handcrafted | training seeds above it (paired CI) |",
              "|---|---:|---:|---:|"]
    for recipe in RECIPES:
        seeds_here = [seed for seed in TRAIN_SEEDS if (recipe, seed) in runs]
        if not seeds_here:
            continue
        means = [s[f"{recipe}-s{seed}"].mean() for seed in seeds_here]
        diffs = [(s[f"{recipe}-s{seed}"] - s[best]).mean() for seed in seeds_here]
        above = sum(ci(s[f"{recipe}-s{seed}"] - s[best])[1] > 0 for seed in seeds_here)
        lines.append(f"| {recipe} ({len(seeds_here)} seeds) | {fmt(ci(means))} | {fmt(ci(diffs))} | "
                     f"{above}/{len(seeds_here)} |")
    lines += ["", f"Best handcrafted (causal) policy on these requests: `{best}`.", "",
              "## Every agent and the handcrafted policies", "",
              "| policy | score | paired difference vs best handcrafted |", "|---|---:|---:|"]
    order = sorted(policies, key=lambda n: -s[n].mean())
    for name in order:
        label = f"{name} (oracle)" if name in ORACLES else name
        diff = "" if name == best else fmt(ci(s[name] - s[best]))
        lines.append(f"| {label} | {fmt(ci(s[name]))} | {diff} |")
    lines += ["", "## Learning curves", "", "![curves](learned_recipes.png)", "",
              "Greedy return on the fixed training episode (train requests 0 and 1, the training reward scale) "
              "during RL, per run (from each run's `eval_fixed_train_episode.csv`); dashed: the handcrafted "
              "policies and the oracle on the same episode. BC-only runs are one point at step 0.", ""]
    meta_lines = []
    for (recipe, seed), path in sorted(runs.items()):
        meta = json.loads(path.with_suffix(".json").read_text())
        bc = meta.get("behaviour_cloning") or {}
        last = (bc.get("history") or [{}])[-1]
        meta_lines.append(f"| {recipe}-s{seed} | {meta.get('num_timesteps', 0):,} | "
                          f"{last.get('total', '')} | {bc.get('wall_seconds', '')} | {meta.get('wall_seconds', '')} |")
    lines += ["## Runs", "", "| run | RL steps | cloned decisions | cloning s | RL s |", "|---|---:|---:|---:|---:|"]
    lines += meta_lines
    plot_curves(runs, REPORTS / "learned_recipes.png")
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    colours = {"bc": "C0", "rl": "C1", "bc+rl": "C2"}
    refs = None
    for (recipe, seed), path in sorted(runs.items()):
        csv = path.parent / "eval_fixed_train_episode.csv"
        if csv.is_file():
            data = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
            ax.plot(data[:, 0], data[:, 1], "o-" if len(data) > 1 else "o", ms=3, color=colours[recipe],
                    label=recipe if seed == 0 else None, alpha=0.8)
        meta = json.loads(path.with_suffix(".json").read_text())
        refs = refs or (meta.get("eval_fixed_train_episode") or {}).get("references")
    for i, (name, value) in enumerate((refs or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 3}", label=name)
    ax.set_xlabel("RL steps (decisions)")
    ax.set_ylabel("return on the fixed training episode")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def report_generalisation() -> str:
    path = run_dir("generalisation", "general-s0") / "model.npz"
    meta = json.loads(path.with_suffix(".json").read_text())
    agent = load_agent_policy(path, "general-s0")
    trained = set()
    for v in meta.get("variants") or []:
        trained.add((v["trace"], float(v["capacity"]), v["hardware"]))
    lines = [
        "# One learned agent across cells, capacities, hardware and a model it never saw",
        "",
        "```bash",
        "python -m experiments.learned_study train generalisation",
        "python -m experiments.learned_study report generalisation   # this file",
        "```",
        "",
        "Training command:",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        "One set of weights (hidden sizes " + ", ".join(map(str, meta.get("network", {}).get("hidden", []))) + "), "
        "trained on OLMoE- and Qwen3-shaped traces (the variants above: their (trace, capacity, hardware) "
        "cells are marked *trained*; the agent still never saw their held-out requests), scored on held-out "
        f"requests of every cell below, evaluation seeds {EVAL_SEEDS[0]}-{EVAL_SEEDS[4]}, prefetch none. "
        "`mixtral-synthetic` (8 experts per layer, 32 layers) is a model shape it never saw: zero-shot. "
        "Best handcrafted: the highest mean among " + ", ".join(f"`{h}`" for h in HANDCRAFTED) + " in that cell. "
        "Paired difference: agent - best handcrafted per seed, 95% bootstrap interval; *wins* / *loses* when "
        "the interval excludes 0.",
        "",
        "| trace | capacity | hardware | seen | agent | best handcrafted | agent - best | verdict | belady-bypass (oracle) |",
        "|---|---:|---|---|---:|---:|---:|---|---:|",
    ]
    wins = losses = ties = 0
    for trace, capacity, hardware in GENERAL_CELLS:
        policies = {"agent": agent, **{h: get_eviction(h) for h in HANDCRAFTED}, "belady-bypass": get_eviction("belady-bypass")}
        s = scores(policies, trace, capacity, hardware, seeds=EVAL_SEEDS[:5])
        if np.isnan(s["agent"]).all():
            lines.append(f"| {trace} | {capacity:g} | {hardware} | | -- | -- | -- | no choice matters (Random = "
                         "Belady) | -- |")
            continue
        best = max(HANDCRAFTED, key=lambda n: s[n].mean())
        diff = ci(s["agent"] - s[best])
        verdict = "wins" if diff[1] > 0 else ("loses" if diff[2] < 0 else "tie")
        wins, losses, ties = wins + (verdict == "wins"), losses + (verdict == "loses"), ties + (verdict == "tie")
        if trace == "mixtral-synthetic":
            seen = "zero-shot (model)"
        else:
            seen = "trained" if (trace, capacity, hardware) in trained else "unseen cell"
        lines.append(f"| {trace} | {capacity:g} | {hardware} | {seen} | {s['agent'].mean():.3f} | "
                     f"{s[best].mean():.3f} (`{best}`) | {fmt(diff)} | {verdict} | {s['belady-bypass'].mean():.3f} |")
    lines += ["", f"Wins {wins}, losses {losses}, ties {ties} of {len(GENERAL_CELLS)} cells.", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("train", "report"))
    parser.add_argument("study", choices=("recipes", "generalisation"))
    parser.add_argument("--only", default=None, help="train: only these recipes (comma-separated), e.g. to share the "
                        "runs between two processes: --only bc,bc+rl and --only rl")
    args = parser.parse_args(argv)
    if args.action == "train":
        train(args.study, args.only)
        return 0
    text = report_recipes() if args.study == "recipes" else report_generalisation()
    out = REPORTS / f"learned_{args.study}.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
