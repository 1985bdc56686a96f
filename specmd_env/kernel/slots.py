"""Cache-slot bookkeeping, compiled: what every policy may read, kept up to date by the kernel alone.

Per slot: the expert it holds, its layer, insertion / last-use / last-touch ticks (a *touch* is a use,
an insertion or a prefetch hint), uses while resident, the prefetched-and-unused flag, the pass of its
last touch, arrival and unpin times. Per expert object: uses over the whole history, the tick of its
last use, the pass it was last evicted in. Optionally (``cfg_i[C_ORDERS]``: policies that read them,
and the environment's observation) three doubly linked slot orders per scope -- by last use, last
touch, insertion -- so that "the oldest candidate in that order" is found from the head in O(1).
:func:`slot_list_unlink` / :func:`slot_list_to_tail` are the same list operations on any int64
region, for policies that keep orders of their own.

Ticks are unique, so every order is total. Slots of a scope fill in order and an evicted slot is refilled
at once, so the occupied slots are always a prefix of the scope. Helpers take the arrays they touch
(not the whole state): that keeps the compiled kernel small and quick to build.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from specmd_env.kernel.hooks import policy_event
from specmd_env.kernel.layout import (
    C_EXPERTS, C_NSCOPES, C_ORDERS, C_PER_ACCESS, C_SHIFT, EV_EVICT, EV_HINT, EV_PREFETCH, INF, KEEP_INSERT, KEEP_TOUCH,
    KEEP_USE,
    I_PASS, I_RNG, I_TICK, L_INS_HEAD, L_TOUCH_HEAD, L_USE_HEAD, M_CAPACITY, M_COLLISION, M_COMPULSORY,
    M_EVICTIONS, M_MISSES, M_PF_WASTED, OB_EVICT_PASS, OB_LAST_USE, OB_SEEN, OB_SLOT, OB_USES, SC_HI, SC_LO,
    SL_BITS, SL_COUNT, SL_EXPERT, SL_FREE_AT, SL_INSERT, SL_INS_NEXT, SL_INS_PREV, SL_LAYER, SL_OBJ,
    SL_PREFETCHED, SL_READY, SL_TOUCH, SL_TOUCH_NEXT, SL_TOUCH_PASS, SL_TOUCH_PREV, SL_USE, SL_USE_NEXT,
    SL_USE_PREV)


# -- scopes -------------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def scope_of_layer(cfg_i, layer):
    return 0 if cfg_i[C_NSCOPES] == 1 else layer


@njit(cache=True, inline="always")
def scope_range(cfg_i, scope, layer):
    """Slots a layer may use: all of them (one shared cache) or its own share."""
    sc = scope_of_layer(cfg_i, layer)
    return scope[SC_LO, sc], scope[SC_HI, sc]


@njit(cache=True, inline="always")
def layer_of(cfg_i, obj):
    """An object's layer (objects are layer * E + expert; a shift when E is a power of two)."""
    shift = cfg_i[C_SHIFT]
    return obj >> shift if shift >= 0 else obj // cfg_i[C_EXPERTS]


# -- candidates ----------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def candidate(cfg_i, slot_i, slot_f, s, t):
    """Slot ``s`` may be evicted at time ``t``: it holds an expert that is neither pinned by the layer
    computing nor in flight then (in per-access mode: whenever it holds one)."""
    if slot_i[SL_OBJ, s] < 0:
        return False
    if cfg_i[C_PER_ACCESS] == 1:
        return True
    return slot_f[SL_FREE_AT, s] <= t and slot_f[SL_READY, s] <= t


@njit(cache=True, inline="always")
def any_candidate(cfg_i, slot_i, slot_f, lo, hi, t):
    for s in range(lo, hi):
        if candidate(cfg_i, slot_i, slot_f, s, t):
            return True
    return False


@njit(cache=True, inline="always")
def earliest_free(slot_i, slot_f, lo, hi):
    """Streaming: when no slot may be evicted now, the time the first one may."""
    t = INF
    for s in range(lo, hi):
        if slot_i[SL_OBJ, s] >= 0:
            free = max(slot_f[SL_FREE_AT, s], slot_f[SL_READY, s])
            if free < t:
                t = free
    return t


@njit(cache=True, inline="always")
def free_slot(slot_i, lo, hi):
    """An empty slot of the scope, or -1 (occupied slots are a prefix: a full scope is one check)."""
    if slot_i[SL_OBJ, hi - 1] >= 0:
        return -1
    for s in range(lo, hi):
        if slot_i[SL_OBJ, s] < 0:
            return s
    return -1


