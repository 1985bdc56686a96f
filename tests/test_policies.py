"""One small hand-worked example per eviction policy and prefetcher written on the policy SDK, and
the SDK itself (a user's compiled policy, a ``file.py:NAME`` reference, a Python object).

Objects are layer * E + expert. Cache replays whose timing does not matter run in
``mode="per-access"`` (accesses one by one, no pins); cases where pins or arrival times matter run in
event mode. Every expected victim, hit count and final cache content is derived in the docstrings from
the policy's documented rule -- never copied from what the code prints.
"""

from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, SLOW, SLOW_C, SLOW_X, make_trace, slots, slow_dense, tiny_model
from specmd_env import Replay, simulate
from specmd_env.kernel import layout as K
from specmd_env.prefetch import moe_infinity as mi
from user_policies import LIFO, MRU, UNLIKELY_NEXT, PythonLRU

USER_POLICIES = Path(__file__).parent / "user_policies.py"


def resident(replay) -> list[int]:
    """The objects the cache holds at the end, sorted."""
    return sorted(o for o in replay.slot_i[K.SL_OBJ].tolist() if o >= 0)


def replay_of(trace, model, **kw):
    replay = Replay(trace, model=model, **kw)
    return replay, replay.run()


# -- eviction policies ---------------------------------------------------------------------------------

def _sweep_trace():
    """3 layers x 4 experts, top-1, one request of 3 tokens: [0, 0, 0], [1, 1, 1], [0, 0, 0] -- the
    stream 0 4 8 | 1 5 9 | 0 4 8."""
    model = tiny_model(3, 4, 1)
    return model, make_trace([[[0], [0], [0]], [[1], [1], [1]], [[0], [0], [0]]], model, request_lengths=[3])


@pytest.mark.parametrize("policy,hits,final", [
    # layer-distance, 4 slots: 0 4 8 1 fill. 5 misses at layer 1: the layer computing runs again last
    # (d = L) -> its own 4 goes. 9 at layer 2: 8 goes. Pass 3: 0 hits; 4 evicts 5 (layer 1's), 8
    # evicts 9: one hit, the cache ends as {0, 1, 4, 8}.
    ("layer-distance", 1, [0, 1, 4, 8]),
    # LRU evicts the layer needed next: 5 evicts 0, 9 evicts 4, then 0 evicts 8, 4 evicts 1, 8 evicts
    # 5: no hit, {0, 4, 8, 9}.
    ("lru", 0, [0, 4, 8, 9]),
])
def test_layer_distance_by_hand(policy, hits, final):
    model, trace = _sweep_trace()
    replay, r = replay_of(trace, model, capacity=slots(model, 4), eviction=policy, mode="per-access")
    assert (r.accesses, r.hits) == (9, hits)
    assert resident(replay) == final


def test_layer_distance_respects_pins():
    """Event mode pins what the layer computing has loaded. 3 layers x 4 experts, top-2, 4 slots, one
    1-token prompt using experts 0, 1 at every layer: layers 0 and 1 fill the cache {0, 1, 4, 5}.
    Layer 2 misses 8: nothing of layer 2 is resident, the layer just passed (1) goes first, its least
    recent: 4. Then 9: layer 2 holds 8 -- pinned (loading / computing), so 5 goes: {0, 1, 8, 9}.
    Per access (no pins) the second miss evicts 8 itself: {0, 1, 5, 9}."""
    model = tiny_model(3, 4, 2)
    trace = make_trace([[[0, 1], [0, 1], [0, 1]]], model)
    event, _ = replay_of(trace, model, hardware=SLOW, capacity=slots(model, 4), eviction="layer-distance")
    flat, _ = replay_of(trace, model, hardware=SLOW, capacity=slots(model, 4), eviction="layer-distance",
                        mode="per-access")
    assert resident(event) == [0, 1, 8, 9]
    assert resident(flat) == [0, 1, 5, 9]


