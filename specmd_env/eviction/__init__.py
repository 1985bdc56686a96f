"""Eviction policies, discoverable by name. Adding one: a module here and one line in ``POLICIES``."""

from __future__ import annotations

from specmd_env.errors import SpecMDError
from specmd_env.eviction.base import EvictionPolicy
from specmd_env.eviction.belady import BELADY, BELADY_BYPASS
from specmd_env.eviction.fifo import FIFO
from specmd_env.eviction.least_stale import LEAST_STALE
from specmd_env.eviction.lfu import LFU
from specmd_env.eviction.lru import LRU
from specmd_env.eviction.random_choice import RANDOM

POLICIES: dict[str, EvictionPolicy] = {p.name: p for p in (LRU, FIFO, LFU, RANDOM, LEAST_STALE, BELADY, BELADY_BYPASS)}


def get_eviction(policy: str | EvictionPolicy) -> EvictionPolicy:
    if isinstance(policy, EvictionPolicy):
        return policy
    key = str(policy).lower().replace("_", "-")
    if key not in POLICIES:
        raise SpecMDError(f"unknown eviction policy {policy!r}; known: {', '.join(POLICIES)}")
    return POLICIES[key]


__all__ = ["EvictionPolicy", "POLICIES", "get_eviction"]
