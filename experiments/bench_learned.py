"""Learned-agent inference speed: decisions per second of the compiled row scorer beside built-in policies.

    python -m experiments.bench_learned                        # the committed agents, the paper's cell
    python -m experiments.bench_learned --agents path/to/a.npz --trace qwen3-synthetic --capacity 0.02

Every figure is a whole replay through ``simulate()`` (the kernel and the policy's hooks, no Python per
decision): decisions = evictions + bypasses, over the replay's wall time, best of ``--repeats`` after a
warm-up run (compilation excluded). For contrast, ``torch (SB3 predict per decision)`` plays the same
network through the environment with one ``model.predict`` per decision (``--torch-steps`` of them),
which is how learned agents ran before they were compiled.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from specmd_env.agents import TRAINED_DIR
from specmd_env.agents.compiled import ScorerWeights, learned_eviction
from specmd_env.catalog import get_trace
from specmd_env.envs.cache_env import split_requests
from specmd_env.simulate import simulate

BUILT_IN = ("lru", "layer-distance", "hobbit", "expected-next-use:bypass=yes", "belady-bypass")


def replay_rate(trace, policy, repeats: int, **kwargs) -> tuple[float, int]:
    simulate(trace, eviction=policy, **kwargs)  # compile / warm up
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = simulate(trace, eviction=policy, **kwargs)
        best = min(best, time.perf_counter() - t0)
    decisions = result.evictions + result.bypassed
    return decisions / best, decisions


def torch_rate(zip_path: Path, env_kwargs: dict, steps: int) -> float:
    """Decisions per second of the SB3 model (one predict per decision) through the environment."""
    import gymnasium as gym
    import torch

    from specmd_env.agents.learned import load_learned_agent

    torch.set_num_threads(1)
    env = gym.make("SpecMD-OLMoE-v0", **env_kwargs)
    agent = load_learned_agent(str(zip_path), env)
    obs, info = env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(agent.act(obs, info))
        if terminated or truncated:
            obs, info = env.reset()
    return steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="*", default=None, help="weights files (.npz); default the committed agents")
    parser.add_argument("--trace", default="olmoe-synthetic")
    parser.add_argument("--capacity", type=float, default=0.05)
    parser.add_argument("--hardware", default="paper-a100-5gbps")
    parser.add_argument("--prefetch", default="none")
    parser.add_argument("--split", default="all", choices=("all", "train", "test"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-steps", type=int, default=2000, help="0: skip the torch comparison")
    args = parser.parse_args(argv)

    trace = get_trace(args.trace)
    requests = split_requests(trace, args.split).tolist()
    kwargs = dict(capacity=args.capacity, hardware=args.hardware, prefetch=args.prefetch, requests=requests)
    paths = [Path(p) for p in args.agents] if args.agents is not None else sorted(TRAINED_DIR.glob("*.npz"))
    print(f"{args.trace}, capacity {args.capacity:g}, {args.hardware}, prefetch {args.prefetch}, split {args.split} "
          f"({len(requests)} requests); decisions/s = (evictions + bypasses) / replay wall time, best of {args.repeats}")
    rows = []
    for name in BUILT_IN:
        rate, n = replay_rate(trace, name, args.repeats, **kwargs)
        rows.append((name, "built-in", rate, n))
    for path in paths:
        weights = ScorerWeights.load(path)
        rate, n = replay_rate(trace, learned_eviction(weights, name=path.stem), args.repeats, **kwargs)
        rows.append((f"learned:{path.stem}", f"compiled row scorer {'-'.join(map(str, weights.sizes))}, "
                     f"{weights.flops} multiply-adds/row", rate, n))
        zip_path = path.with_suffix(".zip")
        if args.torch_steps and zip_path.is_file():
            trained = json.loads(path.with_suffix(".json").read_text()).get("env_kwargs") or {}
            env_kwargs = dict(trace=args.trace, capacity=args.capacity, hardware=args.hardware,
                              fixed_prefetch=args.prefetch, split=args.split, requests_per_episode=None,
                              observation_slots=trained.get("observation_slots"))  # the shape it was trained on
            rows.append((f"learned:{path.stem}", "torch (SB3 predict per decision, through the env)",
                         torch_rate(zip_path, env_kwargs, args.torch_steps), args.torch_steps))
    width = max(len(r[0]) for r in rows)
    print(f"{'policy':<{width}}  {'decisions/s':>12}  {'decisions':>9}  how")
    for name, how, rate, n in rows:
        print(f"{name:<{width}}  {rate:>12,.0f}  {n:>9,}  {how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
