"""Eviction policies written as a user would write them, outside the package (tests/test_policies.py
loads them as objects and as ``path/to/user_policies.py:NAME``).

* ``MRU``: most recently used first -- compiled hooks over the named view only.
* ``LIFO``: the most recently inserted first -- keeps its own insertion stamps in ``state_i``, fed by
  the event log (``load`` and ``prefetch`` events).
* ``UNLIKELY_NEXT``: the next layer's expert with the lowest speculative score first (``spec_score``),
  then the least recently used of the others.
* ``PythonLRU``: LRU as a plain Python object with ``victim(view)`` (the slow path).
"""

import numpy as np
from numba import njit

from specmd_env import policy as sp
from specmd_env.eviction import EvictionPolicy


@njit(cache=True)
def _most_recent_first(v, s):
    return -v.last_use[s]


@sp.hook
def mru_victim(tab, lo, hi):
    return sp.lowest(sp.cache_view(tab), lo, hi, _most_recent_first)


MRU = EvictionPolicy("mru", "most recently used first", mru_victim, source="tests/user_policies.py")


STAMPS = 0  # state_i[0]: insertions so far; state_i[1 + s]: slot s's insertion stamp


@sp.hook
def lifo_on_events(tab, n, _):
    v = sp.cache_view(tab)
    for i in range(n):
        kind, s, obj = sp.event_at(v, i)
        if kind == sp.EV_LOAD or kind == sp.EV_PREFETCH:
            v.state_i[STAMPS] += 1
            v.state_i[STAMPS + 1 + s] = v.state_i[STAMPS]
    return 0


@njit(cache=True)
def _newest_first(v, s):
    return -v.state_i[STAMPS + 1 + s]


@sp.hook
def lifo_victim(tab, lo, hi):
    return sp.lowest(sp.cache_view(tab), lo, hi, _newest_first)


LIFO = EvictionPolicy("lifo", "last in, first out", lifo_victim, lifo_on_events, ("load", "prefetch"),
                      state=lambda capacity, layers, experts, scopes: (1 + capacity, 0),
                      source="tests/user_policies.py")


@njit(cache=True)
def _unlikely_first(v, s):
    return sp.spec_score(v, s) if v.slot_layer[s] == v.layer + v.lookahead else 2.0


@sp.hook
def unlikely_next_victim(tab, lo, hi):
    return sp.lowest(sp.cache_view(tab), lo, hi, _unlikely_first)


UNLIKELY_NEXT = EvictionPolicy("unlikely-next", "the next layer's least likely expert first", unlikely_next_victim,
                               source="tests/user_policies.py", needs_spec_scores=True)


class PythonLRU:
    """LRU on the slow path: the candidate with the oldest last use (a prefetched, unused expert has
    last use 0, so it goes first -- as the compiled LRU's default)."""

    name = "python-lru"

    def victim(self, view):
        candidates = view.candidates()
        return int(candidates[np.argmin(view.last_use[candidates])])