def _reuse_trace():
    """2 layers x 4 experts, top-1, one request of 5 tokens (passes 0-4); layer 0 uses 0 0 1 2 0,
    layer 1 always 0 (object 4): the stream 0 4 | 0 4 | 1 4 | 2 4 | 0 4."""
    model = tiny_model(2, 4, 1)
    ids = [[[x], [0]] for x in (0, 0, 1, 2, 0)]
    return model, make_trace(ids, model, request_lengths=[5])


@pytest.mark.parametrize("policy,hits,evictions,bypassed,final", [
    # Whole history, 3 slots: 0 4 fill, hit, hit; 1 fills the third slot. Pass 3 misses 2 at layer 0
    # (accesses counted so far: 0 twice, 1 once, 4 three times; 2 once, itself). Frequencies
    # (uses + 1) / (pass + 3): 0 -> 3/6, 1 -> 2/6, 4 -> 4/6. Expected steps turn + L (1/p - 1) with
    # turns 2 (layer 0, computing) and 1 (layer 1): 0 -> 4, 1 -> 6, 4 -> 2: evict 1 (LRU would evict
    # 0). Pass 4: 0 and 4 hit: 6 hits.
    ("expected-next-use", 6, 1, 0, [0, 2, 4]),
    # bypass=yes: the incoming 2 has p = (1 + 1) / 6 and turn 2: 6 steps, no nearer than the victim's
    # 6 -> not cached (served from a staging buffer); the cache keeps {0, 1, 4} and pass 4 hits: 6.
    ("expected-next-use:bypass=yes", 6, 0, 1, [0, 1, 4]),
    # half_life=1 (decay 1/2 per pass, window 2): decayed uses at pass 3 -- 0: (1/2 + 1) / 4 = 0.375,
    # 1: 1 / 2 = 0.5, 4: (3/4 + 1) / 2 = 0.875 -> p = (c + 1) / 4 = 0.34375, 0.375, 0.46875; steps
    # 2 + 2 (1/p - 1) = 5.82, 5.33 and (turn 1) 3.27: evict 0, as LRU. Pass 4: 0 misses; 1 (decayed
    # 0.25, p = 0.3125, 6.4 steps) goes rather than 2 (0.5, p = 0.375, 5.33) or 4: 5 hits, {0, 2, 4}.
    ("expected-next-use:half_life=1", 5, 2, 0, [0, 2, 4]),
    # half_life=10 (decay 2^-0.1 = 0.933, window min(14.9, 4 passes) = 4): decayed uses at pass 3 --
    # 0: (0.933 + 1) 0.933^2 = 1.683, 1: 0.933, 4: 2.616 -> p = (c + 1) / 6 = 0.447, 0.322, 0.603;
    # steps 4.47, 6.21, 2.32: evict 1, as the whole-history rule does: 6 hits.
    # (Events reach the policy in batches: each must be aged by the pass it happened in -- aged by the
    # pass computing at delivery, the first batch gave every object a count of 1, and 0 went.)
    ("expected-next-use:half_life=10", 6, 1, 0, [0, 2, 4]),
    # LRU for comparison: pass 3 evicts 0, pass 4 misses 0 (evicting 1): 5 hits.
    ("lru", 5, 2, 0, [0, 2, 4]),
])
def test_expected_next_use_by_hand(policy, hits, evictions, bypassed, final):
    model, trace = _reuse_trace()
    replay, r = replay_of(trace, model, capacity=slots(model, 3), eviction=policy, mode="per-access")
    assert (r.accesses, r.hits, r.evictions, r.bypassed) == (10, hits, evictions, bypassed)
    assert r.transfers == r.misses  # a bypassed expert is still transferred
    assert resident(replay) == final


def _hobbit_trace(second_prompt=1):
    """3 layers x 4 experts, top-1. Request 1: a prompt token [0, 0, 0] and a decoded [0, 1, 0];
    request 2: one token [1, 1, 0], its prompt (or, with ``second_prompt=0``, a decode-only request's
    first step). Passes: 0 (prefill, T = 1), 1 (decode, T = 2), 2 (a new sequence: T = 1 and every
    record reset)."""
    model = tiny_model(3, 4, 1)
    ids = [[[0], [0], [0]], [[0], [1], [0]], [[1], [1], [0]]]
    return model, make_trace(ids, model, request_lengths=[2, 1], prompt_lengths=[1, second_prompt])


