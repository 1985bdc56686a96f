"""The environment's observation: a flat float32 vector, built by one compiled function.

Layout (``ObservationLayout``): ``capacity x N_SLOT_FEATURES`` per-slot features (slot-major: slot s's
features are ``obs[s * F:(s + 1) * F]``), then ``N_GLOBAL_FEATURES`` global features, then (prefetch
and joint modes only) the next layer's ``E`` speculative scores. Every value lies in [0, 1]. The table
of meanings is in :class:`specmd_env.envs.cache_env.SpecMDCacheEnv` and docs/ENVIRONMENT.md.

Ages are exact *ranks* (the slot's position in the kernel's own use / touch / insertion order among
occupied slots, divided by ``scope size - 1``), not tick differences: float32 keeps every rank
distinct, so an agent taking the argmax of a rank reproduces LRU, Least-Stale or FIFO exactly.
Nothing here reads the future; oracle facts (next use, the next layer's true routing) go to ``info``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from specmd_env import kernel as K

SLOT_FEATURES = ("occupied", "layer_ahead", "current", "use_age", "touch_age", "insert_age", "use_count",
                 "spec_score", "in_flight", "prefetched_unused", "candidate")
GLOBAL_FEATURES = ("layer", "decode", "request_progress", "copy_backlog", "pending_demand", "pending_prefetch",
                   "pending_prefetch_choice", "pending_layer_ahead", "prefetch_budget", "occupancy",
                   "candidate_fraction")
(S_OCCUPIED, S_LAYER_AHEAD, S_CURRENT, S_USE_AGE, S_TOUCH_AGE, S_INSERT_AGE, S_USE_COUNT, S_SPEC, S_IN_FLIGHT,
 S_PREFETCHED, S_CANDIDATE) = range(len(SLOT_FEATURES))
(G_LAYER, G_DECODE, G_PROGRESS, G_BACKLOG, G_DEMAND, G_PREFETCH, G_CHOICE, G_PENDING_LAYER, G_BUDGET,
 G_OCCUPANCY, G_CANDIDATES) = range(len(GLOBAL_FEATURES))
N_SLOT_FEATURES = len(SLOT_FEATURES)
N_GLOBAL_FEATURES = len(GLOBAL_FEATURES)
COUNT_SCALE = 16.0        # use_count = count / (count + COUNT_SCALE): monotone, distinct in float32 below ~16,000
BACKLOG_CLIP = 16.0       # copy_backlog = min(backlog / transfer time, BACKLOG_CLIP) / BACKLOG_CLIP
PROGRESS_PASSES = 256.0   # request_progress = min(passes since the batch group began / 256, 1)


class ObservationLayout:
    """Where each feature sits in the flat observation vector."""

    def __init__(self, capacity: int, num_experts: int, with_scores: bool):
        self.capacity = int(capacity)
        self.num_experts = int(num_experts)
        self.with_scores = bool(with_scores)
        self.slot_size = self.capacity * N_SLOT_FEATURES
        self.global_start = self.slot_size
        self.scores_start = self.global_start + N_GLOBAL_FEATURES
        self.size = self.scores_start + (self.num_experts if with_scores else 0)

    def slots(self, obs: np.ndarray) -> np.ndarray:
        """[capacity, N_SLOT_FEATURES] view of the per-slot features."""
        return obs[..., :self.slot_size].reshape(obs.shape[:-1] + (self.capacity, N_SLOT_FEATURES))

    def globals(self, obs: np.ndarray) -> np.ndarray:
        return obs[..., self.global_start:self.scores_start]

    def scores(self, obs: np.ndarray) -> np.ndarray | None:
        """The next layer's speculative scores (prefetch and joint modes), else None."""
        return obs[..., self.scores_start:self.size] if self.with_scores else None

    def names(self) -> list[str]:
        """A name for every index (``slot12.use_age``, ``global.layer``, ``score.5``)."""
        out = [f"slot{s}.{f}" for s in range(self.capacity) for f in SLOT_FEATURES]
        out += [f"global.{g}" for g in GLOBAL_FEATURES]
        if self.with_scores:
            out += [f"score.{x}" for x in range(self.num_experts)]
        return out


