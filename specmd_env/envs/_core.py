"""The environment's compiled step: apply the agent's action, replay to the next decision, score, observe.

An environment is a :class:`specmd_env.Replay` made with ``observe=True`` plus four buffers
(observation, action mask, action, and a scratch of int64 items) whose addresses join the replay's
argument table (:mod:`specmd_env.kernel.layout`). A step is then one compiled call given one address:
the table's. The scratch (argument ``A_ORC``) holds the environment's settings the step needs
(``X_ROWS``: slot rows of the observation, ``X_BYPASS``: whether bypass may be chosen, ``X_SERVING``:
where the serving features go, -1 for none, ``X_MAX_SEQS``: their scale), the cursor of
the observation's memory (``X_CURSOR``: the last layer event of the chunk it has absorbed), the oracle
facts for ``info`` (``next_use`` [rows + 1], ``next_experts`` [E]), and the memory itself
(:mod:`specmd_env.envs.memory`, float64 items stored in the int64 buffer).
The vectorised environment keeps its sub-environments' tables as the rows of one [N, 2 * N_ARGS]
array, and :func:`step_batch` steps them all in one call.

Reward bookkeeping lives in the replay's ``sf`` arena at ``si[H_REWARD]``: the weights, the counters at
the previous decision, and the last step's reward (``R_*``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from specmd_env import kernel as K
from specmd_env.envs.memory import absorb_event, clear, memory_size
from specmd_env.envs.observation import build_observation
from specmd_env.kernel.future import next_use
from specmd_env.kernel.hooks import deliver_events
from specmd_env.kernel.native import call_hook
from specmd_env.kernel.loop import advance
from specmd_env.kernel.slots import candidate, scope_range
from specmd_env.kernel.native import array_at
from specmd_env.kernel.state import arena, unpack

R_W_COL, R_W_LAT, R_W_MISS, R_PREV_COL, R_PREV_STALL, R_PREV_MISS, R_REWARD, N_REWARD = range(8)
assert N_REWARD <= K.REWARD_PART
ROW_BYTES = 2 * K.N_ARGS * 8  # one row of an argument table
X_ROWS, X_BYPASS, X_CURSOR, X_SERVING, X_MAX_SEQS, X_HEADER = range(6)  # the scratch's header


def scratch_size(rows: int, num_experts: int, num_objects: int) -> int:
    """int64 items of an environment's scratch (see the module docstring)."""
    return X_HEADER + rows + 1 + num_experts + memory_size(num_objects)


@njit(cache=True, inline="always")
def _memory(k, scratch):
    """The observation's memory, a float64 view of the scratch's tail."""
    rows = scratch[X_ROWS]
    start = X_HEADER + rows + 1 + k.num_experts
    return array_at(scratch.ctypes.data + 8 * start, memory_size(k.num_layers * k.num_experts), np.float64)


@njit(cache=True)
def reset_memory(tab):
    """Forget the routing seen so far (a new replay)."""
    k = unpack(tab)
    scratch = arena(tab, K.A_ORC, np.int64)
    clear(_memory(k, scratch), k.num_layers * k.num_experts)
    scratch[X_CURSOR] = -1


@njit(cache=True, inline="always")
def _catch_up(k, scratch, status):
    """Absorb the layer events replayed since the last call: up to the current one (its router has run),
    or, when the chunk ended, all of them (the next chunk starts from event 0)."""
    mem = _memory(k, scratch)
    n_obj = k.num_layers * k.num_experts
    num_events = len(k.ev_ptr) - 1
    upto = num_events - 1 if status == K.DONE else min(k.ist[K.I_EVENT], num_events - 1)
    for e in range(scratch[X_CURSOR] + 1, upto + 1):
        absorb_event(mem, n_obj, k.ev_ptr, k.ev_obj, k.ev_pass, e)
    scratch[X_CURSOR] = -1 if status == K.DONE else upto


@njit(cache=True, inline="always")
def _fallback_victim(k, lo, hi):
    """The fixed policy's victim for an invalid action (any candidate if it declines)."""
    deliver_events(k.cfg_i, k.ist, k.tab)
    slot = call_hook(k.cfg_i[K.C_VICTIM_FN], k.tab, lo, hi)
    t = k.fst[K.S_DECISION]
    if lo <= slot < hi and candidate(k.cfg_i, k.slot_i, k.slot_f, slot, t):
        return slot
    for s in range(lo, hi):
        if candidate(k.cfg_i, k.slot_i, k.slot_f, s, t):
            return s
    return lo


