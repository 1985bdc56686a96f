"""What the observation remembers of past routing: per expert, how often and how recently it was used.

The kernel keeps a whole-history use count per expert, but a count alone cannot tell an expert used in
every one of the last few tokens from one used as often long ago, and routing persists from token to
token (on Mixtral-shaped traces a recency-weighted frequency halves the gap to Belady). So the
observation keeps, per (layer, expert) object, a *memory* of the layer events replayed so far:

* the number of forward passes that used it (``WHOLE``),
* the same count with each past use weighing ``2^(-age / h)`` (age in passes) for a short and a long
  half-life ``h`` (``SHORT``, ``LONG``: :data:`HALF_LIVES`),
* the pass of its last use (``LAST``; -1: never).

A layer event's accesses are remembered once the layer's router has run (the decision being made at
that event already knows them): the environment absorbs events up to the current one before it
builds an observation (and the rest of a chunk when it ends), and the compiled learned policy
absorbs each event on the kernel's ``"layer"`` event, delivered before it is consulted. Both call
:func:`absorb_event` on the same events in the same order, so their features agree bit for bit.

The memory is one float64 array (pass ids and counts are exact in float64):
``[WHOLE x n][SHORT x n][LONG x n][LAST x n]`` for ``n = L x E`` objects.
"""

from __future__ import annotations

import numpy as np
from numba import njit

HALF_LIVES = (2.0, 8.0)   # passes: the short and the long memory
WHOLE, SHORT, LONG, LAST, N_ROWS = range(5)
_DECAY_SHORT = 2.0 ** (-1.0 / HALF_LIVES[0])
_DECAY_LONG = 2.0 ** (-1.0 / HALF_LIVES[1])
WINDOW_SHORT = 1.0 / (1.0 - _DECAY_SHORT)   # the effective number of passes each decayed count spans
WINDOW_LONG = 1.0 / (1.0 - _DECAY_LONG)
_TABLE = 512  # decay^age for ages below this are read from tables (a power costs more than the rest of a row)
_POW_SHORT = _DECAY_SHORT ** np.arange(_TABLE, dtype=np.float64)
_POW_LONG = _DECAY_LONG ** np.arange(_TABLE, dtype=np.float64)


@njit(cache=True, inline="always")
def _decay_short(age):
    return _POW_SHORT[age] if age < _TABLE else _DECAY_SHORT ** age


@njit(cache=True, inline="always")
def _decay_long(age):
    return _POW_LONG[age] if age < _TABLE else _DECAY_LONG ** age


@njit(cache=True, inline="always")
def memory_size(num_objects):
    """float64 items of a memory over ``num_objects`` (layer, expert) objects."""
    return N_ROWS * num_objects


@njit(cache=True, inline="always")
def clear(mem, n_obj):
    """Forget everything (a new replay)."""
    for o in range(n_obj):
        mem[WHOLE * n_obj + o] = 0.0
        mem[SHORT * n_obj + o] = 0.0
        mem[LONG * n_obj + o] = 0.0
        mem[LAST * n_obj + o] = -1.0


@njit(cache=True, inline="always")
def absorb_event(mem, n_obj, ev_ptr, ev_obj, ev_pass, e):
    """Remember the accesses of layer event ``e`` of the current chunk (each object once per event)."""
    p = np.int64(ev_pass[e])
    for j in range(ev_ptr[e], ev_ptr[e + 1]):
        o = ev_obj[j]
        last = np.int64(mem[LAST * n_obj + o])
        if last == p:
            continue
        age = p - last  # a never-used object's counts are 0: any decay leaves them 0
        mem[WHOLE * n_obj + o] += 1.0
        mem[SHORT * n_obj + o] = mem[SHORT * n_obj + o] * _decay_short(age) + 1.0
        mem[LONG * n_obj + o] = mem[LONG * n_obj + o] * _decay_long(age) + 1.0
        mem[LAST * n_obj + o] = p


@njit(cache=True, inline="always")
def scales(pass_id):
    """The Laplace denominators' inverses as of pass ``pass_id`` (whole history, short, long window)."""
    passes = pass_id + 1.0
    return (1.0 / (passes + 2.0), 1.0 / (min(WINDOW_SHORT, passes) + 2.0),
            1.0 / (min(WINDOW_LONG, passes) + 2.0))


@njit(cache=True, inline="always")
def frequencies(mem, n_obj, o, pass_id, scale_whole, scale_short, scale_long):
    """(whole, short, long, recency) of object ``o`` as of pass ``pass_id`` (``scale_*``: :func:`scales`):
    estimated fractions of passes that use it, with Laplace's rule (an expert never seen is neither
    certain nor impossible), and ``1 / (1 + passes since its last use)`` (0 if never used)."""
    last = np.int64(mem[LAST * n_obj + o])
    whole = (mem[WHOLE * n_obj + o] + 1.0) * scale_whole
    if last < 0:
        return whole, scale_short, scale_long, 0.0
    age = pass_id - last
    short = (mem[SHORT * n_obj + o] * _decay_short(age) + 1.0) * scale_short
    long_ = (mem[LONG * n_obj + o] * _decay_long(age) + 1.0) * scale_long
    return min(whole, 1.0), min(short, 1.0), min(long_, 1.0), 1.0 / (1.0 + age)


def new_memory(num_objects: int) -> np.ndarray:
    mem = np.zeros(memory_size(num_objects), np.float64)
    mem[LAST * num_objects:] = -1.0
    return mem
