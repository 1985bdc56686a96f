"""The compiled replay kernel: the one place where the cache's bookkeeping and clocks advance.

Everything here is numba-compiled and works on flat arrays, so built-in policies replay with no
Python work per expert access. The kernel is resumable: with ``EXTERNAL`` eviction it stops whenever
the cache must make room and returns ``NEED_VICTIM``; the caller (the Gymnasium environment, or a
Python policy) puts a slot into ``ist[I_ACTION]`` and calls :func:`advance` again. The fast path and
the environment therefore run the very same code.

Model of one layer event (see docs/ARCHITECTURE.md for the prose version):

1. The layer starts at ``t0`` = the compute clock; its attention and router take ``dense`` seconds, so
   the router's choice is known at ``t_r = t0 + dense``.
2. Event-atomic mode (default): every needed expert already resident is a hit (or a *late* miss when a
   prefetch of it is still in flight) and is pinned; hits compute first. Then each missing expert is
   loaded into a slot -- a free one, else a victim that is neither pinned nor in flight at ``t_r`` --
   and computed as soon as it arrives, then unpinned. If no slot qualifies (the layer needs more experts
   than the cache holds) the layer streams: it waits until the earliest slot frees (an expert it has
   already computed) and reuses it.
   Per-access mode: accesses are served one by one in event order with no pins and no in-flight rule,
   as a generic cache simulator would (exact cross-checks with libCacheSim).
3. Prefetch: the prefetcher's candidates for layer ``l + lookahead`` are issued at ``t_r``, after this
   layer's demand loads (one FIFO copy engine), within the copy engine's budget: the number of
   transfers that can start before the target layer's router runs. A prefetch never stalls and never
   evicts a pinned or in-flight expert; with no such slot it is skipped. Candidates already resident
   are *hinted* to the eviction policy instead (Least-Stale marks them current).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.core import cgutils
from numba.extending import intrinsic

# Eviction policy codes --------------------------------------------------------------------------------
EXTERNAL, LRU, FIFO, LFU, RANDOM, LEAST_STALE, BELADY, BELADY_BYPASS = -1, 0, 1, 2, 3, 4, 5, 6

# Kernel status ------------------------------------------------------------------------------------------
DONE, NEED_VICTIM, NEED_PREFETCH = 0, 1, 2
DEMAND, PREFETCH, PREFETCH_CHOICE = 1, 2, 3  # what a pending decision is for

# cfg_i: integer configuration ---------------------------------------------------------------------------
(C_POLICY, C_CAPACITY, C_LAYERS, C_EXPERTS, C_PER_ACCESS, C_SCOPES, C_LOOKAHEAD, C_DROP,
 C_BUDGET, C_EXT_PREFETCH, N_CFG_I) = range(11)
# cfg_f: float configuration ------------------------------------------------------------------------------
F_XFER, F_EXPERT_PER_TOKEN, F_EXPERT_MIN, N_CFG_F = range(4)

# ist: integer state --------------------------------------------------------------------------------------
(I_EVENT, I_PHASE, I_INDEX, I_TICK, I_PASS, I_PASS_TICK, I_RNG, I_PENDING, I_PENDING_OBJ, I_ACTION,
 I_NMISS, I_BUDGET, I_PF_COUNT, I_PF_READY, N_IST) = range(15)
# fst: float state ---------------------------------------------------------------------------------------
S_COMPUTE, S_COPY_FREE, S_ROUTER, S_DECISION, N_FST = range(5)
# slot_i rows: per cache slot ----------------------------------------------------------------------------
(SL_OBJ, SL_INSERT, SL_USE, SL_TOUCH, SL_COUNT, SL_PREFETCHED,
 SL_USE_PREV, SL_USE_NEXT, SL_TOUCH_PREV, SL_TOUCH_NEXT, SL_INS_PREV, SL_INS_NEXT, N_SLOT_I) = range(13)
# lists rows: per scope, head and tail of the slot lists ordered by last use, last touch, insertion.
# They make LRU, Least-Stale and FIFO victims O(1) (the first candidate from the head) while giving
# exactly the order their keys define (ticks are unique).
L_USE_HEAD, L_USE_TAIL, L_TOUCH_HEAD, L_TOUCH_TAIL, L_INS_HEAD, L_INS_TAIL, N_LISTS = range(7)
# slot_f rows ---------------------------------------------------------------------------------------------
SL_READY, SL_FREE_AT, N_SLOT_F = range(3)
# obj_i rows: per (layer, expert) object -----------------------------------------------------------------
OB_SLOT, OB_SEEN, OB_EVICT_PASS, OB_CURSOR, N_OBJ_I = range(5)
# met: metrics (all float64, counts are exact integers below 2**53) ------------------------------------
(M_ACCESSES, M_HITS, M_MISSES, M_COMPULSORY, M_CAPACITY, M_COLLISION, M_LATE, M_PF_ISSUED, M_PF_USED,
 M_PF_WASTED, M_PF_SKIPPED, M_TRANSFERS, M_BYPASSED, M_STALL, M_DROPPED, M_EVICTIONS, M_DECISIONS,
 M_TOKEN_ACCESSES, N_MET) = range(19)
METRIC_NAMES = ("accesses", "hits", "misses", "compulsory_misses", "capacity_misses", "collision_misses",
                "late_prefetch_misses", "prefetches_issued", "prefetches_used", "prefetches_wasted",
                "prefetches_skipped", "transfers", "bypassed", "stall_seconds", "dropped_experts",
                "evictions", "decisions", "token_accesses")

# phases of an event
P_START, P_MISSES, P_PREFETCH, P_END = 0, 1, 2, 3
INF = np.inf
NEVER = np.int64(1) << np.int64(62)


def new_state(capacity: int, num_objects: int, num_experts: int, num_scopes: int, seed: int):
    """Fresh (empty-cache) state arrays for the kernel."""
    ist = np.zeros(N_IST, np.int64)
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & (2**64 - 1)
    ist[I_RNG] = np.array(mixed or 1, dtype=np.uint64).view(np.int64)
    ist[I_PASS] = -1
    ist[I_ACTION] = -1
    fst = np.zeros(N_FST, np.float64)
    slot_i = np.zeros((N_SLOT_I, capacity), np.int64)
    slot_i[SL_OBJ] = -1
    slot_f = np.zeros((N_SLOT_F, capacity), np.float64)
    slot_f[SL_FREE_AT] = -INF
    obj_i = np.zeros((N_OBJ_I, num_objects), np.int64)
    obj_i[OB_SLOT] = -1
    obj_i[OB_EVICT_PASS] = -1
    met = np.zeros(N_MET, np.float64)
    work = np.zeros(2 * (num_experts + 1), np.int64)  # this event's misses, then its late prefetches
    lists = np.full((N_LISTS, num_scopes), -1, np.int64)
    share = capacity // num_scopes
    for scope in range(num_scopes):
        lo, hi = scope * share, (scope + 1) * share if num_scopes > 1 else capacity
        for prev_row, next_row, head_row in ((SL_USE_PREV, SL_USE_NEXT, L_USE_HEAD),
                                             (SL_TOUCH_PREV, SL_TOUCH_NEXT, L_TOUCH_HEAD),
                                             (SL_INS_PREV, SL_INS_NEXT, L_INS_HEAD)):
            slot_i[prev_row, lo:hi] = np.arange(lo - 1, hi - 1)
            slot_i[prev_row, lo] = -1
            slot_i[next_row, lo:hi] = np.arange(lo + 1, hi + 1)
            slot_i[next_row, hi - 1] = -1
            lists[head_row, scope] = lo
            lists[head_row + 1, scope] = hi - 1
    return ist, fst, slot_i, slot_f, obj_i, met, work, lists


@intrinsic
def _borrow(typingctx, arr):
    """The same array without its reference-counted owner, so that passing it around (every inlined
    helper binds its array arguments anew) costs no atomic reference counting -- which otherwise took
    most of the kernel's time. Valid only while the caller keeps the original alive: use it on the
    kernel's own arguments, never return or store the result."""
    def codegen(context, builder, sig, args):
        src = context.make_array(arr)(context, builder, value=args[0])
        dst = context.make_array(arr)(context, builder)
        for name in ("parent", "nitems", "itemsize", "data", "shape", "strides"):
            setattr(dst, name, getattr(src, name))
        dst.meminfo = cgutils.get_null_value(dst.meminfo.type)
        return dst._getvalue()
    return arr(arr), codegen


