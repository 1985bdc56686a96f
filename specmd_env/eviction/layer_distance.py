"""Layer distance: evict the candidate whose layer's next turn in the forward sweep is farthest away;
ties go to the least recently used.

A forward pass visits the layers in order, so an expert of layer l + d is next needed d layers from
now (at best), and an expert of the layer computing now, or of one just passed, only in the next pass.
This is Belady's rule with "next use" replaced by "next chance of use": exact for the layer order,
blind to which experts the next pass will pick. It is the strong simple baseline for a cyclic sweep, in
which LRU is the worst case (it evicts exactly the layer needed soonest). A causal policy.

Kept as one recency list per layer in the policy's state (fed by the event log), so a victim is found
in O(layers) rather than by a scan of every slot. Prefetched, unused experts count as least recent
(as the kernel's use order has them).
"""

from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    L = v.num_layers
    if v.num_scopes > 1:  # per-layer caches: only the incoming layer's own experts compete
        return sp.list_first_candidate(v, 0, L, v.incoming_layer)
    for d in range(L, 0, -1):  # the layer computing now (d = L) runs again last of all
        s = sp.list_first_candidate(v, 0, L, (v.layer + d) % L)
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
            sp.list_clear(v, 0, L)
            continue
        layer = sp.layer_of_object(v, obj)
        if kind == sp.EV_HIT:
            sp.list_to_tail(v, 0, L, layer, s)
        elif kind == sp.EV_LOAD:
            sp.list_push(v, 0, L, layer, s)
        elif kind == sp.EV_PREFETCH:
            sp.list_push(v, 0, L, layer, s, True)   # unused: least recent
        elif kind == sp.EV_EVICT:
            sp.list_remove(v, 0, L, layer, s)
    return 0


LAYER_DISTANCE = EvictionPolicy(
    "layer-distance", "farthest next turn in the layer sweep, then least recently used", victim, on_events,
    ("init", "hit", "load", "prefetch", "evict"),
    state=lambda capacity, layers, experts, scopes: (sp.list_size(capacity, layers), 0),
    source="Belady's MIN on the layer order; cf. HOBBIT's FLD term (Tang et al. 2024, eq. 3)")
