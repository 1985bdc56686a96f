"""Agents for the SpecMD environments: one interface for handcrafted policies and learned ones.

An :class:`Agent` maps ``(obs, info)`` to an action of the environment it was made for. The
handcrafted eviction agents read only the observation (the action mask is its ``candidate`` column)
and reproduce the simulator's built-in policies exactly (LRU, FIFO, LFU, Least-Stale: the test suite
checks that the environment driven by them gives the fast path's metrics). Oracle agents read
``info`` (Belady: ``info["next_use"]``; oracle prefetch: ``info["next_experts"]``) and say so in
``is_oracle``.

``load_agent(spec, env)``: ``"lru"``, ``"fifo"``, ``"lfu"``, ``"least-stale"``, ``"random"``,
``"belady"``, ``"belady-bypass"`` (eviction), ``"none"``, ``"topk"``, ``"score"``, ``"oracle"`` (prefetch), ``"lru+score"``
(joint: eviction agent + prefetch agent), or a learned agent (a ``.zip`` path or a committed name),
loaded by ``specmd_env.agents.learned.load_learned_agent``.
"""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path

import numpy as np

from specmd_env.envs.observation import (G_DEMAND, S_CANDIDATE, S_INSERT_AGE, S_TOUCH_AGE, S_USE_AGE,
                                         S_USE_COUNT, ObservationLayout)
from specmd_env.errors import SpecMDError

TRAINED_DIR = Path(str(resources.files("specmd_env").joinpath("data", "agents")))  # committed agents (package data)


class Agent:
    """What every agent offers: a ``name``, ``is_oracle`` (reads facts from the future) and ``act``."""

    name = "agent"
    is_oracle = False

    def act(self, obs: np.ndarray, info: dict):
        raise NotImplementedError

    def reset(self, seed: int | None = None) -> None:
        """Called at the start of an episode (stateful agents reseed or clear here)."""

    @property
    def label(self) -> str:
        return f"{self.name} (oracle)" if self.is_oracle else self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"


def _layout(env) -> tuple[ObservationLayout, str, int]:
    if env is None:
        raise SpecMDError("handcrafted agents need the environment they act in: load_agent(spec, env)")
    base = env.unwrapped
    return base.layout, base.decision, base.num_experts


class EvictionAgent(Agent):
    """Picks a slot among the candidates (the observation's ``candidate`` column) by a key; the
    highest key wins, ties to the lower slot index. In joint mode the prefetch bits come from the
    paired prefetch agent (see :class:`JointAgent`); alone, an eviction agent fetches nothing."""

    def __init__(self, env):
        self.layout, self.decision, self.num_experts = _layout(env)

    def key(self, slots: np.ndarray, info: dict) -> np.ndarray:
        raise NotImplementedError

    def choose_slot(self, obs, info) -> int:
        slots = self.layout.slots(obs)
        cand = slots[:, S_CANDIDATE] > 0.5
        if not cand.any():  # no eviction due (a prefetch choice in joint mode): the slot is ignored
            return 0
        key = self.key(slots, info).astype(np.float64)
        key[~cand] = -np.inf
        return int(np.argmax(key))

    def act(self, obs, info):
        slot = self.choose_slot(obs, info)
        if self.decision == "joint":
            return np.concatenate([[slot], np.zeros(self.num_experts, np.int64)])
        return slot


class LRUAgent(EvictionAgent):
    name = "lru"

    def key(self, slots, info):
        return slots[:, S_USE_AGE]


class FIFOAgent(EvictionAgent):
    name = "fifo"

    def key(self, slots, info):
        return slots[:, S_INSERT_AGE]


class LeastStaleAgent(EvictionAgent):
    """Stale before current, oldest touch first: the touch order's oldest candidate."""
    name = "least-stale"

    def key(self, slots, info):
        return slots[:, S_TOUCH_AGE]


class LFUAgent(EvictionAgent):
    """Fewest uses since insertion; ties to the least recently used (unused prefetches, which all
    have count 0 and no use, tie to the lower slot, as the kernel's LFU does)."""
    name = "lfu"

    def choose_slot(self, obs, info):
        slots = self.layout.slots(obs)
        cand = np.flatnonzero(slots[:, S_CANDIDATE] > 0.5)
        if len(cand) == 0:
            return 0
        count = slots[cand, S_USE_COUNT]
        best = cand[count == count.min()]
        if count.min() == 0:  # never used: no use tick, ties to the lowest slot
            return int(best[0])
        return int(best[np.argmax(slots[best, S_USE_AGE])])