@njit(cache=True, inline="always")
def _apply_action(k, act, mask, has_action, rows):
    """Answer the pending decision with the action: a slot, or ``rows`` (the incoming row) for bypass;
    an invalid one falls back to the fixed policy."""
    ist, E, L = k.ist, k.num_experts, k.num_layers
    k.si[K.H_INVALID] = 0
    if has_action != 1:
        return
    pend = ist[K.I_PENDING]
    if pend == K.DEMAND or pend == K.PREFETCH:
        slot = act[0]
        if slot == rows and mask[rows]:
            slot = -1  # bypass: serve a demand miss from a staging buffer, skip a prefetch
        elif not (0 <= slot < k.capacity and mask[slot]):
            k.si[K.H_INVALID] = 1
            lo, hi = scope_range(k.cfg_i, k.scope, ist[K.I_PENDING_OBJ] // E)
            slot = _fallback_victim(k, lo, hi)
        ist[K.I_ACTION] = slot
    elif pend == K.PREFETCH_CHOICE:
        e = ist[K.I_EVENT]
        target = e % L + k.cfg_i[K.C_LOOKAHEAD]
        base = ((e // L) * (L - 1) + target - 1) * E
        has_spec = k.si[K.H_HAS_SPEC] == 1
        work = k.work
        pf = 2 * (E + 1)
        n = 0
        for x in range(E):  # insertion sort: best speculative score first, ties to the lower id
            if act[1 + x] != 0:
                sc = k.spec[base + x] if has_spec else 0.0
                j = n
                while j > 0 and (k.spec[base + work[pf + j - 1] - target * E] if has_spec else 0.0) < sc:
                    work[pf + j] = work[pf + j - 1]
                    j -= 1
                work[pf + j] = target * E + x
                n += 1
        ist[K.I_PF_COUNT] = n
        ist[K.I_PF_READY] = 1
        ist[K.I_PENDING] = 0


@njit(cache=True, inline="always")
def _score_step(k):
    """The reward accrued since the previous decision (written to the reward part and returned)."""
    met = k.met
    r = k.sf[k.si[K.H_REWARD]:k.si[K.H_REWARD] + N_REWARD]
    d_col = met[K.M_COLLISION] - r[R_PREV_COL]
    d_stall = met[K.M_STALL] - r[R_PREV_STALL]
    d_miss = met[K.M_MISSES] - r[R_PREV_MISS]
    r[R_REWARD] = -(r[R_W_COL] * d_col + r[R_W_LAT] * d_stall + r[R_W_MISS] * (d_miss - d_col))
    r[R_PREV_COL] = met[K.M_COLLISION]
    r[R_PREV_STALL] = met[K.M_STALL]
    r[R_PREV_MISS] = met[K.M_MISSES]
    return r[R_REWARD]


@njit(cache=True, inline="always")
def _oracle(k, scratch):
    """Oracle facts for ``info``: per observation row, accesses until its expert's next use (as Belady
    reads it; -1 empty, kernel.NEVER none in this chunk; only at eviction decisions; the last row is
    the incoming expert), then for the next layer (l + lookahead) the number of this pass's tokens
    routed to each expert (the true routing)."""
    C, E, L = k.capacity, k.num_experts, k.num_layers
    rows = scratch[X_ROWS]
    orc = scratch[X_HEADER:X_HEADER + rows + 1 + E]
    e = k.ist[K.I_EVENT]
    pend = k.ist[K.I_PENDING]
    evicting = pend == K.DEMAND or pend == K.PREFETCH
    has_next_use = len(k.occ_ptr) == k.obj_i.shape[1] + 1
    position = k.ist[K.I_POSITION]
    for s in range(rows + 1):
        obj = k.slot_i[K.SL_OBJ, s] if s < C else (k.ist[K.I_PENDING_OBJ] if s == rows and evicting else -1)
        if obj < 0:
            orc[s] = -1
        elif evicting and has_next_use:
            nu = next_use(k.obj_i, k.occ_ptr, k.occ_pos, obj, position)
            orc[s] = nu - position if nu != K.NEVER else K.NEVER
        else:
            orc[s] = K.NEVER
    nx = rows + 1  # the next layer's routing follows the rows
    for x in range(E):
        orc[nx + x] = 0
    target_event = e + k.cfg_i[K.C_LOOKAHEAD]
    if e % L + k.cfg_i[K.C_LOOKAHEAD] < L and target_event < len(k.ev_ptr) - 1:
        for j in range(k.ev_ptr[target_event], k.ev_ptr[target_event + 1]):
            orc[nx + k.ev_obj[j] % E] = k.ev_count[j]


@njit(cache=True, inline="always")
def _serving(k, obs, scratch):
    """The server's load (observation.SERVING_FEATURES), as the replay wrote it for the current step."""
    cap = float(scratch[X_MAX_SEQS])
    waiting = float(k.ist[K.I_WAITING])
    obs[scratch[X_SERVING]] = k.ist[K.I_RUNNING] / cap
    obs[scratch[X_SERVING] + 1] = waiting / (waiting + cap)


@njit(cache=True)
def step_one(tab, has_action):
    """Answer the pending decision (if ``has_action``), replay to the next decision, and write reward,
    observation, mask and oracle facts, for the environment whose argument table is at address
    ``tab``. Returns the kernel status (DONE when the chunk ended: the caller loads the next chunk or
    ends the episode)."""
    k = unpack(tab)
    obs = arena(tab, K.A_OBS, np.float32)
    mask = arena(tab, K.A_MASK, np.bool_)
    act = arena(tab, K.A_ACT, np.int64)
    scratch = arena(tab, K.A_ORC, np.int64)
    rows = scratch[X_ROWS]
    _apply_action(k, act, mask, has_action, rows)
    status = advance(tab)
    _score_step(k)
    _catch_up(k, scratch, status)
    if status == K.NEED_VICTIM or status == K.NEED_PREFETCH:
        rank_tab = k.sf[k.si[K.H_RANK_TAB]:k.si[K.H_RANK_TAB] + k.si[K.H_RANK_LEN]]
        layer_tab = k.sf[k.si[K.H_LAYER_TAB]:k.si[K.H_LAYER_TAB] + k.num_layers]
        build_observation(k, obs, mask, k.si[K.H_SCORES] == 1, rank_tab, layer_tab, _memory(k, scratch), rows,
                          scratch[X_BYPASS] == 1)
        if scratch[X_SERVING] >= 0:
            _serving(k, obs, scratch)
        if k.si[K.H_ORACLE] == 1:
            _oracle(k, scratch)
    return status


@njit(cache=True)
def step_batch(tab, has_action, status, rewards, invalid, penalty, steps, ep_reward, ep_steps, ep_invalid):
    """:func:`step_one` for N environments in one compiled call, given their argument tables
    (``tab`` [N, 2 * N_ARGS]). ``has_action[i] < 0`` skips env i (its reward and invalid flag are 0).
    A stepped env's reward is the step's reward less ``penalty`` if its action was invalid. An env
    whose status is not kernel.DONE is also counted in ``steps``, ``ep_reward``, ``ep_steps`` and
    ``ep_invalid``; the caller finishes DONE ones (next chunk, episode end) and counts them. Returns
    the number of DONE envs."""
    n_done = 0
    base = tab.ctypes.data
    for i in range(len(has_action)):
        if has_action[i] < 0:
            rewards[i] = 0.0
            invalid[i] = 0
            continue
        row = base + i * ROW_BYTES
        st = step_one(row, has_action[i])
        status[i] = st
        si = arena(row, K.A_SI, np.int64)
        sf = arena(row, K.A_SF, np.float64)
        r = sf[si[K.H_REWARD] + R_REWARD]
        bad = si[K.H_INVALID]
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
def set_slots(act, actions, n_actions):
    """``act[:, 0] = actions`` if every action is in [0, n_actions) (returns True), else nothing
    (returns False): the vectorised eviction step's validation and copy in one pass."""
    for i in range(len(actions)):
        if not 0 <= actions[i] < n_actions:
            return False
    for i in range(len(actions)):
        act[i, 0] = actions[i]
    return True
