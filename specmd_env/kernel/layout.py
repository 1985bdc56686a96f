"""Where every piece of replay state lives: the arenas, their header, and the names of their rows.

A replay's whole state is two flat arrays, ``si`` (int64) and ``sf`` (float64); the current schedule
chunk is four more (``ci`` int64, ``c32`` int32, ``cf`` float64, ``cs`` float32). ``si`` begins with a
header (``H_*``) that says where each part starts, so compiled code finds everything from the six
arrays alone, and a policy compiled on its own finds them from one address (the *argument table*: the
arrays' addresses then their lengths, see :func:`argument_table`).

Names, not numbers: ``slot_i[SL_USE, s]`` is slot s's last use. Policies never index these directly;
they read the named view of :mod:`specmd_env.policy`. A developer's caveat: numba caches compiled code
per source file and does not notice when a constant imported from here changes; after editing this file
in a working tree run ``find specmd_env -name '*.nb[ic]' -delete``.
"""

from __future__ import annotations

import numpy as np

# -- kernel status and pending decisions ---------------------------------------------------------------
DONE, NEED_VICTIM, NEED_PREFETCH, BAD_VICTIM = 0, 1, 2, 3   # BAD_VICTIM: a policy hook returned a slot it may not evict
DEMAND, PREFETCH, PREFETCH_CHOICE = 1, 2, 3     # what a pending decision is for (ist[I_PENDING])
NO_ACTION = -2   # ist[I_ACTION] when no decision has been given (-1 is a decision: bypass / skip)

# -- events a policy may ask to see; bit i of its mask = kind i. The kernel logs them (kind, slot, object)
# and hands the log to the policy's ``on_events`` hook in order, before the policy is next consulted ---------
EV_INIT, EV_PASS, EV_LAYER, EV_HIT, EV_LOAD, EV_PREFETCH, EV_HINT, EV_EVICT, EV_MISS, N_EVENTS = range(10)
EVENT_NAMES = ("init", "pass", "layer", "hit", "load", "prefetch", "hint", "evict", "miss")
LOG_ENTRIES = 256   # events logged between two deliveries at most
LOG_WIDTH = 3       # int64 items per logged event: kind, slot (or -1), object (or the pass / event index)

# -- miss handlers (cfg_i[C_MISS]) ------------------------------------------------------------------------
MISS_FETCH, MISS_DROP, MISS_LOWBIT, MISS_CASCADE, MISS_SUBSTITUTE, MISS_CPU = range(6)
# -- copy engine ordering (cfg_i[C_ENGINE]) and when a victim is evicted (cfg_i[C_EVICT_AT]) ------------------
ENGINE_FIFO, ENGINE_DEMAND_FIRST, ENGINE_PREEMPT, ENGINE_SEPARATE = range(4)
EVICT_AT_ISSUE, EVICT_AT_START = range(2)

# -- argument table: the arrays' addresses, then their lengths: the two state arenas, the schedule chunk's
# arrays (specmd_env.schedule.Chunk), the environment's output buffers -----------------
(A_SI, A_SF, A_EV_PTR, A_EV_OBJ, A_EV_COUNT, A_EV_PASS, A_EV_DENSE, A_EV_EST, A_MASS, A_OCC_PTR, A_OCC_POS,
 A_SPEC, A_PASS_KIND, A_PROGRESS, A_PASS_READY, A_OBS, A_MASK, A_ACT, A_ORC, N_ARGS) = range(20)
ARG_DTYPES = (np.int64, np.float64, np.int64, np.int32, np.int32, np.int32, np.float64, np.float64, np.float32,
              np.int64, np.int64, np.float32, np.int8, np.float64, np.float64, np.float32, np.bool_, np.int64,
              np.int64)
N_CHUNK_ARGS = A_OBS  # the state arenas and the chunk: what a plain replay binds

# -- si header ------------------------------------------------------------------------------------------------
(H_CFG_I, H_IST, H_SLOT_I, H_OBJ_I, H_LISTS, H_SCOPE, H_WORK, H_WORK_LEN, H_CAP, H_OBJS, H_NSCOPES,
 H_POL_I, H_POL_I_LEN, H_PF_I, H_PF_I_LEN, H_QUEUE_I,
 # offsets into sf
 H_CFG_F, H_FST, H_SLOT_F, H_MET, H_PASS_END, H_PASS_END_LEN, H_POL_F, H_POL_F_LEN, H_PF_F, H_PF_F_LEN,
 H_QUEUE_F, H_QUEUE_LEN, H_LOG, H_LOG_LEN, H_ENGINE,
 # the current chunk's passes, and whether it carries speculative scores
 H_P0, H_P1, H_HAS_SPEC,
 # the environment's (unused by plain replays)
 H_ORACLE, H_SCORES, H_INVALID, H_RANK_TAB, H_RANK_LEN, H_LAYER_TAB, H_REWARD, N_HEADER) = range(42)

