"""The environment's compiled step: apply the agent's action, replay to the next decision, score, observe.

One environment keeps its whole replay state in a handful of flat arrays ("arenas"), so a step is one
compiled call with ten array arguments (each argument costs ~55 ns to pass into numba):

* ``si`` int64: a header of offsets and settings, then the kernel's cfg_i, ist, slot_i, obj_i, lists, work;
* ``sf`` float64: reward bookkeeping, then cfg_f, fst, slot_f, met, pass_end;
* ``ci`` / ``c32`` / ``cf`` / ``cs``: the current schedule chunk (int64, int32, float64, float32 scores);
* ``obs``, ``mask``, ``act``, ``orc``: observation, action mask, action and oracle outputs.

The :class:`specmd_env.Replay` that owns the replay has its arrays re-bound to views of the arenas, so
``replay.result()``, ``replay.candidate_mask()`` and friends stay valid.

The environments do not pass the ten arrays themselves: numba's dispatcher takes ~55 ns per array
argument and a typed list of arrays costs ~35 ns per item read. Each environment keeps an *argument
table* instead (:func:`arg_table`: the ten arrays' data addresses and lengths, int64), and
:func:`step_one` / :func:`step_batch` rebuild the arrays from it inside the compiled code, with no
reference counting. The environment owns the ten arrays (its ``_args``) and rewrites its table row
whenever it replaces one of them (a reset, a chunk change). The vectorised environment's table is
[N, 20]; each sub-environment's table is a row of it, so the batch call sees every replacement.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from specmd_env import kernel as K
from specmd_env.kernel import _borrow
from specmd_env.envs.observation import build_observation, layer_table, rank_table

# si header ------------------------------------------------------------------------------------------------
(H_CFG_I, H_IST, H_SLOT_I, H_OBJ_I, H_LISTS, H_WORK, H_WORK_LEN, H_CAP, H_OBJS, H_SCOPES,
 H_CFG_F, H_FST, H_SLOT_F, H_MET, H_PASS_END, H_P0, H_P1,
 H_NEV, H_NOBJ, H_NPF, H_OCC_PTR_LEN, H_OCC_POS_LEN, H_NPASS, H_HAS_SPEC,
 H_FALLBACK, H_ORACLE, H_SCORES, H_INVALID, H_RANK_TAB, H_RANK_LEN, H_LAYER_TAB, N_HEADER) = range(32)
# sf header ------------------------------------------------------------------------------------------------
F_W_COL, F_W_LAT, F_W_MISS, F_PREV_COL, F_PREV_STALL, F_PREV_MISS, F_REWARD, N_FHEADER = range(8)


N_ARGS = 10  # si, sf, ci, c32, cf, cs, obs, mask, act, orc
ARG_DTYPES = (np.int64, np.float64, np.int64, np.int32, np.float64, np.float32, np.float32, np.bool_, np.int64,
              np.int64)


def arg_table(args, out=None) -> np.ndarray:
    """The argument table of ``args`` (the ten arrays of :func:`step_core`): their data addresses,
    then their lengths. The arrays must be 1-D, C-contiguous and of the ``ARG_DTYPES``, and must be
    kept alive for as long as the table is used."""
    if out is None:
        out = np.zeros(2 * N_ARGS, np.int64)
    for k, (a, dt) in enumerate(zip(args, ARG_DTYPES)):
        if a.dtype != dt or a.ndim != 1 or not a.flags.c_contiguous:
            raise TypeError(f"argument {k} must be a contiguous 1-D {np.dtype(dt)} array, got {a.dtype} {a.shape}")
        out[k] = a.__array_interface__["data"][0]
        out[N_ARGS + k] = a.size
    return out


@intrinsic
def _array_at(typingctx, addr, length, dtype):
    """The 1-D C array of ``length`` items of ``dtype`` at address ``addr``, borrowed (no owner, no
    reference counting): valid only while whoever owns that memory keeps it alive."""
    if not isinstance(dtype, types.NumberClass):
        return None
    arr_t = types.Array(dtype.instance_type, 1, "C")

    def codegen(context, builder, sig, args):
        ary = context.make_array(arr_t)(context, builder)
        data_t = context.get_data_type(arr_t.dtype)
        itemsize = context.get_abi_sizeof(data_t)
        data = builder.inttoptr(args[0], data_t.as_pointer())
        context.populate_array(ary, data=data, shape=[args[1]], strides=[cgutils.intp_t(itemsize)],
                               itemsize=cgutils.intp_t(itemsize), meminfo=None)
        return ary._getvalue()
    return arr_t(types.int64, types.int64, dtype), codegen


@njit(cache=True, inline="always")
def _step_row(tab, i, has_action):
    """:func:`step_core` on the arrays of row ``i`` of an argument table (2-D: [N, 2 * N_ARGS])."""
    n = N_ARGS
    return step_core(_array_at(tab[i, 0], tab[i, n], np.int64), _array_at(tab[i, 1], tab[i, n + 1], np.float64),
                     _array_at(tab[i, 2], tab[i, n + 2], np.int64), _array_at(tab[i, 3], tab[i, n + 3], np.int32),
                     _array_at(tab[i, 4], tab[i, n + 4], np.float64), _array_at(tab[i, 5], tab[i, n + 5], np.float32),
                     _array_at(tab[i, 6], tab[i, n + 6], np.float32), _array_at(tab[i, 7], tab[i, n + 7], np.bool_),
                     _array_at(tab[i, 8], tab[i, n + 8], np.int64), _array_at(tab[i, 9], tab[i, n + 9], np.int64),
                     has_action)


@njit(cache=True)
def step_one(tab, has_action):
    """:func:`step_core` for one environment given its argument table ([1, 2 * N_ARGS]). Returns the
    status; the reward is ``sf[F_REWARD]``, the invalid flag ``si[H_INVALID]``."""
    return _step_row(tab, 0, has_action)


@njit(cache=True)
def step_core(si, sf, ci, c32, cf, cs, obs, mask, act, orc, has_action):
    """Answer the pending decision with ``act`` (if ``has_action``), replay to the next decision, and
    write reward (``sf[F_REWARD]``), observation, mask and oracle facts. Returns the kernel status
    (kernel.DONE when the chunk ended: the caller loads the next chunk or ends the episode)."""
    # borrowed (no reference counting): every view below and every helper call would otherwise pay
    # atomic increments and decrements; the caller keeps the arrays alive for the call
    si, sf, ci, c32, cf, cs = _borrow(si), _borrow(sf), _borrow(ci), _borrow(c32), _borrow(cf), _borrow(cs)
    obs, mask, act, orc = _borrow(obs), _borrow(mask), _borrow(act), _borrow(orc)
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
    o = si[H_RANK_TAB]
    rank_tab = sf[o:o + si[H_RANK_LEN]]
    o = si[H_LAYER_TAB]
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
    layer_tab = sf[o:o + L]

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
                          pass_kind, progress, obs, mask, si[H_SCORES] == 1, rank_tab, layer_tab)
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
def step_batch(tab, has_action, status, rewards, invalid, penalty, steps, ep_reward, ep_steps, ep_invalid):
    """:func:`step_core` for N environments in one compiled call, given their argument tables
    (``tab`` [N, 2 * N_ARGS]). ``has_action[i] < 0`` skips env i (its reward and invalid flag are 0).
    A stepped env's reward is the step's reward less ``penalty`` if its action was invalid. An env
    whose status is not kernel.DONE is also counted in ``steps``, ``ep_reward``, ``ep_steps`` and
    ``ep_invalid``; the caller finishes DONE ones (next chunk, episode end) and counts them. Returns
    the number of DONE envs."""
    n_done = 0
    for i in range(len(has_action)):
        if has_action[i] < 0:
            rewards[i] = 0.0
            invalid[i] = 0
            continue
        st = _step_row(tab, i, has_action[i])
        status[i] = st
        sf = _array_at(tab[i, 1], tab[i, N_ARGS + 1], np.float64)
        si = _array_at(tab[i, 0], tab[i, N_ARGS], np.int64)
        r = sf[F_REWARD]
        bad = si[H_INVALID]
        if penalty != 0.0:
            r -= penalty * bad
        rewards[i] = r
        invalid[i] = bad
        if st == K.DONE:
            n_done += 1
        else:
            steps[i] += 1
            ep_reward[i] += r
            ep_steps[i] += 1
            ep_invalid[i] += bad
    return n_done


@njit(cache=True)
def set_slots(act, actions, capacity):
    """``act[:, 0] = actions`` if every action is a slot in [0, capacity) (returns True), else
    nothing (returns False): the vectorised eviction step's validation and copy in one pass."""
    for i in range(len(actions)):
        if not 0 <= actions[i] < capacity:
            return False
    for i in range(len(actions)):
        act[i, 0] = actions[i]
    return True


