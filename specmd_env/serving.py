"""Serving under load: request arrivals and a continuous-batching scheduler, compiled step by step.

With ``scheduler="continuous"`` the forward passes are not planned ahead: when the GPU finishes a step,
the scheduler (in the manner of vLLM's, chunked prefill on) composes the next one from what has arrived
by then, and the step's layer events are built and replayed at once:

* requests arrive at given times (``arrival_times``) or by a Poisson process (``arrival_rate``, seeded),
  are admitted first come, first served, while fewer than ``max_num_seqs`` run;
* each step has a budget of ``max_num_batched_tokens`` tokens: running requests first (one token each
  when decoding, a chunk of the rest of their prompt when prefilling), then newly admitted ones (a chunk
  of their prompt); a request's prefill may span several steps (chunked prefill), mixed with decodes;
* a request emits its first token at the end of the step that completes its prompt (TTFT = that time
  less its arrival), then one token per step it decodes in; it leaves when its last token is processed;
* the step's forward pass needs, per layer, the union of its tokens' experts (as a static batch does);
  its dense time is the hardware profile's ``dense_seconds`` on the step's tokens, attended pairs and
  KV reads; when nothing is running the GPU idles until the next arrival.

Because the schedule depends on how long steps take, it is decided as the replay runs: oracles that
read the future of the schedule (Belady) are not available here. The builder writes the step into fixed
buffers whose addresses are in the replay's argument table, so a step costs no Python.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from specmd_env.errors import SpecMDError
from specmd_env.kernel import layout as K
from specmd_env.kernel.loop import advance
from specmd_env.kernel.native import array_at
from specmd_env.schedule import add_routing

# per request, int rows
RQ_OFFSET, RQ_PROMPT, RQ_OUTPUT, RQ_PREFILLED, RQ_DECODED, RQ_STATE, N_RQ_I = range(7)
# per request, float rows
RQ_ARRIVAL, RQ_FIRST, RQ_LAST, N_RQ_F = range(4)
WAITING, RUNNING, FINISHED = 0, 1, 2
# scheduler ints: caps, counters, then the running list and the current step's emissions
(SC_MAX_SEQS, SC_MAX_TOKENS, SC_NEXT, SC_RUNNING, SC_STEP, SC_EMITS, SC_GAPS, SC_FINISHED, SC_NUM_LAYERS,
 SC_NUM_EXPERTS, SC_TOP_K, SC_HAS_GATES, SC_HAS_SPEC, SC_WAITING, N_SC_I) = range(15)
# scheduler floats: the dense-time model and the expert roofline
(SF_OVERHEAD, SF_PER_TOKEN, SF_PER_PAIR, SF_MEMORY, SF_PER_KV, SF_EXPERT_PER_TOKEN, SF_EXPERT_MIN, N_SC_F) = range(8)


@njit(cache=True, inline="always")
def _half(u):
    """A float16 (given as its uint16 bits) as a float (no float16 arithmetic in numba)."""
    sign = -1.0 if (u >> 15) & 1 else 1.0
    exp = (u >> 10) & 0x1F
    frac = u & 0x3FF
    if exp == 0:
        return sign * frac * 2.0 ** -24
    if exp == 31:
        return sign * np.inf if frac == 0 else np.nan
    return sign * (1.0 + frac / 1024.0) * 2.0 ** (exp - 15)


@njit(cache=True)
def build_step(tab, sc_i, sc_f, rq_i, rq_f, gaps, running, emits, rows, positions, stamp, where,
               ids, gates, spec16, now):
    """Compose the next step at time ``now`` (the GPU's clock), write its events into the step buffers
    of the argument table at ``tab``, and return 1; 0 when every request has finished."""
    L, E, k = sc_i[SC_NUM_LAYERS], sc_i[SC_NUM_EXPERTS], sc_i[SC_TOP_K]
    R = rq_i.shape[0]
    # tokens of the previous step: each emitting request's token time is when that step ended
    for i in range(sc_i[SC_EMITS]):
        r = emits[i]
        if rq_f[r, RQ_FIRST] < 0:
            rq_f[r, RQ_FIRST] = now
        else:
            gaps[sc_i[SC_GAPS]] = now - rq_f[r, RQ_LAST]
            sc_i[SC_GAPS] += 1
        rq_f[r, RQ_LAST] = now
    sc_i[SC_EMITS] = 0
    # finished requests leave
    n_run = 0
    for i in range(sc_i[SC_RUNNING]):
        r = running[i]
        if rq_i[r, RQ_STATE] == FINISHED:
            sc_i[SC_FINISHED] += 1
        else:
            running[n_run] = r
            n_run += 1
    sc_i[SC_RUNNING] = n_run
    if sc_i[SC_FINISHED] == R:
        return 0
    start = now
    if n_run == 0 and sc_i[SC_NEXT] < R and rq_f[sc_i[SC_NEXT], RQ_ARRIVAL] > now:
        start = rq_f[sc_i[SC_NEXT], RQ_ARRIVAL]  # idle until the next arrival
    budget = sc_i[SC_MAX_TOKENS]
    n_tok = 0
    attended = 0.0
    kv = 0.0
    decode_only = True

    # running requests first, in admission order; then admit arrivals (FCFS) while caps allow
    i = 0
    while i < sc_i[SC_RUNNING] + 1 and budget > 0:
        if i == sc_i[SC_RUNNING]:
            nxt = sc_i[SC_NEXT]
            if nxt >= R or rq_f[nxt, RQ_ARRIVAL] > start or sc_i[SC_RUNNING] >= sc_i[SC_MAX_SEQS]:
                break
            rq_i[nxt, RQ_STATE] = RUNNING
            running[sc_i[SC_RUNNING]] = nxt
            sc_i[SC_RUNNING] += 1
            sc_i[SC_NEXT] += 1
        r = running[i]
        i += 1
        base, P, G = rq_i[r, RQ_OFFSET], rq_i[r, RQ_PROMPT], rq_i[r, RQ_OUTPUT]
        done_p = rq_i[r, RQ_PREFILLED]
        if done_p < P:  # a chunk of its prompt
            n = min(P - done_p, budget)
            for t in range(n):
                rows[n_tok] = base + done_p + t
                positions[n_tok] = done_p + t
                n_tok += 1
                attended += done_p + t + 1
            kv += done_p + n
            budget -= n
            decode_only = False
            rq_i[r, RQ_PREFILLED] = done_p + n
            if done_p + n == P:
                emits[sc_i[SC_EMITS]] = r  # its prompt is done: the first token
                sc_i[SC_EMITS] += 1
                if G == 0:
                    rq_i[r, RQ_STATE] = FINISHED
        else:  # one decode token: the row of its d-th generated token
            d = rq_i[r, RQ_DECODED]
            rows[n_tok] = base + P + d
            positions[n_tok] = P + d
            n_tok += 1
            attended += P + d + 1
            kv += P + d + 1
            budget -= 1
            rq_i[r, RQ_DECODED] = d + 1
            emits[sc_i[SC_EMITS]] = r  # every decode step yields a token (a decode-only request's first)
            sc_i[SC_EMITS] += 1
            if d + 1 == G:
                rq_i[r, RQ_STATE] = FINISHED

    # the step's layer events: per layer, the union of its tokens' experts with token counts and mass
    t_arr = array_at(tab, 2 * K.N_ARGS, np.int64)
    ev_ptr = array_at(t_arr[K.A_EV_PTR], L + 1, np.int64)
    ev_obj = array_at(t_arr[K.A_EV_OBJ], L * E, np.int32)
    ev_count = array_at(t_arr[K.A_EV_COUNT], L * E, np.int32)
    ev_pass = array_at(t_arr[K.A_EV_PASS], L, np.int32)
    ev_dense = array_at(t_arr[K.A_EV_DENSE], L, np.float64)
    ev_est = array_at(t_arr[K.A_EV_EST], L, np.float64)
    mass = array_at(t_arr[K.A_MASS], L * E, np.float32)
    pass_kind = array_at(t_arr[K.A_PASS_KIND], 1, np.int8)
    pass_ready = array_at(t_arr[K.A_PASS_READY], 1, np.float64)
    dense = sc_f[SF_OVERHEAD] + max(sc_f[SF_PER_TOKEN] * n_tok + sc_f[SF_PER_PAIR] * attended,
                                    sc_f[SF_MEMORY] + sc_f[SF_PER_KV] * kv)
    step = sc_i[SC_STEP]
    n = 0
    ev_ptr[0] = 0
    for layer in range(L):
        est = dense
        for t in range(n_tok):
            row = rows[t]
            for rank in range(k):
                x = ids[row, layer, rank]
                w = gates[row, layer, rank] if sc_i[SC_HAS_GATES] == 1 else 1.0 / k
                n = add_routing(x, layer * E + x, w, step * L + layer, n, stamp, where, ev_obj, ev_count, mass)
        for j in range(ev_ptr[layer], n):
            est += max(sc_f[SF_EXPERT_PER_TOKEN] * ev_count[j], sc_f[SF_EXPERT_MIN])
        ev_ptr[layer + 1] = n
        ev_pass[layer] = step
        ev_dense[layer] = dense
        ev_est[layer] = est
    pass_kind[0] = 1 if decode_only else 0
    pass_ready[0] = start
    waiting = sc_i[SC_NEXT]  # requests arrived by the step's start and not admitted (the queue)
    while waiting < R and rq_f[waiting, RQ_ARRIVAL] <= start:
        waiting += 1
    sc_i[SC_WAITING] = waiting - sc_i[SC_NEXT]
    t_arr[K.N_ARGS + K.A_EV_OBJ] = n
    t_arr[K.N_ARGS + K.A_EV_COUNT] = n
    t_arr[K.N_ARGS + K.A_MASS] = n
    if sc_i[SC_HAS_SPEC] == 1 and n_tok > 0:  # the step's mean speculative scores, [L-1, E]
        spec = array_at(t_arr[K.A_SPEC], (L - 1) * E, np.float32)
        spec[:] = 0.0
        for t in range(n_tok):
            for layer in range(L - 1):
                for x in range(E):
                    spec[layer * E + x] += _half(spec16[rows[t], layer, x])
        for j in range((L - 1) * E):
            spec[j] /= n_tok
    sc_i[SC_STEP] = step + 1
    return 1


@njit(cache=True)
def serve(tab, sc_i, sc_f, rq_i, rq_f, gaps, running, emits, rows, positions, stamp, where, ids, gates,
          spec16, ist, fst):
    """Replay step after step until a decision is due (its status) or every request finished (DONE)."""
    while True:
        status = advance(tab)
        if status != K.DONE:
            return status
        if build_step(tab, sc_i, sc_f, rq_i, rq_f, gaps, running, emits, rows, positions, stamp, where,
                      ids, gates, spec16, fst[K.S_COMPUTE]) == 0:
            return K.DONE
        ist[K.I_EVENT] = 0
        ist[K.I_PHASE] = K.P_START


def arrival_times(n: int, *, rate: float | None = None, times=None, seed: int = 0) -> np.ndarray:
    """Arrival time of each of ``n`` requests (in replay order): given ``times`` (non-decreasing, >= 0),
    a Poisson process of ``rate`` requests per second (exponential gaps from a generator seeded with
    ``seed``), or all at 0."""
    if times is not None:
        if rate is not None:
            raise SpecMDError("give arrival_times or arrival_rate, not both")
        out = np.asarray(times, np.float64)
        if out.shape != (n,) or not np.all(np.isfinite(out)) or np.any(out < 0) or np.any(np.diff(out) < 0):
            raise SpecMDError(f"arrival_times must be {n} finite, non-negative, non-decreasing seconds (one per "
                              f"replayed request), got shape {out.shape}")
        return out
    if rate is None:
        return np.zeros(n)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not np.isfinite(rate) or rate <= 0:
        raise SpecMDError(f"arrival_rate must be a positive number of requests per second, got {rate!r}")
    gaps = np.random.default_rng([seed, 0x5EED]).exponential(1.0 / rate, size=n)
    return np.cumsum(gaps) - gaps[0]  # the first request arrives at 0


class ContinuousSchedule:
    """Continuous batching for one replay: the request table, the scheduler's state and the step buffers
    the kernel reads (their addresses go into the replay's argument table once)."""

    continuous = True
    num_passes = 1  # the kernel keeps the current step's end only; token times are kept per request

    def __init__(self, trace, requests, arrivals: np.ndarray, model, hardware, *, max_num_seqs: int,
                 max_num_batched_tokens: int, with_spec: bool):
        L, E, k = model.num_layers, model.num_experts, model.top_k
        offsets, prompts = np.asarray(trace.request_offsets), np.asarray(trace.prompt_lengths)
        order = np.argsort(arrivals, kind="stable")  # first come, first served
        requests = np.asarray(requests, np.int64)[order]
        R = len(requests)
        self.requests, self.arrivals = requests, arrivals[order]
        self.rq_i = np.zeros((R, N_RQ_I), np.int64)
        self.rq_i[:, RQ_OFFSET] = offsets[requests]
        self.rq_i[:, RQ_PROMPT] = prompts[requests]
        self.rq_i[:, RQ_OUTPUT] = offsets[requests + 1] - offsets[requests] - prompts[requests]
        self.rq_f = np.full((R, N_RQ_F), -1.0)
        self.rq_f[:, RQ_ARRIVAL] = self.arrivals
        self.gaps = np.zeros(int(self.rq_i[:, RQ_OUTPUT].sum()) + R, np.float64)
        self.sc_i = np.zeros(N_SC_I, np.int64)
        self.sc_i[SC_MAX_SEQS], self.sc_i[SC_MAX_TOKENS] = max_num_seqs, max_num_batched_tokens
        self.sc_i[SC_NUM_LAYERS], self.sc_i[SC_NUM_EXPERTS], self.sc_i[SC_TOP_K] = L, E, k
        self.sc_i[SC_HAS_GATES] = trace.gate_weights is not None
        self.sc_i[SC_HAS_SPEC] = with_spec
        self.sc_f = np.zeros(N_SC_F)
        self.sc_f[SF_OVERHEAD:SF_PER_KV + 1] = hardware.dense_coefficients(model)
        self.sc_f[SF_EXPERT_PER_TOKEN], self.sc_f[SF_EXPERT_MIN] = hardware.expert_roofline(model)
        self.running = np.zeros(max_num_seqs, np.int64)
        self.emits = np.zeros(max_num_seqs, np.int64)
        self.rows = np.zeros(max_num_batched_tokens, np.int64)
        self.positions = np.zeros(max_num_batched_tokens, np.int64)
        self.stamp = np.full(E, -1, np.int64)
        self.where = np.zeros(E, np.int64)
        self.ids = trace.expert_ids
        self.gates = trace.gate_weights if trace.gate_weights is not None else np.zeros((1, L, k), np.float32)
        self.spec16 = (trace.spec_scores.view(np.uint16) if with_spec
                       else np.zeros((1, max(L - 1, 1), E), np.uint16))
        # the step buffers (what a chunk is for static schedules), sized for the largest step
        self.buffers = (np.zeros(L + 1, np.int64), np.zeros(L * E, np.int32), np.zeros(L * E, np.int32),
                        np.zeros(L, np.int32), np.zeros(L), np.zeros(L), np.zeros(L * E, np.float32),
                        np.zeros(1, np.int64), np.zeros(0, np.int64),
                        np.zeros((L - 1) * E if with_spec else 1, np.float32), np.zeros(1, np.int8),
                        np.zeros(1), np.zeros(1))

    def _args(self):
        return (self.sc_i, self.sc_f, self.rq_i, self.rq_f, self.gaps, self.running, self.emits, self.rows,
                self.positions, self.stamp, self.where, self.ids, self.gates, self.spec16)

    def next_step(self, tab, now: float) -> bool:
        """Compose and bind the next step (False when every request has finished)."""
        return bool(build_step(tab, *self._args(), now))

    def load(self) -> tuple[int, int]:
        """(running sequences, requests waiting to be admitted) of the step composed last."""
        return int(self.sc_i[SC_RUNNING]), int(self.sc_i[SC_WAITING])

    def serve(self, tab, ist, fst) -> int:
        return int(serve(tab, *self._args(), ist, fst))

    def timings(self, pass_end: np.ndarray) -> dict:
        first, last = self.rq_f[:, RQ_FIRST], self.rq_f[:, RQ_LAST]
        emitted = self.rq_i[:, RQ_OUTPUT] + (self.rq_i[:, RQ_PROMPT] > 0)
        decoded = np.maximum(emitted - 1, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(decoded > 0, (last - first) / decoded, np.nan)
        return dict(ttft_seconds=first - self.arrivals, tpot_seconds=tpot,
                    itl_seconds=self.gaps[:self.sc_i[SC_GAPS]].copy(),
                    total_seconds=float(last.max()) if len(last) else 0.0, output_tokens=int(decoded.sum()))