# -- linked slot lists on a flat int64 region (policies' own orders) --------------------------------------------
@njit(cache=True, inline="always")
def slot_list_unlink(a, prev, nxt, head, tail, s):
    """Take ``s`` out of the list whose prev/next arrays start at offsets ``prev`` / ``nxt`` of ``a`` and
    whose head and tail sit at ``a[head]`` / ``a[tail]``."""
    p, n = a[prev + s], a[nxt + s]
    if p >= 0:
        a[nxt + p] = n
    else:
        a[head] = n
    if n >= 0:
        a[prev + n] = p
    else:
        a[tail] = p


@njit(cache=True, inline="always")
def slot_list_to_tail(a, prev, nxt, head, tail, s):
    """Move ``s`` (in the list) to its tail (newest end)."""
    if a[tail] == s:
        return
    slot_list_unlink(a, prev, nxt, head, tail, s)
    t = a[tail]
    a[nxt + t] = s
    a[prev + s] = t
    a[nxt + s] = -1
    a[tail] = s


# -- the kernel's own orders (kept only when cfg_i[C_ORDERS]) ------------------------------------------------------
@njit(cache=True, inline="always")
def _unlink(slot_i, lists, prev_row, next_row, head_row, sc, s):
    p, n = slot_i[prev_row, s], slot_i[next_row, s]
    if p >= 0:
        slot_i[next_row, p] = n
    else:
        lists[head_row, sc] = n
    if n >= 0:
        slot_i[prev_row, n] = p
    else:
        lists[head_row + 1, sc] = p


@njit(cache=True, inline="always")
def _to_tail(slot_i, lists, prev_row, next_row, head_row, sc, s):
    if lists[head_row + 1, sc] == s:
        return
    _unlink(slot_i, lists, prev_row, next_row, head_row, sc, s)
    t = lists[head_row + 1, sc]
    slot_i[next_row, t] = s
    slot_i[prev_row, s], slot_i[next_row, s] = t, -1
    lists[head_row + 1, sc] = s


@njit(cache=True, inline="always")
def _to_head(slot_i, lists, prev_row, next_row, head_row, sc, s):
    if lists[head_row, sc] == s:
        return
    _unlink(slot_i, lists, prev_row, next_row, head_row, sc, s)
    h = lists[head_row, sc]
    slot_i[prev_row, h] = s
    slot_i[prev_row, s], slot_i[next_row, s] = -1, h
    lists[head_row, sc] = s


@njit(cache=True)
def init_orders(cfg_i, slot_i, lists, scope):
    """Link every scope's slots in slot order in all three orders (empty slots are never candidates)."""
    for sc in range(scope.shape[1]):
        lo, hi = scope[SC_LO, sc], scope[SC_HI, sc]
        for prev_row, head_row in ((SL_USE_PREV, L_USE_HEAD), (SL_TOUCH_PREV, L_TOUCH_HEAD),
                                   (SL_INS_PREV, L_INS_HEAD)):
            for s in range(lo, hi):
                slot_i[prev_row, s] = s - 1 if s > lo else -1
                slot_i[prev_row + 1, s] = s + 1 if s < hi - 1 else -1
            lists[head_row, sc] = lo
            lists[head_row + 1, sc] = hi - 1


@njit(cache=True, inline="always")
def oldest_candidate(cfg_i, slot_i, slot_f, lists, head_row, sc, t):
    """The first candidate (at time ``t``) from the head of one of the kernel's orders, or -1."""
    nxt = SL_USE_NEXT if head_row == L_USE_HEAD else (SL_TOUCH_NEXT if head_row == L_TOUCH_HEAD else SL_INS_NEXT)
    s = lists[head_row, sc]
    while s >= 0:
        if candidate(cfg_i, slot_i, slot_f, s, t):
            return s
        s = slot_i[nxt, s]
    return -1


# -- state changes ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def next_tick(ist):
    ist[I_TICK] += 1
    return ist[I_TICK]


@njit(cache=True, inline="always")
def touch(cfg_i, ist, slot_i, lists, log, tab, s):
    """A touch without a use: a prefetch hint for a resident expert."""
    slot_i[SL_TOUCH, s] = next_tick(ist)
    slot_i[SL_TOUCH_PASS, s] = ist[I_PASS]
    if cfg_i[C_ORDERS] & KEEP_TOUCH:
        _to_tail(slot_i, lists, SL_TOUCH_PREV, SL_TOUCH_NEXT, L_TOUCH_HEAD, scope_of_layer(cfg_i, slot_i[SL_LAYER, s]), s)
    policy_event(cfg_i, ist, log, tab, EV_HINT, s, slot_i[SL_OBJ, s])


