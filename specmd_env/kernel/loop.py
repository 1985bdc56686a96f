"""The compiled replay loop: one layer event after another, the one place where the clocks advance.

Model of one layer event (docs/ARCHITECTURE.md has the prose version):

1. The layer starts at ``t0`` = the compute clock (not before its forward pass may start); its
   attention and router take ``dense`` seconds, so the router's choice is known at ``t_r = t0 + dense``.
2. Event-atomic mode (default): every needed expert already resident is a hit (or a *late* miss when a
   prefetch of it is still in flight) and is pinned; hits compute first. Then each missing expert is
   loaded into a slot -- a free one, else the eviction policy's victim among the candidates (neither
   pinned nor in flight at the decision time) -- and computed as soon as it arrives, then unpinned. If no
   slot qualifies (the layer needs more experts than the cache holds) the layer streams: it waits until
   the earliest slot frees (an expert it has already computed) and reuses it. A victim of -1 means
   *bypass*: the expert is served from a staging buffer and the cache stays as it is.
   Per-access mode: accesses are served one by one in event order with no pins and no in-flight rule,
   as a generic cache simulator would (exact cross-checks with libCacheSim).
3. Prefetch: the prefetcher's candidates (for any later layer of the pass, best first) are issued at
   ``t_r``, after this layer's demand loads, on the copy engine. A candidate is issued only while the
   engine can start it before its target layer's router is estimated to run (or within a fixed count
   per layer); it never stalls and never evicts a pinned or in-flight expert (with no such slot it is
   skipped). Candidates already resident are *hinted* to the eviction policy instead.

The kernel stops and returns NEED_VICTIM when an eviction decision is external (``cfg_i[C_EXT_EVICT]``:
the Gymnasium environment, or a Python policy): the caller writes the chosen slot to ``ist[I_ACTION]``
(or -1: bypass the cache for a demand miss, skip a prefetch) and calls again. Likewise NEED_PREFETCH with ``cfg_i[C_EXT_PREFETCH]``: the caller writes expert objects
to ``work[pf_base:pf_base + n]``, sets ``ist[I_PF_COUNT] = n``, ``ist[I_PF_READY] = 1``,
``ist[I_PENDING] = 0``. Policies are called through their compiled hooks (:mod:`.hooks`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from specmd_env.kernel.engine import commit_demand, compute, plan_demand, promote, transfer_prefetch
from specmd_env.kernel.hooks import deliver_events, policy_event
from specmd_env.kernel.layout import (
    BAD_VICTIM, C_BUDGET, C_EVICT_AT, C_EXPERTS, C_EXT_EVICT, C_EXT_PREFETCH, C_LAYERS, C_LOOKAHEAD, C_LOW_BITS,
    C_MISS, C_PER_ACCESS, C_PF_FN, C_VICTIM_FN, DEMAND, DONE, EVICT_AT_START, EV_HIT, EV_LAYER, EV_LOAD,
    EV_MISS, EV_PASS, FULL_BITS, F_CASCADE_FULL, F_CASCADE_LOW, F_CPU_MIN, F_CPU_PER_TOKEN, F_XFER, F_XFER_LOW,
    INF, I_ACTION, I_BITS, I_BUDGET, I_EVENT, I_INDEX, I_NMISS, I_PASS, I_PASS_TICK, I_PENDING, I_PENDING_OBJ,
    I_PF_COUNT, I_PF_READY, I_PHASE, I_POSITION, I_TICK, MISS_CASCADE, MISS_CPU, MISS_DROP, MISS_LOWBIT,
    MISS_SUBSTITUTE, M_ACCESSES, M_BYPASSED, M_CPU_EXPERTS, M_CPU_SECONDS, M_DECISIONS, M_DROPPED, M_HITS,
    M_LATE, M_LOW_TRANSFERS, M_MASS, M_MASS_DROPPED, M_MASS_LOW, M_MASS_SUBSTITUTED, M_PF_ISSUED, M_PF_SKIPPED,
    M_PF_USED, M_STALL, M_SUBSTITUTED, M_TOKEN_ACCESSES, NEED_PREFETCH, NEED_VICTIM, NO_ACTION, OB_SEEN,
    OB_SLOT, OB_USES, PREFETCH, PREFETCH_CHOICE, P_END, P_MISSES, P_PREFETCH, P_START, SL_BITS, SL_EXPERT,
    SL_FREE_AT, SL_LAYER, SL_OBJ, SL_PREFETCHED, SL_READY, S_COMPUTE, S_COPY_FREE, S_CPU_FREE, S_DECISION,
    S_NEED, S_ROUTER)
from specmd_env.kernel.native import call_hook
from specmd_env.kernel.slots import (
    any_candidate, candidate, classify_miss, count_access, earliest_free, evict, free_slot, insert, layer_of, scope_range, touch,
    use)
from specmd_env.kernel.state import unpack
from specmd_env.kernel.tiers import host_access, in_host_by


def prefetch_base(num_experts: int) -> int:
    """Where prefetch proposals start in ``work`` (before them: this event's misses, then its late hits)."""
    return 2 * (num_experts + 1)


@njit(cache=True, inline="always")
def ask_victim(cfg_i, ist, fst, slot_i, slot_f, tab, kind, lo, hi):
    """The eviction policy's victim for the pending object (``ist[I_PENDING_OBJ]``, decision time
    ``fst[S_DECISION]``): a candidate slot of [lo, hi), -1 (bypass), or -2 if the hook answered a
    slot it may not evict (the caller reports BAD_VICTIM)."""
    deliver_events(cfg_i, ist, tab)
    ist[I_PENDING] = kind
    slot = call_hook(cfg_i[C_VICTIM_FN], tab, lo, hi)
    ist[I_PENDING] = 0
    if slot == -1 or (lo <= slot < hi and candidate(cfg_i, slot_i, slot_f, slot, fst[S_DECISION])):
        return slot
    ist[I_ACTION] = slot
    return -2


@njit(cache=True, inline="always")
def _serve_hit(cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, log, tab, obj, tokens, mass):
    """A layer uses a resident expert (a late miss if its prefetch has not arrived by the router)."""
    slot = obj_i[OB_SLOT, obj]
    met[M_ACCESSES] += 1
    met[M_TOKEN_ACCESSES] += tokens
    met[M_MASS] += mass
    if slot_f[SL_READY, slot] <= fst[S_ROUTER]:
        met[M_HITS] += 1
    else:
        classify_miss(ist, obj_i, met, obj)
        met[M_LATE] += 1
    if slot_i[SL_PREFETCHED, slot] == 1:
        met[M_PF_USED] += 1
        slot_i[SL_PREFETCHED, slot] = 0
    if slot_i[SL_BITS, slot] < FULL_BITS:
        met[M_MASS_LOW] += mass  # served by a low-precision copy
    obj_i[OB_SEEN, obj] = 1
    use(cfg_i, ist, slot_i, obj_i, lists, log, tab, slot, EV_HIT)
    count_access(ist, obj_i, obj)
    host_access(cfg_i, ist, obj_i, obj)
    slot_f[SL_FREE_AT, slot] = INF
    slot_f[SL_FREE_AT, slot] = compute(cfg_f, fst, met, slot_f[SL_READY, slot], tokens)


@njit(cache=True, inline="always")
def mass_above(ev_ptr, mass, e, j):
    """The share of event e's gate mass held by the accesses ranked above access j (the drop cascade's
    cumulative score: HOBBIT's "unimportance" of an expert)."""
    total, above = 0.0, 0.0
    for i in range(ev_ptr[e], ev_ptr[e + 1]):
        total += mass[i]
        if mass[i] > mass[j] or (mass[i] == mass[j] and i < j):
            above += mass[i]
    return above / total if total > 0 else 0.0


@njit(cache=True, inline="always")
def substitute_for(cfg_i, slot_i, slot_f, obj_i, scope, spec, ev_pass0, e, layer, router):
    """A resident, arrived expert of ``layer`` to compute in place of a missing one: the highest
    predicted router score for this pass (the trace's speculative scores for ``layer``; most-used when
    there are none, e.g. at layer 0), or -1 if the layer has none resident."""
    L, E = cfg_i[C_LAYERS], cfg_i[C_EXPERTS]
    lo, hi = scope_range(cfg_i, scope, layer)
    base = -1
    if len(spec) > 1 and layer > 0:
        base = ((e // L) * (L - 1) + layer - 1) * E
    best, best_score = -1, -1.0
    for s in range(lo, hi):
        if slot_i[SL_OBJ, s] >= 0 and slot_i[SL_LAYER, s] == layer and slot_f[SL_READY, s] <= router:
            score = spec[base + slot_i[SL_EXPERT, s]] if base >= 0 else obj_i[OB_USES, slot_i[SL_OBJ, s]]
            if score > best_score:
                best, best_score = s, score
    return best


@njit(cache=True, inline="always")
def router_time_of(fst, ev_dense, ev_est, e, target):
    """Estimated time the router of event ``target`` (> e) runs, seen from the end of event e."""
    t = fst[S_COMPUTE]
    for i in range(e + 1, target):
        t += ev_est[i]
    return t + ev_dense[target]


@njit(cache=True, inline="always")
def prefetch_count_budget(cfg_i, cfg_f, fst, ev_dense, ev_est, e):
    """Transfers the copy engine can start before layer l + lookahead's router (the observation's
    budget feature; a fixed budget replaces it), at most one per object."""
    if cfg_i[C_BUDGET] >= 0:
        return cfg_i[C_BUDGET]
    lookahead = cfg_i[C_LOOKAHEAD]
    if e % cfg_i[C_LAYERS] + lookahead >= cfg_i[C_LAYERS]:
        return 0
    t_target = router_time_of(fst, ev_dense, ev_est, e, e + lookahead)
    start = max(fst[S_COPY_FREE], fst[S_ROUTER])
    if start >= t_target:
        return 0
    # capped at every object: with a (near) infinite link the quotient would overflow int64
    return np.int64(min(np.ceil((t_target - start) / cfg_f[F_XFER]), cfg_i[C_LAYERS] * cfg_i[C_EXPERTS]))


@njit(cache=True)
def advance(tab):
    """Replay the current chunk of the replay whose argument table is at address ``tab`` until it ends
    (DONE) or an external decision is due (NEED_VICTIM / NEED_PREFETCH); BAD_VICTIM if a policy hook
    answered a slot it may not evict (``ist[I_ACTION]`` holds it). Events are delivered on return."""
    k = unpack(tab)
    cfg_i, cfg_f, ist, fst, slot_i, slot_f = k.cfg_i, k.cfg_f, k.ist, k.fst, k.slot_i, k.slot_f
    obj_i, lists, scope, work, met, log = k.obj_i, k.lists, k.scope, k.work, k.met, k.log
    ev_ptr, ev_obj, ev_count, ev_pass, ev_dense, ev_est = k.ev_ptr, k.ev_obj, k.ev_count, k.ev_pass, k.ev_dense, k.ev_est
    mass, pass_ready, pass_end = k.mass, k.pass_ready, k.pass_end
    eng, q_i, q_f = k.eng, k.q_i, k.q_f
    status = DONE
    num_events = len(ev_ptr) - 1
    L = cfg_i[C_LAYERS]
    per_access = cfg_i[C_PER_ACCESS] == 1
    ext_evict = cfg_i[C_EXT_EVICT] == 1
    late_base = cfg_i[C_EXPERTS] + 1
    pf_base = 2 * (cfg_i[C_EXPERTS] + 1)
    while ist[I_EVENT] < num_events:
        e = ist[I_EVENT]
        layer = e % L
        lo, hi = scope_range(cfg_i, scope, layer)
        first, last = ev_ptr[e], ev_ptr[e + 1]
        if ist[I_PHASE] == P_START:
            if ev_pass[e] != ist[I_PASS]:  # a new forward pass: everything current becomes stale
                ist[I_PASS] = ev_pass[e]
                ist[I_PASS_TICK] = ist[I_TICK]
                fst[S_COMPUTE] = max(fst[S_COMPUTE], pass_ready[e // L])
                policy_event(cfg_i, ist, log, tab, EV_PASS, -1, ist[I_PASS])
            policy_event(cfg_i, ist, log, tab, EV_LAYER, -1, e)
            fst[S_COMPUTE] += ev_dense[e]
            fst[S_ROUTER] = fst[S_COMPUTE]
            n_miss = 0
            n_late = 0
            for j in range(first, last):  # hits compute first; late prefetches once they arrive
                obj = ev_obj[j]
                slot = obj_i[OB_SLOT, obj]
                if per_access or slot < 0:
                    work[n_miss] = j
                    n_miss += 1
                elif slot_f[SL_READY, slot] <= fst[S_ROUTER]:
                    _serve_hit(cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, log, tab, obj, ev_count[j],
                               mass[j])
                else:  # in flight: a demand-first engine moves a queued prefetch of it to the front
                    promote(cfg_i, cfg_f, fst, met, eng, ist, q_i, q_f, slot_f, slot, fst[S_ROUTER])
                    slot_f[SL_FREE_AT, slot] = INF  # pinned until it arrives and computes
                    work[late_base + n_late] = j
                    n_late += 1
            for i in range(n_late):
                j = work[late_base + i]
                _serve_hit(cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, log, tab, ev_obj[j], ev_count[j],
                           mass[j])
            ist[I_NMISS] = n_miss
            ist[I_INDEX] = 0
            ist[I_PHASE] = P_MISSES
        if ist[I_PHASE] == P_MISSES:
            while ist[I_INDEX] < ist[I_NMISS]:
                j = work[ist[I_INDEX]]
                obj = ev_obj[j]
                if ist[I_PENDING] == 0:
                    if obj_i[OB_SLOT, obj] >= 0:  # per-access mode: a plain hit
                        _serve_hit(cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, log, tab, obj,
                                   ev_count[j], mass[j])
                        ist[I_INDEX] += 1
                        continue
                    met[M_ACCESSES] += 1
                    met[M_TOKEN_ACCESSES] += ev_count[j]
                    met[M_MASS] += mass[j]
                    classify_miss(ist, obj_i, met, obj)
                    obj_i[OB_SEEN, obj] = 1
                    count_access(ist, obj_i, obj)
                    policy_event(cfg_i, ist, log, tab, EV_MISS, -1, obj)
                    handler = cfg_i[C_MISS]
                    bits = FULL_BITS
                    if handler == MISS_LOWBIT:
                        bits = cfg_i[C_LOW_BITS]
                    elif handler == MISS_CASCADE:
                        above = mass_above(ev_ptr, mass, e, j)
                        if above > cfg_f[F_CASCADE_LOW]:
                            handler = MISS_DROP
                        elif above > cfg_f[F_CASCADE_FULL]:
                            bits = cfg_i[C_LOW_BITS]
                    if handler == MISS_DROP:
                        met[M_DROPPED] += 1
                        met[M_MASS_DROPPED] += mass[j]
                        ist[I_INDEX] += 1
                        continue
                    if handler == MISS_SUBSTITUTE:
                        sub = substitute_for(cfg_i, slot_i, slot_f, obj_i, scope, k.spec, ev_pass[0], e, layer,
                                             fst[S_ROUTER])
                        if sub >= 0:
                            met[M_SUBSTITUTED] += 1
                            met[M_MASS_SUBSTITUTED] += mass[j]
                            use(cfg_i, ist, slot_i, obj_i, lists, log, tab, sub, EV_HIT)
                            slot_f[SL_FREE_AT, sub] = INF
                            slot_f[SL_FREE_AT, sub] = compute(cfg_f, fst, met, slot_f[SL_READY, sub], ev_count[j])
                            ist[I_INDEX] += 1
                            continue
                    if handler == MISS_CPU:
                        cpu = max(cfg_f[F_CPU_PER_TOKEN] * ev_count[j], cfg_f[F_CPU_MIN])
                        if cpu < cfg_f[F_XFER]:  # faster than fetching it (Fiddler's rule)
                            fst[S_CPU_FREE] = max(fst[S_CPU_FREE], fst[S_ROUTER]) + cpu
                            met[M_CPU_EXPERTS] += 1
                            met[M_CPU_SECONDS] += cpu
                            ist[I_INDEX] += 1
                            continue
                    ist[I_BITS] = bits
                    slot = free_slot(slot_i, lo, hi)
                    t_need = fst[S_ROUTER]  # the copy may be issued from then
                    if slot < 0:
                        t_decision = t_need
                        if cfg_i[C_EVICT_AT] == EVICT_AT_START:  # the victim is chosen when the copy starts
                            t_decision = plan_demand(cfg_i, cfg_f, ist, eng, q_i, q_f, t_need)[1]
                        if not per_access and not any_candidate(cfg_i, slot_i, slot_f, lo, hi, t_decision):
                            t_decision = earliest_free(slot_i, slot_f, lo, hi)  # streaming: wait for a slot
                            t_need = max(t_need, t_decision)
                        fst[S_DECISION] = t_decision
                        fst[S_NEED] = t_need
                        ist[I_PENDING_OBJ] = obj
                        ist[I_POSITION] = j
                        if ext_evict:
                            ist[I_PENDING] = DEMAND
                            met[M_DECISIONS] += 1
                            status = NEED_VICTIM
                            break
                        slot = ask_victim(cfg_i, ist, fst, slot_i, slot_f, tab, DEMAND, lo, hi)
                        if slot == -2:
                            status = BAD_VICTIM
                            break
                        if slot < 0:
                            met[M_BYPASSED] += 1  # served from a staging buffer
                        else:
                            evict(cfg_i, ist, slot_i, obj_i, met, log, tab, slot)
                else:  # resuming with the caller's victim (-1: bypass, serve it from a staging buffer)
                    slot = ist[I_ACTION]
                    if slot == NO_ACTION:
                        status = BAD_VICTIM
                        break
                    t_need = fst[S_NEED]
                    ist[I_PENDING] = 0
                    ist[I_ACTION] = NO_ACTION
                    if slot < 0:
                        met[M_BYPASSED] += 1
                    else:
                        evict(cfg_i, ist, slot_i, obj_i, met, log, tab, slot)
                bits = ist[I_BITS]
                host_access(cfg_i, ist, obj_i, obj)
                t_issue = in_host_by(cfg_i, cfg_f, ist, fst, met, obj_i, obj, t_need)  # an SSD read first?
                seconds = cfg_f[F_XFER]
                if bits < FULL_BITS:
                    seconds = cfg_f[F_XFER_LOW]
                    met[M_LOW_TRANSFERS] += 1
                    met[M_MASS_LOW] += mass[j]
                engine, start = plan_demand(cfg_i, cfg_f, ist, eng, q_i, q_f, t_issue)
                ready = commit_demand(cfg_i, fst, met, eng, ist, q_i, q_f, slot_i, slot_f, engine, t_issue,
                                      start, seconds)
                if slot >= 0:
                    insert(cfg_i, ist, slot_i, obj_i, lists, log, tab, slot, obj, 0, bits)
                    use(cfg_i, ist, slot_i, obj_i, lists, log, tab, slot, EV_LOAD)
                    slot_f[SL_READY, slot] = ready
                    slot_f[SL_FREE_AT, slot] = INF
                done = compute(cfg_f, fst, met, ready, ev_count[j])
                if slot >= 0:
                    slot_f[SL_FREE_AT, slot] = done
                ist[I_INDEX] += 1
            if status != DONE:
                break
            if fst[S_CPU_FREE] > fst[S_COMPUTE]:  # experts computed on the CPU: the layer waits for them
                met[M_STALL] += fst[S_CPU_FREE] - fst[S_COMPUTE]
                fst[S_COMPUTE] = fst[S_CPU_FREE]
            ist[I_INDEX] = 0
            ist[I_PF_COUNT] = 0
            ist[I_BUDGET] = prefetch_count_budget(cfg_i, cfg_f, fst, ev_dense, ev_est, e)
            ist[I_PHASE] = P_PREFETCH
        if ist[I_PHASE] == P_PREFETCH:
            external_pf = cfg_i[C_EXT_PREFETCH] == 1
            end = 0
            if external_pf or cfg_i[C_PF_FN] != 0:
                if ist[I_PF_READY] == 0:
                    if external_pf:
                        if layer + cfg_i[C_LOOKAHEAD] >= L:
                            ist[I_PF_READY] = 1  # nothing to choose: no later layer in this pass
                        else:
                            ist[I_PENDING] = PREFETCH_CHOICE
                            status = NEED_PREFETCH
                            break
                    else:
                        deliver_events(cfg_i, ist, tab)
                        ist[I_PF_COUNT] = call_hook(cfg_i[C_PF_FN], tab, e, 0)
                        ist[I_PF_READY] = 1
                end = ist[I_PF_COUNT]
            t_issue = fst[S_ROUTER]
            fixed = cfg_i[C_BUDGET] >= 0
            last_target = -1
            t_target = 0.0
            while ist[I_INDEX] < end:
                i = ist[I_INDEX]
                obj = work[pf_base + i]
                target_layer = layer_of(cfg_i, obj)
                if ist[I_PENDING] == 0:
                    slot = obj_i[OB_SLOT, obj]
                    if slot >= 0:
                        touch(cfg_i, ist, slot_i, lists, log, tab, slot)  # a hint: no use, no count
                        ist[I_INDEX] += 1
                        continue
                    target = e + target_layer - layer
                    if target_layer <= layer or target >= num_events:
                        met[M_PF_SKIPPED] += 1  # no later layer of this pass in view
                        ist[I_INDEX] += 1
                        continue
                    if fixed:
                        if ist[I_BUDGET] <= 0:
                            met[M_PF_SKIPPED] += 1
                            ist[I_INDEX] += 1
                            continue
                    else:
                        if target != last_target:
                            t_target = router_time_of(fst, ev_dense, ev_est, e, target)
                            last_target = target
                        if max(fst[S_COPY_FREE], t_issue) >= t_target:
                            met[M_PF_SKIPPED] += 1  # the engine cannot start it before that layer needs it
                            ist[I_INDEX] += 1
                            continue
                    plo, phi = scope_range(cfg_i, scope, target_layer)
                    slot = free_slot(slot_i, plo, phi)
                    if slot < 0:
                        if not any_candidate(cfg_i, slot_i, slot_f, plo, phi, t_issue):
                            met[M_PF_SKIPPED] += 1
                            ist[I_INDEX] += 1
                            continue
                        fst[S_DECISION] = t_issue
                        ist[I_PENDING_OBJ] = obj
                        ist[I_POSITION] = last - 1
                        if ext_evict:
                            ist[I_PENDING] = PREFETCH
                            met[M_DECISIONS] += 1
                            status = NEED_VICTIM
                            break
                        slot = ask_victim(cfg_i, ist, fst, slot_i, slot_f, tab, PREFETCH, plo, phi)
                        if slot == -2:
                            status = BAD_VICTIM
                            break
                        if slot < 0:
                            met[M_PF_SKIPPED] += 1  # the policy declined to make room
                            ist[I_INDEX] += 1
                            continue
                        evict(cfg_i, ist, slot_i, obj_i, met, log, tab, slot)
                else:  # resuming with the caller's victim (-1: skip this prefetch)
                    slot = ist[I_ACTION]
                    if slot == NO_ACTION:
                        status = BAD_VICTIM
                        break
                    ist[I_PENDING] = 0
                    ist[I_ACTION] = NO_ACTION
                    if slot < 0:
                        met[M_PF_SKIPPED] += 1
                        ist[I_INDEX] += 1
                        continue
                    evict(cfg_i, ist, slot_i, obj_i, met, log, tab, slot)
                host_access(cfg_i, ist, obj_i, obj)
                ready = transfer_prefetch(cfg_i, ist, fst, met, eng, q_i, q_f,
                                          in_host_by(cfg_i, cfg_f, ist, fst, met, obj_i, obj, t_issue), cfg_f[F_XFER],
                                          slot)
                insert(cfg_i, ist, slot_i, obj_i, lists, log, tab, slot, obj, 1, FULL_BITS)
                slot_f[SL_READY, slot] = ready
                slot_f[SL_FREE_AT, slot] = ready
                met[M_PF_ISSUED] += 1
                ist[I_BUDGET] -= 1
                ist[I_INDEX] += 1
            if status != DONE:
                break
            ist[I_PF_READY] = 0
            ist[I_PHASE] = P_END
        # P_END
        if layer == L - 1:
            pass_end[ev_pass[e] - ev_pass[0]] = fst[S_COMPUTE]
        ist[I_PHASE] = P_START
        ist[I_EVENT] += 1
    deliver_events(cfg_i, ist, tab)
    return status
