"""The environment's observation: a flat float32 vector, built by one compiled function.

Layout (``ObservationLayout``): ``rows + 1`` item rows of ``N_SLOT_FEATURES`` features (row-major:
row r's features are ``obs[r * F:(r + 1) * F]``) -- one per cache slot (``rows`` = the capacity, or
more when the environment pads its observation to serve several capacities with one network: the
extra rows are always empty), then one for the *incoming* expert (the one that needs room; choosing
its row means *bypass*: do not cache it) -- then ``N_GLOBAL_FEATURES`` global features, then (under
continuous batching only) the ``SERVING_FEATURES``, then (prefetch and joint modes only) the next layer's
``E`` speculative scores. Every value lies in [0, 1]. The table
of meanings is in :class:`specmd_env.envs.cache_env.SpecMDCacheEnv` and docs/ENVIRONMENT.md.

Ages are exact *ranks* (the slot's position in the kernel's own use / touch / insertion order among
occupied slots, divided by ``scope size - 1``), not tick differences: float32 keeps every rank
distinct, so an agent taking the argmax of a rank reproduces LRU, Least-Stale or FIFO exactly.
Frequencies and recency come from the replay's memory of past routing (:mod:`specmd_env.envs.memory`);
``expected_reuse*`` turn a frequency p and the layer's next turn d into expected-next-use's estimate of
the layer steps until the expert is used, ``d + L (1/p - 1)``, as ``L / (L + steps)`` (1 = next layer,
surely; 0 = never). Nothing here reads the future; oracle facts (next use, the next layer's true
routing) go to ``info``.

The compiled learned eviction policy (:mod:`specmd_env.agents.compiled`) calls :func:`build_observation`
on the same replay state, so the network sees in the simulator exactly what it saw in the environment.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from specmd_env import kernel as K
from specmd_env.envs.memory import frequencies, scales

SLOT_FEATURES = ("occupied", "layer_ahead", "current", "use_age", "touch_age", "insert_age", "use_count",
                 "spec_score", "in_flight", "prefetched_unused", "candidate", "incoming", "next_turn", "frequency",
                 "frequency_short", "frequency_long", "recency", "expected_reuse", "expected_reuse_short",
                 "expected_reuse_long")
GLOBAL_FEATURES = ("layer", "decode", "request_progress", "copy_backlog", "pending_demand", "pending_prefetch",
                   "pending_prefetch_choice", "pending_layer_ahead", "prefetch_budget", "occupancy",
                   "candidate_fraction")
(S_OCCUPIED, S_LAYER_AHEAD, S_CURRENT, S_USE_AGE, S_TOUCH_AGE, S_INSERT_AGE, S_USE_COUNT, S_SPEC, S_IN_FLIGHT,
 S_PREFETCHED, S_CANDIDATE, S_INCOMING, S_NEXT_TURN, S_FREQ, S_FREQ_SHORT, S_FREQ_LONG, S_RECENCY, S_REUSE,
 S_REUSE_SHORT, S_REUSE_LONG) = range(len(SLOT_FEATURES))
(G_LAYER, G_DECODE, G_PROGRESS, G_BACKLOG, G_DEMAND, G_PREFETCH, G_CHOICE, G_PENDING_LAYER, G_BUDGET,
 G_OCCUPANCY, G_CANDIDATES) = range(len(GLOBAL_FEATURES))
# the server's load, under continuous batching: running / max_num_seqs, and waiting w as w / (w + max_num_seqs)
SERVING_FEATURES = ("running_sequences", "queue_length")
N_SLOT_FEATURES = len(SLOT_FEATURES)
N_GLOBAL_FEATURES = len(GLOBAL_FEATURES)
COUNT_SCALE = 16.0        # use_count = count / (count + COUNT_SCALE): monotone, distinct in float32 below ~16,000
BACKLOG_CLIP = 16.0       # copy_backlog = min(backlog / transfer time, BACKLOG_CLIP) / BACKLOG_CLIP
PROGRESS_PASSES = 256.0   # request_progress = min(passes since the batch group began / 256, 1)
# use_count values for small counts, so that most slots need no division (same float64 arithmetic)
_COUNT_TAB = np.array([c / (c + COUNT_SCALE) for c in range(256)], np.float64)


class ObservationLayout:
    """Where each feature sits in the flat observation vector. ``rows``: slot rows (default the
    capacity; more pads the observation with empty rows, so that one network serves capacities up
    to ``rows``). The incoming row follows the slot rows: action ``rows`` is *bypass*."""

    def __init__(self, capacity: int, num_experts: int, with_scores: bool, rows: int | None = None,
                 with_serving: bool = False):
        self.capacity = int(capacity)
        self.num_experts = int(num_experts)
        self.with_scores = bool(with_scores)
        self.with_serving = bool(with_serving)
        self.rows = self.capacity if rows is None else int(rows)
        if self.rows < self.capacity:
            raise ValueError(f"rows ({self.rows}) must be at least the capacity ({self.capacity})")
        self.bypass_action = self.rows
        self.slot_size = (self.rows + 1) * N_SLOT_FEATURES
        self.global_start = self.slot_size
        self.serving_start = self.global_start + N_GLOBAL_FEATURES
        self.scores_start = self.serving_start + (len(SERVING_FEATURES) if with_serving else 0)
        self.size = self.scores_start + (self.num_experts if with_scores else 0)

    def items(self, obs: np.ndarray) -> np.ndarray:
        """[rows + 1, N_SLOT_FEATURES] view: the slot rows, then the incoming expert's row."""
        return obs[..., :self.slot_size].reshape(obs.shape[:-1] + (self.rows + 1, N_SLOT_FEATURES))

    def slots(self, obs: np.ndarray) -> np.ndarray:
        """[rows, N_SLOT_FEATURES] view of the per-slot features (rows past the capacity are empty)."""
        return self.items(obs)[..., :self.rows, :]

    def incoming(self, obs: np.ndarray) -> np.ndarray:
        """The incoming expert's features (all zero when no eviction is due)."""
        return self.items(obs)[..., self.rows, :]

    def globals(self, obs: np.ndarray) -> np.ndarray:
        return obs[..., self.global_start:self.serving_start]

    def serving(self, obs: np.ndarray) -> np.ndarray | None:
        """The server's load (continuous batching), else None."""
        return obs[..., self.serving_start:self.scores_start] if self.with_serving else None

    def scores(self, obs: np.ndarray) -> np.ndarray | None:
        """The next layer's speculative scores (prefetch and joint modes), else None."""
        return obs[..., self.scores_start:self.size] if self.with_scores else None

    def names(self) -> list[str]:
        """A name for every index (``slot12.use_age``, ``incoming.frequency``, ``global.layer``, ``score.5``)."""
        out = [f"slot{s}.{f}" for s in range(self.rows) for f in SLOT_FEATURES]
        out += [f"incoming.{f}" for f in SLOT_FEATURES]
        out += [f"global.{g}" for g in GLOBAL_FEATURES]
        if self.with_serving:
            out += [f"serving.{f}" for f in SERVING_FEATURES]
        if self.with_scores:
            out += [f"score.{x}" for x in range(self.num_experts)]
        return out


