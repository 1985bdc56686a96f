"""The leaderboard's hook for committed learned agents (``specmd_env/data/agents/<name>.npz``).

A learned eviction agent is a row scorer whose weights are exported as ``<name>.npz`` (plain arrays)
with its training metadata in ``<name>.json`` (:mod:`specmd_env.agents.compiled`). It runs as a compiled
eviction policy inside the replay, as fast as a built-in one, so it is scored like one: on every
(trace, capacity, hardware) cell of the sweep (one set of weights serves any capacity and model
shape), beside every prefetcher of the sweep. Only honestly: an agent is trained on the environment's
*train* split, so it is scored on the held-out requests -- each seed's request sample restricted to
the test split (``--sample-frac 1``: the whole held-out split every seed) -- in a separate cell
(trace label ``<trace>:held-out``) where every handcrafted policy and oracle is rerun on exactly those
requests, so the agent is normalised and ranked against them on the same workload. An agent whose
metadata names the traces it was trained on is noted ``trained on it`` / ``zero-shot`` per trace.

An agent without ``.npz`` weights (e.g. an MLP policy of a fixed input size) is not run; one that fails
is skipped with a note, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from specmd_env.agents import TRAINED_DIR

HELD_OUT_MARK = ":held-out"   # trace label of a learned-agent cell: "<trace>:held-out"


def discover(trained_dir: Path | None = None) -> list[Path]:
    """The agents' weights files (``*.npz``)."""
    directory = Path(trained_dir) if trained_dir is not None else TRAINED_DIR
    return sorted(directory.glob("*.npz")) if directory.is_dir() else []


def metadata(path: Path) -> dict:
    meta = Path(path).with_suffix(".json")
    if meta.is_file():
        with open(meta) as fh:
            return json.load(fh)
    return {}


def interface_available() -> str | None:
    """None if agents can be run, else why not."""
    try:
        from specmd_env.agents.compiled import learned_eviction  # noqa: F401
    except ImportError as exc:
        return f"the compiled learned policy (specmd_env.agents.compiled) is not importable ({exc})"
    return None


def is_agent_cell(trace_label: str) -> bool:
    return HELD_OUT_MARK in str(trace_label)


def held_out_requests(spec) -> list[int]:
    """The trace's test split (the environment's deterministic split): agents train on the rest."""
    from specmd_env.envs.cache_env import split_requests
    from specmd_env.leaderboard.sweep import load
    return split_requests(load(spec.trace_ref), "test").tolist()


def trained_traces(meta: dict) -> set[str]:
    """Trace names an agent's training saw (its env kwargs and variants), as far as its metadata says."""
    from specmd_env.catalog import default_trace_name

    kwargs = meta.get("env_kwargs") or {}
    names = set()
    for variant in meta.get("variants") or [{}]:
        trace = {**kwargs, **(variant or {})}.get("trace")
        if trace is None:
            env_id = meta.get("env_id", "")
            model = {"OLMoE": "olmoe", "Mixtral": "mixtral", "Qwen3": "qwen3"}.get(env_id.split("-")[1] if "-" in env_id
                                                                                   else "", "olmoe")
            trace = default_trace_name(model)
        names.add(str(trace))
    return names


def agent_specs(base_specs, trained_dir: Path | None = None, log=print, *, hardware=None, prefetches=None) -> list:
    """RunSpecs for every learned agent on every cell of the handcrafted grid ``base_specs`` (its
    hardware profiles limited to ``hardware``, its prefetchers to ``prefetches`` when given; presets,
    which bring their own eviction, are not paired with agents), replaying each seed's held-out requests,
    with every handcrafted policy and oracle rerun on the same requests. Prints why nothing is added
    when nothing is."""
    paths = discover(trained_dir)
    if not paths:
        log("leaderboard: no learned agents found (specmd_env/data/agents/*.npz); scoring handcrafted policies and oracles")
        return []
    why = interface_available()
    if why:
        log(f"leaderboard: {len(paths)} learned agent(s) found but not run: {why}")
        return []
    from specmd_env.leaderboard.sweep import code_version, file_fingerprint, inputs_fingerprint

    code = code_version(learned=True)
    specs: dict[str, object] = {}
    held: dict[str, list[int]] = {}
    for path in paths:
        meta = metadata(path)
        name = meta.get("name", path.stem)
        added, cells, keyed = 0, set(), set()
        for base in base_specs:
            if base.agent or base.preset or (hardware is not None and base.hardware not in hardware) \
                    or (prefetches is not None and base.prefetch not in prefetches):
                continue
            if base.trace_ref not in held:
                held[base.trace_ref] = held_out_requests(base)
            test = held[base.trace_ref]
            requests = [r for r in (base.requests if base.requests is not None else test) if r in set(test)]
            if not requests:
                continue
            hand = replace(base, trace=f"{base.trace}{HELD_OUT_MARK}", requests=tuple(requests))
            specs.setdefault(hand.run_id, hand)
            key = (hand.trace, hand.capacity, hand.hardware, hand.prefetch, hand.seed)
            if key in keyed:  # one agent run per (cell, prefetcher, seed)
                continue
            keyed.add(key)
            agent = replace(hand, eviction=f"learned:{name}", agent=name, agent_path=str(path.resolve()),
                            agent_fingerprint=file_fingerprint(path, path.with_suffix(".json")),
                            inputs=inputs_fingerprint(hand.model, hand.hardware, code))
            if agent.run_id not in specs:
                specs[agent.run_id] = agent
                added += 1
                cells.add(base.trace)
        if not added:
            log(f"leaderboard: learned agent {name!r} fits no cell of this sweep (no held-out requests); skipped")
            continue
        seen = trained_traces(meta)
        kinds = ", ".join(f"{t} ({'trained on it' if t in seen else 'zero-shot'})" for t in sorted(cells))
        log(f"leaderboard: learned agent {name!r}: {added} run(s) on held-out requests of {kinds}")
    return sorted(specs.values(), key=lambda s: s.sort_key())


@lru_cache(maxsize=8)
def _policy(agent_path: str, stamp, name: str):
    """The compiled policy, cached per process and per version of its file (``stamp``)."""
    from specmd_env.agents.compiled import ScorerWeights, learned_eviction
    return learned_eviction(ScorerWeights.load(agent_path), name=f"learned:{name}")


def run_agent(spec, trace):
    """One replay of the learned agent in ``spec`` on its cell; returns the :class:`specmd_env.Result`."""
    from specmd_env.leaderboard.sweep import file_stamp
    from specmd_env.simulate import simulate

    policy = _policy(spec.agent_path, file_stamp(spec.agent_path), spec.agent)
    return simulate(trace, model=spec.model, hardware=spec.hardware, capacity=spec.capacity, eviction=policy,
                    prefetch=spec.prefetch, seed=spec.seed,
                    requests=None if spec.requests is None else list(spec.requests))
