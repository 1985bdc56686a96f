"""Calling the policies: their compiled hooks are C functions the kernel calls through an address.

A policy (eviction or prefetch) is compiled on its own as ``int64 hook(int64 tab, int64 a, int64 b)``
functions (``numba.cfunc``, see :mod:`specmd_env.policy`), where ``tab`` is the address of the replay's
argument table; the kernel stores their addresses in ``cfg_i`` and calls them here. So the kernel holds no
policy-specific code, is compiled once, and a policy written by a user runs at the speed of a built-in.

Events (hits, loads, evictions, ...) are not delivered one call each: a call into separately compiled
code is cheap, but it is an optimisation barrier for the kernel around it. The kernel appends the
events a policy asked for to a log (kind, slot, object), and :func:`deliver_events` hands the whole log
to the policies' ``on_events(tab, n, 0)`` hooks -- before a policy is consulted, when the log is full,
and before the kernel returns -- so a policy always decides on a complete, ordered history.
"""

from __future__ import annotations

from numba import njit

from specmd_env.kernel.layout import (C_EVENT_FN, C_EVENT_MASK, C_PF_EVENT_FN, C_PF_EVENT_MASK, I_LOGGED,
                                      LOG_ENTRIES, LOG_WIDTH)
from specmd_env.kernel.native import call_hook


@njit(cache=True)
def _deliver(cfg_i, ist, tab):
    n = ist[I_LOGGED]
    ist[I_LOGGED] = 0
    if cfg_i[C_EVENT_MASK] != 0:
        call_hook(cfg_i[C_EVENT_FN], tab, n, 0)
    if cfg_i[C_PF_EVENT_MASK] != 0:
        call_hook(cfg_i[C_PF_EVENT_FN], tab, n, 0)


@njit(cache=True, inline="always")
def deliver_events(cfg_i, ist, tab):
    """Hand the logged events to the eviction policy's and the prefetcher's ``on_events`` hooks (out
    of line: the kernel's hot path keeps only the check)."""
    if ist[I_LOGGED] > 0:
        _deliver(cfg_i, ist, tab)


@njit(cache=True, inline="always")
def policy_event(cfg_i, ist, log, tab, kind, slot, obj):
    """Log an event if the eviction policy or the prefetcher asked for its kind."""
    if ((cfg_i[C_EVENT_MASK] | cfg_i[C_PF_EVENT_MASK]) >> kind) & 1:
        n = ist[I_LOGGED]
        log[LOG_WIDTH * n] = kind
        log[LOG_WIDTH * n + 1] = slot
        log[LOG_WIDTH * n + 2] = obj
        ist[I_LOGGED] = n + 1
        if n + 1 == LOG_ENTRIES:
            deliver_events(cfg_i, ist, tab)