@pytest.mark.parametrize("policy,hits,final", [
    # Equal weights (1/4). p = (R + F + H) / 4T + fld / 4, fld = 1 - ((l_t - l_i) mod 3) / 3.
    # Pass 1, layer 1 misses 5 (T = 2): 0 (R 2, F 2, H 2; fld 1/3): 6/8 + 1/12 = 0.833; 4 (1, 1, 1;
    # fld 1): 3/8 + 1/4 = 0.625; 8 (1, 1, 1; fld 2/3): 3/8 + 1/6 = 0.542 -> evict 8 (LRU: 4).
    # Layer 2 misses 8: 0 -> 6/8 + 1/6 = 0.917; 4 -> 3/8 + 1/12 = 0.458; 5 (2, 1, 1) -> 4/8 + 1/12 =
    # 0.583 -> evict 4. Pass 2 resets: only fld counts. Layer 0 misses 1: 0 (fld 1) 0.25, 5 (2/3)
    # 0.167, 8 (1/3) 0.083 -> evict 8 (without the reset: 1.75, 1.17, 1.58 -> 5). Layer 1: 5 hits.
    # Layer 2 misses 8 (T = 1): 0 (no record; fld 2/3) 0.167, 1 (1, 1, 1; fld 2/3) 0.917, 5 (1, 1, 1;
    # fld 1/3) 0.833 -> evict 0: 2 hits, {1, 5, 8}.
    ("hobbit", 2, [1, 5, 8]),
    # (w_lru, w_lfu, w_lhu, w_fld) = (0.1, 0.2, 0, 0.7): pass 1 layer 1: 0 -> (0.2 + 0.4) / 2 + 0.7/3 =
    # 0.533; 4 -> 0.3 / 2 + 0.7 = 0.85; 8 -> 0.15 + 0.467 = 0.617 -> evict 0. Layer 2: 8 hits. Pass 2
    # (reset), layer 0 misses 1: 5 and 4 (fld 2/3) 0.467, 8 (1/3) 0.233 -> evict 8. Layer 1: 5 hits.
    # Layer 2 misses 8: 5 (1, 1; fld 1/3) 0.3 + 0.233 = 0.533, 4 (no record) 0.233, 1 (1, 1; fld 2/3)
    # 0.3 + 0.467 = 0.767 -> evict 4: 3 hits, {1, 5, 8}.
    ("hobbit:w_lru=0.1,w_lfu=0.2,w_lhu=0,w_fld=0.7", 3, [1, 5, 8]),
    ("hobbit:weights=tuned", 3, [1, 5, 8]),  # the tuned set is that one
])
# second_prompt=0: a decode-only request has no prefill; its first step must start a sequence too (the
# records once restarted only at a prefill, and the equal-weights case evicted 1 instead of 0 last).
@pytest.mark.parametrize("second_prompt", [1, 0])
def test_hobbit_priority_by_hand(policy, hits, final, second_prompt):
    model, trace = _hobbit_trace(second_prompt)
    replay, r = replay_of(trace, model, capacity=slots(model, 3), eviction=policy, mode="per-access")
    assert (r.accesses, r.hits) == (9, hits)
    assert resident(replay) == final