class RandomAgent(EvictionAgent):
    """A uniformly random candidate, from its own seeded generator."""
    name = "random"

    def __init__(self, env, seed: int = 0):
        super().__init__(env)
        self.rng = np.random.default_rng(seed)

    def reset(self, seed=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def choose_slot(self, obs, info):
        cand = np.flatnonzero(self.layout.slots(obs)[:, S_CANDIDATE] > 0.5)
        return int(cand[self.rng.integers(len(cand))]) if len(cand) else 0


class BeladyAgent(EvictionAgent):
    """Evict the candidate whose expert is used farthest in the future (``info["next_use"]``); ties as
    the kernel breaks them (unused prefetches by lowest slot, then least recently used). Oracle."""
    name = "belady"
    is_oracle = True

    def choose_slot(self, obs, info):
        if "next_use" not in info:
            raise SpecMDError("the belady agent needs info['next_use']: make the env with oracle_info=True")
        slots = self.layout.slots(obs)
        cand = np.flatnonzero(slots[:, S_CANDIDATE] > 0.5)
        if len(cand) == 0:
            return 0
        nu = np.asarray(info["next_use"])[cand]
        best = cand[nu == nu.max()]
        unused = best[slots[best, S_USE_COUNT] == 0]
        if len(unused):
            return int(unused[0])
        return int(best[np.argmax(slots[best, S_USE_AGE])])

    def best_rows(self, obs, info, mask) -> np.ndarray:
        """Every allowed slot whose next use is the farthest (Belady rates them equally)."""
        rows = self.layout.rows
        nu = np.asarray(info["next_use"]).astype(np.float64)
        allowed = np.asarray(mask[:rows], bool)
        out = np.zeros(rows + 1, bool)
        if allowed.any():
            out[:rows] = allowed & (nu[:rows] == nu[:rows][allowed].max())
        return out


class BeladyBypassAgent(BeladyAgent):
    """Belady with bypass: for a demand miss, do not cache the incoming expert when its own next use is
    no nearer than the victim's (the bypass action); prefetches are always admitted. Oracle."""
    name = "belady-bypass"

    def _bypasses(self, obs, info, victim_next_use) -> bool:
        return self.layout.globals(obs)[G_DEMAND] > 0.5 and \
            np.asarray(info["next_use"])[self.layout.rows] >= victim_next_use

    def choose_slot(self, obs, info):
        slot = super().choose_slot(obs, info)
        if self._bypasses(obs, info, np.asarray(info["next_use"])[slot]):
            return self.layout.bypass_action
        return slot

    def best_rows(self, obs, info, mask) -> np.ndarray:
        """Belady's best slots, with the incoming row when bypassing is at least as good."""
        out = super().best_rows(obs, info, mask)
        rows = self.layout.rows
        if mask[rows] and out.any():
            nu = np.asarray(info["next_use"])
            if self._bypasses(obs, info, nu[:rows][out[:rows]][0]):
                if nu[rows] > nu[:rows][out[:rows]][0]:
                    out[:] = False
                out[rows] = True
        return out


class PrefetchAgent(Agent):
    """Chooses which experts of layer l + lookahead to fetch (a MultiBinary(E) action)."""

    def __init__(self, env):
        self.layout, self.decision, self.num_experts = _layout(env)
        if not self.layout.with_scores:
            raise SpecMDError(f"prefetch agent {self.name!r} needs a prefetch or joint env, got decision={self.decision!r}")

    def bits(self, scores: np.ndarray, info: dict) -> np.ndarray:
        raise NotImplementedError

    def act(self, obs, info):
        bits = self.bits(self.layout.scores(obs), info).astype(np.int64)
        if self.decision == "joint":
            return np.concatenate([[0], bits])
        return bits


class NoPrefetchAgent(PrefetchAgent):
    name = "none"

    def bits(self, scores, info):
        return np.zeros(self.num_experts, np.int64)


class TopKPrefetchAgent(PrefetchAgent):
    """The k highest speculative scores (k = the model's top-k by default)."""

    def __init__(self, env, k: int | None = None):
        super().__init__(env)
        self.k = int(k if k is not None else env.unwrapped.model.top_k)
        self.name = f"top{self.k}"

    def bits(self, scores, info):
        out = np.zeros(self.num_experts, np.int64)
        if scores.max() > 0:
            out[np.argsort(-scores, kind="stable")[:self.k]] = 1
        return out


class ScorePrefetchAgent(PrefetchAgent):
    """SpecMD's score prefetch: best scores until they cover ``mass`` of the total."""
    name = "score"

    def __init__(self, env, mass: float = 0.8):
        super().__init__(env)
        self.mass = mass

    def bits(self, scores, info):
        out = np.zeros(self.num_experts, np.int64)
        total = float(scores.sum())
        if total <= 0:
            return out
        order = np.argsort(-scores, kind="stable")
        covered = np.cumsum(scores[order]) / total
        out[order[:1 + int((covered < self.mass).sum())]] = 1
        return out


class OraclePrefetchAgent(PrefetchAgent):
    """Fetch exactly the experts the next layer will use (``info["next_experts"]``). Oracle."""
    name = "oracle"
    is_oracle = True

    def bits(self, scores, info):
        if "next_experts" not in info:
            raise SpecMDError("the oracle prefetch agent needs info['next_experts']: make the env with oracle_info=True")
        return (np.asarray(info["next_experts"]) > 0).astype(np.int64)


class JointAgent(Agent):
    """An eviction agent and a prefetch agent together, for ``decision="joint"``."""

    def __init__(self, eviction: EvictionAgent, prefetch: PrefetchAgent):
        self.eviction, self.prefetch = eviction, prefetch
        self.name = f"{eviction.name}+{prefetch.name}"
        self.is_oracle = eviction.is_oracle or prefetch.is_oracle

    def reset(self, seed=None):
        self.eviction.reset(seed)
        self.prefetch.reset(seed)

    def act(self, obs, info):
        return np.concatenate([[self.eviction.choose_slot(obs, info)],
                               self.prefetch.bits(self.prefetch.layout.scores(obs), info).astype(np.int64)])


EVICTION_AGENTS = {"lru": LRUAgent, "fifo": FIFOAgent, "lfu": LFUAgent, "least-stale": LeastStaleAgent,
                   "random": RandomAgent, "belady": BeladyAgent, "belady-bypass": BeladyBypassAgent}
PREFETCH_AGENTS = {"none": NoPrefetchAgent, "topk": TopKPrefetchAgent, "score": ScorePrefetchAgent,
                   "oracle": OraclePrefetchAgent}
HANDCRAFTED = sorted(EVICTION_AGENTS) + sorted(PREFETCH_AGENTS)


def _handcrafted(name: str, env, seed: int):
    key = name.lower().replace("_", "-")
    if key in EVICTION_AGENTS:
        return EVICTION_AGENTS[key](env, seed=seed) if key == "random" else EVICTION_AGENTS[key](env)
    if key in PREFETCH_AGENTS:
        return PREFETCH_AGENTS[key](env)
    if key.startswith("top") and key[3:].isdigit():
        return TopKPrefetchAgent(env, int(key[3:]))
    return None


def load_agent(spec, env=None, *, seed: int = 0) -> Agent:
    """An agent by name (handcrafted), ``"<eviction>+<prefetch>"`` (joint), an :class:`Agent` (returned
    as is), or a learned agent: a path ending in ``.zip`` or a committed agent's name, delegated to
    ``specmd_env.agents.learned.load_learned_agent(spec, env)``."""
    if isinstance(spec, Agent):
        return spec
    if not isinstance(spec, str):
        raise SpecMDError(f"agent spec must be a name or path, got {type(spec).__name__}")
    if "+" in spec and not spec.endswith((".zip", ".npz")):
        ev_name, pf_name = spec.split("+", 1)
        ev, pf = _handcrafted(ev_name, env, seed), _handcrafted(pf_name, env, seed)
        if not isinstance(ev, EvictionAgent) or not isinstance(pf, PrefetchAgent):
            raise SpecMDError(f"joint agent {spec!r} must be '<eviction>+<prefetch>' with eviction in "
                              f"{sorted(EVICTION_AGENTS)} and prefetch in {sorted(PREFETCH_AGENTS)}")
        return JointAgent(ev, pf)
    if not spec.endswith((".zip", ".npz")):
        agent = _handcrafted(spec, env, seed)
        if agent is not None:
            base = env.unwrapped
            if base.decision == "joint" and isinstance(agent, EvictionAgent):
                return JointAgent(agent, NoPrefetchAgent(env))
            if base.decision == "joint" and isinstance(agent, PrefetchAgent):
                return JointAgent(LeastStaleAgent(env), agent)
            if base.decision == "prefetch" and isinstance(agent, EvictionAgent):
                raise SpecMDError(f"{spec!r} is an eviction agent; this env asks for prefetch choices "
                                  f"(use one of {sorted(PREFETCH_AGENTS)})")
            if base.decision == "eviction" and isinstance(agent, PrefetchAgent):
                raise SpecMDError(f"{spec!r} is a prefetch agent; this env asks for evictions")
            return agent
    if (compiled := importlib.import_module("specmd_env.agents.policy_agent").policy_agent(spec, env)) is not None:
        return compiled  # an eviction policy by name or file.py:NAME (specmd_env/agents/policy_agent.py)
    try:
        learned = importlib.import_module("specmd_env.agents.learned")
    except ImportError as exc:
        raise SpecMDError(f"unknown agent {spec!r}: not a handcrafted agent ({', '.join(HANDCRAFTED)}), and "
                          f"learned agents are unavailable (specmd_env.agents.learned: {exc})") from None
    return learned.load_learned_agent(spec, env)


__all__ = ["Agent", "BeladyAgent", "BeladyBypassAgent", "EVICTION_AGENTS", "EvictionAgent", "FIFOAgent", "HANDCRAFTED", "JointAgent",
           "LFUAgent", "LRUAgent", "LeastStaleAgent", "NoPrefetchAgent", "OraclePrefetchAgent", "PREFETCH_AGENTS",
           "PrefetchAgent", "RandomAgent", "ScorePrefetchAgent", "TRAINED_DIR", "TopKPrefetchAgent", "load_agent"]
