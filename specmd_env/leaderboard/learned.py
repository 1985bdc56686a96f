"""The leaderboard's hook for committed learned agents (``specmd_env/data/agents/*.zip``).

Each ``<name>.zip`` may have ``<name>.json`` beside it (written by ``specmd train``) with ``env_id`` and
``env_kwargs``. An agent is evaluated only in the leaderboard cells it was trained for: same model as the
trace's and, when its ``env_kwargs`` name one, the same capacity (its observation and action spaces
depend on the capacity; the env's default capacity when the metadata names none). The env id fixes the
model; an eviction env prefetches with its ``fixed_prefetch`` (default ``score``), which is the prefetch
column of the agent's rows. One evaluation = one greedy episode::

    agent = specmd_env.agents.load_agent(path)
    env = gymnasium.make(env_id, **{**env_kwargs, "trace": trace, "hardware": hw, "capacity": c})
    obs, info = env.reset(seed=seed, options={"requests": the seed's request sample}); agent.bind(env)
    until terminated or truncated: obs, _, terminated, truncated, info = env.step(agent.act(obs, info))
    result = env.unwrapped.replay.result()

and the :class:`specmd_env.Result` is scored with the same ``RewardWeights`` as every other run. When
there is no agent, or the agent interface / environment is not importable, the leaderboard prints a
note and goes on without learned agents; an agent that fails is skipped with a note, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from specmd_env.agents import TRAINED_DIR


def discover(trained_dir: Path | None = None) -> list[Path]:
    directory = Path(trained_dir) if trained_dir is not None else TRAINED_DIR
    return sorted(directory.glob("*.zip")) if directory.is_dir() else []


def metadata(path: Path) -> dict:
    meta = Path(path).with_suffix(".json")
    if meta.is_file():
        with open(meta) as fh:
            return json.load(fh)
    return {}


def interface_available() -> str | None:
    """None if agents can be run, else why not."""
    try:
        from specmd_env.agents import load_agent  # noqa: F401
    except ImportError as exc:
        return f"the agent interface specmd_env.agents.load_agent is not importable ({exc})"
    try:
        import specmd_env.envs  # noqa: F401  (registers the Gymnasium ids)
    except ImportError as exc:
        return f"the environments (specmd_env.envs) are not importable ({exc})"
    return None


SUBSET_MARK = ":first"   # trace label of a learned-agent cell: "<trace>:first<k>"


def is_agent_cell(trace_label: str) -> bool:
    return SUBSET_MARK in str(trace_label)


def agent_specs(base_specs, trained_dir: Path | None = None, log=print, *, max_requests: int = 1,
                hardware=("paper-a100-5gbps",)) -> list:
    """RunSpecs for every learned agent in the cells it fits, derived from the handcrafted grid
    ``base_specs``. A learned agent decides every eviction through Python and its network (milliseconds
    each, tens of thousands per replay), so it is scored on a reduced cell: the first ``max_requests``
    requests of each seed's sample, on the ``hardware`` profiles only; every handcrafted policy and oracle
    is rerun on exactly that cell (trace label ``<trace>:first<k>``) so the agent is normalised and ranked
    against them on the same workload. The requests are held-out ones (the environment's test split), so
    an agent is never scored on its training requests. Prints why nothing is added when nothing is."""
    paths = discover(trained_dir)
    if not paths:
        log("leaderboard: no learned agents found (specmd_env/data/agents/*.zip); scoring handcrafted policies and oracles")
        return []
    why = interface_available()
    if why:
        log(f"leaderboard: {len(paths)} learned agent(s) found but not run: {why}")
        return []
    import gymnasium as gym

    from specmd_env.leaderboard.sweep import code_version, file_fingerprint, inputs_fingerprint
    from specmd_env.models import get_model

    code = code_version(learned=True)
    specs: dict[str, object] = {}
    for path in paths:
        meta = metadata(path)
        kwargs = meta.get("env_kwargs", {}) or {}
        name = meta.get("name", path.stem)
        env_id = meta.get("env_id", "SpecMD-OLMoE-v1")
        registered = dict(gym.registry[env_id].kwargs) if env_id in gym.registry else {}
        want_model = kwargs.get("model") or registered.get("model") or meta.get("model")
        # The observation and action spaces depend on the capacity: the env's default unless trained with another.
        want_capacity = kwargs.get("capacity", _env_default("capacity", 0.05))
        decision = kwargs.get("decision", registered.get("decision", "eviction"))
        learned = f"learned:{name}"
        eviction = learned if decision != "prefetch" else str(
            kwargs.get("fixed_eviction", registered.get("fixed_eviction", _env_default("fixed_eviction", "least-stale"))))
        prefetch = learned if decision != "eviction" else str(
            kwargs.get("fixed_prefetch", registered.get("fixed_prefetch", _env_default("fixed_prefetch", "score"))))
        added = 0
        for base in base_specs:
            if want_model and get_model(want_model).name != base.model:
                continue
            if base.hardware not in hardware or base.agent:
                continue
            # The agent's own capacity (its spaces depend on it), even when the sweep has no such column:
            # the handcrafted policies are rerun there too.
            base = replace(base, capacity=float(want_capacity))
            requests = tuple(base.requests) if base.requests is not None else tuple(range(load_n(base)))
            held_out = held_out_requests(base)
            requests = tuple(r for r in requests if r in held_out)[:max_requests]  # never its training requests
            if not requests:
                continue
            label = f"{base.trace}{SUBSET_MARK}{len(requests)}"
            hand = replace(base, trace=label, requests=requests)
            specs.setdefault(hand.run_id, hand)
            agent = replace(hand, eviction=eviction, prefetch=prefetch, agent=name, agent_path=str(path.resolve()),
                            agent_fingerprint=file_fingerprint(path, path.with_suffix(".json")),
                            inputs=inputs_fingerprint(hand.model, hand.hardware, code))
            if agent.run_id not in specs:
                specs[agent.run_id] = agent
                added += 1
        if not added:
            log(f"leaderboard: learned agent {name!r} fits no cell of this sweep (model {want_model}, "
                f"capacity {want_capacity}, hardware {', '.join(hardware)}); skipped")
        else:
            log(f"leaderboard: learned agent {name!r}: {added} run(s) on its cell ({want_model}, capacity "
                f"{want_capacity}, first {max_requests} held-out requests of each seed's sample, {', '.join(hardware)})")
    return sorted(specs.values(), key=lambda s: s.sort_key())


def load_n(spec) -> int:
    from specmd_env.leaderboard.sweep import load
    return load(spec.trace_ref).num_requests


def held_out_requests(spec) -> set[int]:
    """The trace's test split (the environment's deterministic split): agents train on the rest."""
    from specmd_env.leaderboard.sweep import load
    from specmd_env.envs.cache_env import split_requests
    return set(split_requests(load(spec.trace_ref), "test").tolist())


def _env_default(name: str, fallback):
    """A keyword default of the environment class (what an agent was trained with when not overridden)."""
    try:
        import inspect

        from specmd_env.envs.cache_env import SpecMDCacheEnv
        return inspect.signature(SpecMDCacheEnv.__init__).parameters[name].default
    except (ImportError, KeyError, AttributeError):
        return fallback


@lru_cache(maxsize=8)
def _load(agent_path: str, stamp):
    """The agent, cached per process and per version of its file (``stamp``)."""
    from specmd_env.agents import load_agent
    return load_agent(agent_path, None)


def _result_of(env, info):
    inner = env.unwrapped
    if hasattr(inner, "replay"):
        return inner.replay.result()
    if isinstance(info, dict) and info.get("result") is not None:
        return info["result"]
    raise RuntimeError("the environment exposes no Result at episode end (env.unwrapped.replay or info['result'])")


def run_agent(spec, trace):
    """One greedy episode of the learned agent in ``spec`` on its cell; returns the replay's Result."""
    import gymnasium as gym

    import specmd_env.envs  # noqa: F401

    meta = metadata(Path(spec.agent_path))
    env_id = meta.get("env_id", "SpecMD-OLMoE-v1")
    kwargs = dict(meta.get("env_kwargs", {}) or {})
    kwargs.update(trace=trace, hardware=spec.hardware, capacity=spec.capacity)
    env = gym.make(env_id, **kwargs)
    import torch
    torch.set_num_threads(1)  # one small network, one decision at a time: threads only add overhead
    try:
        from specmd_env.leaderboard.sweep import file_stamp
        agent = _load(spec.agent_path, file_stamp(spec.agent_path))
        if hasattr(agent, "bind"):
            agent.bind(env)
        if hasattr(agent, "reset"):
            agent.reset()
        requests = list(range(trace.num_requests)) if spec.requests is None else list(spec.requests)
        obs, info = env.reset(seed=spec.seed, options={"requests": requests})
        terminated = truncated = False
        while not (terminated or truncated):
            obs, _, terminated, truncated, info = env.step(agent.act(obs, info))
        return _result_of(env, info)
    finally:
        env.close()
