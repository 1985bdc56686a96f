"""Property-based tests (hypothesis) over random small traces, capacities, batch sizes, scopes, modes,
policies and prefetchers."""

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import FAST, make_trace, routing_cases, slots, tiny_model
from specmd_env import Replay, kernel, simulate

POLICIES = ("lru", "fifo", "lfu", "random", "least-stale", "belady", "belady-bypass")
PREFETCH = ("none", "topk", "score", "oracle")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw, *, prefetch=None, policies=POLICIES, modes=("event", "per-access"), max_requests=3):
    model, trace = draw(routing_cases(max_requests=max_requests))
    scope = draw(st.sampled_from(["global", "per-layer"]))
    lo = max(model.top_k, model.num_layers if scope == "per-layer" else 1)
    n = draw(st.integers(lo, model.num_layers * model.num_experts))
    choices = PREFETCH if trace.spec_scores is not None else ("none", "oracle")
    kw = dict(model=model, capacity=slots(model, n), scope=scope, mode=draw(st.sampled_from(modes)),
              batch_size=draw(st.integers(1, 3)), eviction=draw(st.sampled_from(policies)),
              prefetch=draw(st.sampled_from(choices)) if prefetch is None else prefetch,
              seed=draw(st.integers(0, 5)))
    if kw["prefetch"] != "none":
        kw["prefetch_budget"] = draw(st.sampled_from(["engine", 0, 1, model.num_experts]))
    return trace, kw


class Checker:
    """An external eviction policy that checks the cache's invariants at every decision, then evicts the
    least recently used candidate (what the built-in LRU does)."""

    name = "checker"

    def __init__(self):
        self.decisions = 0
        self.victims = []

    def victim(self, view) -> int:
        replay = view.replay
        self.decisions += 1
        assert replay.pending_kind in ("demand", "prefetch")
        objs = replay.slot_i[kernel.SL_OBJ]
        held = objs[objs >= 0]
        assert len(held) == len(set(held.tolist())) <= replay.capacity  # never over capacity, no duplicates
        for s in np.flatnonzero(objs >= 0):
            assert replay.obj_i[kernel.OB_SLOT, objs[s]] == s
        assert replay.obj_i[kernel.OB_SLOT, replay.pending_object] == -1  # what we load is not resident
        lo, hi = replay.decision_scope()
        mask = replay.candidate_mask()
        assert mask.any() and not mask[:lo].any() and not mask[hi:].any()
        cands = np.flatnonzero(mask)
        victim = int(cands[np.argmin(replay.slot_i[kernel.SL_USE, cands])])
        if replay.mode == "event":
            c, e = replay.chunk, int(replay.ist[kernel.I_EVENT])
            needed = set(c.ev_obj[c.ev_ptr[e]:c.ev_ptr[e + 1]].tolist())
            obj = int(objs[victim])
            t = replay.decision_time
            router = float(replay.fst[kernel.S_ROUTER])
            if obj in needed:
                # only a streaming layer (more experts than free-able slots at its router) may reuse the
                # slot of one of its own experts, and only once that expert has been computed
                assert replay.pending_kind == "demand" and t > router
                assert replay.slot_f[kernel.SL_FREE_AT, victim] <= t
        self.victims.append(int(objs[victim]))
        return victim


@SETTINGS
@given(configs(policies=("lru",)))
def test_invariants_at_every_decision(case):
    trace, kw = case
    checker = Checker()
    kw = dict(kw, eviction=checker)
    result = Replay(trace, **kw).run()
    assert result.decisions == checker.decisions
    if kw["prefetch"] == "none":  # same victims as the built-in LRU (prefetched ties aside)
        builtin = simulate(trace, **dict(kw, eviction="lru"))
        assert _counts(builtin) == _counts(result)