# -- cfg_i: integer settings ------------------------------------------------------------------------------------
(C_CAPACITY, C_LAYERS, C_EXPERTS, C_PER_ACCESS, C_NSCOPES, C_LOOKAHEAD, C_BUDGET, C_MISS, C_EXT_EVICT,
 C_EXT_PREFETCH, C_VICTIM_FN, C_EVENT_FN, C_EVENT_MASK, C_PF_FN, C_PF_EVENT_FN, C_PF_EVENT_MASK, C_ORDERS,
 C_NEXT_USE, C_ENGINE, C_ENGINES, C_EVICT_AT, C_SHIFT, C_LOW_BITS, C_HOST_SLOTS, C_HOST_LRU, N_CFG_I) = range(26)
# -- cfg_f: float settings ----------------------------------------------------------------------------------------
# F_XFER: one full-precision transfer on one engine; F_XFER_LOW: one low-precision copy; F_CHUNK: the
# preemption granularity; F_CASCADE_FULL / F_CASCADE_LOW: the drop cascade's thresholds T1 / T2
# F_SSD_READ: one expert read from the SSD into host memory (two tiers: cfg_i[C_HOST_SLOTS] > 0)
(F_XFER, F_XFER_LOW, F_EXPERT_PER_TOKEN, F_EXPERT_MIN, F_CPU_PER_TOKEN, F_CPU_MIN, F_CHUNK, F_CASCADE_FULL,
 F_CASCADE_LOW, F_SSD_READ, N_CFG_F) = range(11)

# -- ist: integer state ---------------------------------------------------------------------------------------------
# I_RUNNING, I_WAITING: under continuous batching, the step's running sequences and the requests arrived
# and not yet admitted (written when a step is composed; 0 under the static schedule)
(I_EVENT, I_PHASE, I_INDEX, I_TICK, I_PASS, I_PASS_TICK, I_RNG, I_PENDING, I_PENDING_OBJ, I_ACTION, I_NMISS,
 I_BUDGET, I_PF_COUNT, I_PF_READY, I_POSITION, I_QUEUED, I_LOGGED, I_BITS, I_HOST_COUNT, I_HOST_HEAD,
 I_HOST_TAIL, I_RUNNING, I_WAITING, N_IST) = range(24)
# -- fst: float state -------------------------------------------------------------------------------------------------
# S_NEED: when the pending demand load's copy may be issued (its victim is chosen at S_DECISION)
S_COMPUTE, S_COPY_FREE, S_ROUTER, S_DECISION, S_CPU_FREE, S_SSD_FREE, S_NEED, N_FST = range(8)

# -- slot_i rows: per cache slot --------------------------------------------------------------------------------------
(SL_OBJ, SL_LAYER, SL_EXPERT, SL_INSERT, SL_USE, SL_TOUCH, SL_COUNT, SL_PREFETCHED, SL_TOUCH_PASS, SL_BITS,
 SL_USE_PREV, SL_USE_NEXT, SL_TOUCH_PREV, SL_TOUCH_NEXT, SL_INS_PREV, SL_INS_NEXT, N_SLOT_I) = range(17)
# -- slot_f rows ---------------------------------------------------------------------------------------------------------
SL_READY, SL_FREE_AT, N_SLOT_F = range(3)
# -- obj_i rows: per (layer, expert) object --------------------------------------------------------------------------
# OB_HOST: in host memory (two tiers); OB_HOST_PREV / NEXT: the host cache's order (oldest first)
OB_SLOT, OB_SEEN, OB_EVICT_PASS, OB_CURSOR, OB_USES, OB_LAST_USE, OB_HOST, OB_HOST_PREV, OB_HOST_NEXT, N_OBJ_I = \
    range(10)
# -- lists rows: per scope, head and tail of the kernel's three slot orders (kept when cfg_i[C_ORDERS]) ------------
L_USE_HEAD, L_USE_TAIL, L_TOUCH_HEAD, L_TOUCH_TAIL, L_INS_HEAD, L_INS_TAIL, N_LISTS = range(7)
ORDER_USE, ORDER_TOUCH, ORDER_INSERT = L_USE_HEAD, L_TOUCH_HEAD, L_INS_HEAD
# cfg_i[C_ORDERS]: which orders the kernel keeps (a bit each; a policy pays only for the orders it reads)
KEEP_USE, KEEP_TOUCH, KEEP_INSERT = 1, 2, 4
KEEP_ALL = KEEP_USE | KEEP_TOUCH | KEEP_INSERT
ORDER_BITS = {"use": KEEP_USE, "touch": KEEP_TOUCH, "insert": KEEP_INSERT}
# -- scope rows: per scope, its slot range [lo, hi) ----------------------------------------------------------------------
SC_LO, SC_HI, N_SCOPE = range(3)