@pytest.mark.parametrize("ids,rule,hits,final", [
    # 2 layers, 2 slots, one request (the collection stays empty: priorities use the request's own
    # counts). rule=paper: (p + eps)(1 - layer / 2), p the expert's share of its layer's row.
    # Stream [0, 0] [0, 1] [1, 1]. Pass 1 layer 1 misses 5: 0 (row 0 = {0: 2}: p 1) -> 1; 4 (row 1 =
    # {0: 1, 1: 1}: 1/2) -> 0.25: evict 4. Pass 2 layer 0 misses 1 (row 0 {0: 2, 1: 1}): 0 -> 2/3;
    # 5 -> 0.25: evict 5 (LRU would evict 0). Layer 1 misses 5 (row 1 {0: 1, 1: 2}): 0 -> 2/3, 1 ->
    # 1/3: evict 1. One hit, {0, 5}.
    ([[[0], [0]], [[0], [1]], [[1], [1]]], "paper", 1, [0, 5]),
    # Stream [0, 0] [0, 1] [0, 0] -- rule=paper: pass 1 evicts 4 as above; pass 2: 0 hits; 4 misses
    # (row 1 {0: 2, 1: 1}): 0 -> 1, 5 -> 1/3 x 1/2: evict 5. Two hits, {0, 4}.
    ([[[0], [0]], [[0], [1]], [[0], [0]]], "paper", 2, [0, 4]),
    # rule=code: layers after the one computing are protected; the others go most visited first.
    # Pass 1 layer 1 misses 5: 0 visited twice, 4 once: evict 0 (LRU: 4). Pass 2 layer 0 misses 0:
    # 4 and 5 are protected (layer 1 > 0), the least recent goes: 4. Layer 1 misses 4: 5 and 0 once
    # each, the least recent: 5. One hit, {0, 4}.
    ([[[0], [0]], [[0], [1]], [[0], [0]]], "code", 1, [0, 4]),
])
def test_moe_infinity_eviction_by_hand(ids, rule, hits, final):
    model = tiny_model(2, 4, 1)
    trace = make_trace(ids, model, request_lengths=[3])
    replay, r = replay_of(trace, model, capacity=slots(model, 2), eviction=f"moe-infinity:rule={rule}",
                          prefetch="moe-infinity", mode="per-access")
    assert (r.accesses, r.hits, r.prefetches_issued) == (6, hits, 0)
    assert resident(replay) == final


@pytest.mark.parametrize("policy,final", [
    # 2 layers, 3 slots, stream 0 4 | 1 4 | 0 5 (passes 0-2). At 5: 0 was touched in pass 2 (current),
    # 4 and 1 in pass 1 (stale). Insertion order 0, 4, 1.
    ("least-stale:order=insert", [0, 1, 5]),  # stale first, in insertion order: 4
    ("least-stale", [0, 4, 5]),               # oldest touch: 1 (touched before 4 in pass 1)
    ("fifo", [1, 4, 5]),                      # first inserted: 0
])
def test_least_stale_insertion_order_by_hand(policy, final):
    model = tiny_model(2, 4, 1)
    trace = make_trace([[[0], [0]], [[1], [0]], [[0], [1]]], model, request_lengths=[3])
    replay, r = replay_of(trace, model, capacity=slots(model, 3), eviction=policy, mode="per-access")
    assert (r.hits, r.misses, r.evictions) == (2, 4, 1)
    assert resident(replay) == final


