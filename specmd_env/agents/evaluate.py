"""``specmd evaluate``: any agent -- handcrafted, learned (.zip or committed name) or oracle -- on any env id.

    specmd evaluate --agent lru least-stale belady row_scorer_olmoe_evict --env SpecMD-OLMoE-v0 \\
        --split test --seeds 0 1 2 3 4

Each (agent, seed, episode) is one episode of ``gym.make(env, split=..., requests_per_episode=...,
**env_kwargs)`` reset with that seed (episode i > 0 of a seed continues the env's RNG); the figures are
the simulator metrics the env reports in ``info`` at the episode's end. Agents listed together are run
on exactly the same episodes (same env kwargs, same seeds). The table gives mean and 95% confidence
interval (Student t over episodes; ``--ci bootstrap`` for a BCa bootstrap) per metric.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Iterable

import numpy as np

from specmd_env.checks import integer, no_repeats
from specmd_env.errors import SpecMDError
from specmd_env.outputs import writable_file

# (info key, column label, scale, format)
METRICS: list[tuple[str, str, float, str]] = [
    ("episode_reward", "reward", 1.0, "{:.1f}"),
    ("hit_rate", "hit rate", 1.0, "{:.4f}"),
    ("token_hit_rate", "token hit rate", 1.0, "{:.4f}"),
    ("collision_misses", "collision misses", 1.0, "{:.1f}"),
    ("stall_seconds", "stall s", 1.0, "{:.3f}"),
    ("mean_ttft_seconds", "TTFT ms", 1e3, "{:.1f}"),
    ("mean_tpot_seconds", "TPOT ms", 1e3, "{:.2f}"),
]
EXTRA_METRICS = ("misses", "accesses", "evictions", "decisions", "prefetches_issued", "prefetches_used",
                 "prefetches_wasted", "total_seconds", "tokens_per_second", "episode_length")


def make_eval_env(env_id: str, env_kwargs: dict | None = None, split: str = "test",
                  requests_per_episode: int | None = None):
    """The evaluation env: held-out requests (``split``), all of them per episode unless told otherwise."""
    import gymnasium as gym
    import specmd_env  # noqa: F401  (registers the SpecMD env ids)

    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if "SpecMD" in k)
        raise SpecMDError(f"unknown env id {env_id!r}; SpecMD ids: {', '.join(known) or '(none registered)'}")
    kwargs = dict(env_kwargs or {})
    kwargs.setdefault("split", split)
    kwargs.setdefault("requests_per_episode", requests_per_episode)
    return gym.make(env_id, **kwargs)


def resolve_agent(spec, env):
    """An Agent from a name (handcrafted/oracle/committed learned), a .zip path, or an Agent object."""
    if not isinstance(spec, str):
        return spec
    try:
        from specmd_env.agents import load_agent
    except ImportError:  # the env's agent registry is not installed: learned agents still load
        load_agent = None
    if load_agent is not None:
        return load_agent(spec, env=env)
    from specmd_env.agents.learned import load_learned_agent

    return load_learned_agent(spec, env)


def _reset_agent(agent, env, seed) -> None:
    reset = getattr(agent, "reset", None)
    if not callable(reset):
        return
    import inspect

    try:
        params = inspect.signature(reset).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {}
    if "seed" in params:
        kwargs["seed"] = seed
    if "env" in params:
        kwargs["env"] = env
    reset(**kwargs)


def _bind(agent, env) -> None:
    if hasattr(agent, "bind") and callable(agent.bind):
        agent.bind(env)


def run_episode(agent, env, seed: int | None, max_steps: int | None = None) -> dict[str, Any]:
    """Play one episode; return the env's final metrics (info) plus the summed reward and length."""
    obs, info = env.reset(seed=seed)
    _reset_agent(agent, env, seed)
    total, steps = 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        action = agent.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    final = dict(info)
    final.update(final.pop("metrics", None) or {})  # the env's Result.as_dict() at the episode's end
    row = {k: v for k, v in final.items() if np.isscalar(v) and not isinstance(v, (str, bytes))}
    row.setdefault("episode_reward", total)
    row["summed_reward"] = total
    row["episode_length"] = steps
    return row


def evaluate(agent_spec, env_id: str, env_kwargs: dict | None = None, split: str = "test",
             seeds: Iterable[int] = (0, 1, 2, 3, 4), episodes: int = 1, requests_per_episode: int | None = None,
             verbose: bool = False) -> list[dict[str, Any]]:
    """Episodes of one agent: a row per (seed, episode) with every scalar metric the env reports."""
    episodes = integer("episodes (--episodes)", episodes, minimum=1)
    seeds = [integer("seeds (--seeds)", seed, minimum=0) for seed in seeds]
    if not seeds:
        raise SpecMDError("seeds (--seeds) must name at least one seed")
    no_repeats("seeds (--seeds)", seeds)
    env = make_eval_env(env_id, env_kwargs, split, requests_per_episode)
    try:
        agent = resolve_agent(agent_spec, env)
        if getattr(agent, "is_oracle", False) and "oracle_info" not in (env_kwargs or {}):
            # oracle agents read info["next_use"] / info["next_experts"]; the dynamics are the same
            env.close()
            env = make_eval_env(env_id, {**(env_kwargs or {}), "oracle_info": True}, split, requests_per_episode)
            agent = resolve_agent(agent_spec, env)
        _bind(agent, env)
        name = getattr(agent, "name", str(agent_spec))
        rows = []
        for seed in seeds:
            for episode in range(episodes):
                t0 = time.time()
                row = run_episode(agent, env, seed if episode == 0 else None)
                row.update(agent=name, oracle=bool(getattr(agent, "is_oracle", False)), seed=int(seed),
                           episode=episode, wall_seconds=time.time() - t0)
                rows.append(row)
                if verbose:
                    print(f"  {name} seed {seed} episode {episode}: reward {row['episode_reward']:.2f} "
                          f"({row['episode_length']} steps, {row['wall_seconds']:.1f} s)", file=sys.stderr)
        return rows
    finally:
        env.close()


