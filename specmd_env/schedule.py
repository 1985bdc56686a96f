"""From a trace to the kernel's schedule: forward passes, then layer events, in replay order.

A *forward pass* is the prefill of one request's prompt or one decode step of a batch of requests.
With batch size B, requests are served in groups of B (static batching): each request's prompt is
prefilled in turn, then the group decodes together, one token per still-active request per step, until
its longest request ends; the next group starts after that. A decode-only request (prompt length 0)
has no prefill pass: its first decode pass yields its first token (its TTFT ends there). Each pass has
one *layer event* per MoE layer, needing the union of its tokens' experts with the number of tokens routed to each (in order of first appearance: token order, then gate rank).

The schedule is built in chunks of passes so that traces of millions of tokens replay in bounded
memory; all arrays are flat (CSR) so the compiled kernel can walk them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from specmd_env.hardware import HardwareProfile
from specmd_env.models import ModelSpec
from specmd_env.trace import Trace

PREFILL, DECODE = 0, 1
CHUNK_TOKENS = 1 << 14  # tokens per schedule chunk; bounds memory, not results (except Belady's horizon)
CHUNK_PASSES = 1 << 13


@dataclass
class PassPlan:
    """Which tokens each forward pass processes, and which passes serve which request."""

    pass_ptr: np.ndarray        # [P+1] into pass_tok
    pass_tok: np.ndarray        # token rows of the trace, pass by pass
    pass_kind: np.ndarray       # PREFILL or DECODE
    pass_attended: np.ndarray   # (query, key) pairs attention computes in the pass
    request_ids: np.ndarray     # trace request index of each replayed request
    group_first_pass: np.ndarray  # per replayed request: first pass of its batch group
    prefill_pass: np.ndarray    # per replayed request: the pass yielding its first token (prefill, or first decode)
    last_pass: np.ndarray       # per replayed request: its last decode pass (= prefill_pass if none)
    decode_tokens: np.ndarray   # per replayed request: decode passes after its first token
    decode_start: np.ndarray    # per replayed request: the pass of its second token (its first decode pass)

    @property
    def num_passes(self) -> int:
        return len(self.pass_kind)

    def passes_since_group_start(self) -> np.ndarray:
        """Per pass: how many passes its batch group has run before it (a causal progress measure)."""
        n = self.num_passes
        marks = np.zeros(n, np.int64)
        if len(self.group_first_pass):
            marks[self.group_first_pass] = self.group_first_pass
        return (np.arange(n) - np.maximum.accumulate(marks)).astype(np.float64)

    def chunks(self):
        """Pass ranges [p0, p1) of bounded size (at least one pass each)."""
        p0, n = 0, self.num_passes
        while p0 < n:
            limit = np.searchsorted(self.pass_ptr, self.pass_ptr[p0] + CHUNK_TOKENS, side="right") - 1
            p1 = min(max(p0 + 1, limit), p0 + CHUNK_PASSES, n)
            yield p0, p1
            p0 = p1


def plan_passes(trace: Trace, batch_size: int = 1, requests=None) -> PassPlan:
    requests = np.arange(trace.num_requests) if requests is None else np.asarray(requests, np.int64)
    offsets, prompts = np.asarray(trace.request_offsets), np.asarray(trace.prompt_lengths)
    ptr, toks, kinds, attended = [0], [], [], []
    group_first, prefill, last, ndecode, decode_start = [], [], [], [], []

    def add_pass(tokens: np.ndarray, kind: int, positions: np.ndarray) -> int:
        toks.append(tokens)
        ptr.append(ptr[-1] + len(tokens))
        kinds.append(kind)
        attended.append(int(positions.sum()) + len(positions))  # causal: token at position i sees i+1 keys
        return len(kinds) - 1

    for g in range(0, len(requests), batch_size):
        group = requests[g:g + batch_size]
        first = len(kinds)
        for r in group:
            start, plen = int(offsets[r]), int(prompts[r])
            prefill.append(add_pass(np.arange(start, start + plen), PREFILL, np.arange(plen)) if plen else None)
            group_first.append(first)
        # decode only: the group's first decode pass yields the first token (every request is active in it)
        prefill[-len(group):] = [len(kinds) if p is None else p for p in prefill[-len(group):]]
        decode_start.extend(len(kinds) + (prompts[group] == 0))  # the group's decode passes follow its prefills
        gen = offsets[group + 1] - offsets[group] - prompts[group]
        steps = int(gen.max()) if len(gen) else 0
        if len(group) == 1 and steps:  # the common single-request decode, vectorised
            start = int(offsets[group[0]] + prompts[group[0]])
            rows = np.arange(start, start + steps)
            kinds.extend([DECODE] * steps)
            toks.append(rows)
            ptr.extend(ptr[-1] + np.arange(1, steps + 1))
            attended.extend((prompts[group[0]] + np.arange(steps) + 1).tolist())
            last.append(len(kinds) - 1)
        else:
            last_of = [prefill[-len(group) + i] for i in range(len(group))]
            for s in range(steps):
                active = np.flatnonzero(gen > s)
                p = add_pass(offsets[group[active]] + prompts[group[active]] + s, DECODE, prompts[group[active]] + s)
                for i in active:
                    last_of[i] = p
            last.extend(last_of)
        ndecode.extend((gen - (prompts[group] == 0)).tolist())
    return PassPlan(pass_ptr=np.asarray(ptr, np.int64),
                    pass_tok=np.concatenate(toks).astype(np.int64) if toks else np.zeros(0, np.int64),
                    pass_kind=np.asarray(kinds, np.int8), pass_attended=np.asarray(attended, np.float64),
                    request_ids=requests, group_first_pass=np.asarray(group_first, np.int64),
                    prefill_pass=np.asarray(prefill, np.int64), last_pass=np.asarray(last, np.int64),
                    decode_tokens=np.asarray(ndecode, np.int64), decode_start=np.asarray(decode_start, np.int64))


class StaticSchedule:
    """The passes of static batching, planned ahead and bound to the kernel chunk by chunk. With
    ``arrivals`` (per replayed request), a batch group starts no earlier than its last request arrives,
    and a request's TTFT counts from its arrival; without, from its group's start (as if each group were
    submitted when the GPU frees)."""

    continuous = False

    def __init__(self, trace: Trace, batch_size: int, requests, arrivals: np.ndarray | None):
        self.plan = plan_passes(trace, batch_size, requests)
        self.num_passes = self.plan.num_passes
        self.progress = self.plan.passes_since_group_start()
        self.pass_ready = np.zeros(self.num_passes)  # the earliest time each pass may start
        self.arrivals = arrivals
        if arrivals is not None and len(arrivals):
            np.maximum.at(self.pass_ready, self.plan.group_first_pass, arrivals)
        self._chunks = self.plan.chunks()

    def next_bounds(self) -> tuple[int, int] | None:
        return next(self._chunks, None)

    def timings(self, pass_end: np.ndarray) -> dict:
        """Per-request TTFT and TPOT, every inter-token gap, and the replay's end, from the passes' ends."""
        plan = self.plan
        if self.arrivals is not None:
            start = self.arrivals
        else:
            start = np.where(plan.group_first_pass > 0, pass_end[np.maximum(plan.group_first_pass - 1, 0)], 0.0)
        first = pass_end[plan.prefill_pass] if len(plan.prefill_pass) else np.zeros(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(plan.decode_tokens > 0, (pass_end[plan.last_pass] - first) / plan.decode_tokens, np.nan)
        gaps = [np.diff(pass_end[np.r_[p, d:d + n]]) for p, d, n in
                zip(plan.prefill_pass, plan.decode_start, plan.decode_tokens)]
        return dict(ttft_seconds=first - start, tpot_seconds=tpot,
                    itl_seconds=np.concatenate(gaps) if gaps else np.zeros(0),
                    total_seconds=float(pass_end[-1]) if len(pass_end) else 0.0,
                    output_tokens=int(np.sum(plan.decode_tokens)))


@dataclass
class Chunk:
    """The kernel's view of passes [p0, p1): events, their experts, timing, and (optionally) the
    next-use index that oracles read."""

    p0: int
    p1: int
    num_layers: int
    num_experts: int
    ev_ptr: np.ndarray
    ev_obj: np.ndarray
    ev_count: np.ndarray
    ev_pass: np.ndarray
    ev_dense: np.ndarray
    ev_est: np.ndarray
    ev_mass: np.ndarray          # per access: the summed gate weight of its tokens (uniform 1/k if unknown)
    gated_mass: float            # gate mass of the experts adaptive gating dropped from these passes
    spec: np.ndarray | None      # [passes, L-1, E] mean speculative next-layer scores, if the trace has them
    occ_ptr: np.ndarray
    occ_pos: np.ndarray

    @property
    def num_passes(self) -> int:
        return self.p1 - self.p0

    @property
    def counts(self) -> np.ndarray:
        """[passes, L, E] tokens routed to each expert: the true routing, for oracles."""
        dense = np.zeros(self.num_passes * self.num_layers * self.num_experts, np.int32)
        events = np.repeat(np.arange(len(self.ev_ptr) - 1), np.diff(self.ev_ptr))
        dense[events * self.num_experts + self.ev_obj % self.num_experts] = self.ev_count
        return dense.reshape(self.num_passes, self.num_layers, self.num_experts)


@njit(cache=True, inline="always")
def add_routing(x, obj, w, e, n, stamp, where, ev_obj, ev_count, ev_mass):
    """One token's route to expert ``x`` (object ``obj``, gate weight ``w``) in layer event ``e``: a new
    entry of the event (its first token) or one more token and its weight on the entry. Returns the
    entry count. ``stamp`` / ``where`` [E]: the event that last saw each expert, and its entry."""
    if stamp[x] != e:
        stamp[x] = e
        where[x] = n
        ev_obj[n] = obj
        ev_count[n] = 1
        ev_mass[n] = w
        return n + 1
    ev_count[where[x]] += 1
    ev_mass[where[x]] += w
    return n


@njit(cache=True)
def _layer_events(ids, gates, ntok, num_experts):
    """Union of each pass's experts per layer, in order of first appearance (token, then rank), with
    the number of tokens routed to each and their summed gate weight (``gates`` [tokens, L, k], or an
    empty array: each of a token's k experts then weighs 1/k). ids: [tokens, L, k] of the chunk,
    grouped by pass."""
    n_tok, num_layers, top_k = ids.shape
    uniform = gates.shape[0] == 0
    n_pass = len(ntok)
    ev_ptr = np.zeros(n_pass * num_layers + 1, np.int64)
    ev_obj = np.empty(n_tok * num_layers * top_k, np.int32)
    ev_count = np.empty(n_tok * num_layers * top_k, np.int32)
    ev_mass = np.empty(n_tok * num_layers * top_k, np.float32)
    stamp = np.full(num_experts, -1, np.int64)
    where = np.zeros(num_experts, np.int64)
    n = 0
    t0 = 0
    for p in range(n_pass):
        for layer in range(num_layers):
            e = p * num_layers + layer
            for t in range(t0, t0 + ntok[p]):
                for r in range(top_k):
                    x = ids[t, layer, r]
                    if x < 0:  # dropped by adaptive gating
                        continue
                    w = np.float32(1.0 / top_k) if uniform else gates[t, layer, r]
                    n = add_routing(x, layer * num_experts + x, w, e, n, stamp, where, ev_obj, ev_count, ev_mass)
            ev_ptr[e + 1] = n
        t0 += ntok[p]
    return ev_ptr, ev_obj[:n].copy(), ev_count[:n].copy(), ev_mass[:n].copy()


@njit(cache=True)
def _event_estimates(ev_ptr, ev_count, per_count, ev_dense):
    """Each event's estimated duration: its dense part plus the compute time of every expert it needs."""
    est = ev_dense.copy()
    for e in range(len(ev_ptr) - 1):
        total = 0.0
        for j in range(ev_ptr[e], ev_ptr[e + 1]):
            total += per_count[ev_count[j]]
        est[e] += total
    return est


def build_chunk(trace: Trace, plan: PassPlan, p0: int, p1: int, model: ModelSpec, hardware: HardwareProfile,
                *, with_spec: bool, with_next_use: bool, gating_sensitivity: np.ndarray | None = None) -> Chunk:
    L, E = model.num_layers, model.num_experts
    t0, t1 = plan.pass_ptr[p0], plan.pass_ptr[p1]
    tokens = plan.pass_tok[t0:t1]
    ntok = np.diff(plan.pass_ptr[p0:p1 + 1])
    contiguous = len(tokens) and tokens[-1] - tokens[0] == len(tokens) - 1 and np.all(np.diff(tokens) == 1)
    rows = slice(tokens[0], tokens[-1] + 1) if contiguous else tokens  # a slice is not a gather
    ids = np.asarray(trace.expert_ids[rows])
    gates = np.zeros((0, L, model.top_k), np.float32) if trace.gate_weights is None else \
        np.asarray(trace.gate_weights[rows], np.float32)
    gated_mass = 0.0
    if gating_sensitivity is not None:  # AdapMoE's adaptive gating drops some decode tokens' second expert
        from specmd_env.adapmoe import dropped_second
        decode = np.repeat(plan.pass_kind[p0:p1] == DECODE, ntok)
        dropped = dropped_second(gates, decode, gating_sensitivity)
        ids = ids.copy()
        ids[:, :, 1][dropped] = -1
        gated_mass = float(gates[:, :, 1][dropped].sum())
    ev_ptr, ev_obj, ev_count, ev_mass = _layer_events(ids, gates, ntok, E)

    kv_tokens = np.where(plan.pass_kind[p0:p1] == PREFILL, ntok, plan.pass_attended[p0:p1])
    dense = hardware.dense_seconds(model, ntok, plan.pass_attended[p0:p1], kv_tokens)
    ev_dense = np.repeat(dense, L).astype(np.float64)
    # an expert's compute time depends only on its token count: look it up rather than evaluate per access
    per_count = np.asarray(hardware.expert_seconds(model, np.arange(int(ev_count.max(initial=0)) + 1, dtype=np.float64)),
                           np.float64)
    ev_est = _event_estimates(ev_ptr, ev_count, per_count, ev_dense)

    spec = None
    if with_spec:
        scores = np.asarray(trace.spec_scores[tokens], dtype=np.float32)            # [n, L-1, E]
        starts = np.concatenate([[0], np.cumsum(ntok)[:-1]])
        spec = (np.add.reduceat(scores, starts, axis=0) / ntok[:, None, None]).astype(np.float32)

    occ_ptr = np.zeros(1, np.int64)
    occ_pos = np.zeros(0, np.int64)
    if with_next_use:
        occ_pos = np.argsort(ev_obj, kind="stable").astype(np.int64)
        occ_ptr = np.zeros(L * E + 1, np.int64)
        np.cumsum(np.bincount(ev_obj, minlength=L * E), out=occ_ptr[1:])
    return Chunk(p0=p0, p1=p1, num_layers=L, num_experts=E, ev_ptr=ev_ptr, ev_obj=ev_obj, ev_count=ev_count,
                 ev_pass=np.repeat(np.arange(p0, p1, dtype=np.int32), L), ev_dense=ev_dense, ev_est=ev_est,
                 ev_mass=ev_mass, gated_mass=gated_mass, spec=spec, occ_ptr=occ_ptr, occ_pos=occ_pos)