# -- met: metrics (all float64; counts are exact integers below 2**53) ------------------------------------------------
METRIC_NAMES = ("accesses", "hits", "misses", "compulsory_misses", "capacity_misses", "collision_misses",
                "late_prefetch_misses", "prefetches_issued", "prefetches_used", "prefetches_wasted",
                "prefetches_skipped", "transfers", "bypassed", "stall_seconds", "dropped_experts",
                "evictions", "decisions", "token_accesses", "gate_mass", "gate_mass_dropped",
                "gate_mass_substituted", "gate_mass_low_precision", "low_precision_transfers",
                "substituted_experts", "cpu_experts", "cpu_seconds", "demand_wait_seconds", "ssd_reads")
(M_ACCESSES, M_HITS, M_MISSES, M_COMPULSORY, M_CAPACITY, M_COLLISION, M_LATE, M_PF_ISSUED, M_PF_USED,
 M_PF_WASTED, M_PF_SKIPPED, M_TRANSFERS, M_BYPASSED, M_STALL, M_DROPPED, M_EVICTIONS, M_DECISIONS,
 M_TOKEN_ACCESSES, M_MASS, M_MASS_DROPPED, M_MASS_SUBSTITUTED, M_MASS_LOW, M_LOW_TRANSFERS, M_SUBSTITUTED,
 M_CPU_EXPERTS, M_CPU_SECONDS, M_DEMAND_WAIT, M_SSD_READS, N_MET) = range(29)

# -- queue rows (prefetches issued and not yet finished, for demand-first engines), in si (int) and sf (float) ---
Q_SLOT, Q_ENGINE, N_QUEUE_I = range(3)
Q_START, Q_END, N_QUEUE_F = range(3)
# -- engine rows (per copy engine, in sf): when it is free of all committed work; when its last demand ends -------
E_FREE, E_DEMAND_END, N_ENGINE_F = range(3)

# phases of a layer event
P_START, P_MISSES, P_PREFETCH, P_END = 0, 1, 2, 3
REWARD_PART = 8  # float64 items of the environment's reward bookkeeping (specmd_env.envs._core.R_*)
INF = np.inf
NEVER = np.int64(1) << np.int64(62)
FULL_BITS = 16


def scope_bounds(capacity: int, num_layers: int, per_layer) -> np.ndarray:
    """[N_SCOPE, scopes] slot ranges: one scope of every slot, or one per layer. ``per_layer`` is
    False, True (every slot used: the remainder goes one slot each to the first layers) or a list of
    per-layer sizes summing to at most ``capacity``."""
    if per_layer is False:
        sizes = np.array([capacity], np.int64)
    elif per_layer is True:
        sizes = np.full(num_layers, capacity // num_layers, np.int64)
        sizes[:capacity % num_layers] += 1
    else:
        sizes = np.asarray(per_layer, np.int64)
    bounds = np.zeros((N_SCOPE, len(sizes)), np.int64)
    bounds[SC_HI] = np.cumsum(sizes)
    bounds[SC_LO] = bounds[SC_HI] - sizes
    return bounds


class Arenas:
    """Allocates a replay's ``si`` / ``sf`` arenas and hands out named views of their parts.

    ``parts_i`` / ``parts_f``: (header slot, shape) in allocation order; the header slot receives the
    part's offset. Views returned by :meth:`view` share memory with the arenas."""

    def __init__(self, parts_i, parts_f):
        size_i = N_HEADER + sum(int(np.prod(shape)) for _, shape in parts_i)
        size_f = sum(int(np.prod(shape)) for _, shape in parts_f)
        self.si = np.zeros(size_i, np.int64)
        self.sf = np.zeros(max(size_f, 1), np.float64)
        self._shapes = {}
        for arena, parts, start in ((self.si, parts_i, N_HEADER), (self.sf, parts_f, 0)):
            o = start
            for h, shape in parts:
                self.si[h] = o
                self._shapes[h] = (arena, o, tuple(shape))
                o += int(np.prod(shape))

    def view(self, h: int) -> np.ndarray:
        arena, o, shape = self._shapes[h]
        return arena[o:o + int(np.prod(shape))].reshape(shape)


def argument_table(args, out=None, start: int = 0) -> np.ndarray:
    """The argument table of ``args`` (arrays in ``A_*`` order from ``start``; the others are left as they are):
    their data addresses, then their lengths. The arrays must be 1-D, C-contiguous, of ``ARG_DTYPES``,
    and kept alive for as long as the table is used."""
    if out is None:
        out = np.zeros(2 * N_ARGS, np.int64)
    for k, a in enumerate(args, start):
        dt = ARG_DTYPES[k]
        if a.dtype != dt or a.ndim != 1 or not a.flags.c_contiguous:
            raise TypeError(f"argument {k} must be a contiguous 1-D {np.dtype(dt)} array, got {a.dtype} {a.shape}")
        out[k] = a.__array_interface__["data"][0]
        out[N_ARGS + k] = a.size
    return out