@njit(cache=True)
def _ranks(cfg_i, slot_i, lists, obs, head_row, next_row, feature):
    """Write each occupied slot's age rank in one of the kernel's ordered lists: 1 = the list head
    (oldest, the first victim), 0 = the tail, evenly spaced by position among occupied slots."""
    capacity = cfg_i[K.C_CAPACITY]
    scopes = cfg_i[K.C_SCOPES]
    for scope in range(scopes):
        if scopes == 1:
            lo, hi = 0, capacity
        else:
            share = capacity // cfg_i[K.C_LAYERS]
            lo, hi = scope * share, (scope + 1) * share
        n = 0
        for s in range(lo, hi):
            if slot_i[K.SL_OBJ, s] >= 0:
                n += 1
        denom = max(hi - lo - 1, 1)
        s = lists[head_row, scope]
        k = 0
        while s >= 0:
            if slot_i[K.SL_OBJ, s] >= 0:
                obs[s * N_SLOT_FEATURES + feature] = (n - 1 - k) / denom
                k += 1
            s = slot_i[next_row, s]


@njit(cache=True)
def build_observation(cfg_i, cfg_f, ist, fst, slot_i, slot_f, lists, ev_ptr, num_events, spec, has_spec,
                      pass_kind, progress, obs, mask, with_scores):
    """Fill ``obs`` and ``mask`` (the slots that may be evicted now; all True when no eviction is due)."""
    C = cfg_i[K.C_CAPACITY]
    L = cfg_i[K.C_LAYERS]
    E = cfg_i[K.C_EXPERTS]
    la = cfg_i[K.C_LOOKAHEAD]
    e = min(ist[K.I_EVENT], num_events - 1)
    layer = e % L
    p = e // L
    target = layer + la
    spec_base = (p * (L - 1) + target - 1) * E
    scores_ok = has_spec and target < L
    pend = ist[K.I_PENDING]
    evicting = pend == K.DEMAND or pend == K.PREFETCH
    now = fst[K.S_DECISION] if evicting else fst[K.S_ROUTER]
    lo, hi = 0, 0
    if evicting:
        lo, hi = K.scope_range(cfg_i, ist[K.I_PENDING_OBJ] // E)
    timed = cfg_i[K.C_PER_ACCESS] == 0
    pass_tick = ist[K.I_PASS_TICK]
    n_occ = 0
    n_cand = 0
    F = N_SLOT_FEATURES
    for s in range(C):
        b = s * F
        obj = slot_i[K.SL_OBJ, s]
        if obj < 0:
            for f in range(F):
                obs[b + f] = 0.0
            mask[s] = not evicting
            continue
        n_occ += 1
        sl = obj // E
        obs[b + S_OCCUPIED] = 1.0
        obs[b + S_LAYER_AHEAD] = ((sl - layer) % L) / L
        obs[b + S_CURRENT] = 1.0 if slot_i[K.SL_TOUCH, s] > pass_tick else 0.0
        c = slot_i[K.SL_COUNT, s]
        obs[b + S_USE_COUNT] = c / (c + COUNT_SCALE)
        obs[b + S_SPEC] = spec[spec_base + obj % E] if (scores_ok and sl == target) else 0.0
        obs[b + S_IN_FLIGHT] = 1.0 if slot_f[K.SL_READY, s] > now else 0.0
        obs[b + S_PREFETCHED] = 1.0 if slot_i[K.SL_PREFETCHED, s] == 1 else 0.0
        cand = False
        if evicting and lo <= s < hi:
            cand = (not timed) or (slot_f[K.SL_FREE_AT, s] <= now and slot_f[K.SL_READY, s] <= now)
        obs[b + S_CANDIDATE] = 1.0 if cand else 0.0
        mask[s] = cand or not evicting
        if cand:
            n_cand += 1
    _ranks(cfg_i, slot_i, lists, obs, K.L_USE_HEAD, K.SL_USE_NEXT, S_USE_AGE)
    _ranks(cfg_i, slot_i, lists, obs, K.L_TOUCH_HEAD, K.SL_TOUCH_NEXT, S_TOUCH_AGE)
    _ranks(cfg_i, slot_i, lists, obs, K.L_INS_HEAD, K.SL_INS_NEXT, S_INSERT_AGE)

    g = C * F
    obs[g + G_LAYER] = layer / L
    obs[g + G_DECODE] = 1.0 if pass_kind[p] == 1 else 0.0
    obs[g + G_PROGRESS] = progress[p]
    backlog = (fst[K.S_COPY_FREE] - now) / cfg_f[K.F_XFER]
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
