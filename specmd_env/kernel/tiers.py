"""The memory hierarchy behind the GPU cache: host memory, itself a cache, in front of an SSD.

With one tier (the default) every expert is in host memory and a GPU miss pays one transfer. With two
(``cfg_i[C_HOST_SLOTS]`` > 0: the hardware profile's ``host_expert_gib``), host memory holds that many
experts; an expert missing there is first read from the SSD (one FIFO link, ``cfg_f[F_SSD_READ]`` per
expert) into host memory -- evicting the host cache's victim -- and then copied to the GPU, so it pays
both links. The host cache starts empty and keeps its own order: least recently used
(``cfg_i[C_HOST_LRU]``) or first in, first out. Every access to an expert, resident on the GPU or not,
is an access to the host copy's recency, since the GPU copy came from it.
"""

from __future__ import annotations

from numba import njit

from specmd_env.kernel.layout import (
    C_HOST_LRU, C_HOST_SLOTS, F_SSD_READ, I_HOST_COUNT, I_HOST_HEAD, I_HOST_TAIL, M_SSD_READS, OB_HOST,
    OB_HOST_NEXT, OB_HOST_PREV, S_SSD_FREE)


@njit(cache=True, inline="always")
def _unlink(ist, obj_i, obj):
    p, n = obj_i[OB_HOST_PREV, obj], obj_i[OB_HOST_NEXT, obj]
    if p >= 0:
        obj_i[OB_HOST_NEXT, p] = n
    else:
        ist[I_HOST_HEAD] = n
    if n >= 0:
        obj_i[OB_HOST_PREV, n] = p
    else:
        ist[I_HOST_TAIL] = p


@njit(cache=True, inline="always")
def _append(ist, obj_i, obj):
    t = ist[I_HOST_TAIL]
    obj_i[OB_HOST_PREV, obj], obj_i[OB_HOST_NEXT, obj] = t, -1
    if t >= 0:
        obj_i[OB_HOST_NEXT, t] = obj
    else:
        ist[I_HOST_HEAD] = obj
    ist[I_HOST_TAIL] = obj


@njit(cache=True, inline="always")
def host_access(cfg_i, ist, obj_i, obj):
    """An access to ``obj``'s host copy (LRU order: it becomes the newest)."""
    if cfg_i[C_HOST_SLOTS] > 0 and cfg_i[C_HOST_LRU] == 1 and obj_i[OB_HOST, obj] == 1:
        _unlink(ist, obj_i, obj)
        _append(ist, obj_i, obj)


@njit(cache=True, inline="always")
def in_host_by(cfg_i, cfg_f, ist, fst, met, obj_i, obj, t):
    """When ``obj`` is in host memory, for a GPU copy wanted at ``t``: ``t`` with one tier or when it is
    already there; else after an SSD read (which puts it there, evicting the host cache's victim)."""
    if cfg_i[C_HOST_SLOTS] == 0 or obj_i[OB_HOST, obj] == 1:
        return t
    ready = max(fst[S_SSD_FREE], t) + cfg_f[F_SSD_READ]
    fst[S_SSD_FREE] = ready
    met[M_SSD_READS] += 1
    if ist[I_HOST_COUNT] == cfg_i[C_HOST_SLOTS]:
        victim = ist[I_HOST_HEAD]
        _unlink(ist, obj_i, victim)
        obj_i[OB_HOST, victim] = 0
    else:
        ist[I_HOST_COUNT] += 1
    obj_i[OB_HOST, obj] = 1
    _append(ist, obj_i, obj)
    return ready