def rank_table(capacity: int, num_layers: int, num_scopes: int, scopes=None) -> np.ndarray:
    """The age-rank values ``j / (largest scope size - 1)`` (float64, computed once per environment: the
    observation reads them instead of dividing 3 x capacity times per step)."""
    size = capacity if scopes is None else int(np.max(scopes[K.SC_HI] - scopes[K.SC_LO]))
    denom = max(size - 1, 1)
    return np.array([j / denom for j in range(size)], np.float64)


def layer_table(num_layers: int) -> np.ndarray:
    """``d / L`` for d in [0, L) (float64), the layer_ahead values."""
    return np.array([d / num_layers for d in range(num_layers)], np.float64)


@njit(cache=True, inline="always")
def _ranks(k, obs, rank_tab):
    """Write each occupied slot's age ranks in the kernel's three ordered lists (use, touch, insertion):
    1 = the list head (oldest, the first victim), 0 = the tail, evenly spaced by position among
    occupied slots (``rank_tab[j] = j / (scope size - 1)``). The three lists are walked together, so
    their chains of dependent loads overlap."""
    slot_i, lists = k.slot_i, k.lists
    F = N_SLOT_FEATURES
    for scope in range(k.scope.shape[1]):
        lo, hi = k.scope[K.SC_LO, scope], k.scope[K.SC_HI, scope]
        n = 0
        for s in range(lo, hi):
            if slot_i[K.SL_OBJ, s] >= 0:
                n += 1
        if n == 0:
            continue
        su = lists[K.L_USE_HEAD, scope]
        st = lists[K.L_TOUCH_HEAD, scope]
        sn = lists[K.L_INS_HEAD, scope]
        ku = kt = kn = n - 1
        while su >= 0 or st >= 0 or sn >= 0:
            if su >= 0:
                if slot_i[K.SL_OBJ, su] >= 0:
                    obs[su * F + S_USE_AGE] = rank_tab[ku]
                    ku -= 1
                su = slot_i[K.SL_USE_NEXT, su]
            if st >= 0:
                if slot_i[K.SL_OBJ, st] >= 0:
                    obs[st * F + S_TOUCH_AGE] = rank_tab[kt]
                    kt -= 1
                st = slot_i[K.SL_TOUCH_NEXT, st]
            if sn >= 0:
                if slot_i[K.SL_OBJ, sn] >= 0:
                    obs[sn * F + S_INSERT_AGE] = rank_tab[kn]
                    kn -= 1
                sn = slot_i[K.SL_INS_NEXT, sn]


