"""The environment's compiled step: apply the agent's action, replay to the next decision, score, observe.

One environment keeps its whole replay state in a handful of flat arrays ("arenas"), so a step is one
compiled call with ten array arguments (each argument costs ~55 ns to pass into numba):

* ``si`` int64: a header of offsets and settings, then the kernel's cfg_i, ist, slot_i, obj_i, lists, work;
* ``sf`` float64: reward bookkeeping, then cfg_f, fst, slot_f, met, pass_end;
* ``ci`` / ``c32`` / ``cf`` / ``cs``: the current schedule chunk (int64, int32, float64, float32 scores);
* ``obs``, ``mask``, ``act``, ``orc``: observation, action mask, action and oracle outputs.

The :class:`specmd_env.Replay` that owns the replay has its arrays re-bound to views of the arenas, so
``replay.result()``, ``replay.candidate_mask()`` and friends stay valid. The vectorised environment
calls :func:`step_batch`, which loops over N environments' arenas inside one compiled call.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from specmd_env import kernel as K
from specmd_env.envs.observation import build_observation

# si header ------------------------------------------------------------------------------------------------
(H_CFG_I, H_IST, H_SLOT_I, H_OBJ_I, H_LISTS, H_WORK, H_WORK_LEN, H_CAP, H_OBJS, H_SCOPES,
 H_CFG_F, H_FST, H_SLOT_F, H_MET, H_PASS_END, H_P0, H_P1,
 H_NEV, H_NOBJ, H_NPF, H_OCC_PTR_LEN, H_OCC_POS_LEN, H_NPASS, H_HAS_SPEC,
 H_FALLBACK, H_ORACLE, H_SCORES, H_INVALID, N_HEADER) = range(29)
# sf header ------------------------------------------------------------------------------------------------
F_W_COL, F_W_LAT, F_W_MISS, F_PREV_COL, F_PREV_STALL, F_PREV_MISS, F_REWARD, N_FHEADER = range(8)


@njit(cache=True)
def step_core(si, sf, ci, c32, cf, cs, obs, mask, act, orc, has_action):
    """Answer the pending decision with ``act`` (if ``has_action``), replay to the next decision, and
    write reward (``sf[F_REWARD]``), observation, mask and oracle facts. Returns the kernel status
    (kernel.DONE when the chunk ended: the caller loads the next chunk or ends the episode)."""
    o = si[H_CFG_I]
    cfg_i = si[o:o + K.N_CFG_I]
    o = si[H_IST]
    ist = si[o:o + K.N_IST]
    C = si[H_CAP]
    n_objects = si[H_OBJS]
    S = si[H_SCOPES]
    o = si[H_SLOT_I]
    slot_i = si[o:o + K.N_SLOT_I * C].reshape((K.N_SLOT_I, C))
    o = si[H_OBJ_I]
    obj_i = si[o:o + K.N_OBJ_I * n_objects].reshape((K.N_OBJ_I, n_objects))
    o = si[H_LISTS]
    lists = si[o:o + K.N_LISTS * S].reshape((K.N_LISTS, S))
    o = si[H_WORK]
    work = si[o:o + si[H_WORK_LEN]]
    o = si[H_CFG_F]
    cfg_f = sf[o:o + K.N_CFG_F]
    o = si[H_FST]
    fst = sf[o:o + K.N_FST]
    o = si[H_SLOT_F]
    slot_f = sf[o:o + K.N_SLOT_F * C].reshape((K.N_SLOT_F, C))
    o = si[H_MET]
    met = sf[o:o + K.N_MET]
    o = si[H_PASS_END]
    pass_end = sf[o + si[H_P0]:o + si[H_P1]]
    # the chunk
    n_ev = si[H_NEV]
    n_obj = si[H_NOBJ]
    n_pf = si[H_NPF]
    n_pass = si[H_NPASS]
    a = 0
    ev_ptr = ci[a:a + n_ev + 1]
    a += n_ev + 1
    pf_ptr = ci[a:a + n_ev + 1]
    a += n_ev + 1
    occ_ptr = ci[a:a + si[H_OCC_PTR_LEN]]
    a += si[H_OCC_PTR_LEN]
    occ_pos = ci[a:a + si[H_OCC_POS_LEN]]
    a += si[H_OCC_POS_LEN]
    pass_kind = ci[a:a + n_pass]
    ev_obj = c32[0:n_obj]
    ev_count = c32[n_obj:2 * n_obj]
    ev_pass = c32[2 * n_obj:2 * n_obj + n_ev]
    pf_obj = c32[2 * n_obj + n_ev:2 * n_obj + n_ev + n_pf]
    ev_dense = cf[0:n_ev]
    ev_est = cf[n_ev:2 * n_ev]
    progress = cf[2 * n_ev:2 * n_ev + n_pass]
    L = cfg_i[K.C_LAYERS]
    E = cfg_i[K.C_EXPERTS]

    si[H_INVALID] = 0
    if has_action == 1:
        pend = ist[K.I_PENDING]
        if pend == K.DEMAND or pend == K.PREFETCH:
            slot = act[0]
            if not (0 <= slot < C and mask[slot]):
                si[H_INVALID] = 1
                e = ist[K.I_EVENT]
                position = work[ist[K.I_INDEX]] if pend == K.DEMAND else ev_ptr[e + 1] - 1
                lo, hi = K.scope_range(cfg_i, ist[K.I_PENDING_OBJ] // E)
                saved = cfg_i[K.C_POLICY]
                cfg_i[K.C_POLICY] = si[H_FALLBACK]
                slot = K._choose_victim(cfg_i, ist, slot_i, slot_f, obj_i, lists, occ_ptr, occ_pos, lo, hi,
                                        fst[K.S_DECISION], position)
                cfg_i[K.C_POLICY] = saved
            ist[K.I_ACTION] = slot
        elif pend == K.PREFETCH_CHOICE:
            e = ist[K.I_EVENT]
            layer = e % L
            target = layer + cfg_i[K.C_LOOKAHEAD]
            base = ((e // L) * (L - 1) + target - 1) * E
            n = 0
            for x in range(E):  # insertion sort: best speculative score first, ties to the lower id
                if act[1 + x] != 0:
                    sc = cs[base + x] if si[H_HAS_SPEC] == 1 else 0.0
                    k = n
                    while k > 0 and (cs[base + work[k - 1] - target * E] if si[H_HAS_SPEC] == 1 else 0.0) < sc:
                        work[k] = work[k - 1]
                        k -= 1
                    work[k] = target * E + x
                    n += 1
            ist[K.I_PF_COUNT] = n
            ist[K.I_PF_READY] = 1
            ist[K.I_PENDING] = 0

    status = K.advance(ev_ptr, ev_obj, ev_count, ev_pass, ev_dense, ev_est, pf_ptr, pf_obj, occ_ptr, occ_pos,
                       cfg_i, cfg_f, ist, fst, slot_i, slot_f, obj_i, lists, met, work, pass_end)

    d_col = met[K.M_COLLISION] - sf[F_PREV_COL]
    d_stall = met[K.M_STALL] - sf[F_PREV_STALL]
    d_miss = met[K.M_MISSES] - sf[F_PREV_MISS]
    sf[F_REWARD] = -(sf[F_W_COL] * d_col + sf[F_W_LAT] * d_stall + sf[F_W_MISS] * (d_miss - d_col))
    sf[F_PREV_COL] = met[K.M_COLLISION]
    sf[F_PREV_STALL] = met[K.M_STALL]
    sf[F_PREV_MISS] = met[K.M_MISSES]

    if status != K.DONE:
        build_observation(cfg_i, cfg_f, ist, fst, slot_i, slot_f, lists, ev_ptr, n_ev, cs, si[H_HAS_SPEC] == 1,
                          pass_kind, progress, obs, mask, si[H_SCORES] == 1)
        if si[H_ORACLE] == 1:
            _oracle(cfg_i, ist, slot_i, obj_i, work, ev_ptr, ev_obj, ev_count, occ_ptr, occ_pos, n_objects, orc)
    return status


@njit(cache=True)
def _oracle(cfg_i, ist, slot_i, obj_i, work, ev_ptr, ev_obj, ev_count, occ_ptr, occ_pos, n_objects, orc):
    """Oracle facts for ``info``: per slot, accesses until its expert's next use (as Belady reads it;
    -1 empty, kernel.NEVER none in this chunk; only at eviction decisions), then for the next layer
    (l + lookahead) the number of this pass's tokens routed to each expert (the true routing)."""
    C = cfg_i[K.C_CAPACITY]
    E = cfg_i[K.C_EXPERTS]
    L = cfg_i[K.C_LAYERS]
    e = ist[K.I_EVENT]
    pend = ist[K.I_PENDING]
    evicting = pend == K.DEMAND or pend == K.PREFETCH
    has_next_use = len(occ_ptr) == n_objects + 1
    position = 0
    if evicting:
        position = work[ist[K.I_INDEX]] if pend == K.DEMAND else ev_ptr[e + 1] - 1
    for s in range(C):
        obj = slot_i[K.SL_OBJ, s]
        if obj < 0:
            orc[s] = -1
        elif evicting and has_next_use:
            nu = K.next_use(obj, position, occ_ptr, occ_pos, obj_i)
            orc[s] = nu - position if nu != K.NEVER else K.NEVER
        else:
            orc[s] = K.NEVER
    for x in range(E):
        orc[C + x] = 0
    target_event = e + cfg_i[K.C_LOOKAHEAD]
    if e % L + cfg_i[K.C_LOOKAHEAD] < L and target_event < len(ev_ptr) - 1:
        for j in range(ev_ptr[target_event], ev_ptr[target_event + 1]):
            orc[C + ev_obj[j] % E] = ev_count[j]