@pytest.mark.parametrize("policy,hits", [
    # 2 slots; tokens [0, 0] [0, 0]; the top-1 prefetcher (budget 1) predicts expert 2 for layer 1 in
    # pass 0 (object 6, wrong) and expert 0 (object 4) in pass 1. Pass 0: 0 loads, 6 is prefetched into
    # the second slot; 4 misses. lru-end: the unused prefetch is least recent -> 6 goes; pass 1: 0
    # and 4 hit. mru-end: 6 entered after 0 -> 0 goes; pass 1: 0 misses (6 goes, unused), 4 hits.
    ("lru", 2),
    ("lru:prefetch_at=mru-end", 1),
])
def test_lru_prefetch_position_by_hand(policy, hits):
    model = tiny_model(2, 4, 1)
    spec = [[[0.0, 0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]]
    trace = make_trace([[[0], [0]], [[0], [0]]], model, request_lengths=[2], spec_scores=spec)
    replay, r = replay_of(trace, model, capacity=slots(model, 2), eviction=policy, prefetch="top1",
                          prefetch_budget=1, mode="per-access")
    assert (r.hits, r.prefetches_issued, r.prefetches_wasted) == (hits, 1, 1)
    assert resident(replay) == [0, 4]


@pytest.mark.parametrize("policy,hits,final_layer0", [
    # Per-layer caches of 2 slots; layer 1 always uses expert 0 (1 miss, 8 hits). Layer 0 uses
    # A A B B B C A C A (A, B, C = 0, 1, 2). In-cache counts: C evicts A (2 < B's 3); A evicts C (1);
    # C evicts A (1); A evicts C: layer 0 hits 3, ends {A, B}.
    ("lfu", 3 + 8, [0, 1]),
    # History counts: C evicts A (2 < 3); A (3 uses) evicts C (1); C (2) then meets A 3 and B 3 -- a
    # tie, the least recent (B, last used 3 passes before A) goes; A hits: 4 + 8, ends {A, C}.
    ("lfu:count=history", 4 + 8, [0, 2]),
])
def test_lfu_history_by_hand(policy, hits, final_layer0):
    model = tiny_model(2, 4, 1)
    ids = [[[x], [0]] for x in (0, 0, 1, 1, 1, 2, 0, 2, 0)]
    trace = make_trace(ids, model, request_lengths=[9])
    replay, r = replay_of(trace, model, capacity=slots(model, 4), scope="per-layer", eviction=policy,
                          mode="per-access")
    assert r.hits == hits
    assert sorted(replay.slot_i[K.SL_OBJ, :2].tolist()) == final_layer0  # layer 0's share: slots 0, 1


def test_random_is_seeded_and_uniform():
    """Random: the same seed gives the same victims; over seeds, each of two candidates goes about
    half the time. 2 slots, stream 0 4 | 1 4: at 1 the candidates are 0 and 4; if 4 goes, it misses
    next (1 hit or 0 hits)."""
    model = tiny_model(2, 4, 1)
    trace = make_trace([[[0], [0]], [[1], [0]]], model, request_lengths=[2])
    runs = [simulate(trace, model=model, capacity=slots(model, 2), eviction="random", mode="per-access",
                     seed=seed).hits for seed in range(200)]
    assert set(runs) == {0, 1}
    assert 0.35 < np.mean(runs) < 0.65  # 200 fair coin flips: 0.5 +- 0.035 (1 sd)
    top2 = tiny_model(2, 4, 2)
    rng = np.random.default_rng(3)
    ids = np.array([[rng.choice(4, 2, replace=False) for _ in range(2)] for _ in range(30)])
    long = make_trace(ids, top2, request_lengths=[10, 20], prompt_lengths=[3, 4])

    def run(seed):
        replay, r = replay_of(long, top2, hardware=SLOW, capacity=slots(top2, 3), eviction="random", seed=seed)
        return r.as_dict(), replay.slot_i[K.SL_OBJ].tolist()

    assert run(5) == run(5)
    assert len({str(run(seed)) for seed in range(6)}) > 1


# -- prefetchers -------------------------------------------------------------------------------------------

def test_adapmoe_prefetch_by_hand():
    """2 layers x 4 experts, top-1, unlimited cache: a prompt token and three decoded ones. At each
    layer-0 router, AdapMoE takes layer 1's top 2 by score and prefetches the first not resident.
    Pass 0 (prefill): nothing, whatever the scores. Routing [0, 0]: 0 and 4 load.
    Pass 1: scores rank 0 (resident), 1 -> prefetch 5; routing [0, 1]: 5 hits.
    Pass 2: rank 3, 2, neither resident -> only 7 (one per layer); routing [0, 2]: 6 misses.
    Pass 3: rank 3, 2, both resident -> nothing; routing [0, 3]: 7 hits.
    Issued 2, both used; misses 0, 4, 6; 5 hits."""
    model = tiny_model(2, 4, 1)
    ids = [[[0], [0]], [[0], [1]], [[0], [2]], [[0], [3]]]
    spec = [[[0.1, 0.7, 0.2, 0.0]], [[0.6, 0.3, 0.1, 0.0]], [[0.0, 0.1, 0.3, 0.6]], [[0.0, 0.0, 0.4, 0.6]]]
    trace = make_trace(ids, model, request_lengths=[4], spec_scores=spec)
    replay, r = replay_of(trace, model, hardware=FAST, capacity=1.0, prefetch="adapmoe", prefetch_budget=4)
    assert (r.prefetches_issued, r.prefetches_used, r.prefetches_wasted) == (2, 2, 0)
    assert (r.hits, r.misses) == (5, 3)
    assert resident(replay) == [0, 4, 5, 6, 7]


@pytest.mark.parametrize("depth,extra", [(2, 0.0), (1, 1.0)])
def test_hobbit_prefetch_depth_by_hand(depth, extra):
    """3 layers x 4 experts, top-1, miss='drop' (only prefetches enter the cache), unlimited cache,
    SLOW, budget 4 per layer. Prompt [0, 0, 1], scores predicting 0 for layer 1 and 1 for layer 2;
    decoded token [0, 0, 2], predicting 0 and 2.
    Pass 0: layer 0 drops 0 (ends at its router D); 4 is missing -> prefetched [D, D+X]. Layer 1
    (router 2D) waits for it: ends D + X + C; prefetches 9 [D+X, D+2X]. Layer 2 (router 2D + X + C)
    waits: ends D + 2X + C.
    Pass 1 (D' = dense part of a decode step over 2 keys): layer 0 drops 0; its router runs at
    R = D + 2X + C + D'. Depth 2: layer 1's prediction (4) is resident, so layer 2's (10) is prefetched
    now: [R, R+X]. Depth 1: nothing now; layer 1 (router R + D', hit 4) prefetches 10 at R + D'.
    Layer 2's router (R + 2D' + C) waits for 10: the pass ends R + X + C (depth 2) or R + D' + X + C
    (depth 1). Accesses 6: 2 dropped, 4 hit at pass 1, three late prefetches (4, 9, 10)."""
    model = tiny_model(3, 4, 1)
    ids = [[[0], [0], [1]], [[0], [0], [2]]]
    spec = [[[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]], [[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]]]
    trace = make_trace(ids, model, request_lengths=[2], spec_scores=spec)
    r = simulate(trace, model=model, hardware=SLOW, capacity=1.0, miss="drop", prefetch=f"hobbit:depth={depth}",
                 prefetch_budget=4)
    d, d2 = slow_dense(1), slow_dense(2)
    start = d + 2 * SLOW_X + SLOW_C + d2
    assert r.total_seconds == pytest.approx(start + extra * d2 + SLOW_X + SLOW_C, rel=1e-9)
    assert (r.prefetches_issued, r.prefetches_used, r.late_prefetch_misses) == (3, 3, 3)
    assert (r.hits, r.dropped_experts) == (1, 2)


def _pf_state(replay):
    """The prefetcher's own (int64, float64) state arrays."""
    si = replay.si
    return (si[si[K.H_PF_I]:si[K.H_PF_I] + si[K.H_PF_I_LEN]],
            replay.sf[si[K.H_PF_F]:si[K.H_PF_F] + si[K.H_PF_F_LEN]])


# c_prompt=0: C is decode-only; B's matrix must join the collection at C's first step all the same
# (it once waited for a prefill, so B never joined and C's counts were added to B's).
@pytest.mark.parametrize("c_prompt", [1, 0])
def test_moe_infinity_prefetch_by_hand(c_prompt):
    """3 layers x 4 experts, top-1, miss='drop' (only prefetches enter the cache), unlimited cache,
    FAST, one prefetch per layer. Requests A: [1, 1, 1] then decoded [1, 2, 1]; B: [2, 2, 2];
    C: [1, 1, 1]. During A the collection is empty: nothing prefetched.
    B's prefill closes A: its activation matrix {1: 2, 5: 1, 6: 1, 9: 2} joins the collection. At B's
    layer 0 it is the only match: priority count x (1 - d / 4) at d layers ahead: 9 -> 2 x 1/2 = 1,
    5 and 6 -> 3/4: 9 is fetched first (a nearest-layer-first order would fetch 5). At layer 1: 9,
    resident. C's prefill closes B ({2, 6, 10}). C's layer 0 routes to 1 like A (cosine 1, B's 0): A's
    list again: 9 resident, 5 fetched. C's layer 1 (A still closer): 9 resident. C uses 5 and 9:
    2 hits, 2 prefetches issued and both used; all 10 other accesses dropped. A was matched at B's
    layers 0 and 1 and C's 0 and 1 (the last layer proposes nothing): 1 + 4 matches. The same holds
    when C is a decode-only request (``c_prompt=0``): its first pass starts a request all the same."""
    model = tiny_model(3, 4, 1)
    ids = [[[1], [1], [1]], [[1], [2], [1]], [[2], [2], [2]], [[1], [1], [1]]]
    trace = make_trace(ids, model, request_lengths=[2, 1, 1], prompt_lengths=[1, 1, c_prompt])
    replay, r = replay_of(trace, model, hardware=FAST, capacity=1.0, miss="drop", prefetch="moe-infinity",
                          prefetch_budget=1)
    assert (r.hits, r.prefetches_issued, r.prefetches_used, r.dropped_experts) == (2, 2, 2, 10)
    assert resident(replay) == [5, 9]
    state_i, state_f = _pf_state(replay)
    n, _, coll, _, _ = mi.offsets_of(state_i, 3, 4)
    assert state_i[mi.N_FILLED] == 2 and state_i[mi.MATCHED] == 0
    assert state_i[mi.ACCESS:mi.ACCESS + 2].tolist() == [5, 1]
    eam = state_f[coll:coll + 2 * n].reshape(2, n)
    assert {o: eam[0, o] for o in np.flatnonzero(eam[0])} == {1: 2, 5: 1, 6: 1, 9: 2}
    assert {o: eam[1, o] for o in np.flatnonzero(eam[1])} == {2: 1, 6: 1, 10: 1}


def test_pregated_accuracy_one_is_the_oracle():
    """Pre-gated MoE at accuracy 1 proposes exactly the experts the next layer uses: with an unlimited
    cache, instant transfers and room for all, its replay equals the oracle prefetcher's (lookahead
    1), and both are labelled oracle."""
    model = tiny_model(3, 8, 2)
    rng = np.random.default_rng(4)
    ids = np.array([[rng.choice(8, 2, replace=False) for _ in range(3)] for _ in range(14)])
    trace = make_trace(ids, model, request_lengths=[6, 8], prompt_lengths=[2, 3])
    pre = simulate(trace, model=model, hardware=FAST, capacity=1.0, prefetch="pregated", prefetch_budget=8)
    ora = simulate(trace, model=model, hardware=FAST, capacity=1.0, prefetch="oracle", prefetch_budget=8)
    assert pre.prefetch.endswith("(oracle)") and ora.prefetch.endswith("(oracle)")
    same = {k: v for k, v in pre.as_dict().items() if k != "prefetch"}
    assert same == {k: v for k, v in ora.as_dict().items() if k != "prefetch"}
    assert pre.prefetches_used == pre.prefetches_issued > 0


@pytest.mark.parametrize("accuracy,hits", [(0.0, 0), (1.0, 60)])
def test_pregated_accuracy_zero_never_proposes_a_used_expert(accuracy, hits):
    """4 layers x 8 experts, top-2, 10 passes each using experts 0 and 1 at every layer; miss='drop',
    so only prefetches are ever resident. Accuracy 0: every proposal is an expert the next layer does
    not use -- no hit, no prefetch used, ever. Accuracy 1: layers 1-3 always hit (3 x 2 x 10 = 60),
    after 6 prefetches in pass 0."""
    model = tiny_model(4, 8, 2)
    trace = make_trace([[[0, 1]] * 4] * 10, model, request_lengths=[10], prompt_lengths=[1])
    r = simulate(trace, model=model, hardware=FAST, capacity=1.0, miss="drop",
                 prefetch=f"pregated:accuracy={accuracy}", prefetch_budget=8, seed=1)
    assert r.hits == hits and r.prefetches_used == (6 if hits else 0) and r.prefetches_issued >= 6


# -- the SDK: a user's compiled policy, a file reference, a Python object -----------------------------------

def _user_trace():
    """2 layers x 4 experts, top-1, 5 tokens: the stream 0 4 | 1 4 | 0 5 | 0 6 | 1 4 (3 slots)."""
    model = tiny_model(2, 4, 1)
    ids = [[[0], [0]], [[1], [0]], [[0], [1]], [[0], [2]], [[1], [0]]]
    return model, make_trace(ids, model, request_lengths=[5])


@pytest.mark.parametrize("policy,final", [
    # MRU: 0 4 1 fill; 4 and 0 hit; 5 evicts 0 (just used); 0 evicts 5; 6 evicts 0; 1 and 4 hit.
    (MRU, [1, 4, 6]),
    # LIFO (its own insertion stamps): 0 4 1 fill; 4, 0 hit; 5 evicts 1 (newest); 0 hits; 6 evicts 5;
    # 1 evicts 6; 4 hits.
    (LIFO, [0, 1, 4]),
    (f"{USER_POLICIES}:MRU", [1, 4, 6]),
    (f"{USER_POLICIES}:LIFO", [0, 1, 4]),
])
def test_user_compiled_policy_by_hand(policy, final):
    model, trace = _user_trace()
    replay, r = replay_of(trace, model, capacity=slots(model, 3), eviction=policy, mode="per-access")
    assert (r.hits, r.misses) == (4, 6)
    assert resident(replay) == final
    assert r.eviction in ("mru", "lifo")


@pytest.mark.parametrize("prefetch", [
    "top1",  # a prefetcher that reads the scores (budget 0: it issues nothing)
    "none",  # the policy declares needs_spec_scores, so the scores reach the kernel without a prefetcher
])
def test_user_policy_reads_speculative_scores(prefetch):
    """UNLIKELY_NEXT evicts the next layer's expert with the lowest predicted score. 2 layers, 3 slots,
    stream 0 5 | 0 6 | 1 5; in pass 2 the scores predict layer 1's expert 1 (0.8) over expert 2 (0.1).
    At 1 (layer 0) the candidates are 0 (not the next layer: last), 5 (0.8) and 6 (0.1): 6 goes, and
    5 hits next. Scores of 0 would tie 5 and 6 and evict the least recent, 5: one hit fewer."""
    model = tiny_model(2, 4, 1)
    spec = [[[0.25] * 4], [[0.25] * 4], [[0.05, 0.8, 0.1, 0.05]]]
    trace = make_trace([[[0], [1]], [[0], [2]], [[1], [1]]], model, request_lengths=[3], spec_scores=spec)
    replay, r = replay_of(trace, model, capacity=slots(model, 3), eviction=UNLIKELY_NEXT, prefetch=prefetch,
                          prefetch_budget=0 if prefetch != "none" else "engine", mode="per-access")
    assert r.hits == 2 and resident(replay) == [0, 1, 5]


@pytest.mark.parametrize("mode", ["event", "per-access"])
def test_python_object_reproduces_lru(mode):
    """A plain Python object with victim(view) (the kernel pauses at every decision) that evicts the
    candidate with the oldest last use makes LRU's choices: the same replay, prefetch decisions
    included, and every decision went through it."""
    model = tiny_model(3, 6, 2)
    rng = np.random.default_rng(11)
    ids = np.array([[rng.choice(6, 2, replace=False) for _ in range(3)] for _ in range(16)])
    spec = rng.dirichlet(np.ones(6), size=(16, 2)).astype(np.float16)
    trace = make_trace(ids, model, request_lengths=[7, 9], prompt_lengths=[2, 1], spec_scores=spec)
    kw = dict(model=model, hardware=SLOW, capacity=slots(model, 5), prefetch="top2", mode=mode)
    compiled, a = replay_of(trace, eviction="lru", **kw)
    python, b = replay_of(trace, eviction=PythonLRU(), **kw)
    assert b.eviction == "python-lru" and b.decisions == b.evictions > 0
    skip = {"eviction", "decisions"}
    assert {k: v for k, v in a.as_dict().items() if k not in skip} == \
        {k: v for k, v in b.as_dict().items() if k not in skip}
    assert compiled.slot_i[K.SL_OBJ].tolist() == python.slot_i[K.SL_OBJ].tolist()
