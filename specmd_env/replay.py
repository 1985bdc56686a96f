"""A replay: one trace, one cache configuration, driven chunk by chunk through the compiled kernel.

:class:`Replay` resolves names to specs, plans the forward passes, lays the state out in arenas
(:mod:`specmd_env.kernel.layout`), feeds schedule chunks to :func:`specmd_env.kernel.advance` and turns
the kernel's counters into a :class:`Result`. Compiled policies run inside the kernel: :meth:`run`
makes no Python call per access. Decisions the caller makes itself (``decide=("eviction",)``: the
Gymnasium environment; or a Python policy object, the slow path) pause the kernel; :meth:`advance`,
:meth:`decide` and :meth:`choose_prefetch` drive it, and :class:`PythonView` shows a Python policy
the same named state a compiled one sees.
"""

from __future__ import annotations

import numpy as np

from specmd_env import kernel as K
from specmd_env.checks import integer_array, shorten
from specmd_env.errors import SpecMDError
from specmd_env.eviction import EvictionPolicy, get_eviction
from specmd_env.hardware import HardwareProfile, capacity_slots, get_profile, quantized_expert_bytes
from specmd_env.kernel.layout import Arenas, argument_table, scope_bounds
from specmd_env.kernel.setup import start_replay
from specmd_env.models import ModelSpec, get_model
from specmd_env.policy import work_size
from specmd_env.prefetch import Prefetcher, get_prefetcher
from specmd_env.result import Result
from specmd_env.schedule import PassPlan, StaticSchedule, build_chunk
from specmd_env.serving import ContinuousSchedule
from specmd_env.serving import arrival_times as arrival_times_of
from specmd_env.trace import Trace

SCOPES = ("global", "per-layer", "adapmoe")   # or a list of per-layer sizes
SCHEDULERS = ("static", "continuous")
GATINGS = ("none", "adaptive")
MODES = ("event", "per-access")
MISS_HANDLERS = {"fetch": K.MISS_FETCH, "drop": K.MISS_DROP, "low-precision": K.MISS_LOWBIT,
                 "cascade": K.MISS_CASCADE, "substitute": K.MISS_SUBSTITUTE, "cpu": K.MISS_CPU}
MISS_HANDLING = tuple(MISS_HANDLERS)
COPY_ENGINES = {"fifo": K.ENGINE_FIFO, "demand-first": K.ENGINE_DEMAND_FIRST, "preempt": K.ENGINE_PREEMPT,
                "separate": K.ENGINE_SEPARATE}
EVICT_AT = {"issue": K.EVICT_AT_ISSUE, "start": K.EVICT_AT_START}
EXTERNAL = "external"
DECISIONS = ("eviction", "prefetch")
_NO_SCORES = np.zeros(1, np.float32)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SpecMDError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise SpecMDError(f"{name} must be one of {allowed}, got {value!r}")
    return value