@njit(cache=True)
def step_batch(SI, SF, CI, C32, CF, CS, OBS, MASK, ACT, ORC, has_action, status, rewards, invalid):
    """:func:`step_core` for N environments in one compiled call (``has_action[i] < 0`` skips env i)."""
    for i in range(len(SI)):
        if has_action[i] < 0:
            continue
        status[i] = step_core(SI[i], SF[i], CI[i], C32[i], CF[i], CS[i], OBS[i], MASK[i], ACT[i], ORC[i],
                              has_action[i])
        rewards[i] = SF[i][F_REWARD]
        invalid[i] = SI[i][H_INVALID]


def new_state_arenas(replay, *, fallback_code: int, weights, oracle: bool, with_scores: bool):
    """Move ``replay``'s kernel state into fresh arenas and re-bind the replay's arrays to views of them."""
    parts_i = [("cfg_i", H_CFG_I), ("ist", H_IST), ("slot_i", H_SLOT_I), ("obj_i", H_OBJ_I), ("lists", H_LISTS),
               ("work", H_WORK)]
    parts_f = [("cfg_f", H_CFG_F), ("fst", H_FST), ("slot_f", H_SLOT_F), ("met", H_MET), ("pass_end", H_PASS_END)]
    size_i = N_HEADER + sum(getattr(replay, name).size for name, _ in parts_i)
    size_f = N_FHEADER + sum(getattr(replay, name).size for name, _ in parts_f)
    si = np.zeros(size_i, np.int64)
    sf = np.zeros(size_f, np.float64)
    for arena, parts, start in ((si, parts_i, N_HEADER), (sf, parts_f, N_FHEADER)):
        o = start
        for name, h in parts:
            old = getattr(replay, name)
            view = arena[o:o + old.size].reshape(old.shape)
            view[...] = old
            setattr(replay, name, view)
            si[h] = o
            o += old.size
    si[H_WORK_LEN] = replay.work.size
    si[H_CAP] = replay.capacity
    si[H_OBJS] = replay.obj_i.shape[1]
    si[H_SCOPES] = replay.lists.shape[1]
    si[H_FALLBACK] = fallback_code
    si[H_ORACLE] = int(oracle)
    si[H_SCORES] = int(with_scores)
    sf[F_W_COL], sf[F_W_LAT], sf[F_W_MISS] = weights.collision, weights.latency, weights.miss
    return si, sf


