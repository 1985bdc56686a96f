"""How much consecutive tokens reuse experts: the locality measures that published papers report.

Each function reads the ranked top-k expert ids of one request, ``ids[t, l, r]`` (token, layer, rank),
so windows never cross a request boundary. Definitions follow the papers, so that a trace's figure
can stand beside the published one (``data/calibration/published/``, see its SOURCES.md):

* **Consecutive repetition** (Jiang et al. 2024, Mixtral paper, Table 5): for tokens t and t+1 of a
  request, ``first_choice``: the top-1 experts are equal; ``any_choice``: the top-k sets share at
  least one expert ("first or second choice" for Mixtral's top-2).
* **Segment routing best performance, SRP(m)** (Liang et al. 2025, eq. 6): for every window of m
  tokens and every (layer, expert), f = how many of the m tokens chose the expert. A segment router
  predicts "active on all m" or "inactive on all m"; SRP is its best F1 against the real routing, which
  is reached by predicting active exactly where f >= alpha for one threshold alpha shared by all
  experts and layers (model-level SRP, as the authors' ``31_srp_refine.py`` pools them).
* **Segment cache best hit rate, SCH(m, rho)** (Liang et al. 2025, section 2.3 and ``41_sch_calc.py``):
  one cache of ``rho * k * L`` slots shared by all layers (an expert is a (layer, id) pair), starting
  empty. For each token, every demanded expert already cached is a hit; a demanded expert that finds a
  free slot is also counted as a hit (the authors' convention: the first ``rho*k*L`` distinct experts
  are loaded for free); otherwise it is a miss and evicts the cached, not currently demanded expert that
  is used least often in tokens [t, t+m) of the request, the least recently used one among ties.
  SCH = hits / demands. The authors process one token's demands one by one; here they are processed
  as a set (the ordering only decides ties between experts used by the same token).
"""

from __future__ import annotations

import numpy as np

from specmd_env.errors import SpecMDError

BLOCK_CELLS = 1 << 21   # cells per block the measures convert at once: their memory does not grow with a request
MAX_CELLS = 1 << 26     # (token, layer, expert) cells segment_figures measures at most: 2^16 OLMoE tokens