@njit(cache=True, inline="always")
def use(cfg_i, ist, slot_i, obj_i, lists, log, tab, s, kind):
    """A layer computes with the expert in slot ``s`` (kind EV_HIT, or EV_LOAD for a demand load)."""
    tick = next_tick(ist)
    obj = slot_i[SL_OBJ, s]
    slot_i[SL_TOUCH, s] = tick
    slot_i[SL_USE, s] = tick
    slot_i[SL_TOUCH_PASS, s] = ist[I_PASS]
    slot_i[SL_COUNT, s] += 1
    orders = cfg_i[C_ORDERS]
    if orders:
        sc = scope_of_layer(cfg_i, slot_i[SL_LAYER, s])
        if orders & KEEP_TOUCH:
            _to_tail(slot_i, lists, SL_TOUCH_PREV, SL_TOUCH_NEXT, L_TOUCH_HEAD, sc, s)
        if orders & KEEP_USE:
            _to_tail(slot_i, lists, SL_USE_PREV, SL_USE_NEXT, L_USE_HEAD, sc, s)
    policy_event(cfg_i, ist, log, tab, kind, s, obj)


@njit(cache=True, inline="always")
def insert(cfg_i, ist, slot_i, obj_i, lists, log, tab, s, obj, prefetched, bits):
    """``obj`` enters slot ``s`` (its transfer is issued now). A demand load is used at once (the
    caller calls :func:`use`); a prefetch is touched but not used: Least-Stale sees it as current, and
    in the kernel's use order it is the least recent until a layer uses it."""
    layer = layer_of(cfg_i, obj)
    slot_i[SL_OBJ, s] = obj
    slot_i[SL_LAYER, s] = layer
    slot_i[SL_EXPERT, s] = obj - layer * cfg_i[C_EXPERTS]
    slot_i[SL_COUNT, s] = 0
    slot_i[SL_PREFETCHED, s] = prefetched
    slot_i[SL_BITS, s] = bits
    slot_i[SL_INSERT, s] = next_tick(ist)
    obj_i[OB_SLOT, obj] = s
    orders = cfg_i[C_ORDERS]
    sc = scope_of_layer(cfg_i, layer)
    if orders & KEEP_INSERT:
        _to_tail(slot_i, lists, SL_INS_PREV, SL_INS_NEXT, L_INS_HEAD, sc, s)
    if prefetched == 1:
        slot_i[SL_TOUCH, s] = next_tick(ist)
        slot_i[SL_TOUCH_PASS, s] = ist[I_PASS]
        slot_i[SL_USE, s] = 0
        if orders & KEEP_TOUCH:
            _to_tail(slot_i, lists, SL_TOUCH_PREV, SL_TOUCH_NEXT, L_TOUCH_HEAD, sc, s)
        if orders & KEEP_USE:
            _to_head(slot_i, lists, SL_USE_PREV, SL_USE_NEXT, L_USE_HEAD, sc, s)
        policy_event(cfg_i, ist, log, tab, EV_PREFETCH, s, obj)


@njit(cache=True, inline="always")
def evict(cfg_i, ist, slot_i, obj_i, met, log, tab, s):
    """Empty slot ``s`` (its expert leaves the cache now)."""
    old = slot_i[SL_OBJ, s]
    if old >= 0:
        policy_event(cfg_i, ist, log, tab, EV_EVICT, s, old)
        if slot_i[SL_PREFETCHED, s] == 1:
            met[M_PF_WASTED] += 1
        obj_i[OB_SLOT, old] = -1
        obj_i[OB_EVICT_PASS, old] = ist[I_PASS]
        met[M_EVICTIONS] += 1
        slot_i[SL_OBJ, s] = -1


@njit(cache=True, inline="always")
def count_access(ist, obj_i, obj):
    """The whole-history record of an access (hit or miss, cached or not): uses and last use."""
    obj_i[OB_USES, obj] += 1
    obj_i[OB_LAST_USE, obj] = ist[I_TICK]


@njit(cache=True, inline="always")
def classify_miss(ist, obj_i, met, obj):
    """Count a miss as compulsory (first access), collision (resident earlier in this forward pass and
    evicted during it) or capacity (evicted in an earlier pass)."""
    met[M_MISSES] += 1
    if obj_i[OB_SEEN, obj] == 0:
        met[M_COMPULSORY] += 1
    elif obj_i[OB_EVICT_PASS, obj] == ist[I_PASS]:
        met[M_COLLISION] += 1
    else:
        met[M_CAPACITY] += 1


@njit(cache=True, inline="always")
def rand_below(ist, n):
    """xorshift64* in the state array, so every replay (and environment) has its own stream."""
    x = np.uint64(ist[I_RNG])
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    ist[I_RNG] = np.int64(x)
    return np.int64((x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(33)) % n
