"""MoE-Infinity's activation-aware prefetch (Xue et al., arXiv 2401.14361; code: EfficientMoE/MoE-Infinity,
moe_infinity/memory/expert_tracer.py, expert_predictor.py, expert_prefetcher.py).

* Each request keeps an *expert activation matrix* (EAM, L x E): tokens routed to each expert of each
  layer, summed over all its forward passes. When a request ends, its EAM joins the *collection* (EAMC,
  at most ``capacity`` matrices, 120 by default: the paper's "sufficient" size; the code defaults to
  1000); a full collection replaces the entry matched least often (the code's rule; the paper says the
  most similar one). A request ends when the next one starts (its prefill, or a decode-only request's
  first step); the last request's EAM never joins.
* At each layer l, the collection entry most like the request's EAM is found: per layer, the cosine
  similarity of the request's row with the entry's row, averaged over the layers still to come (l+1 ..
  L-1, as the code's masking amounts to) -- with counts from the request's earlier passes. In a
  request's first pass those rows are empty; the code then matches nothing in particular (it returns
  entry 0), here the layers run so far (0 .. l) decide instead.
* Prefetch priority over every later layer: ``count x (1 - (i - l) / (L + 1))`` (the code; the paper
  writes L), best first. The code also queues the experts with no count (its ``+ 1e-8``); they rank
  last and are left out here. The copy engine's limits apply as to any prefetcher; MoE-Infinity's own
  runtime lets demand loads overtake queued prefetches (``--preset moe-infinity`` sets that engine).

The eviction policy of the same name (:mod:`specmd_env.eviction.moe_infinity`) reads the match.
"""

import numpy as np

from specmd_env import policy as sp
from specmd_env.errors import SpecMDError
from specmd_env.prefetch.base import Prefetcher

# state_i
N_FILLED, MATCHED, CAPACITY, HAS_CURRENT, ACCESS = 0, 1, 2, 3, 4   # ACCESS: [capacity] match counts
# state_f: [current EAM: L*E][collection: capacity*L*E][cosines: capacity*L][known rows: L]


@sp.njit_policy
def offsets_of(state_i, num_layers, num_experts):
    """(n = L*E, and where the current EAM, the collection, the cosines and the known-row flags start in
    the float state), for the prefetcher's state ``state_i`` (also read by the eviction policy)."""
    n = num_layers * num_experts
    cap = state_i[CAPACITY]
    return n, 0, n, n + cap * n, n + cap * n + cap * num_layers


@sp.njit_policy
def offsets(v):
    return offsets_of(v.state_i, v.num_layers, v.num_experts)


@sp.njit_policy
def _cosine(a, ao, b, bo, E):
    dot, na, nb = 0.0, 0.0, 0.0
    for x in range(E):
        dot += a[ao + x] * b[bo + x]
        na += a[ao + x] * a[ao + x]
        nb += b[bo + x] * b[bo + x]
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot / np.sqrt(na * nb)


@sp.njit_policy
def _request_ends(v):
    """The request's EAM joins the collection (a free entry, else the least matched one)."""
    n, cur, coll, _, _ = offsets(v)
    f = v.state_f
    cap = v.state_i[CAPACITY]
    if v.state_i[N_FILLED] < cap:
        c = v.state_i[N_FILLED]
        v.state_i[N_FILLED] += 1
    else:
        c = 0
        for i in range(1, cap):
            if v.state_i[ACCESS + i] < v.state_i[ACCESS + c]:
                c = i
    f[coll + c * n:coll + (c + 1) * n] = f[cur:cur + n]
    v.state_i[ACCESS + c] = 1
    f[cur:cur + n] = 0.0
    v.state_i[HAS_CURRENT] = 0


@sp.njit_policy
def _pass_starts(v):
    """Cosines of the request's rows (its earlier passes) with every collection entry, per layer."""
    n, cur, coll, cos, known = offsets(v)
    f, E, L = v.state_f, v.num_experts, v.num_layers
    for i in range(L):
        row = 0.0
        for x in range(E):
            row += f[cur + i * E + x]
        f[known + i] = 1.0 if row > 0 else 0.0
    for c in range(v.state_i[N_FILLED]):
        for i in range(L):
            f[cos + c * L + i] = _cosine(f, cur + i * E, f, coll + c * n + i * E, E)


@sp.hook
def on_events(tab, n_events, _):
    v = sp.prefetch_view(tab)
    n, cur, _, _, _ = offsets(v)
    for i in range(n_events):
        kind, _slot, arg = sp.event_at(v, i)
        if kind == sp.EV_PASS:
            if sp.pass_starts_sequence(v, arg) and v.state_i[HAS_CURRENT] == 1:
                _request_ends(v)
            _pass_starts(v)
        elif kind == sp.EV_LAYER:
            first, last = sp.event_experts(v, arg)
            for j in range(first, last):
                v.state_f[cur + v.ev_obj[j]] += v.ev_count[j]  # objects are layer * E + expert
            v.state_i[HAS_CURRENT] = 1
    return 0


@sp.njit_policy
def match(v):
    """The collection entry most like the request (its index; -1 with an empty collection)."""
    n, cur, coll, cos, known = offsets(v)
    f, E, L, l = v.state_f, v.num_experts, v.num_layers, v.layer
    filled = v.state_i[N_FILLED]
    if filled == 0:
        return -1
    ahead = 0
    for i in range(l + 1, L):
        ahead += f[known + i] > 0
    best, best_d = 0, np.inf
    for c in range(filled):
        d = 0.0
        if ahead > 0:
            for i in range(l + 1, L):
                if f[known + i] > 0:
                    d += 1.0 - f[cos + c * L + i]
        else:
            for i in range(0, l + 1):
                d += 1.0 - _cosine(f, cur + i * E, f, coll + c * n + i * E, E)
        if d < best_d:
            best, best_d = c, d
    return best


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    L, E, l = v.num_layers, v.num_experts, v.layer
    c = match(v)
    v.state_i[MATCHED] = c
    if c < 0 or l + 1 >= L:
        return 0
    v.state_i[ACCESS + c] += 1
    n, _, coll, _, _ = offsets(v)
    scores = np.empty((L - l - 1) * E)
    objs = np.empty((L - l - 1) * E, np.int64)
    m = 0
    for i in range(l + 1, L):
        decay = 1.0 - (i - l) / (L + 1)
        for x in range(E):
            count = v.state_f[coll + c * n + i * E + x]
            if count > 0:
                scores[m] = -count * decay
                objs[m] = i * E + x
                m += 1
    order = np.argsort(scores[:m], kind="mergesort")
    for k in range(m):
        v.proposals[k] = objs[order[k]]
    return m


class MoEInfinityPrefetch(Prefetcher):
    name = "moe-infinity"
    events = ("pass", "layer")

    def __init__(self, capacity: int = 120):
        if not 1 <= capacity <= 100_000:
            raise SpecMDError(f"moe-infinity capacity (EAMs kept) must be in [1, 100000], got {capacity!r}")
        self.capacity = int(capacity)
        self.propose, self.on_events = propose, on_events
        if self.capacity != 120:
            self.name = f"moe-infinity:capacity={self.capacity}"

    def state(self, capacity, num_layers, num_experts, num_scopes):
        n = num_layers * num_experts
        return ACCESS + self.capacity, n + self.capacity * n + self.capacity * num_layers + num_layers

    def setup(self, state_i, state_f):
        state_i[CAPACITY] = self.capacity
        state_i[MATCHED] = -1
