"""LRU: evict the expert whose last use is oldest.

A use is a layer computing with the expert (a hit, or the demand load that brought it in). Where a
*prefetched*, not yet used expert sits in the recency order decides results, so it is a parameter:

* ``prefetch_at=lru-end`` (default; this project's first reading): it enters at the least-recent end
  (first victim) until a layer uses it, and a prefetch hint for a resident expert changes nothing. No
  offloading runtime we read does this (docs/POLICIES.md): they insert at the most-recent end or protect
  the prefetched expert. Kept as the default so that results stay comparable; the leaderboard shows both.
* ``prefetch_at=mru-end``: it enters at the most-recent end, as any insertion (Pre-gated MoE's and
  Mixtral-offloading's LRU; AdapMoE inserts a prefetched expert there at its first use).

The default reads the kernel's own use order (O(1)); the variant keeps its recency list in the policy's
state, fed by the event log.
"""

from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy

AT_MRU = 0    # state_i[0]: 1 when prefetched experts enter at the most-recent end
LISTS = 1     # state_i[1:]: one recency list per scope (the variant's)


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    if v.state_i[AT_MRU] == 0:
        return sp.oldest(v, sp.BY_USE)
    return sp.list_first_candidate(v, LISTS, v.num_scopes, sp.decision_scope(v))


@sp.hook
def on_events(tab, n, _):
    v = sp.cache_view(tab)
    groups = v.num_scopes
    for i in range(n):
        kind, s, obj = sp.event_at(v, i)
        if kind == sp.EV_INIT:
            sp.list_clear(v, LISTS, groups)
            continue
        group = sp.scope_of(v, sp.layer_of_object(v, obj))
        if kind == sp.EV_HIT:
            sp.list_to_tail(v, LISTS, groups, group, s)
        elif kind == sp.EV_LOAD or kind == sp.EV_PREFETCH:
            sp.list_push(v, LISTS, groups, group, s)
        elif kind == sp.EV_EVICT:
            sp.list_remove(v, LISTS, groups, group, s)
    return 0


def _state(capacity, num_layers, num_experts, num_scopes):
    return 1 + sp.list_size(capacity, num_scopes), 0


def _setup(state_i, state_f, params):
    state_i[AT_MRU] = params["prefetch_at"] == "mru-end"


LRU = EvictionPolicy(
    "lru", "least recently used", victim, on_events,
    lambda p: ("init", "hit", "load", "prefetch", "evict") if p["prefetch_at"] == "mru-end" else (),
    state=_state, setup=_setup, params={"prefetch_at": "lru-end"}, choices={"prefetch_at": ("lru-end", "mru-end")},
    needs_orders=("use",), source="textbook LRU; where prefetches enter: docs/POLICIES.md")
