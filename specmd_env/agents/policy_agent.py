"""Eviction policies as agents: ``specmd evaluate --agent expected-next-use:bypass=yes,half_life=4`` or
``--agent path/to/file.py:NAME``.

The agent answers every eviction the environment asks for with the policy's own victim
(:meth:`specmd_env.replay.Replay.policy_victim` for a compiled policy; ``victim(view)`` for a Python
one), so an episode replays exactly what ``simulate(eviction=policy, prefetch=<the env's fixed_prefetch>)``
does on the same requests. A compiled policy keeps state fed by the replay's events, and a replay
delivers events only to its own policy -- the environment's ``fixed_eviction`` -- so the agent makes its
policy the fixed eviction of the environment it is made for (from that environment's next reset).

When the policy bypasses (answers -1), the agent answers the environment's bypass action (the
incoming row). An environment made with ``bypass=False`` masks that action out: the agent then answers
the least recently used candidate instead and warns once; its metrics then differ from ``simulate()``'s.
"""

from __future__ import annotations

import warnings

import numpy as np

from specmd_env.agents import Agent
from specmd_env.errors import SpecMDError
from specmd_env.eviction import POLICIES, EvictionPolicy, get_eviction
from specmd_env.user_code import parse_params


def is_policy_spec(spec: str) -> bool:
    """A ``file.py:NAME`` reference or the name of a built-in eviction policy (with parameters)."""
    if ".py:" in spec:
        return True
    name, _ = parse_params(spec)
    return name.lower().replace("_", "-") in POLICIES


def policy_agent(spec, env) -> "CompiledPolicyAgent | None":
    """The agent for an eviction-policy spec, or None if ``spec`` names no policy (a learned agent's name)."""
    if not isinstance(spec, str) or spec.endswith(".zip") or not is_policy_spec(spec):
        return None
    return CompiledPolicyAgent(spec, env)


class CompiledPolicyAgent(Agent):
    """An eviction policy (compiled, or a Python object with ``victim(view)``) deciding in an eviction env."""

    def __init__(self, policy, env):
        if env is None:
            raise SpecMDError("a policy agent needs the environment it acts in: load_agent(spec, env)")
        self.policy = get_eviction(policy)
        self.compiled = isinstance(self.policy, EvictionPolicy)
        self.name = self.policy.label if self.compiled else getattr(self.policy, "name", str(policy))
        self.is_oracle = self.policy.is_oracle if self.compiled else bool(getattr(self.policy, "is_oracle", False))
        self.bypasses_refused = 0
        self.bind(env)

    def bind(self, env) -> None:
        base = env.unwrapped
        if getattr(base, "decision", None) != "eviction":
            raise SpecMDError(f"policy agent {self.name!r} decides evictions; this env asks for "
                              f"{getattr(base, 'decision', '?')!r} decisions (use an eviction env, e.g. SpecMD-OLMoE-v0)")
        self.env = base
        if self.compiled:  # the replay keeps the state of its fixed eviction only: make it this policy
            base._replay_kwargs["eviction"] = self.policy
            base.config["fixed_eviction"] = self.policy.label

    def act(self, obs, info):
        replay = self.env.replay
        if replay is None or replay.pending_kind not in ("demand", "prefetch"):
            return 0  # no eviction is due (an episode with no decision): the action is ignored
        if self.compiled:
            if replay.policy != self.policy:
                raise SpecMDError(f"policy agent {self.name!r}: the env's replay keeps {replay.eviction_label!r}'s state; "
                                  "reset the env after making the agent")
            slot = replay.policy_victim()
        else:
            slot = int(self.policy.victim(replay.view()))
        if slot == -1:
            slot = self.env.layout.bypass_action if self.env.bypass else self._least_recent(replay)
        return slot

    def _least_recent(self, replay) -> int:
        if not self.bypasses_refused:
            warnings.warn(f"policy {self.name!r} bypassed the cache, which this env (bypass=False) does not allow: "
                          "answered with the least recently used candidate (metrics differ from simulate())",
                          RuntimeWarning, stacklevel=3)
        self.bypasses_refused += 1
        candidates = np.flatnonzero(replay.candidate_mask())
        return int(candidates[np.argmin(replay.view().last_use[candidates])])


__all__ = ["CompiledPolicyAgent", "is_policy_spec", "policy_agent"]
