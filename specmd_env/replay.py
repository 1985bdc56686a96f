"""A replay: one trace, one cache configuration, driven chunk by chunk through the compiled kernel.

:class:`Replay` resolves names to specs, plans the forward passes, feeds schedule chunks to
:func:`specmd_env.kernel.advance` and turns the kernel's counters into a :class:`Result`. With a
built-in eviction policy, :meth:`Replay.run` makes no Python call per access. With an *external*
policy (the Gymnasium environment, or any object with ``choose_victim(replay) -> slot``) the kernel
pauses at every eviction decision; :meth:`Replay.advance` and :meth:`Replay.decide` drive it.
"""

from __future__ import annotations

import numpy as np

from specmd_env import kernel
from specmd_env.checks import integer_array, shorten
from specmd_env.errors import SpecMDError
from specmd_env.eviction import EvictionPolicy, get_eviction
from specmd_env.hardware import HardwareProfile, capacity_slots, get_profile
from specmd_env.models import ModelSpec, get_model
from specmd_env.prefetch import Prefetcher, get_prefetcher
from specmd_env.result import Result
from specmd_env.schedule import PassPlan, build_chunk, plan_passes
from specmd_env.trace import Trace

SCOPES = ("global", "per-layer")
MODES = ("event", "per-access")
MISS_HANDLING = ("fetch", "drop")
EXTERNAL = "external"


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SpecMDError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise SpecMDError(f"{name} must be one of {allowed}, got {value!r}")
    return value