@njit(cache=True, inline="always")
def _remembered(obs, b, mem, n_obj, obj, turn, pass_id, L, sc):
    """The memory features of object ``obj`` whose layer's next turn is ``turn`` layer steps away
    (``sc``: :func:`specmd_env.envs.memory.scales`). Expected reuse ``L / (L + turn + L (1/p - 1))``
    is computed as ``L p / (turn p + L)``."""
    whole, short, long_, recency = frequencies(mem, n_obj, obj, pass_id, sc[0], sc[1], sc[2])
    obs[b + S_NEXT_TURN] = turn / L
    obs[b + S_FREQ] = whole
    obs[b + S_FREQ_SHORT] = short
    obs[b + S_FREQ_LONG] = long_
    obs[b + S_RECENCY] = recency
    obs[b + S_REUSE] = L * whole / (turn * whole + L)
    obs[b + S_REUSE_SHORT] = L * short / (turn * short + L)
    obs[b + S_REUSE_LONG] = L * long_ / (turn * long_ + L)


@njit(cache=True, inline="always")
def build_observation(k, obs, mask, with_scores, rank_tab, layer_tab, mem, rows, bypass_ok):
    """Fill ``obs`` and ``mask`` (the rows that may be chosen now: candidate slots, and the incoming row
    when ``bypass_ok``; all True when no eviction is due) from the replay state ``k``
    (:func:`specmd_env.kernel.state.unpack`) and its memory ``mem`` (:mod:`specmd_env.envs.memory`).
    ``rank_tab`` and ``layer_tab`` are :func:`rank_table` and :func:`layer_table`; ``rows`` >= capacity
    is the number of slot rows."""
    cfg_i, ist, fst, slot_i, slot_f = k.cfg_i, k.ist, k.fst, k.slot_i, k.slot_f
    C, L, E = k.capacity, k.num_layers, k.num_experts
    n_obj = L * E
    la = cfg_i[K.C_LOOKAHEAD]
    num_events = len(k.ev_ptr) - 1
    e = min(ist[K.I_EVENT], num_events - 1)
    layer = e % L
    p = e // L
    pass_id = ist[K.I_PASS]
    target = layer + la
    spec_base = (p * (L - 1) + target - 1) * E
    scores_ok = k.si[K.H_HAS_SPEC] == 1 and target < L
    spec = k.spec
    pend = ist[K.I_PENDING]
    evicting = pend == K.DEMAND or pend == K.PREFETCH
    now = fst[K.S_DECISION] if evicting else fst[K.S_ROUTER]
    lo, hi = 0, 0
    if evicting:
        sc = 0 if k.scope.shape[1] == 1 else ist[K.I_PENDING_OBJ] // E
        lo, hi = k.scope[K.SC_LO, sc], k.scope[K.SC_HI, sc]
    timed = cfg_i[K.C_PER_ACCESS] == 0
    pass_tick = ist[K.I_PASS_TICK]
    n_occ = 0
    n_cand = 0
    sc = scales(pass_id)
    F = N_SLOT_FEATURES
    for s in range(rows + 1):
        for f in range(F):
            obs[s * F + f] = 0.0
        mask[s] = not evicting
    for s in range(C):
        b = s * F
        obj = slot_i[K.SL_OBJ, s]
        if obj < 0:
            continue
        n_occ += 1
        sl = slot_i[K.SL_LAYER, s]
        x = slot_i[K.SL_EXPERT, s]
        d = sl - layer  # (sl - layer) mod L, both in [0, L)
        if d < 0:
            d += L
        obs[b + S_OCCUPIED] = 1.0
        obs[b + S_LAYER_AHEAD] = layer_tab[d]
        obs[b + S_CURRENT] = 1.0 if slot_i[K.SL_TOUCH, s] > pass_tick else 0.0
        c = slot_i[K.SL_COUNT, s]
        obs[b + S_USE_COUNT] = _COUNT_TAB[c] if c < 256 else c / (c + COUNT_SCALE)
        obs[b + S_SPEC] = spec[spec_base + x] if (scores_ok and sl == target) else 0.0
        ready = slot_f[K.SL_READY, s]
        obs[b + S_IN_FLIGHT] = 1.0 if ready > now else 0.0
        obs[b + S_PREFETCHED] = 1.0 if slot_i[K.SL_PREFETCHED, s] == 1 else 0.0
        cand = False
        if evicting and lo <= s < hi:
            cand = (not timed) or (slot_f[K.SL_FREE_AT, s] <= now and ready <= now)
        obs[b + S_CANDIDATE] = 1.0 if cand else 0.0
        mask[s] = cand or not evicting
        if cand:
            n_cand += 1
        _remembered(obs, b, mem, n_obj, obj, L if d == 0 else d, pass_id, L, sc)
    if evicting:  # the incoming expert's row: choosing it = bypass
        b = rows * F
        obj = ist[K.I_PENDING_OBJ]
        il = obj // E
        d = il - layer
        if d < 0:
            d += L
        obs[b + S_LAYER_AHEAD] = layer_tab[d]
        obs[b + S_SPEC] = spec[spec_base + obj % E] if (scores_ok and il == target) else 0.0
        obs[b + S_CANDIDATE] = 1.0 if bypass_ok else 0.0
        obs[b + S_INCOMING] = 1.0
        mask[rows] = bypass_ok
        _remembered(obs, b, mem, n_obj, obj, L if d == 0 else d, pass_id, L, sc)
    _ranks(k, obs, rank_tab)

    g = (rows + 1) * F
    obs[g + G_LAYER] = layer / L
    obs[g + G_DECODE] = 1.0 if k.pass_kind[p] == 1 else 0.0
    obs[g + G_PROGRESS] = min(k.progress[p] / PROGRESS_PASSES, 1.0)
    backlog = (fst[K.S_COPY_FREE] - now) / k.cfg_f[K.F_XFER]
    obs[g + G_BACKLOG] = min(max(backlog, 0.0), BACKLOG_CLIP) / BACKLOG_CLIP
    obs[g + G_DEMAND] = 1.0 if pend == K.DEMAND else 0.0
    obs[g + G_PREFETCH] = 1.0 if pend == K.PREFETCH else 0.0
    obs[g + G_CHOICE] = 1.0 if pend == K.PREFETCH_CHOICE else 0.0
    if pend == K.PREFETCH:
        obs[g + G_PENDING_LAYER] = ((ist[K.I_PENDING_OBJ] // E - layer) % L) / L
    elif pend == K.PREFETCH_CHOICE:
        obs[g + G_PENDING_LAYER] = la / L
    else:
        obs[g + G_PENDING_LAYER] = 0.0
    if pend == K.PREFETCH or pend == K.PREFETCH_CHOICE:
        obs[g + G_BUDGET] = min(max(ist[K.I_BUDGET], 0), E) / E
    else:
        obs[g + G_BUDGET] = 0.0
    obs[g + G_OCCUPANCY] = n_occ / C
    obs[g + G_CANDIDATES] = n_cand / C
    if with_scores:
        base = g + N_GLOBAL_FEATURES
        for x in range(E):
            obs[base + x] = spec[spec_base + x] if scores_ok else 0.0