@SETTINGS
@given(configs(), st.sampled_from(["fetch", "drop"]))
def test_accounting_identities(case, miss):
    trace, kw = case
    model = kw["model"]
    r = simulate(trace, miss=miss, **kw)
    assert r.hits + r.misses == r.accesses
    assert r.misses == r.compulsory_misses + r.capacity_misses + r.collision_misses
    assert r.bytes_moved == r.transfers * model.expert_bytes
    assert r.prefetches_issued == r.prefetches_used + r.prefetches_wasted + r.prefetches_resident_at_end
    assert r.transfers == r.prefetches_issued + r.misses - r.late_prefetch_misses - r.dropped_experts
    assert r.late_prefetch_misses <= r.prefetches_used
    if miss == "drop":
        assert r.dropped_experts == r.misses - r.late_prefetch_misses
    assert r.stall_seconds >= 0 and r.total_seconds > 0


def _counts(r):
    return (r.accesses, r.hits, r.misses, r.compulsory_misses, r.capacity_misses, r.collision_misses, r.evictions,
            r.transfers)


@SETTINGS
@given(configs(prefetch="none", modes=("per-access",), policies=("lru",)))
def test_belady_optimal_per_access(case):
    """Demand-only, per-access: Belady's MIN is optimal among always-admit policies, and with bypass
    among all (a theorem)."""
    trace, kw = case
    misses = {p: simulate(trace, **dict(kw, eviction=p)).misses for p in POLICIES}
    assert misses["belady-bypass"] <= misses["belady"]
    for p in ("lru", "fifo", "lfu", "random", "least-stale"):
        assert misses["belady"] <= misses[p], (p, misses)


def _streams(trace, kw) -> bool:
    """Whether some layer event needs more experts than its scope holds (the layer then streams)."""
    replay = Replay(trace, **kw)
    share = replay.capacity if kw["scope"] == "global" else replay.capacity // kw["model"].num_layers
    sizes = [np.diff(c.ev_ptr).max() for c in [replay.chunk]]
    return int(max(sizes)) > share


@SETTINGS
@given(configs(prefetch="none", modes=("event",), policies=("lru",), max_requests=4))
def test_belady_in_event_mode_without_streaming(case):
    """Event-atomic mode, demand only, no layer needing more experts than its scope holds: the current
    layer's experts are pinned, but MIN still wins (no counterexample in 1500 hypothesis examples), and
    bypass still helps. With streaming it does not hold: see the two documented cases below."""
    trace, kw = case
    assume(not _streams(trace, kw))
    misses = {p: simulate(trace, **dict(kw, eviction=p)).misses for p in POLICIES}
    assert misses["belady-bypass"] <= misses["belady"]
    for p in ("lru", "fifo", "lfu", "random", "least-stale"):
        assert misses["belady"] <= misses[p], (p, misses)


def test_event_mode_streaming_bypass_counterexample():
    """Found by hypothesis. Per-layer scope, 3 slots per layer; layer 1 of the prefill pass needs 5
    experts (0 1 4 3 2), so it streams: when 3 and then 2 arrive, the only evictable slot is the one
    whose expert finished first (0, reused in the next pass). belady-bypass compares against that single
    time-restricted candidate, finds 3 and 2 reused later than 0 and bypasses both; in the decode pass
    both miss again. belady admits 3 (evicting 0, which then misses once) and keeps it. MIN's exchange
    argument needs a free choice among all residents, which pins and streaming take away."""
    model = tiny_model(2, 5, 3)
    trace = make_trace([[[3, 1, 0], [0, 1, 4]], [[1, 0, 4], [3, 0, 2]], [[2, 0, 1], [0, 3, 2]]], model,
                       request_lengths=[3], prompt_lengths=[2])
    kw = dict(model=model, capacity=slots(model, 6), scope="per-layer", mode="event")
    assert _streams(trace, kw)
    misses = {p: simulate(trace, **dict(kw, eviction=p)).misses for p in POLICIES}
    assert misses == {"lru": 11, "fifo": 11, "lfu": 11, "random": 11, "least-stale": 11, "belady": 11,
                      "belady-bypass": 12}
    # in per-access mode the theorem holds on the same trace
    per = {p: simulate(trace, **dict(kw, mode="per-access", eviction=p)).misses for p in POLICIES}
    assert per["belady-bypass"] <= per["belady"] <= min(per[p] for p in ("lru", "fifo", "lfu", "random"))


