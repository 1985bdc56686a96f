"""LFU: evict the expert used least often; ties go to the least recently used.

``count=resident`` (default): uses since it entered the cache (in-cache frequency, as libCacheSim's LFU).
``count=history``: uses over the whole replay, resident or not (frequency survives eviction, so an
expert that is popular but was evicted once is not treated as new).
"""


from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy

HISTORY = 0  # state_i[0]: 1 to count over the whole history


@sp.njit_policy
def _resident_uses(v, s):
    return v.uses[s]


@sp.njit_policy
def _history_uses(v, s):
    return v.total_uses[v.slot_object[s]]


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    if v.state_i[HISTORY] == 1:
        return sp.lowest(v, lo, hi, _history_uses)
    return sp.lowest(v, lo, hi, _resident_uses)


def _setup(state_i, state_f, params):
    state_i[HISTORY] = params["count"] == "history"


LFU = EvictionPolicy("lfu", "least frequently used (LRU tie-break)", victim, state=lambda *_: (1, 0),
                     setup=_setup, params={"count": "resident"}, choices={"count": ("resident", "history")},
                     source="textbook LFU (libCacheSim's LFU counts in-cache uses)")