@njit(cache=True, inline="always")
def _rand_below(ist, n):
    """xorshift64* in the state array, so every replay (and environment) has its own stream."""
    x = np.uint64(ist[I_RNG])
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    ist[I_RNG] = np.int64(x)
    return np.int64((x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(33)) % n


@njit(cache=True, inline="always")
def scope_range(cfg_i, layer):
    """Slots a layer may use: all of them (one shared cache) or the layer's fixed share."""
    capacity = cfg_i[C_CAPACITY]
    if cfg_i[C_SCOPES] == 1:
        return 0, capacity
    share = capacity // cfg_i[C_LAYERS]
    return layer * share, (layer + 1) * share


@njit(cache=True)
def next_use(obj, position, occ_ptr, occ_pos, obj_i):
    """Position of the next access to ``obj`` after ``position`` (NEVER if none in this schedule)."""
    cursor = obj_i[OB_CURSOR, obj]
    end = occ_ptr[obj + 1]
    if cursor < occ_ptr[obj]:
        cursor = occ_ptr[obj]
    while cursor < end and occ_pos[cursor] <= position:
        cursor += 1
    obj_i[OB_CURSOR, obj] = cursor
    if cursor < end:
        return occ_pos[cursor]
    return NEVER


@njit(cache=True)
def is_candidate(cfg_i, slot_i, slot_f, slot, t_decision):
    """A slot may be evicted when it holds an expert that is neither pinned nor in flight then
    (in per-access mode, whenever it holds one)."""
    return _candidate(slot_i, slot_f, slot, cfg_i[C_PER_ACCESS] == 0, t_decision)


@njit(cache=True, inline="always")
def _candidate(slot_i, slot_f, s, timed, t_decision):
    return slot_i[SL_OBJ, s] >= 0 and (not timed or (slot_f[SL_FREE_AT, s] <= t_decision
                                                        and slot_f[SL_READY, s] <= t_decision))


@njit(cache=True, inline="always")
def _choose_victim(cfg_i, ist, slot_i, slot_f, obj_i, lists, occ_ptr, occ_pos, lo, hi, t_decision, position):
    """The policy's victim among the scope's candidates (-1 if none). LRU, FIFO and Least-Stale take
    the first candidate from the head of their ordered list; the others scan, ties to least recent use.
    (2-D indexing rather than row views: views cost reference counting in the hot path.)"""
    policy = cfg_i[C_POLICY]
    timed = cfg_i[C_PER_ACCESS] == 0
    if policy == LRU or policy == FIFO or policy == LEAST_STALE:
        if policy == FIFO:
            head_row, next_row = L_INS_HEAD, SL_INS_NEXT
        elif policy == LEAST_STALE:  # stale (touched before this pass) come first, oldest first
            head_row, next_row = L_TOUCH_HEAD, SL_TOUCH_NEXT
        else:
            head_row, next_row = L_USE_HEAD, SL_USE_NEXT
        s = lists[head_row, _scope_of(cfg_i, lo)]
        while s >= 0:
            if _candidate(slot_i, slot_f, s, timed, t_decision):
                return s
            s = slot_i[next_row, s]
        return -1
    best, best_key, best_tie, seen = -1, NEVER, NEVER, 0
    for s in range(lo, hi):
        if not _candidate(slot_i, slot_f, s, timed, t_decision):
            continue
        if policy == RANDOM:  # reservoir sampling: uniform over candidates in one scan
            seen += 1
            if _rand_below(ist, seen) == 0:
                best = s
            continue
        if policy == LFU:
            key = slot_i[SL_COUNT, s]
        else:  # BELADY, BELADY_BYPASS: farthest next use first
            key = -next_use(slot_i[SL_OBJ, s], position, occ_ptr, occ_pos, obj_i)
        tie = slot_i[SL_USE, s]
        if key < best_key or (key == best_key and tie < best_tie):
            best, best_key, best_tie = s, key, tie
    return best


@njit(cache=True, inline="always")
def _earliest_free(cfg_i, slot_i, slot_f, lo, hi):
    """Streaming: when no slot is free now, the time the first one becomes evictable."""
    t = INF
    for s in range(lo, hi):
        if slot_i[SL_OBJ, s] >= 0:
            free = max(slot_f[SL_FREE_AT, s], slot_f[SL_READY, s])
            if free < t:
                t = free
    return t


@njit(cache=True, inline="always")
def _free_slot(slot_i, lo, hi):
    """Slots fill in order and an evicted slot is refilled at once, so the occupied slots are always
    a prefix of the scope: a full scope is one check."""
    if slot_i[SL_OBJ, hi - 1] >= 0:
        return -1
    for s in range(lo, hi):
        if slot_i[SL_OBJ, s] < 0:
            return s
    return -1


@njit(cache=True, inline="always")
def _scope_of(cfg_i, slot):
    if cfg_i[C_SCOPES] == 1:
        return 0
    return slot // (cfg_i[C_CAPACITY] // cfg_i[C_LAYERS])


@njit(cache=True, inline="always")
def _unlink(slot_i, lists, prev_row, next_row, head_row, scope, s):
    """Take slot ``s`` out of one of its scope's ordered lists (rows head_row / head_row + 1 of
    ``lists`` hold the list's head and tail)."""
    p, n = slot_i[prev_row, s], slot_i[next_row, s]
    if p >= 0:
        slot_i[next_row, p] = n
    else:
        lists[head_row, scope] = n
    if n >= 0:
        slot_i[prev_row, n] = p
    else:
        lists[head_row + 1, scope] = p


@njit(cache=True, inline="always")
def _to_tail(slot_i, lists, prev_row, next_row, head_row, scope, s):
    """Move slot ``s`` to the tail (newest end) of one of its scope's ordered lists."""
    if lists[head_row + 1, scope] == s:
        return
    _unlink(slot_i, lists, prev_row, next_row, head_row, scope, s)
    t = lists[head_row + 1, scope]
    slot_i[next_row, t] = s
    slot_i[prev_row, s], slot_i[next_row, s] = t, -1
    lists[head_row + 1, scope] = s


@njit(cache=True, inline="always")
def _to_head(slot_i, lists, prev_row, next_row, head_row, scope, s):
    """Move slot ``s`` to the head (first victim) of one of its scope's ordered lists."""
    if lists[head_row, scope] == s:
        return
    _unlink(slot_i, lists, prev_row, next_row, head_row, scope, s)
    h = lists[head_row, scope]
    slot_i[prev_row, h] = s
    slot_i[prev_row, s], slot_i[next_row, s] = -1, h
    lists[head_row, scope] = s


@njit(cache=True, inline="always")
def _touch(cfg_i, ist, slot_i, lists, slot, use):
    ist[I_TICK] += 1
    scope = _scope_of(cfg_i, slot)
    slot_i[SL_TOUCH, slot] = ist[I_TICK]
    _to_tail(slot_i, lists, SL_TOUCH_PREV, SL_TOUCH_NEXT, L_TOUCH_HEAD, scope, slot)
    if use:
        slot_i[SL_USE, slot] = ist[I_TICK]
        slot_i[SL_COUNT, slot] += 1
        _to_tail(slot_i, lists, SL_USE_PREV, SL_USE_NEXT, L_USE_HEAD, scope, slot)


@njit(cache=True, inline="always")
def _evict(ist, slot_i, obj_i, met, slot):
    old = slot_i[SL_OBJ, slot]
    if old >= 0:
        if slot_i[SL_PREFETCHED, slot] == 1:
            met[M_PF_WASTED] += 1
        obj_i[OB_SLOT, old] = -1
        obj_i[OB_EVICT_PASS, old] = ist[I_PASS]
        met[M_EVICTIONS] += 1
        slot_i[SL_OBJ, slot] = -1


@njit(cache=True, inline="always")
def _load(cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, slot, obj, t_issue, prefetched):
    """Issue one transfer on the FIFO copy engine into ``slot`` (or a staging buffer if slot < 0)."""
    start = max(fst[S_COPY_FREE], t_issue)
    ready = start + cfg_f[F_XFER]
    fst[S_COPY_FREE] = ready
    met[M_TRANSFERS] += 1
    if slot >= 0:
        slot_i[SL_OBJ, slot] = obj
        slot_i[SL_COUNT, slot] = 0
        slot_i[SL_PREFETCHED, slot] = prefetched
        ist[I_TICK] += 1
        slot_i[SL_INSERT, slot] = ist[I_TICK]
        scope = _scope_of(cfg_i, slot)
        _to_tail(slot_i, lists, SL_INS_PREV, SL_INS_NEXT, L_INS_HEAD, scope, slot)
        if prefetched == 1:  # inserted, not used: current for Least-Stale, least recent for LRU
            _touch(cfg_i, ist, slot_i, lists, slot, False)
            slot_i[SL_USE, slot] = 0
            _to_head(slot_i, lists, SL_USE_PREV, SL_USE_NEXT, L_USE_HEAD, scope, slot)
        else:
            _touch(cfg_i, ist, slot_i, lists, slot, True)
        slot_f[SL_READY, slot] = ready
        slot_f[SL_FREE_AT, slot] = ready if prefetched == 1 else INF
        obj_i[OB_SLOT, obj] = slot
    return ready


@njit(cache=True, inline="always")
def _compute(cfg_f, fst, met, ready, tokens):
    """Compute one expert once it is ready; the wait is stall time. Returns its finish time."""
    start = max(fst[S_COMPUTE], ready)
    met[M_STALL] += start - fst[S_COMPUTE]
    fst[S_COMPUTE] = start + max(cfg_f[F_EXPERT_PER_TOKEN] * tokens, cfg_f[F_EXPERT_MIN])
    return fst[S_COMPUTE]


@njit(cache=True, inline="always")
def _classify_miss(ist, obj_i, met, obj):
    met[M_MISSES] += 1
    if obj_i[OB_SEEN, obj] == 0:
        met[M_COMPULSORY] += 1
    elif obj_i[OB_EVICT_PASS, obj] == ist[I_PASS]:
        met[M_COLLISION] += 1  # resident earlier in this forward pass, evicted during it
    else:
        met[M_CAPACITY] += 1


@njit(cache=True, inline="always")
def _serve_hit(cfg_i, cfg_f, fst, ist, slot_i, slot_f, obj_i, lists, met, obj, tokens):
    slot = obj_i[OB_SLOT, obj]
    met[M_ACCESSES] += 1
    met[M_TOKEN_ACCESSES] += tokens
    if slot_f[SL_READY, slot] <= fst[S_ROUTER]:
        met[M_HITS] += 1
    else:  # a prefetch still in flight: a miss that costs no new transfer
        _classify_miss(ist, obj_i, met, obj)
        met[M_LATE] += 1
    if slot_i[SL_PREFETCHED, slot] == 1:
        met[M_PF_USED] += 1
        slot_i[SL_PREFETCHED, slot] = 0
    obj_i[OB_SEEN, obj] = 1
    _touch(cfg_i, ist, slot_i, lists, slot, True)
    slot_f[SL_FREE_AT, slot] = INF
    slot_f[SL_FREE_AT, slot] = _compute(cfg_f, fst, met, slot_f[SL_READY, slot], tokens)


@njit(cache=True, inline="always")
def _ask_victim(ist, met, kind, obj):
    """Pause the replay: the caller must choose the slot ``obj`` (needed for ``kind``) goes into."""
    ist[I_PENDING] = kind
    ist[I_PENDING_OBJ] = obj
    met[M_DECISIONS] += 1
    return NEED_VICTIM


@njit(cache=True)
def advance(ev_ptr, ev_obj, ev_count, ev_pass, ev_dense, ev_est, pf_ptr, pf_obj, occ_ptr, occ_pos,
            cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, work, pass_end):
    """Run the schedule until it ends (DONE) or an external eviction decision is due (NEED_VICTIM).

    On NEED_VICTIM, ``ist[I_PENDING]`` says DEMAND or PREFETCH, ``ist[I_PENDING_OBJ]`` the expert to
    load, ``fst[S_DECISION]`` the decision time; put the chosen slot in ``ist[I_ACTION]`` and call
    again. The caller must have checked the slot with :func:`is_candidate`.

    With external prefetch (``cfg_i[C_EXT_PREFETCH]``), NEED_PREFETCH asks for the ranked objects to
    prefetch for layer l + lookahead: the caller writes them to ``work[:n]``, sets ``ist[I_PF_COUNT]``
    to n, ``ist[I_PF_READY]`` to 1 and ``ist[I_PENDING]`` to 0, and calls again.
    """
    ev_ptr, ev_obj, ev_count, ev_pass = _borrow(ev_ptr), _borrow(ev_obj), _borrow(ev_count), _borrow(ev_pass)
    ev_dense, ev_est, pf_ptr, pf_obj = _borrow(ev_dense), _borrow(ev_est), _borrow(pf_ptr), _borrow(pf_obj)
    occ_ptr, occ_pos, cfg_i, cfg_f, ist = _borrow(occ_ptr), _borrow(occ_pos), _borrow(cfg_i), _borrow(cfg_f), _borrow(ist)
    fst, slot_i, slot_f, obj_i, lists = _borrow(fst), _borrow(slot_i), _borrow(slot_f), _borrow(obj_i), _borrow(lists)
    met, work, pass_end = _borrow(met), _borrow(work), _borrow(pass_end)
    num_events = len(ev_ptr) - 1
    num_layers = cfg_i[C_LAYERS]
    external = cfg_i[C_POLICY] == EXTERNAL
    while ist[I_EVENT] < num_events:
        e = ist[I_EVENT]
        layer = e % num_layers
        lo, hi = scope_range(cfg_i, layer)
        first, last = ev_ptr[e], ev_ptr[e + 1]
        if ist[I_PHASE] == P_START:
            if ev_pass[e] != ist[I_PASS]:  # a new forward pass: everything current becomes stale
                ist[I_PASS] = ev_pass[e]
                ist[I_PASS_TICK] = ist[I_TICK]
            fst[S_COMPUTE] += ev_dense[e]
            fst[S_ROUTER] = fst[S_COMPUTE]
            n_miss = 0
            n_late = 0
            late_base = len(work) // 2
            for j in range(first, last):  # hits compute first; late prefetches once they arrive
                obj = ev_obj[j]
                slot = obj_i[OB_SLOT, obj]
                if cfg_i[C_PER_ACCESS] == 1 or slot < 0:
                    work[n_miss] = j
                    n_miss += 1
                elif slot_f[SL_READY, slot] <= fst[S_ROUTER]:
                    _serve_hit(cfg_i, cfg_f, fst, ist, slot_i, slot_f, obj_i, lists, met, obj, ev_count[j])
                else:
                    slot_f[SL_FREE_AT, slot] = INF  # pinned until it arrives and computes
                    work[late_base + n_late] = j
                    n_late += 1
            for i in range(n_late):
                j = work[late_base + i]
                _serve_hit(cfg_i, cfg_f, fst, ist, slot_i, slot_f, obj_i, lists, met, ev_obj[j], ev_count[j])
            ist[I_NMISS] = n_miss
            ist[I_INDEX] = 0
            ist[I_PHASE] = P_MISSES
        if ist[I_PHASE] == P_MISSES:
            while ist[I_INDEX] < ist[I_NMISS]:
                j = work[ist[I_INDEX]]
                obj = ev_obj[j]
                if ist[I_PENDING] == 0:
                    if obj_i[OB_SLOT, obj] >= 0:  # per-access mode: a plain hit
                        _serve_hit(cfg_i, cfg_f, fst, ist, slot_i, slot_f, obj_i, lists, met, obj, ev_count[j])
                        ist[I_INDEX] += 1
                        continue
                    met[M_ACCESSES] += 1
                    met[M_TOKEN_ACCESSES] += ev_count[j]
                    _classify_miss(ist, obj_i, met, obj)
                    obj_i[OB_SEEN, obj] = 1
                    if cfg_i[C_DROP] == 1:
                        met[M_DROPPED] += 1
                        ist[I_INDEX] += 1
                        continue
                    slot = _free_slot(slot_i, lo, hi)
                    t_decision = fst[S_ROUTER]
                    if slot < 0:
                        if cfg_i[C_PER_ACCESS] == 0 and _choose_victim_exists(cfg_i, slot_i, slot_f, lo, hi, t_decision) == 0:
                            t_decision = _earliest_free(cfg_i, slot_i, slot_f, lo, hi)  # streaming
                        fst[S_DECISION] = t_decision
                        if external:
                            return _ask_victim(ist, met, DEMAND, obj)
                        slot = _choose_victim(cfg_i, ist, slot_i, slot_f, obj_i, lists, occ_ptr, occ_pos, lo, hi,
                                              t_decision, j)
                        if cfg_i[C_POLICY] == BELADY_BYPASS and next_use(obj, j, occ_ptr, occ_pos, obj_i) >= \
                                next_use(slot_i[SL_OBJ, slot], j, occ_ptr, occ_pos, obj_i):
                            slot = -1  # bypass: serve from a staging buffer, keep the cache as it is
                            met[M_BYPASSED] += 1
                        else:
                            _evict(ist, slot_i, obj_i, met, slot)
                else:  # resuming with the caller's victim
                    slot = ist[I_ACTION]
                    t_decision = fst[S_DECISION]
                    ist[I_PENDING] = 0
                    ist[I_ACTION] = -1
                    _evict(ist, slot_i, obj_i, met, slot)
                ready = _load(cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, slot, obj, t_decision, 0)
                done = _compute(cfg_f, fst, met, ready, ev_count[j])
                if slot >= 0:
                    slot_f[SL_FREE_AT, slot] = done
                ist[I_INDEX] += 1
            ist[I_INDEX] = pf_ptr[e]
            ist[I_BUDGET] = _prefetch_budget(cfg_i, cfg_f, fst, ev_dense, ev_est, e, num_layers)
            ist[I_PHASE] = P_PREFETCH
        if ist[I_PHASE] == P_PREFETCH:
            target_layer = layer + cfg_i[C_LOOKAHEAD]
            if target_layer < num_layers:
                external_pf = cfg_i[C_EXT_PREFETCH] == 1
                if external_pf and ist[I_PF_READY] == 0:
                    ist[I_PENDING] = PREFETCH_CHOICE
                    ist[I_INDEX] = 0
                    return NEED_PREFETCH
                end = ist[I_PF_COUNT] if external_pf else pf_ptr[e + 1]
                plo, phi = scope_range(cfg_i, target_layer)
                t_issue = fst[S_ROUTER]
                while ist[I_INDEX] < end:
                    obj = work[ist[I_INDEX]] if external_pf else pf_obj[ist[I_INDEX]]
                    if ist[I_PENDING] == 0:
                        if obj_i[OB_SLOT, obj] >= 0:
                            _touch(cfg_i, ist, slot_i, lists, obj_i[OB_SLOT, obj], False)  # a hint: no use, no count
                            ist[I_INDEX] += 1
                            continue
                        if ist[I_BUDGET] <= 0:
                            met[M_PF_SKIPPED] += 1
                            ist[I_INDEX] += 1
                            continue
                        slot = _free_slot(slot_i, plo, phi)
                        if slot < 0:
                            if _choose_victim_exists(cfg_i, slot_i, slot_f, plo, phi, t_issue) == 0:
                                met[M_PF_SKIPPED] += 1
                                ist[I_INDEX] += 1
                                continue
                            fst[S_DECISION] = t_issue
                            if external:
                                return _ask_victim(ist, met, PREFETCH, obj)
                            slot = _choose_victim(cfg_i, ist, slot_i, slot_f, obj_i, lists, occ_ptr, occ_pos, plo, phi,
                                                  t_issue, last - 1)
                            _evict(ist, slot_i, obj_i, met, slot)
                    else:
                        slot = ist[I_ACTION]
                        ist[I_PENDING] = 0
                        ist[I_ACTION] = -1
                        _evict(ist, slot_i, obj_i, met, slot)
                    _load(cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, slot, obj, t_issue, 1)
                    met[M_PF_ISSUED] += 1
                    ist[I_BUDGET] -= 1
                    ist[I_INDEX] += 1
            ist[I_PF_READY] = 0
            ist[I_PHASE] = P_END
        # P_END
        if layer == num_layers - 1:
            pass_end[ev_pass[e] - ev_pass[0]] = fst[S_COMPUTE]
        ist[I_PHASE] = P_START
        ist[I_EVENT] += 1
    return DONE


@njit(cache=True, inline="always")
def _choose_victim_exists(cfg_i, slot_i, slot_f, lo, hi, t_decision):
    timed = cfg_i[C_PER_ACCESS] == 0
    for s in range(lo, hi):
        if _candidate(slot_i, slot_f, s, timed, t_decision):
            return 1
    return 0


@njit(cache=True, inline="always")
def _prefetch_budget(cfg_i, cfg_f, fst, ev_dense, ev_est, e, num_layers):
    """How many transfers may be issued for layer l+d: a fixed count, or (C_BUDGET < 0) as many as
    the copy engine can start before that layer's router is estimated to run."""
    if cfg_i[C_BUDGET] >= 0:
        return cfg_i[C_BUDGET]
    lookahead = cfg_i[C_LOOKAHEAD]
    if e % num_layers + lookahead >= num_layers:
        return 0
    t_target = fst[S_COMPUTE]
    for i in range(1, lookahead):
        t_target += ev_est[e + i]
    t_target += ev_dense[e + lookahead]
    start = max(fst[S_COPY_FREE], fst[S_ROUTER])
    if start >= t_target:
        return 0
    return np.int64(np.ceil((t_target - start) / cfg_f[F_XFER]))
