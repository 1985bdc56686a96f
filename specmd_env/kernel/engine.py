"""The clocks: the copy engines that move experts to the GPU, and the GPU computing them.

Copy engines (``cfg_i[C_ENGINES]`` of them, sharing the host link: each moves at 1/N of its bandwidth,
which the replay folds into the transfer times) serve transfers in one of three orders
(``cfg_i[C_ENGINE]``):

* ``ENGINE_FIFO``: in issue order -- a demand load waits behind every prefetch issued before it;
* ``ENGINE_DEMAND_FIRST``: a demand load goes ahead of queued prefetches (not of the one in flight),
  as MoE-Infinity's I/O queue does (demand band 0, prefetch band 1, one copy thread); a prefetch that a
  layer now needs is promoted to a demand load;
* ``ENGINE_PREEMPT``: as demand-first, and a prefetch in flight is preempted at its next chunk boundary
  (``cfg_f[F_CHUNK]`` seconds of transfer; ProMoE splits an expert into gate/up/down chunks);
* ``ENGINE_SEPARATE``: prefetches travel on a channel of their own (engine 1), at full bandwidth, never
  delaying a demand load (engine 0) -- an UNPHYSICAL what-if for one host link (it doubles the
  bandwidth), kept because a study may have accounted prefetches this way.

Prefetches that have been issued but not yet finished are kept in a queue (``q_i`` / ``q_f``) so that a
demand load can push them back; their slots' arrival times move with them. A computed expert starts
when the compute stream is free and the expert has arrived; the wait is stall time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from specmd_env.kernel.layout import (
    C_ENGINE, C_ENGINES, ENGINE_DEMAND_FIRST, ENGINE_FIFO, ENGINE_PREEMPT, ENGINE_SEPARATE, E_DEMAND_END,
    E_FREE, F_CHUNK, F_EXPERT_MIN, F_EXPERT_PER_TOKEN, I_QUEUED, M_DEMAND_WAIT, M_STALL, M_TRANSFERS, Q_END,
    Q_ENGINE, Q_SLOT, Q_START, SL_FREE_AT, SL_PREFETCHED, SL_READY, S_COMPUTE, S_COPY_FREE)


@njit(cache=True, inline="always")
def _earliest_engine(cfg_i, eng):
    best = 0
    for k in range(1, cfg_i[C_ENGINES]):
        if eng[E_FREE, k] < eng[E_FREE, best]:
            best = k
    return best


@njit(cache=True, inline="always")
def _note_free(cfg_i, fst, eng):
    """The time the next prefetch could start (the budget's reference)."""
    fst[S_COPY_FREE] = eng[E_FREE, 1] if cfg_i[C_ENGINE] == ENGINE_SEPARATE else eng[E_FREE, _earliest_engine(cfg_i, eng)]


@njit(cache=True, inline="always")
def _drop_finished(ist, q_f, q_i, t):
    """Forget queued prefetches that have finished by ``t`` (keeping the others in order)."""
    m = 0
    for i in range(ist[I_QUEUED]):
        if q_f[Q_END, i] > t:
            if m != i:
                q_i[Q_SLOT, m], q_i[Q_ENGINE, m] = q_i[Q_SLOT, i], q_i[Q_ENGINE, i]
                q_f[Q_START, m], q_f[Q_END, m] = q_f[Q_START, i], q_f[Q_END, i]
            m += 1
    ist[I_QUEUED] = m


@njit(cache=True, inline="always")
def transfer_prefetch(cfg_i, ist, fst, met, eng, q_i, q_f, t_issue, seconds, slot):
    """Issue one prefetch at ``t_issue`` into ``slot``; returns when it arrives."""
    k = 1 if cfg_i[C_ENGINE] == ENGINE_SEPARATE else _earliest_engine(cfg_i, eng)
    start = max(eng[E_FREE, k], t_issue)
    ready = start + seconds
    eng[E_FREE, k] = ready
    _note_free(cfg_i, fst, eng)
    met[M_TRANSFERS] += 1
    if cfg_i[C_ENGINE] == ENGINE_DEMAND_FIRST or cfg_i[C_ENGINE] == ENGINE_PREEMPT:
        _drop_finished(ist, q_f, q_i, t_issue)
        n = ist[I_QUEUED]
        q_i[Q_SLOT, n], q_i[Q_ENGINE, n] = slot, k
        q_f[Q_START, n], q_f[Q_END, n] = start, ready
        ist[I_QUEUED] = n + 1
    return ready


@njit(cache=True, inline="always")
def _demand_start_on(cfg_i, cfg_f, ist, eng, q_i, q_f, k, t):
    """When a demand load issued at ``t`` could start on engine ``k``."""
    if cfg_i[C_ENGINE] == ENGINE_FIFO or cfg_i[C_ENGINE] == ENGINE_SEPARATE:
        return max(eng[E_FREE, k], t)
    start = max(t, eng[E_DEMAND_END, k])
    for i in range(ist[I_QUEUED]):
        if q_i[Q_ENGINE, i] == k and q_f[Q_START, i] <= t < q_f[Q_END, i]:  # the prefetch in flight
            end = q_f[Q_END, i]
            if cfg_i[C_ENGINE] == ENGINE_PREEMPT and cfg_f[F_CHUNK] > 0:
                chunks = np.ceil((t - q_f[Q_START, i]) / cfg_f[F_CHUNK])
                end = min(end, q_f[Q_START, i] + chunks * cfg_f[F_CHUNK])
            start = max(start, end)
    return start


@njit(cache=True, inline="always")
def plan_demand(cfg_i, cfg_f, ist, eng, q_i, q_f, t):
    """(engine, start): where and when a demand load issued at ``t`` would start (nothing committed)."""
    if cfg_i[C_ENGINE] == ENGINE_DEMAND_FIRST or cfg_i[C_ENGINE] == ENGINE_PREEMPT:
        _drop_finished(ist, q_f, q_i, t)
    if cfg_i[C_ENGINE] == ENGINE_SEPARATE:
        return 0, max(eng[E_FREE, 0], t)
    best, best_start = 0, np.inf
    for k in range(cfg_i[C_ENGINES]):
        start = _demand_start_on(cfg_i, cfg_f, ist, eng, q_i, q_f, k, t)
        if start < best_start:
            best, best_start = k, start
    return best, best_start


@njit(cache=True, inline="always")
def commit_demand(cfg_i, fst, met, eng, ist, q_i, q_f, slot_i, slot_f, k, t, start, seconds):
    """Run a demand load on engine ``k`` from ``start`` (from :func:`plan_demand`); queued prefetches
    of that engine that it overtakes (and a preempted one's remainder) move back by its duration.
    Returns its arrival time."""
    ready = start + seconds
    met[M_TRANSFERS] += 1
    met[M_DEMAND_WAIT] += start - t
    if cfg_i[C_ENGINE] == ENGINE_FIFO or cfg_i[C_ENGINE] == ENGINE_SEPARATE:
        eng[E_FREE, k] = ready
    else:
        last = ready
        for i in range(ist[I_QUEUED]):
            if q_i[Q_ENGINE, i] == k and q_f[Q_END, i] > start:
                if q_f[Q_START, i] >= start:
                    q_f[Q_START, i] += seconds
                q_f[Q_END, i] += seconds
                s = q_i[Q_SLOT, i]
                if s >= 0:
                    slot_f[SL_READY, s] = q_f[Q_END, i]
                    if slot_i[SL_PREFETCHED, s] == 1 and slot_f[SL_FREE_AT, s] < q_f[Q_END, i]:
                        slot_f[SL_FREE_AT, s] = q_f[Q_END, i]
                last = max(last, q_f[Q_END, i])
        eng[E_FREE, k] = max(eng[E_FREE, k], last)
        eng[E_DEMAND_END, k] = ready
    _note_free(cfg_i, fst, eng)
    return ready


@njit(cache=True, inline="always")
def promote(cfg_i, cfg_f, fst, met, eng, ist, q_i, q_f, slot_f, slot, t):
    """A layer needs the expert that a queued (not yet started) prefetch is bringing into ``slot``: with
    a demand-first engine, that transfer moves to the front of its engine's queue now -- the queued
    prefetches it overtakes move back by its duration, the ones behind it stay. Returns its arrival."""
    if cfg_i[C_ENGINE] != ENGINE_DEMAND_FIRST and cfg_i[C_ENGINE] != ENGINE_PREEMPT:
        return slot_f[SL_READY, slot]
    _drop_finished(ist, q_f, q_i, t)
    for i in range(ist[I_QUEUED]):
        if q_i[Q_SLOT, i] == slot and q_f[Q_START, i] > t:
            k, old_start = q_i[Q_ENGINE, i], q_f[Q_START, i]
            seconds = q_f[Q_END, i] - old_start
            for j in range(i + 1, ist[I_QUEUED]):
                q_i[Q_SLOT, j - 1], q_i[Q_ENGINE, j - 1] = q_i[Q_SLOT, j], q_i[Q_ENGINE, j]
                q_f[Q_START, j - 1], q_f[Q_END, j - 1] = q_f[Q_START, j], q_f[Q_END, j]
            ist[I_QUEUED] -= 1
            start = _demand_start_on(cfg_i, cfg_f, ist, eng, q_i, q_f, k, t)
            ready = start + seconds
            for j in range(ist[I_QUEUED]):
                if q_i[Q_ENGINE, j] == k and q_f[Q_END, j] > start and q_f[Q_START, j] < old_start:
                    if q_f[Q_START, j] >= start:
                        q_f[Q_START, j] += seconds
                    q_f[Q_END, j] += seconds
                    s = q_i[Q_SLOT, j]
                    slot_f[SL_READY, s] = q_f[Q_END, j]
                    slot_f[SL_FREE_AT, s] = max(slot_f[SL_FREE_AT, s], q_f[Q_END, j])
            eng[E_DEMAND_END, k] = ready
            met[M_DEMAND_WAIT] += start - t
            slot_f[SL_READY, slot] = ready
            return ready
    return slot_f[SL_READY, slot]


@njit(cache=True, inline="always")
def compute(cfg_f, fst, met, ready, tokens):
    """Compute one expert for ``tokens`` tokens once it is ready; returns its finish time."""
    start = max(fst[S_COMPUTE], ready)
    met[M_STALL] += start - fst[S_COMPUTE]
    fst[S_COMPUTE] = start + max(cfg_f[F_EXPERT_PER_TOKEN] * tokens, cfg_f[F_EXPERT_MIN])
    return fst[S_COMPUTE]