def first_choice_same(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """[n, L] bool: the top-1 expert of two tokens is the same (ids [n, L, k] each)."""
    return prev[..., 0] == cur[..., 0]


def shared_experts(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """[n, L] int: how many experts two tokens' top-k sets share (ids [n, L, k], no repeats per row):
    equal neighbours after sorting both together (the memory of the ids, where comparing every pair
    would take k times more)."""
    both = np.sort(np.concatenate([prev, cur], axis=-1), axis=-1)
    return (both[..., 1:] == both[..., :-1]).sum(axis=-1)


def random_repetition(num_experts: int, top_k: int) -> tuple[float, float]:
    """(first_choice, any_choice) repetition rates of independent uniform choices: 1/E and
    1 - C(E-k, k) / C(E, k) (Mixtral: 12.5% and 1 - 6/8 * 5/7 = 46.4%)."""
    disjoint = 1.0
    for i in range(top_k):
        disjoint *= (num_experts - top_k - i) / (num_experts - i)
    return 1.0 / num_experts, 1.0 - max(disjoint, 0.0)


def segment_histogram(ids: np.ndarray, num_experts: int, segment: int) -> np.ndarray:
    """[segment + 1] counts: over all windows of ``segment`` tokens of one request and all (layer,
    expert) pairs, how many windows saw the expert chosen f = 0, 1, ..., segment times. Windows are
    counted in blocks of about :data:`BLOCK_CELLS` (window, expert) cells."""
    T, L, _ = ids.shape
    hist = np.zeros(segment + 1, np.int64)
    windows = T - segment + 1
    if windows < 1:
        return hist
    step = max(1, BLOCK_CELLS // num_experts)
    for layer in range(L):
        for first in range(0, windows, step):
            rows = ids[first:min(first + step, windows) + segment - 1, layer].astype(np.int64)
            onehot = np.zeros((len(rows) + 1, num_experts), np.int32)
            onehot[np.arange(1, len(rows) + 1)[:, None], rows] = 1  # no repeats within a row
            cumulative = np.cumsum(onehot, axis=0)
            hist += np.bincount((cumulative[segment:] - cumulative[:-segment]).ravel(), minlength=segment + 1)
    return hist


def srp_from_histogram(hist: np.ndarray) -> float:
    """Best F1 of a segment router, ``max_alpha 2 TP / (m * predicted_windows + activations)``."""
    hist = np.asarray(hist, np.float64)
    segment = len(hist) - 1
    f = np.arange(segment + 1)
    true_pos = np.cumsum((f * hist)[::-1])[::-1]        # sum over windows with f >= alpha of f
    predicted = segment * np.cumsum(hist[::-1])[::-1]   # m * number of windows with f >= alpha
    activations = true_pos[0]
    if activations <= 0:
        return float("nan")
    return float(np.max(2 * true_pos / np.maximum(predicted + activations, 1)))


def cache_capacity(cache_ratio: float, top_k: int, num_layers: int) -> int:
    """Slots of the segment cache: ``cache_ratio`` times one token's demands over all layers."""
    if cache_ratio < 1:
        raise SpecMDError(f"cache_ratio must be >= 1 (the cache holds one token's demands), got {cache_ratio!r}")
    return round(cache_ratio * top_k * num_layers)


def _token_keys(ids: np.ndarray, num_experts: int):
    """Each token's demanded experts as (layer, id) keys ``layer * E + id``, converted a block of about
    :data:`BLOCK_CELLS` at a time (no copy of the whole request)."""
    T, L, k = ids.shape
    base = (np.arange(L, dtype=np.int64) * num_experts)[:, None]
    step = max(1, BLOCK_CELLS // (L * k))
    for first in range(0, T, step):
        yield from (ids[first:first + step].astype(np.int64) + base).reshape(-1, L * k)


def segment_cache_hits(ids: np.ndarray, num_experts: int, segment: int, cache_ratio: float) -> tuple[int, int]:
    """(hits, demands) of the segment cache described in the module docstring, for one request."""
    T, L, k = ids.shape
    capacity = cache_capacity(cache_ratio, k, L)
    n = L * num_experts
    cached = np.zeros(n, bool)
    last_use = np.full(n, -1, np.int64)
    future = np.zeros(n, np.int64)                       # uses in tokens [t, t + segment)
    ahead = _token_keys(ids, num_experts)                # token t + segment's keys, when it comes in
    for _ in range(min(segment, T)):
        np.add.at(future, next(ahead), 1)
    used = hits = 0
    demanded = np.zeros(n, bool)
    for t, want in enumerate(_token_keys(ids, num_experts)):
        hit = cached[want]
        hits += int(hit.sum())
        missing = want[~hit]
        fill = min(len(missing), capacity - used)
        hits += fill
        used += fill
        evict = len(missing) - fill
        if evict > 0:
            demanded[want] = True
            candidates = np.flatnonzero(cached & ~demanded)
            demanded[want] = False
            priority = future[candidates] * (T + 1) + last_use[candidates]
            cached[candidates[np.argpartition(priority, evict - 1)[:evict]]] = False
        cached[missing] = True
        last_use[want] = t
        future[want] -= 1
        if t + segment < T:
            np.add.at(future, next(ahead), 1)
    return hits, T * L * k


def segment_figures(trace, *, srp_segment: int = 16, cache_segments=(4, 16, 64), cache_ratio: float = 2.0,
                    max_tokens: int = 1 << 16, max_cells: int = MAX_CELLS) -> dict[str, float]:
    """Model-level ``srp_m{srp_segment}`` and ``sch_m{m}`` of a trace (requests pooled, each request its own
    sequence with a cold cache).

    The work is sized from checked numbers, never from what a header claims: a budget of ``max_tokens``
    tokens, fewer where ``max_cells`` (token, layer, expert) cells hold fewer -- 2^16 tokens up to
    OLMoE's 16 x 64, fewer for larger models, as a token costs a fixed 20 us here plus time per cell (an
    OLMoE token 70 us), so that this pass takes at most about 5 s here on any trace. A trace over the
    budget is measured on evenly spaced requests holding about that many tokens (as the authors measure
    SCH on every 16th input), a request longer than the budget on its first budget tokens. Requests are
    read one at a time, and each measure holds its state (one entry per (layer, expert)) plus blocks of
    :data:`BLOCK_CELLS`. A request whose demands all fit in the cache and that is shorter than a window
    is counted without being read: every demand is a hit, and it has no window."""
    L, E, k = trace.num_layers, trace.num_experts, trace.top_k
    capacity = cache_capacity(cache_ratio, k, L)
    budget = max(1, min(max_tokens, max_cells // (L * E)))
    n = trace.num_requests
    count = min(n, max(1, budget * n // max(int(trace.num_tokens), 1)))
    chosen = np.unique(np.linspace(0, n - 1, count).astype(np.int64)) if n else np.zeros(0, np.int64)
    lengths = np.minimum(np.diff(np.asarray(trace.request_offsets, np.int64))[chosen], budget)
    trivial = (lengths < srp_segment) & (lengths * (L * k) <= capacity)
    hist = np.zeros(srp_segment + 1, np.int64)
    hits = np.full(len(cache_segments), int(lengths[trivial].sum()) * L * k, np.int64)
    for r, length in zip(chosen[~trivial].tolist(), lengths[~trivial].tolist()):
        trace.check_file()
        start = int(trace.request_offsets[r])
        ids = np.asarray(trace.expert_ids[start:start + length])
        hist += segment_histogram(ids, E, srp_segment)
        for i, m in enumerate(cache_segments):
            hits[i] += segment_cache_hits(ids, E, m, cache_ratio)[0]
    demands = int(lengths.sum()) * L * k
    out = {f"srp_m{srp_segment}": srp_from_histogram(hist)}
    out.update({f"sch_m{m}": hits[i] / demands if demands else float("nan") for i, m in enumerate(cache_segments)})
    return out
