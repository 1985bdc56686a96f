"""Eviction policies, discoverable by name. Adding one: a module with its compiled hooks (see
docs/POLICIES.md) and one line in ``POLICIES`` -- or, without touching the package, pass the policy
object itself, or ``path/to/file.py:NAME`` (a module-level EvictionPolicy or Python policy object).

Parameters go after the name: ``lru:prefetch_at=mru-end``, ``least-stale:order=insert``."""

from __future__ import annotations

from specmd_env.errors import SpecMDError
from specmd_env.eviction.base import EvictionPolicy
from specmd_env.eviction.belady import BELADY, BELADY_BYPASS
from specmd_env.eviction.expected_next_use import EXPECTED_NEXT_USE
from specmd_env.eviction.fifo import FIFO
from specmd_env.eviction.hobbit import HOBBIT
from specmd_env.eviction.layer_distance import LAYER_DISTANCE
from specmd_env.eviction.least_stale import LEAST_STALE
from specmd_env.eviction.lfu import LFU
from specmd_env.eviction.lru import LRU
from specmd_env.eviction.moe_infinity import MOE_INFINITY
from specmd_env.eviction.random_choice import RANDOM
from specmd_env.user_code import load_object, parse_params

POLICIES: dict[str, EvictionPolicy] = {p.name: p for p in (
    LRU, FIFO, LFU, RANDOM, LEAST_STALE, LAYER_DISTANCE, EXPECTED_NEXT_USE, HOBBIT, MOE_INFINITY, BELADY,
    BELADY_BYPASS)}


def get_eviction(policy):
    """An :class:`EvictionPolicy` (or a Python policy object) from a name with optional parameters
    (``"lru:prefetch_at=mru-end"``), a ``file.py:NAME`` reference, or the object itself."""
    if isinstance(policy, EvictionPolicy) or (not isinstance(policy, str) and hasattr(policy, "victim")):
        return policy
    if not isinstance(policy, str):
        raise SpecMDError(f"unknown eviction policy {policy!r}: give a name ({', '.join(POLICIES)}), "
                          f"'file.py:NAME', or a policy object")
    if ".py:" in policy:
        return get_eviction(load_object(policy, what="eviction policy"))
    name, params = parse_params(policy)
    key = name.lower().replace("_", "-")
    if key not in POLICIES:
        raise SpecMDError(f"unknown eviction policy {name!r}; known: {', '.join(POLICIES)} (or file.py:NAME)")
    return POLICIES[key].with_params(**params) if params else POLICIES[key]


__all__ = ["EvictionPolicy", "POLICIES", "get_eviction"]