def mean_ci(values, method: str = "t", confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a Student-t interval (or BCa bootstrap) of the mean; zero width for constant data."""
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2 or np.allclose(x, x[0]):
        return m, m, m
    from scipy import stats

    if method == "bootstrap":
        res = stats.bootstrap((x,), np.mean, confidence_level=confidence, method="BCa", random_state=0,
                              n_resamples=2000)
        return m, float(res.confidence_interval.low), float(res.confidence_interval.high)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def summarize(rows: list[dict], method: str = "t") -> list[dict[str, Any]]:
    """Per agent (in first-seen order): n and (mean, low, high) of every metric in :data:`METRICS`."""
    agents: dict[str, list[dict]] = {}
    for row in rows:
        agents.setdefault(row["agent"], []).append(row)
    out = []
    for name, group in agents.items():
        entry: dict[str, Any] = {"agent": name, "oracle": group[0].get("oracle", False), "n": len(group)}
        for key, *_ in METRICS:
            entry[key] = mean_ci([r.get(key, float("nan")) for r in group], method)
        for key in EXTRA_METRICS:
            if any(key in r for r in group):
                entry[key] = mean_ci([r.get(key, float("nan")) for r in group], method)
        out.append(entry)
    return out


def _cell(triple, scale: float, fmt: str) -> str:
    m, lo, hi = (v * scale for v in triple)
    if math.isnan(m):
        return "n/a"
    return f"{fmt.format(m)} ± {fmt.format(max(hi - lo, 0.0) / 2)}"


def format_table(summary: list[dict], markdown: bool = False) -> str:
    """A metrics table: one row per agent, cells 'mean ± half-width of the 95% CI'."""
    header = ["agent", "n"] + [label for _, label, _, _ in METRICS]
    body = []
    for entry in summary:
        label = entry["agent"] + (" (oracle)" if entry.get("oracle") and "oracle" not in entry["agent"] else "")
        body.append([label, str(entry["n"])] + [_cell(entry[key], scale, fmt) for key, _, scale, fmt in METRICS])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    fmt_row = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in body])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", nargs="+", required=True,
                        help="one or more agents: a handcrafted/oracle name (lru, least-stale, belady, ...), "
                             "a committed learned agent's name, or a PATH.zip; several are compared on the same episodes")
    parser.add_argument("--env", default="SpecMD-OLMoE-v0", help="gymnasium env id (default %(default)s)")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="K=V", help="gym.make keywords, e.g. capacity=0.1")
    parser.add_argument("--split", default="test", choices=("train", "test", "all"),
                        help="which requests (default test: held out from training)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="reset seeds (default 0 1 2 3 4)")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per seed (default 1)")
    parser.add_argument("--requests-per-episode", type=int, default=None,
                        help="requests per episode (default: all requests of the split in every episode)")
    parser.add_argument("--ci", choices=("t", "bootstrap"), default="t", help="95%% CI method (default t)")
    parser.add_argument("--format", choices=("table", "markdown"), default="table")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every episode's metrics and the summary")
    parser.add_argument("--verbose", action="store_true", help="print each episode as it ends")


def run(args: argparse.Namespace) -> int:
    import torch

    from specmd_env.agents.train import parse_kwargs

    torch.set_num_threads(1)
    if args.json:
        writable_file(args.json, "--json")  # before the episodes, not after them
    env_kwargs = parse_kwargs(args.env_kwargs)
    rows: list[dict] = []
    for spec in args.agent:
        rows += evaluate(spec, args.env, env_kwargs, args.split, args.seeds, args.episodes,
                         args.requests_per_episode, verbose=args.verbose)
    summary = summarize(rows, args.ci)
    rpe = args.requests_per_episode if args.requests_per_episode is not None else "all"
    print(f"{args.env} split={args.split} requests/episode={rpe} seeds={args.seeds} episodes/seed={args.episodes}"
          + (f" env_kwargs={env_kwargs}" if env_kwargs else ""))
    print(format_table(summary, markdown=args.format == "markdown"))
    print("cells: mean ± half-width of the 95% CI over episodes" + (" (Student t)" if args.ci == "t" else " (BCa bootstrap)"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": args.env, "env_kwargs": env_kwargs, "split": args.split, "seeds": args.seeds,
                       "episodes": args.episodes, "requests_per_episode": args.requests_per_episode,
                       "command": "specmd evaluate " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None,
                       "summary": summary, "episodes_detail": rows}, fh, indent=2, default=float)
    return 0


__all__ = ["METRICS", "configure", "evaluate", "format_table", "make_eval_env", "mean_ci", "run", "run_episode",
           "summarize"]