class Replay:
    """One replay of ``trace``; see :func:`specmd_env.simulate` for the meaning of every keyword.

    ``decide``: the decisions the caller makes itself ("eviction": every victim, with ``eviction`` as
    the policy that keeps its state and answers for invalid choices; "prefetch": the experts of layer
    l + lookahead to fetch). ``observe``: keep what the environment's observation reads (the kernel's
    slot orders, speculative scores, rank tables)."""

    def __init__(self, trace: Trace, *, model: str | ModelSpec | None = None,
                 hardware: str | HardwareProfile = "paper-a100-5gbps", capacity: float | int = 0.05,
                 eviction="lru", prefetch: str | Prefetcher | None = "none", lookahead: int = 1,
                 batch_size: int = 1, scope: str = "global", mode: str = "event", miss: str = "fetch",
                 prefetch_mass: float = 0.8, prefetch_max: int | None = None, prefetch_budget="engine",
                 copy_engine: str = "demand-first", copy_engines: int | None = None, preempt_chunks: int = 3,
                 evict_at: str = "issue", low_bits: int = 4, cascade: tuple = (0.6, 0.9), gating: str = "none",
                 scheduler: str = "static", arrival_rate: float | None = None, arrival_times=None,
                 max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, host_policy: str = "lru",
                 seed: int = 0, requests=None, decide: tuple = (), observe: bool = False):
        if not isinstance(trace, Trace):
            raise SpecMDError(f"trace must be a specmd_env.Trace (see specmd_env.load_trace), got {type(trace).__name__}")
        self.trace = trace
        self.model = get_model(model if model is not None else trace.model)
        if (trace.num_layers, trace.num_experts, trace.top_k) != \
                (self.model.num_layers, self.model.num_experts, self.model.top_k):
            raise SpecMDError(
                f"trace shape {trace.num_layers} layers x {trace.num_experts} experts, top-{trace.top_k} does not "
                f"match model {self.model.name!r} ({self.model.num_layers} x {self.model.num_experts}, "
                f"top-{self.model.top_k})")
        L = self.model.num_layers
        self.hardware = get_profile(hardware)
        self.capacity = capacity_slots(self.model, capacity)
        self.lookahead = _positive_int("lookahead", lookahead)
        if self.lookahead >= L:
            raise SpecMDError(f"lookahead must be below the layer count {L}, got {lookahead}")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.scope = scope if isinstance(scope, (list, tuple, np.ndarray)) else _choice("scope", scope, SCOPES)
        self.gating = _choice("gating", gating, GATINGS)
        self._gating_sensitivity = None
        if self.gating == "adaptive":
            from specmd_env.adapmoe import sensitivities
            self._gating_sensitivity = sensitivities(self.model)
            if trace.gate_weights is None:
                raise SpecMDError("gating='adaptive' reads gate weights, but this trace has none")
        self.mode = _choice("mode", mode, MODES)
        self.miss = _choice("miss", miss, MISS_HANDLING)
        self.copy_engine = _choice("copy_engine", copy_engine, tuple(COPY_ENGINES))
        self.copy_engines = (self.hardware.copy_engines_for_h2d if copy_engines is None
                             else _positive_int("copy_engines", copy_engines))
        if self.copy_engine == "separate":
            if copy_engines not in (None, 2):
                raise SpecMDError("copy_engine='separate' has its own two channels (demand, prefetch); leave "
                                  f"copy_engines unset, got {copy_engines!r}")
            self.copy_engines = 2
        self.preempt_chunks = _positive_int("preempt_chunks", preempt_chunks)
        self.evict_at = _choice("evict_at", evict_at, tuple(EVICT_AT))
        if isinstance(low_bits, bool) or low_bits not in (2, 3, 4, 8):
            raise SpecMDError(f"low_bits must be 2, 3, 4 or 8 (bits per weight of the low-precision copy), "
                              f"got {low_bits!r}")
        self.low_bits = int(low_bits)
        if not (isinstance(cascade, (tuple, list)) and len(cascade) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in cascade)
                and 0.0 <= cascade[0] <= cascade[1] <= 1.0):
            raise SpecMDError(f"cascade must be (T1, T2) with 0 <= T1 <= T2 <= 1 (gate-mass thresholds: full "
                              f"precision within T1, low precision within T2, skip beyond), got {cascade!r}")
        self.cascade = (float(cascade[0]), float(cascade[1]))
        if self.miss == "cpu":
            self.hardware.cpu_expert_seconds(self.model, 1)  # refuses a profile without CPU figures
        self.host_policy = _choice("host_policy", host_policy, ("lru", "fifo"))
        host = self.hardware.host_expert_slots(self.model)
        self.host_slots = host if self.hardware.has_ssd_tier and host < self.model.num_routed_experts else 0
        if self.hardware.has_ssd_tier and host < 1:
            raise SpecMDError(f"hardware profile {self.hardware.name!r}: host memory ({self.hardware.host_expert_gib} "
                              f"GiB) holds no expert of {self.model.name!r}")
        unknown = set(decide) - set(DECISIONS)
        if unknown:
            raise SpecMDError(f"decide may hold {DECISIONS}, got {sorted(unknown)}")
        self.layer_sizes = self._layer_sizes(capacity)
        budget = -1 if prefetch_budget == "engine" else _positive_int("prefetch_budget", prefetch_budget, minimum=0)
        self.seed = _positive_int("seed", seed, minimum=0)

        # -- prefetcher ---------------------------------------------------------------------------------
        self.prefetch_object = None
        python_prefetcher = not isinstance(prefetch, (str, Prefetcher)) and hasattr(prefetch, "propose")
        external_prefetch = "prefetch" in decide or prefetch == EXTERNAL or python_prefetcher
        if python_prefetcher:  # the slow path: propose(view) -> expert ids of layer l + lookahead
            self.prefetch_object = prefetch
        self.external_prefetch = external_prefetch
        self.prefetcher = get_prefetcher("none" if external_prefetch else prefetch, self.model.top_k,
                                         mass=prefetch_mass, max_count=prefetch_max)
        self.prefetch_label = (getattr(prefetch, "name", EXTERNAL) if external_prefetch else self.prefetcher.label)
        if self.prefetcher.needs_spec_scores and trace.spec_scores is None:
            missing = trace.meta.get("missing")
            raise SpecMDError(f"prefetch={self.prefetcher.name!r} needs speculative scores, but this trace has none"
                              f"{f' (its metadata lists as missing: {missing})' if missing else ''}; "
                              f"use prefetch='none' or the 'oracle' prefetcher")

        # -- eviction policy ----------------------------------------------------------------------------
        self.policy_object = None
        external_eviction = "eviction" in decide or eviction == EXTERNAL
        policy = get_eviction("lru" if eviction == EXTERNAL else eviction)
        if not isinstance(policy, EvictionPolicy):  # a Python object: the slow path
            self.policy_object = policy
            self.eviction_label = getattr(policy, "name", type(policy).__name__)
            self.eviction_is_oracle = bool(getattr(policy, "is_oracle", False))
            external_eviction, policy = True, None
        else:
            self.eviction_label = EXTERNAL if eviction == EXTERNAL else policy.label
            self.eviction_is_oracle = policy.is_oracle
        self.policy: EvictionPolicy | None = policy
        needed = getattr(policy, "requires_prefetcher", None)
        if needed is not None and self.prefetcher.name.split(":")[0] != needed:
            raise SpecMDError(f"eviction policy {policy.name!r} reads the {needed!r} prefetcher's state: use "
                              f"prefetch={needed!r} (or --preset {needed}), got prefetch={self.prefetch_label!r}")
        self.external_eviction = external_eviction
        self.needs_next_use = self.eviction_is_oracle or external_eviction
        self.observe = bool(observe)
        # the substitute handler ranks the resident experts by the trace's scores, like a prefetcher
        self.with_spec = trace.spec_scores is not None and (
            self.prefetcher.needs_spec_scores or self.observe or self.miss == "substitute"
            or bool(getattr(self.policy, "needs_spec_scores", False)))
        if requests is not None:
            chosen = np.asarray(requests)
            if chosen.ndim != 1 or (chosen.size and (chosen.dtype.kind not in "iu" or chosen.min() < 0
                                                     or chosen.max() >= trace.num_requests)):
                raise SpecMDError(f"requests must be a list of trace request indices in [0, {trace.num_requests}), "
                                  f"got {requests!r:.120}")

        trace.check_file()
        self.scheduler = _choice("scheduler", scheduler, SCHEDULERS)
        replayed = np.arange(trace.num_requests) if requests is None else np.asarray(requests, np.int64)
        arrivals = arrival_times_of(len(replayed), rate=arrival_rate, times=arrival_times, seed=self.seed)
        self.arrivals = arrivals
        if self.scheduler == "static":
            self.schedule = StaticSchedule(trace, self.batch_size, requests,
                                           None if arrival_rate is None and arrival_times is None else arrivals)
            self.plan: PassPlan | None = self.schedule.plan
        else:
            if self.eviction_is_oracle:
                raise SpecMDError(f"eviction={self.eviction_label!r} reads the future of the schedule, which continuous "
                                  "batching decides as it runs: use scheduler='static' for oracles")
            seqs = _positive_int("max_num_seqs", max_num_seqs)
            tokens = _positive_int("max_num_batched_tokens", max_num_batched_tokens)
            if tokens < seqs:
                raise SpecMDError(f"max_num_batched_tokens ({tokens}) must be at least max_num_seqs ({seqs}): every "
                                  "running sequence needs a token per step")
            self.schedule = ContinuousSchedule(trace, replayed, arrivals, self.model, self.hardware, max_num_seqs=seqs,
                                               max_num_batched_tokens=tokens, with_spec=self.with_spec)
            self.plan = None
        self._build_state(budget, external_eviction, external_prefetch)
        self.chunk = None
        self.done = self.schedule.num_passes == 0 or len(replayed) == 0
        if not self.done:
            self._next_chunk()
        start_replay(self.tab)

    def _layer_sizes(self, capacity) -> list[int] | None:
        """Slots per layer for a per-layer scope (None: one shared cache)."""
        L, C = self.model.num_layers, self.capacity
        if isinstance(self.scope, str) and self.scope == "global":
            return None
        if isinstance(self.scope, str) and self.scope == "per-layer":
            if C < L:
                raise SpecMDError(f"scope='per-layer' needs at least one slot per layer: capacity {capacity!r} "
                                  f"gives {C} slots for {L} layers")
            return [C // L + (layer < C % L) for layer in range(L)]  # every slot used
        if isinstance(self.scope, str):  # adapmoe: the DP on the trace's train split
            from specmd_env.adapmoe import layer_sizes, measured_rates
            from specmd_env.envs.cache_env import split_requests
            accuracy, drop_share = measured_rates(self.trace, split_requests(self.trace, "train"),
                                                  self.gating == "adaptive")
            if C < L:
                raise SpecMDError(f"scope='adapmoe' needs at least one slot per layer: {C} slots for {L} layers")
            return layer_sizes(C, self.model.num_experts, self.model.top_k, accuracy, drop_share)
        sizes = list(self.scope)
        if len(sizes) != L or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes) \
                or sum(sizes) > C:
            raise SpecMDError(f"scope as per-layer sizes must list {L} integers >= 1 summing to at most the "
                              f"{C} slots, got {shorten(sizes)}")
        return [int(s) for s in sizes]

    # -- state --------------------------------------------------------------------------------------
    def _build_state(self, budget: int, external_eviction: bool, external_prefetch: bool) -> None:
        L, E, C = self.model.num_layers, self.model.num_experts, self.capacity
        scopes = scope_bounds(C, L, False if self.layer_sizes is None else self.layer_sizes)
        S = scopes.shape[1]
        pol_i, pol_f = (self.policy.new_state(C, L, E, S) if self.policy is not None
                        else (np.zeros(0, np.int64), np.zeros(0, np.float64)))
        pf_i, pf_f = self.prefetcher.new_state(C, L, E, S)
        n_obj = self.model.num_routed_experts
        queue = C + 1  # prefetches in flight or queued: at most one per slot
        parts_i = [(K.H_CFG_I, (K.N_CFG_I,)), (K.H_IST, (K.N_IST,)), (K.H_SLOT_I, (K.N_SLOT_I, C)),
                   (K.H_OBJ_I, (K.N_OBJ_I, n_obj)), (K.H_LISTS, (K.N_LISTS, S)), (K.H_SCOPE, (K.N_SCOPE, S)),
                   (K.H_WORK, (work_size(L, E),)), (K.H_POL_I, pol_i.shape), (K.H_PF_I, pf_i.shape),
                   (K.H_QUEUE_I, (K.N_QUEUE_I, queue)), (K.H_LOG, (K.LOG_WIDTH * K.LOG_ENTRIES,))]
        parts_f = [(K.H_CFG_F, (K.N_CFG_F,)), (K.H_FST, (K.N_FST,)), (K.H_SLOT_F, (K.N_SLOT_F, C)),
                   (K.H_MET, (K.N_MET,)), (K.H_PASS_END, (self.schedule.num_passes,)), (K.H_POL_F, pol_f.shape),
                   (K.H_PF_F, pf_f.shape), (K.H_QUEUE_F, (K.N_QUEUE_F, queue)),
                   (K.H_ENGINE, (K.N_ENGINE_F, self.copy_engines))]
        if self.observe:
            from specmd_env.envs.observation import layer_table, rank_table
            ranks, layers = rank_table(C, L, S, scopes), layer_table(L)
            parts_f += [(K.H_RANK_TAB, ranks.shape), (K.H_LAYER_TAB, layers.shape), (K.H_REWARD, (K.REWARD_PART,))]
        arenas = Arenas(parts_i, parts_f)
        si = arenas.si
        si[K.H_WORK_LEN], si[K.H_CAP], si[K.H_OBJS], si[K.H_NSCOPES] = work_size(L, E), C, n_obj, S
        si[K.H_POL_I_LEN], si[K.H_POL_F_LEN] = pol_i.size, pol_f.size
        si[K.H_PF_I_LEN], si[K.H_PF_F_LEN] = pf_i.size, pf_f.size
        si[K.H_QUEUE_LEN], si[K.H_PASS_END_LEN] = queue, self.schedule.num_passes
        si[K.H_LOG_LEN] = K.LOG_WIDTH * K.LOG_ENTRIES
        if self.observe:
            si[K.H_RANK_LEN] = ranks.size
            arenas.view(K.H_RANK_TAB)[:] = ranks
            arenas.view(K.H_LAYER_TAB)[:] = layers
        self.si, self.sf = si, arenas.sf
        (self.cfg_i, self.ist, self.slot_i, self.obj_i, self.lists, self.scopes, self.work, self.cfg_f, self.fst,
         self.slot_f, self.met, self.pass_end) = (arenas.view(h) for h in (
            K.H_CFG_I, K.H_IST, K.H_SLOT_I, K.H_OBJ_I, K.H_LISTS, K.H_SCOPE, K.H_WORK, K.H_CFG_F, K.H_FST,
            K.H_SLOT_F, K.H_MET, K.H_PASS_END))
        self.scopes[:] = scopes
        arenas.view(K.H_POL_I)[:], arenas.view(K.H_POL_F)[:] = pol_i, pol_f
        arenas.view(K.H_PF_I)[:], arenas.view(K.H_PF_F)[:] = pf_i, pf_f

        cfg = self.cfg_i
        cfg[K.C_CAPACITY], cfg[K.C_LAYERS], cfg[K.C_EXPERTS], cfg[K.C_NSCOPES] = C, L, E, S
        cfg[K.C_PER_ACCESS] = self.mode == "per-access"
        cfg[K.C_LOOKAHEAD] = self.lookahead
        cfg[K.C_BUDGET] = budget
        cfg[K.C_MISS] = MISS_HANDLERS[self.miss]
        cfg[K.C_ENGINE], cfg[K.C_ENGINES] = COPY_ENGINES[self.copy_engine], self.copy_engines
        cfg[K.C_EVICT_AT], cfg[K.C_LOW_BITS] = EVICT_AT[self.evict_at], self.low_bits
        cfg[K.C_EXT_EVICT], cfg[K.C_EXT_PREFETCH] = external_eviction, external_prefetch
        if self.policy is not None:
            cfg[K.C_VICTIM_FN], cfg[K.C_EVENT_FN] = self.policy.hook_addresses
            cfg[K.C_EVENT_MASK] = self.policy.event_mask
        cfg[K.C_PF_FN], cfg[K.C_PF_EVENT_FN] = self.prefetcher.hook_addresses
        cfg[K.C_PF_EVENT_MASK] = self.prefetcher.event_mask
        for mask, fn, who in ((cfg[K.C_EVENT_MASK], cfg[K.C_EVENT_FN], self.eviction_label),
                              (cfg[K.C_PF_EVENT_MASK], cfg[K.C_PF_EVENT_FN], self.prefetch_label)):
            if mask and not fn:
                raise SpecMDError(f"{who!r} asks for events but has no compiled on_events hook")
        cfg[K.C_ORDERS] = K.KEEP_ALL if self.observe else (self.policy.order_mask if self.policy is not None else 0)
        cfg[K.C_NEXT_USE] = self.needs_next_use
        cfg[K.C_SHIFT] = int(np.log2(E)) if E & (E - 1) == 0 else -1
        # concurrent copies share the host link: each of N engines moves at 1/N of its bandwidth (the
        # unphysical 'separate' channel excepted: each of its two runs at full bandwidth)
        hw, model, f = self.hardware, self.model, self.cfg_f
        share = 1 if self.copy_engine == "separate" else self.copy_engines
        f[K.F_XFER] = hw.transfer_latency_us * 1e-6 + (hw.transfer_seconds(model.expert_bytes)
                                                      - hw.transfer_latency_us * 1e-6) * share
        f[K.F_XFER_LOW] = hw.transfer_latency_us * 1e-6 + (hw.expert_transfer_seconds(model, bits=self.low_bits)
                                                          - hw.transfer_latency_us * 1e-6) * share
        f[K.F_CHUNK] = f[K.F_XFER] / self.preempt_chunks
        f[K.F_EXPERT_PER_TOKEN], f[K.F_EXPERT_MIN] = hw.expert_roofline(model)
        f[K.F_CASCADE_FULL], f[K.F_CASCADE_LOW] = self.cascade
        if self.host_slots:  # two tiers: host memory holds some experts, the SSD all
            cfg[K.C_HOST_SLOTS], cfg[K.C_HOST_LRU] = self.host_slots, self.host_policy == "lru"
            f[K.F_SSD_READ] = hw.ssd_read_seconds(model.expert_bytes)
        if self.miss == "cpu":
            f[K.F_CPU_MIN] = float(hw.cpu_expert_seconds(model, 0))
            f[K.F_CPU_PER_TOKEN] = float(hw.cpu_expert_seconds(model, 1e6)) / 1e6

        mixed = (self.seed * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & (2**64 - 1)
        self.ist[K.I_RNG] = np.array(mixed or 1, dtype=np.uint64).view(np.int64)
        self.ist[K.I_PASS] = -1
        self.ist[K.I_ACTION] = K.NO_ACTION
        self.slot_i[K.SL_OBJ] = -1
        self.slot_f[K.SL_FREE_AT] = -np.inf
        self.obj_i[K.OB_SLOT] = -1
        self.obj_i[K.OB_EVICT_PASS] = -1
        self.ist[K.I_HOST_HEAD] = self.ist[K.I_HOST_TAIL] = -1
        self.tab = np.zeros(2 * K.N_ARGS, np.int64)

    def bind_table(self, row: np.ndarray) -> None:
        """Keep the argument table in ``row`` (a row of the caller's table, e.g. a vector env's)."""
        row[:] = self.tab
        self.tab = row

    @property
    def tab_address(self) -> int:
        return self.tab.ctypes.data

    # -- driving the kernel -------------------------------------------------------------------------
    def _next_chunk(self) -> bool:
        """Bind the next schedule chunk (a static plan's passes, or continuous batching's next step)."""
        self.trace.check_file()  # a memory-mapped trace file that changed would give SIGBUS or wrong data
        if self.schedule.continuous:
            if self.chunk is None:  # the step buffers: bound once, rewritten by each step
                self.chunk = self.schedule.buffers
                self.si[K.H_P0], self.si[K.H_P1] = 0, 1
                self.si[K.H_HAS_SPEC] = self.with_spec
                argument_table((self.si, self.sf) + self.chunk, self.tab)
            more = self.schedule.next_step(self.tab.ctypes.data, float(self.fst[K.S_COMPUTE]))
            self.ist[K.I_RUNNING], self.ist[K.I_WAITING] = self.schedule.load()
            self.ist[K.I_EVENT] = 0
            self.ist[K.I_PHASE] = K.P_START
            return more
        bounds = self.schedule.next_bounds()
        if bounds is None:
            self.chunk = None
            return False
        p0, p1 = bounds
        c = self.chunk = build_chunk(self.trace, self.plan, p0, p1, self.model, self.hardware,
                                     with_spec=self.with_spec, with_next_use=self.needs_next_use,
                                     gating_sensitivity=self._gating_sensitivity)
        self.met[K.M_MASS] += c.gated_mass
        self.met[K.M_MASS_DROPPED] += c.gated_mass
        # kept alive here while the kernel reads them through the argument table
        self._chunk_arrays = (c.ev_ptr, c.ev_obj, c.ev_count, c.ev_pass, c.ev_dense, c.ev_est, c.ev_mass,
                              c.occ_ptr, c.occ_pos,
                              _NO_SCORES if c.spec is None else c.spec.reshape(-1),
                              self.plan.pass_kind[p0:p1], self.schedule.progress[p0:p1],
                              self.schedule.pass_ready[p0:p1])
        self.si[K.H_P0], self.si[K.H_P1] = p0, p1
        self.si[K.H_HAS_SPEC] = c.spec is not None
        argument_table((self.si, self.sf) + self._chunk_arrays, self.tab)
        self.ist[K.I_EVENT] = 0
        self.ist[K.I_PHASE] = K.P_START
        self.obj_i[K.OB_CURSOR] = 0
        return True

    def advance(self) -> bool:
        """Replay until a decision is due (True: see :attr:`pending_kind`) or the trace ends (False)."""
        while not self.done:
            if self.schedule.continuous:
                self.trace.check_file()
                status = self.schedule.serve(self.tab.ctypes.data, self.ist, self.fst)
            else:
                status = K.advance(self.tab.ctypes.data)
            if status == K.BAD_VICTIM and self.ist[K.I_ACTION] == K.NO_ACTION:
                raise SpecMDError("the replay was advanced without an answer to the pending decision: call decide()")
            if status == K.BAD_VICTIM:
                raise SpecMDError(
                    f"eviction policy {self.eviction_label!r} answered slot {int(self.ist[K.I_ACTION])}, which it may "
                    f"not evict now (not a candidate of [{', '.join(map(str, self.decision_scope()))}); a victim "
                    f"hook must return a candidate slot or -1")
            if status != K.DONE:
                return True
            if not self._next_chunk():
                self.done = True
        return False

    @property
    def pending_kind(self) -> str | None:
        """What is due: 'demand' or 'prefetch' (a victim slot, answer with :meth:`decide`),
        'prefetch-choice' (experts to prefetch, answer with :meth:`choose_prefetch`), or None."""
        return {K.DEMAND: "demand", K.PREFETCH: "prefetch",
                K.PREFETCH_CHOICE: "prefetch-choice"}.get(int(self.ist[K.I_PENDING]))

    @property
    def current_event(self) -> tuple[int, int]:
        """(global pass index, layer) of the layer event being replayed."""
        e = int(self.ist[K.I_EVENT])
        ev_pass = self.chunk[3] if self.schedule.continuous else self.chunk.ev_pass
        return int(ev_pass[e]), e % self.model.num_layers

    @property
    def prefetch_budget(self) -> int:
        """Transfers the copy engine may still start for layer l + lookahead (a fixed budget's count)."""
        return int(self.ist[K.I_BUDGET])

    def speculative_scores(self) -> np.ndarray | None:
        """Mean speculative scores over the current pass's tokens for layer l + lookahead (what a
        prefetcher may see when layer l's router runs), or None if the trace has none."""
        if self.trace.spec_scores is None or self.chunk is None:
            return None
        pass_index, layer = self.current_event
        row = layer + self.lookahead - 1
        if row >= self.model.num_layers - 1:
            return None
        if self.schedule.continuous:  # the step's mean scores, as the kernel sees them
            E = self.model.num_experts
            return np.array(self.chunk[9][row * E:(row + 1) * E], np.float32)
        tokens = self.plan.pass_tok[self.plan.pass_ptr[pass_index]:self.plan.pass_ptr[pass_index + 1]]
        return np.asarray(self.trace.spec_scores[tokens, row], np.float32).mean(axis=0)

    def choose_prefetch(self, experts, layer: int | None = None) -> None:
        """Answer a 'prefetch-choice': expert ids of one later layer (default l + lookahead) to fetch,
        best first (may be empty). Experts already resident are hints; the copy engine's limits apply."""
        if self.pending_kind != "prefetch-choice":
            raise SpecMDError("no prefetch choice is pending")
        E = self.model.num_experts
        experts = integer_array("prefetch choice (expert ids)", experts, 0, E)  # [0.7] is refused, not expert 0
        if len(np.unique(experts)) != len(experts):
            raise SpecMDError(f"prefetch choice must be distinct expert ids, got {shorten(experts)}")
        _, now = self.current_event
        target = now + self.lookahead if layer is None else int(layer)
        if not now < target < self.model.num_layers:
            raise SpecMDError(f"prefetch target layer must be in ({now}, {self.model.num_layers}), got {target}")
        base = K.prefetch_base(E)
        self.work[base:base + len(experts)] = target * E + experts
        self.ist[K.I_PF_COUNT] = len(experts)
        self.ist[K.I_PF_READY] = 1
        self.ist[K.I_PENDING] = 0

    @property
    def pending_object(self) -> int:
        """The (layer * E + expert) object that needs a slot."""
        return int(self.ist[K.I_PENDING_OBJ])

    @property
    def decision_time(self) -> float:
        return float(self.fst[K.S_DECISION])

    def decision_scope(self) -> tuple[int, int]:
        """The slot range the pending object may use."""
        layer = self.pending_object // self.model.num_experts
        sc = 0 if self.scopes.shape[1] == 1 else layer
        return int(self.scopes[K.SC_LO, sc]), int(self.scopes[K.SC_HI, sc])

    def candidate_mask(self) -> np.ndarray:
        """Slots that may be evicted for the pending decision (pinned and in-flight ones may not)."""
        mask = np.zeros(self.capacity, bool)
        if self.pending_kind not in ("demand", "prefetch"):
            return mask
        lo, hi = self.decision_scope()
        t = self.decision_time
        s = np.arange(lo, hi)
        occupied = self.slot_i[K.SL_OBJ, lo:hi] >= 0
        if self.mode == "per-access":
            mask[s] = occupied
        else:
            mask[s] = occupied & (self.slot_f[K.SL_FREE_AT, lo:hi] <= t) & (self.slot_f[K.SL_READY, lo:hi] <= t)
        return mask

    def decide(self, slot: int) -> None:
        """Answer the pending decision with the slot to evict, or -1: do not cache the expert (a demand
        miss is then served from a staging buffer; a prefetch is skipped)."""
        if self.pending_kind not in ("demand", "prefetch"):
            raise SpecMDError(f"no eviction decision is pending (pending: {self.pending_kind})")
        if not isinstance(slot, bool) and isinstance(slot, (int, np.integer)) and slot == -1:
            self.ist[K.I_ACTION] = -1
            return
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.capacity \
                or not self.candidate_mask()[slot]:
            raise SpecMDError(f"slot {slot!r} may not be evicted now (pinned by the layer computing, in flight, "
                              f"empty, or outside this layer's share); candidates: {shorten(np.flatnonzero(self.candidate_mask()))}")
        self.ist[K.I_ACTION] = int(slot)

    def policy_victim(self) -> int:
        """The answer this replay's own compiled eviction policy gives to the pending decision: a slot,
        or -1 (bypass). What an agent that decides "as the policy would" passes to :meth:`decide`; the
        kernel delivers the policy's events before it pauses, so the hook sees the whole history."""
        if self.pending_kind not in ("demand", "prefetch"):
            raise SpecMDError(f"no eviction decision is pending (pending: {self.pending_kind})")
        if self.policy is None:
            raise SpecMDError(f"eviction policy {self.eviction_label!r} is a Python object, not compiled: ask it, "
                              "policy_object.victim(view())")
        lo, hi = self.decision_scope()
        return int(self.policy.victim.ctypes(self.tab_address, lo, hi))

    def view(self) -> "PythonView":
        """The named state a Python policy reads (numpy views; valid until the replay moves on)."""
        return PythonView(self)

    def run(self) -> Result:
        """Replay to the end, asking the Python policy objects (if any) at each decision."""
        while self.advance():
            if self.pending_kind == "prefetch-choice":
                if self.prefetch_object is None:
                    raise SpecMDError("prefetch='external' replays need choices: use advance()/choose_prefetch(), or the env")
                self.choose_prefetch(self.prefetch_object.propose(self.view()))
            else:
                if self.policy_object is None:
                    raise SpecMDError("eviction='external' replays need decisions: use advance()/decide(), or the env")
                self.decide(self.policy_object.victim(self.view()))
        return self.result()

    # -- results -----------------------------------------------------------------------------------
    def result(self) -> Result:
        m = {name: self.met[i] for i, name in enumerate(K.METRIC_NAMES)}
        requests = self.schedule.requests if self.schedule.continuous else self.plan.request_ids
        prefetched_resident = int(np.sum((self.slot_i[K.SL_PREFETCHED] == 1) & (self.slot_i[K.SL_OBJ] >= 0)))
        floats = {"stall_seconds", "gate_mass", "gate_mass_dropped", "gate_mass_substituted",
                  "gate_mass_low_precision", "cpu_seconds", "demand_wait_seconds"}
        counts = {k: int(v) for k, v in m.items() if k not in floats}
        return Result(
            eviction=self.eviction_label, prefetch=self.prefetch_label, model=self.model.name,
            hardware=self.hardware.name, capacity_slots=int(self.scopes[K.SC_HI, -1]),
            prefetches_resident_at_end=prefetched_resident,
            bytes_moved=(counts["transfers"] - counts["low_precision_transfers"]) * self.model.expert_bytes
            + counts["low_precision_transfers"] * quantized_expert_bytes(self.model, self.low_bits),
            prompt_tokens=int(np.sum(self.trace.prompt_lengths[requests])),
            **self.schedule.timings(self.pass_end), **counts, **{k: float(m[k]) for k in floats})


class PythonView:
    """What a Python policy sees: the same names as the compiled view (:mod:`specmd_env.policy`), as
    numpy arrays over the replay's state, plus its methods. The slow path: one Python call per
    decision (docs/POLICIES.md gives the measured speed)."""

    def __init__(self, replay: Replay):
        r = replay
        self.replay = r
        self.capacity, self.num_layers, self.num_experts = r.capacity, r.model.num_layers, r.model.num_experts
        e = int(r.ist[K.I_EVENT])
        self.now, self.layer, self.event = r.decision_time, e % self.num_layers, e
        self.pass_id, self.incoming = int(r.ist[K.I_PASS]), int(r.ist[K.I_PENDING_OBJ])
        self.decision = r.pending_kind
        si = r.slot_i
        self.slot_object, self.slot_layer, self.slot_expert = si[K.SL_OBJ], si[K.SL_LAYER], si[K.SL_EXPERT]
        self.last_use, self.last_touch, self.inserted = si[K.SL_USE], si[K.SL_TOUCH], si[K.SL_INSERT]
        self.uses, self.prefetched, self.touch_pass = si[K.SL_COUNT], si[K.SL_PREFETCHED], si[K.SL_TOUCH_PASS]
        self.ready, self.busy_until = r.slot_f[K.SL_READY], r.slot_f[K.SL_FREE_AT]
        self.total_uses, self.last_used, self.resident_slot = (r.obj_i[K.OB_USES], r.obj_i[K.OB_LAST_USE],
                                                               r.obj_i[K.OB_SLOT])
        self.lo, self.hi = r.decision_scope() if self.decision in ("demand", "prefetch") else (0, r.capacity)

    def candidates(self) -> np.ndarray:
        """Slot indices that may be evicted now."""
        return np.flatnonzero(self.replay.candidate_mask())

    def layer_ahead(self, s) -> np.ndarray:
        """(the slot's layer - the layer computing) mod L; works on arrays of slots."""
        return (self.slot_layer[s] - self.layer) % self.num_layers

    def next_turn(self, s) -> np.ndarray:
        """Layers until the slot's layer runs again (L for the layer computing now)."""
        d = self.layer_ahead(s)
        return np.where(d == 0, self.num_layers, d)