def new_state_arenas(replay, *, fallback_code: int, weights, oracle: bool, with_scores: bool):
    """Move ``replay``'s kernel state into fresh arenas and re-bind the replay's arrays to views of them."""
    parts_i = [("cfg_i", H_CFG_I), ("ist", H_IST), ("slot_i", H_SLOT_I), ("obj_i", H_OBJ_I), ("lists", H_LISTS),
               ("work", H_WORK)]
    parts_f = [("cfg_f", H_CFG_F), ("fst", H_FST), ("slot_f", H_SLOT_F), ("met", H_MET), ("pass_end", H_PASS_END)]
    ranks = rank_table(replay.capacity, replay.model.num_layers, replay.lists.shape[1])
    layers = layer_table(replay.model.num_layers)
    size_i = N_HEADER + sum(getattr(replay, name).size for name, _ in parts_i)
    size_f = N_FHEADER + sum(getattr(replay, name).size for name, _ in parts_f) + ranks.size + layers.size
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
    o = size_f - ranks.size - layers.size  # the observation's constant tables
    si[H_RANK_TAB], si[H_RANK_LEN], si[H_LAYER_TAB] = o, ranks.size, o + ranks.size
    sf[o:o + ranks.size] = ranks
    sf[o + ranks.size:] = layers
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