def test_event_mode_streaming_lru_beats_belady():
    """Found by hypothesis. Batch 3 over 3 layers, 4 slots per layer: the decode passes' layers need 5
    experts and stream, so victims are whichever slot frees first, not Belady's choice; LRU (19) and
    FIFO (18) end up ahead of Belady (20) here. Documented, not a bug: Belady is only optimal when it may
    choose its victim among all residents (per-access mode, or event mode without streaming)."""
    model = tiny_model(3, 5, 3)
    ids = [[[1, 4, 0], [3, 0, 1], [1, 3, 2]], [[0, 2, 3], [2, 3, 4], [3, 1, 0]], [[1, 2, 4], [3, 1, 4], [2, 3, 0]],
           [[0, 1, 4], [3, 4, 1], [2, 4, 1]], [[4, 3, 1], [3, 1, 2], [1, 0, 4]], [[2, 4, 1], [4, 2, 3], [2, 0, 1]],
           [[3, 0, 4], [0, 2, 3], [2, 4, 3]]]
    trace = make_trace(ids, model, request_lengths=[2, 2, 2, 1], prompt_lengths=[1, 1, 1, 1])
    kw = dict(model=model, capacity=slots(model, 12), scope="per-layer", mode="event", batch_size=3)
    assert _streams(trace, kw)
    misses = {p: simulate(trace, **dict(kw, eviction=p)).misses for p in ("lru", "fifo", "belady")}
    assert misses == {"lru": 19, "fifo": 18, "belady": 20}


@SETTINGS
@given(configs(prefetch="none"))
def test_least_stale_equals_lru_without_prefetch(case):
    """Without prefetch no hint ever marks an expert current without using it, so last touch = last use:
    Least-Stale evicts exactly what LRU evicts (any batch size, mode, scope)."""
    trace, kw = case
    a = simulate(trace, **dict(kw, eviction="lru"))
    b = simulate(trace, **dict(kw, eviction="least-stale"))
    assert _counts(a) == _counts(b) and a.stall_seconds == b.stall_seconds


@SETTINGS
@given(configs())
def test_unlimited_capacity_only_compulsory(case):
    trace, kw = case
    r = simulate(trace, **dict(kw, capacity=1.0, scope="global"))
    assert r.misses == r.compulsory_misses and r.evictions == 0 and r.bypassed == 0


@SETTINGS
@given(configs())
def test_infinite_bandwidth_never_stalls(case):
    trace, kw = case
    r = simulate(trace, **dict(kw, hardware=FAST))
    assert r.stall_seconds == 0.0


@SETTINGS
@given(configs())
def test_same_seed_same_result(case):
    trace, kw = case
    a, b = simulate(trace, **kw), simulate(trace, **kw)
    assert a.as_dict() == b.as_dict() or _nan_equal(a.as_dict(), b.as_dict())
    assert np.array_equal(a.ttft_seconds, b.ttft_seconds)
    assert np.array_equal(a.tpot_seconds, b.tpot_seconds, equal_nan=True)


def _nan_equal(x, y):
    return x.keys() == y.keys() and all(x[k] == y[k] or (x[k] != x[k] and y[k] != y[k]) for k in x)


def test_random_policy_depends_on_seed():
    model = tiny_model(2, 8, 2)
    rng = np.random.default_rng(7)
    ids = np.array([[rng.choice(8, 2, replace=False) for _ in range(2)] for _ in range(60)])
    trace = make_trace(ids, model, request_lengths=[60], prompt_lengths=[1])
    runs = {seed: simulate(trace, model=model, capacity=slots(model, 6), eviction="random", seed=seed)
            for seed in range(4)}
    assert len({r.hits for r in runs.values()}) > 1
    again = simulate(trace, model=model, capacity=slots(model, 6), eviction="random", seed=2)
    assert again.as_dict() == runs[2].as_dict()
