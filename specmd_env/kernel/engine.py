"""The clocks: the copy engine that moves experts to the GPU, and the GPU computing them.

One FIFO copy engine: a transfer starts when the engine is free and the transfer has been issued, and
takes the profile's transfer time; a computed expert starts when the compute stream is free and the
expert has arrived, and the wait is stall time.
"""

from __future__ import annotations

from numba import njit

from specmd_env.kernel.layout import F_EXPERT_MIN, F_EXPERT_PER_TOKEN, M_STALL, M_TRANSFERS, S_COMPUTE, S_COPY_FREE


@njit(cache=True, inline="always")
def transfer(fst, met, t_issue, seconds):
    """Issue one transfer at ``t_issue``; returns when it has arrived."""
    start = max(fst[S_COPY_FREE], t_issue)
    ready = start + seconds
    fst[S_COPY_FREE] = ready
    met[M_TRANSFERS] += 1
    return ready


@njit(cache=True, inline="always")
def compute(cfg_f, fst, met, ready, tokens):
    """Compute one expert for ``tokens`` tokens once it is ready; returns its finish time."""
    start = max(fst[S_COMPUTE], ready)
    met[M_STALL] += start - fst[S_COMPUTE]
    fst[S_COMPUTE] = start + max(cfg_f[F_EXPERT_PER_TOKEN] * tokens, cfg_f[F_EXPERT_MIN])
    return fst[S_COMPUTE]
