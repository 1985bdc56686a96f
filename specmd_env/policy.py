"""Writing a policy: the named view of the cache, the hook decorator, and helpers.

An eviction policy (or a prefetcher) is a few compiled *hooks*, each ``int64 hook(int64 tab, int64 a,
int64 b)``, where ``tab`` is the replay's address: ``v = cache_view(tab)`` gives the cache state by name.

* ``victim(tab, lo, hi) -> slot``: the slot to evict among the candidates of ``[lo, hi)`` (the scope
  of the layer that needs room), or -1 to *bypass* (do not cache the incoming expert). Called only when
  the scope is full and at least one candidate exists.
* ``on_events(tab, n, 0) -> 0`` (optional): the ``n`` latest events of the kinds the policy lists, in
  order; ``kind, slot, obj = event_at(v, i)``. Kinds: ``"hit"`` (a layer used the expert in ``slot``),
  ``"load"`` (a demand miss put ``obj`` in ``slot`` and used it), ``"prefetch"`` (a prefetch put ``obj``
  in ``slot``), ``"hint"`` (the prefetcher named the resident ``obj``), ``"evict"`` (``obj`` left
  ``slot``), ``"miss"`` (``obj`` missed; slot -1), ``"pass"`` (obj = the new pass id), ``"layer"`` (obj =
  the event index), ``"init"`` (once, first). Events are delivered in batches before the policy is next
  consulted, so use the logged ``obj``, not the slot's current occupant. The view's ``state_i`` /
  ``state_f`` are the policy's own arrays (sizes it declares), zero at start.

Decorate each hook with :func:`hook` (``numba.cfunc`` with that signature, cached on disk) at module
level. Hooks run inside the kernel at the speed of built-in code; they must not raise (numba cannot
propagate exceptions out of a C callback): return a wrong slot and the replay stops with a clear error.
docs/POLICIES.md walks through writing one.

The view's fields (per slot ``s`` unless noted; ticks are a global event counter, unique):

====================  =========================================================================
``slot_object[s]``    the expert object held (layer * E + expert), -1 if empty
``slot_layer[s]``     its layer; ``slot_expert[s]``: its expert id within the layer
``last_use[s]``       tick of its last use by a layer (0: prefetched, never used)
``last_touch[s]``     tick of its last touch (use, insertion, or prefetch hint)
``inserted[s]``       tick of its insertion
``uses[s]``           uses since it was inserted
``prefetched[s]``     1 if it was prefetched and has not been used yet
``touch_pass[s]``     id of the forward pass of its last touch; ``bits[s]``: precision of its copy (16 = full)
``ready[s]``          when its transfer arrives (s); ``busy_until[s]``: pinned until (s)
``total_uses[o]``     per object: accesses over the whole history (hits and misses, cached or not)
``last_used[o]``      per object: tick of its last access (0 if never)
``resident_slot[o]``  per object: its slot, or -1
``now``               the decision time (s); a candidate must be unpinned and arrived by then
``layer``             the layer computing; ``pass_id``: the forward pass; ``event``: the layer event
``incoming``          the object that needs a slot; ``decision``: DEMAND or PREFETCH
``state_i/state_f``   the policy's own int64 / float64 arrays
====================  =========================================================================

Functions of the view: :func:`is_candidate`, :func:`layer_ahead`, :func:`next_turn`, :func:`spec_score`,
:func:`next_use` (oracles only), :func:`rand_below`, :func:`oldest` (the kernel's orders), and the
linked-list helpers (:func:`list_push`, :func:`list_to_tail`, :func:`list_remove`,
:func:`list_first_candidate`, ...) for policies that keep their own orders in ``state_i``.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import cfunc, njit, types

from specmd_env.kernel import layout as _L
from specmd_env.kernel.future import next_use as _next_use
from specmd_env.kernel.loop import prefetch_base as _prefetch_base
from specmd_env.kernel.slots import candidate as _candidate
from specmd_env.kernel.slots import oldest_candidate as _oldest_candidate
from specmd_env.kernel.slots import rand_below as _rand_below
from specmd_env.kernel.slots import slot_list_to_tail, slot_list_unlink
from specmd_env.kernel.native import array2d_at, array_at
from specmd_env.kernel.state import arena

HOOK_SIGNATURE = types.int64(types.int64, types.int64, types.int64)
DEMAND, PREFETCH = _L.DEMAND, _L.PREFETCH
BY_USE, BY_TOUCH, BY_INSERT = _L.ORDER_USE, _L.ORDER_TOUCH, _L.ORDER_INSERT
NEVER = _L.NEVER
EVENTS = _L.EVENT_NAMES
EV_INIT, EV_PASS, EV_LAYER, EV_HIT, EV_LOAD = _L.EV_INIT, _L.EV_PASS, _L.EV_LAYER, _L.EV_HIT, _L.EV_LOAD
EV_PREFETCH, EV_HINT, EV_EVICT, EV_MISS = _L.EV_PREFETCH, _L.EV_HINT, _L.EV_EVICT, _L.EV_MISS


def hook(fn):
    """Compile ``fn(tab, a, b) -> int`` as a policy hook (a C callback, cached beside its module)."""
    return cfunc(HOOK_SIGNATURE, cache=True)(fn)


def njit_policy(fn):
    """Compile a helper that hooks call (numba, inlined into them, cached beside its module). Use it for
    every function that takes the view: a view is a large record, and a call that is not inlined copies
    it (a key function called per slot would then cost ~100 ns instead of a few)."""
    return njit(cache=True, inline="always")(fn)


View = namedtuple("View", [
    "capacity", "num_layers", "num_experts", "num_scopes",
    "now", "layer", "pass_id", "event", "tick", "incoming", "incoming_layer", "decision", "position", "lookahead",
    "slot_object", "slot_layer", "slot_expert", "last_use", "last_touch", "inserted", "uses", "prefetched",
    "touch_pass", "ready", "busy_until", "total_uses", "last_used", "resident_slot",
    "state_i", "state_f", "other_i", "other_f", "proposals", "scope_lo", "scope_hi", "log", "bits",
    # for the functions below
    "cfg_i", "ist", "slot_i", "slot_f", "obj_i", "lists", "occ_ptr", "occ_pos", "spec", "ev_ptr", "ev_obj",
    "ev_count", "ev_pass", "mass", "pass_kind", "progress"])


@njit(cache=True, inline="always")
def _view(tab, h_state_i, h_state_i_len, h_state_f, h_state_f_len, h_other_i, h_other_i_len, h_other_f,
          h_other_f_len):
    t = array_at(tab, 2 * _L.N_ARGS, np.int64)
    a_si, a_sf = t[_L.A_SI], t[_L.A_SF]
    si = array_at(a_si, t[_L.N_ARGS + _L.A_SI], np.int64)
    C, n_obj, S = si[_L.H_CAP], si[_L.H_OBJS], si[_L.H_NSCOPES]
    cfg_i = array_at(a_si + 8 * si[_L.H_CFG_I], _L.N_CFG_I, np.int64)
    ist = array_at(a_si + 8 * si[_L.H_IST], _L.N_IST, np.int64)
    fst = array_at(a_sf + 8 * si[_L.H_FST], _L.N_FST, np.float64)
    slot_i = array2d_at(a_si + 8 * si[_L.H_SLOT_I], _L.N_SLOT_I, C, np.int64)
    slot_f = array2d_at(a_sf + 8 * si[_L.H_SLOT_F], _L.N_SLOT_F, C, np.float64)
    obj_i = array2d_at(a_si + 8 * si[_L.H_OBJ_I], _L.N_OBJ_I, n_obj, np.int64)
    scope = array2d_at(a_si + 8 * si[_L.H_SCOPE], _L.N_SCOPE, S, np.int64)
    work = array_at(a_si + 8 * si[_L.H_WORK], si[_L.H_WORK_LEN], np.int64)
    L, E = cfg_i[_L.C_LAYERS], cfg_i[_L.C_EXPERTS]
    e = ist[_L.I_EVENT]
    pending = ist[_L.I_PENDING_OBJ]
    pf_base = 2 * (E + 1)
    return View(
        C, L, E, S,
        fst[_L.S_DECISION], e % L, ist[_L.I_PASS], e, ist[_L.I_TICK], pending, pending // E, ist[_L.I_PENDING],
        ist[_L.I_POSITION], cfg_i[_L.C_LOOKAHEAD],
        slot_i[_L.SL_OBJ], slot_i[_L.SL_LAYER], slot_i[_L.SL_EXPERT], slot_i[_L.SL_USE], slot_i[_L.SL_TOUCH],
        slot_i[_L.SL_INSERT], slot_i[_L.SL_COUNT], slot_i[_L.SL_PREFETCHED], slot_i[_L.SL_TOUCH_PASS],
        slot_f[_L.SL_READY], slot_f[_L.SL_FREE_AT], obj_i[_L.OB_USES], obj_i[_L.OB_LAST_USE], obj_i[_L.OB_SLOT],
        array_at(a_si + 8 * si[h_state_i], si[h_state_i_len], np.int64),
        array_at(a_sf + 8 * si[h_state_f], si[h_state_f_len], np.float64),
        array_at(a_si + 8 * si[h_other_i], si[h_other_i_len], np.int64),
        array_at(a_sf + 8 * si[h_other_f], si[h_other_f_len], np.float64),
        work[pf_base:], scope[_L.SC_LO], scope[_L.SC_HI], array_at(a_si + 8 * si[_L.H_LOG], si[_L.H_LOG_LEN], np.int64),
        slot_i[_L.SL_BITS], cfg_i, ist, slot_i, slot_f, obj_i, array2d_at(a_si + 8 * si[_L.H_LISTS], _L.N_LISTS, S, np.int64),
        arena(tab, _L.A_OCC_PTR, np.int64), arena(tab, _L.A_OCC_POS, np.int64), arena(tab, _L.A_SPEC, np.float32),
        arena(tab, _L.A_EV_PTR, np.int64), arena(tab, _L.A_EV_OBJ, np.int32), arena(tab, _L.A_EV_COUNT, np.int32),
        arena(tab, _L.A_EV_PASS, np.int32), arena(tab, _L.A_MASS, np.float32), arena(tab, _L.A_PASS_KIND, np.int8),
        arena(tab, _L.A_PROGRESS, np.float64))


@njit(cache=True, inline="always")
def cache_view(tab):
    """The cache as the eviction policy sees it (``state_i`` / ``state_f``: the policy's own;
    ``other_i`` / ``other_f``: the prefetcher's, read only)."""
    return _view(tab, _L.H_POL_I, _L.H_POL_I_LEN, _L.H_POL_F, _L.H_POL_F_LEN, _L.H_PF_I, _L.H_PF_I_LEN, _L.H_PF_F,
                 _L.H_PF_F_LEN)


@njit(cache=True, inline="always")
def prefetch_view(tab):
    """The cache as the prefetcher sees it (``state_i`` / ``state_f``: the prefetcher's own;
    ``proposals``: where ``propose`` writes the objects to fetch, best first; ``other_i`` / ``other_f``:
    the eviction policy's state, read only)."""
    return _view(tab, _L.H_PF_I, _L.H_PF_I_LEN, _L.H_PF_F, _L.H_PF_F_LEN, _L.H_POL_I, _L.H_POL_I_LEN, _L.H_POL_F,
                 _L.H_POL_F_LEN)


@njit(cache=True, inline="always")
def event_at(v, i):
    """The i-th delivered event: (kind, slot, obj)."""
    b = _L.LOG_WIDTH * i
    return v.log[b], v.log[b + 1], v.log[b + 2]


@njit(cache=True, inline="always")
def layer_of_object(v, obj):
    return obj // v.num_experts


@njit(cache=True, inline="always")
def is_decode(v):
    """The pass computing now is a decode step (else a prefill)."""
    return v.pass_kind[v.event // v.num_layers] == 1


@njit(cache=True, inline="always")
def pass_is_decode(v, pass_id):
    """Whether forward pass ``pass_id`` (of the current chunk, e.g. from a logged "pass" event) decodes."""
    return v.pass_kind[pass_id - v.ev_pass[0]] == 1


@njit(cache=True, inline="always")
def pass_starts_sequence(v, pass_id):
    """Whether forward pass ``pass_id`` (of the current chunk) starts a sequence: a prefill, or the first
    pass of a batch group (a decode-only request has no prefill: its first decode step starts it)."""
    return not pass_is_decode(v, pass_id) or v.progress[pass_id - v.ev_pass[0]] == 0


@njit(cache=True, inline="always")
def passes_into_request(v):
    """Forward passes its batch group ran before the pass computing now (0 in a prefill of batch size 1:
    with one request at a time, the index of the token being decoded, counting the prompt as one)."""
    return v.progress[v.event // v.num_layers]


@njit(cache=True, inline="always")
def event_experts(v, event):
    """(first, last): the accesses of a layer event of the current chunk, ``v.ev_obj[first:last]`` the
    objects and ``v.ev_count`` / ``v.mass`` their tokens and gate mass. ORACLE for events after now."""
    return v.ev_ptr[event], v.ev_ptr[event + 1]


@njit(cache=True, inline="always")
def predicted_scores(v, target_layer):
    """The speculative scores for ``target_layer`` of the pass computing now, as the prefetcher sees
    them at this layer's router (offset into ``v.spec``; -1 if the trace has none or there is no such
    layer). Scores for layer l + d come from layer l + d - 1's recording: for d > 1 optimistic."""
    if len(v.spec) <= 1 or not 0 < target_layer < v.num_layers:
        return -1
    p = v.event // v.num_layers
    return (p * (v.num_layers - 1) + target_layer - 1) * v.num_experts


# -- what a policy may ask about a slot ----------------------------------------------------------------------
@njit(cache=True, inline="always")
def is_candidate(v, s):
    """Slot ``s`` may be evicted now (occupied, not pinned by the layer computing, not in flight)."""
    return _candidate(v.cfg_i, v.slot_i, v.slot_f, s, v.now)


@njit(cache=True, inline="always")
def layer_ahead(v, s):
    """How far ahead of the layer computing the slot's layer is in the sweep: (its layer - layer) mod L."""
    d = v.slot_layer[s] - v.layer
    return d + v.num_layers if d < 0 else d


@njit(cache=True, inline="always")
def next_turn(v, s):
    """Layers until the slot's layer runs again: 1 for the next layer ... L for the layer computing
    now (its turn in this pass is taken: it next runs in the next pass)."""
    d = layer_ahead(v, s)
    return v.num_layers if d == 0 else d


@njit(cache=True, inline="always")
def spec_score(v, s):
    """The slot expert's speculative (predicted router) score for this pass, if its layer is the one
    the predictor looks at now (layer + lookahead) and the trace has scores; else 0."""
    target = v.layer + v.lookahead
    if len(v.spec) <= 1 or target >= v.num_layers or v.slot_layer[s] != target:
        return 0.0
    p = v.event // v.num_layers
    return v.spec[(p * (v.num_layers - 1) + target - 1) * v.num_experts + v.slot_expert[s]]


@njit(cache=True, inline="always")
def next_use(v, s):
    """ORACLE: the access position of the slot expert's next use after now (NEVER if none in view).
    Only for policies declared ``is_oracle`` (the kernel builds the index only for them)."""
    return _next_use(v.obj_i, v.occ_ptr, v.occ_pos, v.slot_object[s], v.position)


@njit(cache=True, inline="always")
def next_use_of(v, obj):
    """ORACLE: :func:`next_use` of any object (e.g. the incoming one)."""
    return _next_use(v.obj_i, v.occ_ptr, v.occ_pos, obj, v.position)


@njit(cache=True, inline="always")
def rand_below(v, n):
    """A uniform integer in [0, n) from the replay's own seeded generator."""
    return _rand_below(v.ist, n)


@njit(cache=True, inline="always")
def scope_of(v, layer):
    """The scope (0 for one shared cache, the layer for per-layer caches) a layer's experts live in."""
    return 0 if v.num_scopes == 1 else layer


@njit(cache=True, inline="always")
def decision_scope(v):
    """The scope of the pending decision (the incoming expert's)."""
    return scope_of(v, v.incoming_layer)


@njit(cache=True, inline="always")
def oldest(v, order):
    """The first candidate from the oldest end of one of the kernel's own orders (BY_USE: last use, an
    unused prefetch counting as oldest; BY_TOUCH: last use, insertion or hint; BY_INSERT: insertion) in
    the decision's scope; -1 if none. O(1) when the oldest is a candidate. Needs ``needs_orders=True``."""
    return _oldest_candidate(v.cfg_i, v.slot_i, v.slot_f, v.lists, order, decision_scope(v), v.now)


@njit(inline="always")  # not cached: specialised on ``accept`` and compiled into the calling hook
def oldest_where(v, order, accept):
    """The first candidate from the oldest end of a kernel order for which ``accept(v, s)`` holds, else
    the first candidate; -1 if none. Needs ``needs_orders=True``."""
    sc = decision_scope(v)
    nxt = _L.SL_USE_NEXT if order == BY_USE else (_L.SL_TOUCH_NEXT if order == BY_TOUCH else _L.SL_INS_NEXT)
    first = -1
    s = v.lists[order, sc]
    while s >= 0:
        if is_candidate(v, s):
            if accept(v, s):
                return s
            if first < 0:
                first = s
        s = v.slot_i[nxt, s]
    return first


# -- linked slot lists in the policy's own state_i ------------------------------------------------------------
# A list set at state_i[base:] holds `groups` doubly linked lists of slots (e.g. one per scope, or one per
# layer): [prev: capacity][next: capacity][head: groups][tail: groups]. A slot is in at most one list.
def list_size(capacity: int, groups: int) -> int:
    """int64 items a list set takes."""
    return 2 * capacity + 2 * groups


@njit(cache=True, inline="always")
def _fields(v, base, groups, group):
    C = v.capacity
    return base, base + C, base + 2 * C + group, base + 2 * C + groups + group


@njit(cache=True, inline="always")
def list_clear(v, base, groups):
    """Empty every list of the set (call it on the "init" event)."""
    for g in range(groups):
        v.state_i[base + 2 * v.capacity + g] = -1
        v.state_i[base + 2 * v.capacity + groups + g] = -1


@njit(cache=True, inline="always")
def list_push(v, base, groups, group, s, at_head=False):
    """Put slot ``s`` (in no list) at the tail (newest end) of list ``group``, or at its head."""
    prev, nxt, head, tail = _fields(v, base, groups, group)
    a = v.state_i
    if a[head] < 0:
        a[prev + s] = -1
        a[nxt + s] = -1
        a[head] = s
        a[tail] = s
    elif at_head:
        a[prev + s] = -1
        a[nxt + s] = a[head]
        a[prev + a[head]] = s
        a[head] = s
    else:
        a[nxt + s] = -1
        a[prev + s] = a[tail]
        a[nxt + a[tail]] = s
        a[tail] = s


@njit(cache=True, inline="always")
def list_remove(v, base, groups, group, s):
    """Take slot ``s`` out of list ``group``."""
    prev, nxt, head, tail = _fields(v, base, groups, group)
    slot_list_unlink(v.state_i, prev, nxt, head, tail, s)


@njit(cache=True, inline="always")
def list_to_tail(v, base, groups, group, s):
    """Slot ``s`` (in list ``group``) becomes its newest."""
    prev, nxt, head, tail = _fields(v, base, groups, group)
    slot_list_to_tail(v.state_i, prev, nxt, head, tail, s)


@njit(cache=True, inline="always")
def list_first_candidate(v, base, groups, group):
    """The first candidate from the head (oldest end) of list ``group``; -1 if none."""
    nxt = base + v.capacity
    s = v.state_i[base + 2 * v.capacity + group]
    while s >= 0:
        if is_candidate(v, s):
            return s
        s = v.state_i[nxt + s]
    return -1


@njit(inline="always")  # not cached: it is specialised on ``key`` and compiled into the calling hook
def lowest(v, lo, hi, key):
    """The candidate of [lo, hi) with the lowest ``key(v, s)`` (a numba function); ties go to the least
    recently used, then the lower slot. -1 if none. One scan: O(slots) per eviction."""
    best, best_key, best_use = -1, np.inf, NEVER
    for s in range(lo, hi):
        if not is_candidate(v, s):
            continue
        kv = key(v, s)
        if kv < best_key or (kv == best_key and v.last_use[s] < best_use):
            best, best_key, best_use = s, kv, v.last_use[s]
    return best


@njit(cache=True, inline="always")
def best_scored(v, base, target_layer, max_count, mass, at=0):
    """Write to ``proposals[at:]`` the experts of ``target_layer`` with the highest scores ``v.spec[base:
    base + E]``, best first (ties to the lower id), until ``max_count`` (-1: no cap) are taken or they
    cover ``mass`` (the first one always goes); return how many. Repeated selection: cheap for the few."""
    E = v.num_experts
    limit = E if max_count < 0 else min(max_count, E)
    n, covered, last_score, last_x = 0, 0.0, np.inf, -1
    while n < limit:
        best = -1
        for x in range(E):
            score = v.spec[base + x]
            after_last = score < last_score or (score == last_score and x > last_x)
            if after_last and (best < 0 or score > v.spec[base + best]):
                best = x
        if best < 0:
            break
        v.proposals[at + n] = target_layer * E + best
        n += 1
        last_score, last_x = v.spec[base + best], best
        covered += last_score
        if covered >= mass:
            break
    return n


def proposal_capacity(num_layers: int, num_experts: int) -> int:
    """How many objects a prefetcher's ``propose`` may write (every expert of every layer)."""
    return num_layers * num_experts


def work_size(num_layers: int, num_experts: int) -> int:
    """The kernel's work array: this event's misses and late hits, then the prefetch proposals."""
    return _prefetch_base(num_experts) + proposal_capacity(num_layers, num_experts)


__all__ = ["njit_policy", "BY_INSERT", "BY_TOUCH", "BY_USE", "DEMAND", "EVENTS", "HOOK_SIGNATURE", "NEVER", "PREFETCH", "View",
           "hook", "is_candidate", "layer_ahead", "list_clear", "list_first_candidate", "list_push", "list_remove",
           "list_size", "list_to_tail", "next_turn", "next_use", "next_use_of", "oldest", "prefetch_view",
           "best_scored", "decision_scope", "event_at", "event_experts", "is_decode", "pass_is_decode", "pass_starts_sequence", "passes_into_request", "predicted_scores", "layer_of_object", "lowest", "oldest_where", "rand_below", "scope_of", "spec_score", "cache_view"]
