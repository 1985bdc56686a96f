"""The replay's arenas unpacked into named views, in compiled code.

:func:`unpack` turns an argument-table address into a :class:`State` (a namedtuple of borrowed array
views and a few sizes), which every compiled part -- the kernel, the environment's step, the policies'
view -- reads. The layout is :mod:`specmd_env.kernel.layout`.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from specmd_env.kernel.layout import (
    A_EV_COUNT, A_EV_DENSE, A_EV_EST, A_EV_OBJ, A_EV_PASS, A_EV_PTR, A_MASS, A_OCC_POS, A_OCC_PTR, A_PASS_KIND,
    A_PASS_READY, A_PROGRESS, A_SF, A_SI, A_SPEC, C_ENGINES, C_EXPERTS, C_LAYERS, H_CAP, H_CFG_F, H_CFG_I,
    H_ENGINE, H_FST, H_IST, H_LISTS, H_LOG, H_LOG_LEN, H_MET, H_NSCOPES, H_OBJS, H_OBJ_I, H_P0, H_P1,
    H_PASS_END, H_PF_F, H_PF_F_LEN, H_PF_I, H_PF_I_LEN, H_POL_F, H_POL_F_LEN, H_POL_I, H_POL_I_LEN, H_QUEUE_F,
    H_QUEUE_I, H_QUEUE_LEN, H_SCOPE, H_SLOT_F, H_SLOT_I, H_WORK, H_WORK_LEN, N_ARGS, N_CFG_F, N_CFG_I,
    N_ENGINE_F, N_FST, N_IST, N_LISTS, N_MET, N_OBJ_I, N_QUEUE_F, N_QUEUE_I, N_SCOPE, N_SLOT_F, N_SLOT_I)
from specmd_env.kernel.native import array2d_at, array_at

State = namedtuple("State", [
    "tab", "si", "sf", "cfg_i", "cfg_f", "ist", "fst", "slot_i", "slot_f", "obj_i", "lists", "scope", "work",
    "met", "pass_end", "pol_i", "pol_f", "pf_i", "pf_f", "q_i", "q_f", "log", "eng",
    "ev_ptr", "occ_ptr", "occ_pos", "pass_kind", "ev_obj", "ev_count", "ev_pass",
    "ev_dense", "ev_est", "progress", "pass_ready", "spec", "mass",
    "capacity", "num_layers", "num_experts"])


@njit(cache=True, inline="always")
def arena(tab, k, dtype):
    """Argument ``k`` of the table at address ``tab``, borrowed."""
    t = array_at(tab, 2 * N_ARGS, np.int64)
    return array_at(t[k], t[N_ARGS + k], dtype)


@njit(cache=True, inline="always")
def unpack(tab):
    """Every part of the replay whose argument table is at address ``tab``. Each part is built from its
    address alone (no slicing, no reference counting)."""
    t = array_at(tab, 2 * N_ARGS, np.int64)
    si = array_at(t[A_SI], t[N_ARGS + A_SI], np.int64)
    a_si, a_sf = t[A_SI], t[A_SF]
    C = si[H_CAP]
    n_obj = si[H_OBJS]
    S = si[H_NSCOPES]
    cfg_i = array_at(a_si + 8 * si[H_CFG_I], N_CFG_I, np.int64)
    q_len = si[H_QUEUE_LEN]
    p0 = si[H_P0]
    return State(
        tab, si, array_at(a_sf, t[N_ARGS + A_SF], np.float64), cfg_i,
        array_at(a_sf + 8 * si[H_CFG_F], N_CFG_F, np.float64), array_at(a_si + 8 * si[H_IST], N_IST, np.int64),
        array_at(a_sf + 8 * si[H_FST], N_FST, np.float64),
        array2d_at(a_si + 8 * si[H_SLOT_I], N_SLOT_I, C, np.int64),
        array2d_at(a_sf + 8 * si[H_SLOT_F], N_SLOT_F, C, np.float64),
        array2d_at(a_si + 8 * si[H_OBJ_I], N_OBJ_I, n_obj, np.int64),
        array2d_at(a_si + 8 * si[H_LISTS], N_LISTS, S, np.int64),
        array2d_at(a_si + 8 * si[H_SCOPE], N_SCOPE, S, np.int64),
        array_at(a_si + 8 * si[H_WORK], si[H_WORK_LEN], np.int64),
        array_at(a_sf + 8 * si[H_MET], N_MET, np.float64),
        array_at(a_sf + 8 * (si[H_PASS_END] + p0), si[H_P1] - p0, np.float64),
        array_at(a_si + 8 * si[H_POL_I], si[H_POL_I_LEN], np.int64),
        array_at(a_sf + 8 * si[H_POL_F], si[H_POL_F_LEN], np.float64),
        array_at(a_si + 8 * si[H_PF_I], si[H_PF_I_LEN], np.int64),
        array_at(a_sf + 8 * si[H_PF_F], si[H_PF_F_LEN], np.float64),
        array2d_at(a_si + 8 * si[H_QUEUE_I], N_QUEUE_I, q_len, np.int64),
        array2d_at(a_sf + 8 * si[H_QUEUE_F], N_QUEUE_F, q_len, np.float64),
        array_at(a_si + 8 * si[H_LOG], si[H_LOG_LEN], np.int64),
        array2d_at(a_sf + 8 * si[H_ENGINE], N_ENGINE_F, cfg_i[C_ENGINES], np.float64),
        arena(tab, A_EV_PTR, np.int64), arena(tab, A_OCC_PTR, np.int64),
        arena(tab, A_OCC_POS, np.int64), arena(tab, A_PASS_KIND, np.int8), arena(tab, A_EV_OBJ, np.int32),
        arena(tab, A_EV_COUNT, np.int32), arena(tab, A_EV_PASS, np.int32),
        arena(tab, A_EV_DENSE, np.float64), arena(tab, A_EV_EST, np.float64), arena(tab, A_PROGRESS, np.float64),
        arena(tab, A_PASS_READY, np.float64), arena(tab, A_SPEC, np.float32), arena(tab, A_MASS, np.float32),
        C, cfg_i[C_LAYERS], cfg_i[C_EXPERTS])