class Replay:
    """One replay of ``trace``; see :func:`specmd_env.simulate` for the meaning of every keyword."""

    def __init__(self, trace: Trace, *, model: str | ModelSpec | None = None,
                 hardware: str | HardwareProfile = "paper-a100-5gbps", capacity: float | int = 0.05,
                 eviction="lru", prefetch: str | Prefetcher | None = "none", lookahead: int = 1,
                 batch_size: int = 1, scope: str = "global", mode: str = "event", miss: str = "fetch",
                 prefetch_mass: float = 0.8, prefetch_max: int | None = None, prefetch_budget="engine",
                 seed: int = 0, requests=None):
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
        self.hardware = get_profile(hardware)
        self.capacity = capacity_slots(self.model, capacity)
        self.lookahead = _positive_int("lookahead", lookahead)
        if self.lookahead >= self.model.num_layers:
            raise SpecMDError(f"lookahead must be below the layer count {self.model.num_layers}, got {lookahead}")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.scope = _choice("scope", scope, SCOPES)
        self.mode = _choice("mode", mode, MODES)
        self.miss = _choice("miss", miss, MISS_HANDLING)
        if self.scope == "per-layer" and self.capacity // self.model.num_layers < 1:
            raise SpecMDError(f"scope='per-layer' needs at least one slot per layer: capacity {capacity!r} gives "
                              f"{self.capacity} slots for {self.model.num_layers} layers")
        if prefetch_budget == "engine":
            budget = -1
        else:
            budget = _positive_int("prefetch_budget", prefetch_budget, minimum=0)
        self.prefetch_object = None
        external_prefetch = prefetch == EXTERNAL or hasattr(prefetch, "choose_prefetch")
        if hasattr(prefetch, "choose_prefetch"):
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
        self.policy_object = None
        if eviction == EXTERNAL:
            self.eviction_label, code, self.eviction_is_oracle = EXTERNAL, kernel.EXTERNAL, False
        elif hasattr(eviction, "choose_victim"):
            self.policy_object = eviction
            self.eviction_label = getattr(eviction, "name", type(eviction).__name__)
            self.eviction_is_oracle = bool(getattr(eviction, "is_oracle", False))
            code = kernel.EXTERNAL
        else:
            policy: EvictionPolicy = get_eviction(eviction)
            self.eviction_label, code, self.eviction_is_oracle = policy.label, policy.code, policy.is_oracle
        self.needs_next_use = code in (kernel.BELADY, kernel.BELADY_BYPASS) or code == kernel.EXTERNAL
        self.seed = _positive_int("seed", seed, minimum=0)
        if requests is not None:
            chosen = np.asarray(requests)
            if chosen.ndim != 1 or (chosen.size and (chosen.dtype.kind not in "iu" or chosen.min() < 0
                                                     or chosen.max() >= trace.num_requests)):
                raise SpecMDError(f"requests must be a list of trace request indices in [0, {trace.num_requests}), "
                                  f"got {requests!r:.120}")

        trace.check_file()
        self.plan: PassPlan = plan_passes(trace, self.batch_size, requests)
        cfg_i = np.zeros(kernel.N_CFG_I, np.int64)
        cfg_i[kernel.C_POLICY] = code
        cfg_i[kernel.C_CAPACITY] = self.capacity
        cfg_i[kernel.C_LAYERS] = self.model.num_layers
        cfg_i[kernel.C_EXPERTS] = self.model.num_experts
        cfg_i[kernel.C_PER_ACCESS] = self.mode == "per-access"
        cfg_i[kernel.C_SCOPES] = 1 if self.scope == "global" else self.model.num_layers
        cfg_i[kernel.C_LOOKAHEAD] = self.lookahead
        cfg_i[kernel.C_DROP] = self.miss == "drop"
        cfg_i[kernel.C_BUDGET] = budget
        cfg_i[kernel.C_EXT_PREFETCH] = external_prefetch
        cfg_f = np.zeros(kernel.N_CFG_F, np.float64)
        cfg_f[kernel.F_XFER] = self.hardware.transfer_seconds(self.model.expert_bytes)
        cfg_f[kernel.F_EXPERT_PER_TOKEN], cfg_f[kernel.F_EXPERT_MIN] = self.hardware.expert_roofline(self.model)
        self.cfg_i, self.cfg_f = cfg_i, cfg_f
        (self.ist, self.fst, self.slot_i, self.slot_f, self.obj_i, self.met, self.work,
         self.lists) = kernel.new_state(self.capacity, self.model.num_routed_experts, self.model.num_experts,
                                        int(cfg_i[kernel.C_SCOPES]), self.seed)
        self.pass_end = np.zeros(self.plan.num_passes, np.float64)
        self._chunks = self.plan.chunks()
        self.chunk = None
        self.done = self.plan.num_passes == 0
        self._next_chunk()

    # -- driving the kernel -------------------------------------------------------------------------
    def _next_chunk(self) -> bool:
        self.trace.check_file()  # a memory-mapped trace file that changed would give SIGBUS or wrong data
        bounds = next(self._chunks, None)
        if bounds is None:
            self.chunk = None
            return False
        p0, p1 = bounds
        self.chunk = build_chunk(self.trace, self.plan, p0, p1, self.model, self.hardware,
                                 with_spec=self.prefetcher.needs_spec_scores, with_next_use=self.needs_next_use)
        self.pf_ptr, self.pf_obj = self.prefetcher.candidates(self.chunk, self.lookahead)
        self.ist[kernel.I_EVENT] = 0
        self.ist[kernel.I_PHASE] = kernel.P_START
        self.obj_i[kernel.OB_CURSOR] = 0
        return True

    def _kernel_args(self):
        c = self.chunk
        return (c.ev_ptr, c.ev_obj, c.ev_count, c.ev_pass, c.ev_dense, c.ev_est, self.pf_ptr, self.pf_obj,
                c.occ_ptr, c.occ_pos, self.cfg_i, self.cfg_f, self.ist, self.fst, self.slot_i, self.slot_f,
                self.obj_i, self.lists, self.met, self.work, self.pass_end[c.p0:c.p1])

    def advance(self) -> bool:
        """Replay until a decision is due (True: see :attr:`pending_kind`) or the trace ends (False)."""
        while not self.done:
            if kernel.advance(*self._kernel_args()) != kernel.DONE:
                return True
            if not self._next_chunk():
                self.done = True
        return False

    @property
    def pending_kind(self) -> str | None:
        """What is due: 'demand' or 'prefetch' (a victim slot, answer with :meth:`decide`),
        'prefetch-choice' (experts to prefetch, answer with :meth:`choose_prefetch`), or None."""
        return {kernel.DEMAND: "demand", kernel.PREFETCH: "prefetch",
                kernel.PREFETCH_CHOICE: "prefetch-choice"}.get(int(self.ist[kernel.I_PENDING]))

    @property
    def current_event(self) -> tuple[int, int]:
        """(global pass index, layer) of the layer event being replayed."""
        e = int(self.ist[kernel.I_EVENT])
        return int(self.chunk.ev_pass[e]), e % self.model.num_layers

    @property
    def prefetch_budget(self) -> int:
        """Transfers the copy engine may still start for the pending prefetch (-1 only when unset)."""
        return int(self.ist[kernel.I_BUDGET])

    def speculative_scores(self) -> np.ndarray | None:
        """Mean speculative scores over the current pass's tokens for layer l + lookahead (what a
        prefetcher may see when layer l's router runs), or None if the trace has none."""
        if self.trace.spec_scores is None or self.chunk is None:
            return None
        pass_index, layer = self.current_event
        row = layer + self.lookahead - 1
        if row >= self.model.num_layers - 1:
            return None
        tokens = self.plan.pass_tok[self.plan.pass_ptr[pass_index]:self.plan.pass_ptr[pass_index + 1]]
        return np.asarray(self.trace.spec_scores[tokens, row], np.float32).mean(axis=0)

    def choose_prefetch(self, experts) -> None:
        """Answer a 'prefetch-choice': expert ids of layer l + lookahead to fetch, best first (may be
        empty). Experts already resident are hints; the copy-engine budget still applies."""
        if self.pending_kind != "prefetch-choice":
            raise SpecMDError("no prefetch choice is pending")
        E = self.model.num_experts
        experts = integer_array("prefetch choice (expert ids)", experts, 0, E)  # [0.7] is refused, not expert 0
        if len(np.unique(experts)) != len(experts):
            raise SpecMDError(f"prefetch choice must be distinct expert ids, got {shorten(experts)}")
        _, layer = self.current_event
        self.work[:len(experts)] = (layer + self.lookahead) * E + experts
        self.ist[kernel.I_PF_COUNT] = len(experts)
        self.ist[kernel.I_PF_READY] = 1
        self.ist[kernel.I_PENDING] = 0

    @property
    def pending_object(self) -> int:
        """The (layer * E + expert) object that needs a slot."""
        return int(self.ist[kernel.I_PENDING_OBJ])

    @property
    def decision_time(self) -> float:
        return float(self.fst[kernel.S_DECISION])

    def decision_scope(self) -> tuple[int, int]:
        """The slot range the pending object may use."""
        return kernel.scope_range(self.cfg_i, self.pending_object // self.model.num_experts)

    def candidate_mask(self) -> np.ndarray:
        """Slots that may be evicted for the pending decision (pinned and in-flight ones may not)."""
        mask = np.zeros(self.capacity, bool)
        if self.pending_kind not in ("demand", "prefetch"):
            return mask
        lo, hi = self.decision_scope()
        t = self.decision_time
        for s in range(lo, hi):
            mask[s] = kernel.is_candidate(self.cfg_i, self.slot_i, self.slot_f, s, t)
        return mask

    def decide(self, slot: int) -> None:
        """Answer the pending decision with the slot to evict."""
        if self.pending_kind not in ("demand", "prefetch"):
            raise SpecMDError(f"no eviction decision is pending (pending: {self.pending_kind})")
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.capacity \
                or not self.candidate_mask()[slot]:
            raise SpecMDError(f"slot {slot!r} may not be evicted now (pinned by the layer computing, in flight, "
                              f"empty, or outside this layer's share); candidates: {shorten(np.flatnonzero(self.candidate_mask()))}")
        self.ist[kernel.I_ACTION] = int(slot)

    def run(self) -> Result:
        """Replay to the end, asking the policy objects (if any) at each decision; return the result."""
        while self.advance():
            if self.pending_kind == "prefetch-choice":
                if self.prefetch_object is None:
                    raise SpecMDError("prefetch='external' replays need choices: use advance()/choose_prefetch(), or the env")
                self.choose_prefetch(self.prefetch_object.choose_prefetch(self))
            else:
                if self.policy_object is None:
                    raise SpecMDError("eviction='external' replays need decisions: use advance()/decide(), or the env")
                self.decide(self.policy_object.choose_victim(self))
        return self.result()

    # -- results -----------------------------------------------------------------------------------
    def result(self) -> Result:
        m = {name: self.met[i] for i, name in enumerate(kernel.METRIC_NAMES)}
        plan = self.plan
        group_start = np.where(plan.group_first_pass > 0, self.pass_end[np.maximum(plan.group_first_pass - 1, 0)], 0.0)
        ttft = self.pass_end[plan.prefill_pass] - group_start if len(plan.prefill_pass) else np.zeros(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(plan.decode_tokens > 0,
                            (self.pass_end[plan.last_pass] - self.pass_end[plan.prefill_pass]) / plan.decode_tokens,
                            np.nan)
        prefetched_resident = int(np.sum((self.slot_i[kernel.SL_PREFETCHED] == 1) & (self.slot_i[kernel.SL_OBJ] >= 0)))
        counts = {k: int(v) for k, v in m.items() if k != "stall_seconds"}
        return Result(
            eviction=self.eviction_label, prefetch=self.prefetch_label, model=self.model.name,
            hardware=self.hardware.name, capacity_slots=self.capacity, stall_seconds=float(m["stall_seconds"]),
            prefetches_resident_at_end=prefetched_resident,
            bytes_moved=counts["transfers"] * self.model.expert_bytes,
            total_seconds=float(self.pass_end[-1]) if len(self.pass_end) else 0.0,
            prompt_tokens=int(np.sum(self.trace.prompt_lengths[plan.request_ids])),
            output_tokens=int(np.sum(plan.decode_tokens)),
            ttft_seconds=ttft, tpot_seconds=tpot, **counts)