def chunk_arenas(replay, si, spec, progress):
    """The current chunk's schedule as arenas (and its sizes written into the ``si`` header)."""
    c = replay.chunk
    pass_kind = replay.plan.pass_kind[c.p0:c.p1].astype(np.int64)
    ci = np.concatenate([c.ev_ptr, replay.pf_ptr, c.occ_ptr, c.occ_pos, pass_kind]).astype(np.int64)
    c32 = np.concatenate([c.ev_obj, c.ev_count, c.ev_pass, replay.pf_obj]).astype(np.int32)
    cf = np.concatenate([c.ev_dense, c.ev_est, progress[c.p0:c.p1]]).astype(np.float64)
    if spec is None:
        cs, has_spec = np.zeros(1, np.float32), 0
    else:
        cs, has_spec = np.ascontiguousarray(spec, np.float32).ravel(), 1
    si[H_P0], si[H_P1] = c.p0, c.p1
    si[H_NEV] = len(c.ev_ptr) - 1
    si[H_NOBJ] = len(c.ev_obj)
    si[H_NPF] = len(replay.pf_obj)
    si[H_OCC_PTR_LEN] = len(c.occ_ptr)
    si[H_OCC_POS_LEN] = len(c.occ_pos)
    si[H_NPASS] = c.p1 - c.p0
    si[H_HAS_SPEC] = has_spec
    return ci, c32, cf, cs
