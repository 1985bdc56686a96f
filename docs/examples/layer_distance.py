"""Layer distance written as a user would, outside the package (docs/POLICIES.md walks through this file).

Evict the expert whose layer's next turn in the forward sweep is farthest away; ties go to the least
recently used. Two versions of the one rule:

* ``LAYER_DISTANCE_BY_KEY``: ten lines, a key per candidate, one scan of the slots per eviction.
* ``LAYER_DISTANCE``: a recency list per layer kept in the policy's own state, fed by events, so an
  eviction looks at the head of at most L lists; with a parameter (where a prefetched expert enters).

    specmd simulate olmoe-synthetic --eviction docs/examples/layer_distance.py:LAYER_DISTANCE
    specmd leaderboard --evictions lru docs/examples/layer_distance.py:LAYER_DISTANCE --prefetches none score --presets
"""

# [by-key]
from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy


@sp.njit_policy
def farthest_turn_first(v, s):
    return -sp.next_turn(v, s)    # lowest key is evicted: the layer whose turn comes last


@sp.hook
def victim_by_key(tab, lo, hi):
    return sp.lowest(sp.cache_view(tab), lo, hi, farthest_turn_first)


LAYER_DISTANCE_BY_KEY = EvictionPolicy("layer-distance-by-key", "farthest next turn, a key per slot", victim_by_key)
# [/by-key]

# [lists]
AT_HEAD = 0   # state_i[0]: 1 if a prefetched, unused expert enters its layer's list as least recent
LISTS = 1     # state_i[1:]: one recency list of slots per layer (oldest at the head)


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    L = v.num_layers
    if v.num_scopes > 1:           # per-layer caches: only the incoming expert's layer competes
        return sp.list_first_candidate(v, LISTS, L, v.incoming_layer)
    for d in range(L, 0, -1):      # the layer computing now (d = L) runs again last of all
        s = sp.list_first_candidate(v, LISTS, L, (v.layer + d) % L)
        if s >= 0:
            return s
    return -1


@sp.hook
def on_events(tab, n, _):
    v = sp.cache_view(tab)
    L = v.num_layers
    for i in range(n):
        kind, s, obj = sp.event_at(v, i)
        if kind == sp.EV_INIT:
            sp.list_clear(v, LISTS, L)
            continue
        layer = sp.layer_of_object(v, obj)
        if kind == sp.EV_HIT:
            sp.list_to_tail(v, LISTS, L, layer, s)
        elif kind == sp.EV_LOAD:
            sp.list_push(v, LISTS, L, layer, s)
        elif kind == sp.EV_PREFETCH:
            sp.list_push(v, LISTS, L, layer, s, v.state_i[AT_HEAD] == 1)
        elif kind == sp.EV_EVICT:
            sp.list_remove(v, LISTS, L, layer, s)
    return 0


def state(capacity, num_layers, num_experts, num_scopes):
    return 1 + sp.list_size(capacity, num_layers), 0     # (int64 items, float64 items)


def setup(state_i, state_f, params):
    state_i[AT_HEAD] = params["prefetch_at"] == "lru-end"


LAYER_DISTANCE = EvictionPolicy(
    "layer-distance-lists", "farthest next turn, per-layer recency lists", victim, on_events,
    ("init", "hit", "load", "prefetch", "evict"), state=state, setup=setup,
    params={"prefetch_at": "lru-end"}, choices={"prefetch_at": ("lru-end", "mru-end")})
# [/lists]
