"""Hand-worked small cases for the simulator: counts, miss classes, streaming, timing, drop, scope,
batching and prefetch. Every expected number below is worked out in the test's docstring or comments."""

import numpy as np
import pytest

from conftest import FAST, SLOW, SLOW_C, SLOW_X, make_trace, slots, slow_dense, tiny_model
from specmd_env import Replay, simulate


# -- per-access policies on a tiny stream ----------------------------------------------------------

def _k1_trace():
    """2 layers x 4 experts, top-1; one request of 5 tokens, one pass each. Objects: layer 0 expert e
    is e, layer 1 expert e is 4 + e. Stream: 0 4 | 1 4 | 0 5 | 0 6 | 1 4."""
    model = tiny_model(2, 4, 1)
    ids = [[[0], [0]], [[1], [0]], [[0], [1]], [[0], [2]], [[1], [0]]]
    return model, make_trace(ids, model, request_lengths=[5], prompt_lengths=[1])


@pytest.mark.parametrize("policy,hits", [
    # LRU, 3 slots: 0M 4M 1M 4H 0H (order 1 4 0) 5M->1 0H 6M->4 1M->5 4M->0: hits 4, 0, 0
    ("lru", 3),
    # FIFO: 0M 4M 1M 4H 0H 5M->0 0M->4 6M->1 1M->5 4M->0: hits 4, 0
    ("fifo", 2),
    # LFU (in-cache count, LRU ties): 4H(2) 0H(2) 5M->1(c1) 0H(3) 6M->5(c1) 1M->6(c1) 4H: hits 4, 0, 0, 4
    ("lfu", 4),
])
def test_per_access_policies_by_hand(policy, hits):
    model, trace = _k1_trace()
    r = simulate(trace, model=model, capacity=slots(model, 3), eviction=policy, mode="per-access")
    assert (r.accesses, r.hits, r.misses) == (10, hits, 10 - hits)
    assert r.compulsory_misses == 5 and r.transfers == r.misses


def test_belady_by_hand():
    """Belady, 3 slots, stream 0 4 1 4 0 5 0 6 1 4: at 5 the residents 0 (next at 6), 4 (9), 1 (8):
    evict 4; at 6 residents 0 (never), 1 (8), 5 (never): evict 0 or 5 (LRU tie: 0); 1 hits; 4 misses.
    Misses: 0 4 1 5 6 4 -> 6, hits 4."""
    model, trace = _k1_trace()
    r = simulate(trace, model=model, capacity=slots(model, 3), eviction="belady", mode="per-access")
    assert (r.hits, r.misses) == (4, 6)


def test_collision_vs_capacity_miss():
    """1 slot, 2 layers x 2 experts, top-1, every token routes expert 0: objects 0 (layer 0), 2 (layer 1).
    Pass 0: 0 and 2 compulsory (2 evicts 0 in pass 0). Pass 1: 0 misses -- evicted in an earlier pass:
    capacity -- and evicts 2, which then misses -- evicted in this very pass: collision."""
    model = tiny_model(2, 2, 1)
    trace = make_trace([[[0], [0]], [[0], [0]]], model, request_lengths=[2], prompt_lengths=[1])
    r = simulate(trace, model=model, capacity=slots(model, 1), eviction="lru")
    assert (r.misses, r.compulsory_misses, r.capacity_misses, r.collision_misses) == (4, 2, 1, 1)
    assert r.hits == 0 and r.evictions == 3


def test_streaming_layer_larger_than_cache():
    """OLMoE-style prefill: layer 0 of one pass needs 8 experts, the cache holds 3. The layer streams
    (reuses slots of experts it has computed) and completes: 8 + 2 compulsory misses, 7 evictions."""
    model = tiny_model(2, 8, 2)
    ids = [[[0, 1], [0, 1]], [[2, 3], [0, 1]], [[4, 5], [1, 0]], [[6, 7], [0, 1]]]
    trace = make_trace(ids, model, request_lengths=[4], prompt_lengths=[4])
    for mode in ("event", "per-access"):
        r = simulate(trace, model=model, capacity=slots(model, 3), eviction="lru", mode=mode)
        assert (r.accesses, r.hits, r.misses, r.compulsory_misses) == (10, 0, 10, 10)
        assert r.transfers == 10 and r.evictions == 7 and r.token_accesses == 16
        assert r.total_seconds > 0 and np.isfinite(r.total_seconds)


# -- timing ----------------------------------------------------------------------------------------

X, C, _dense = SLOW_X, SLOW_C, slow_dense


def test_single_miss_stalls_one_transfer_minus_overlap():
    """2 layers x 4 experts, top-2, unlimited cache. Pass 0: objects 0, 1 | 4, 5 all miss; each layer
    waits X for its first expert and X - C more for its second (the copy of the second overlaps the
    compute of the first): 2 (2X - C). Pass 1: layer 0 needs 0 (hit, computes C) and 2 (a miss): its
    transfer overlaps that compute, so it stalls X - C; layer 1 hits. Total 5X - 3C."""
    model = tiny_model(2, 4, 2)
    trace = make_trace([[[0, 1], [0, 1]], [[0, 2], [0, 1]]], model, request_lengths=[2], prompt_lengths=[1])
    r = simulate(trace, model=model, hardware=SLOW, capacity=1.0)
    assert r.misses == 5 and r.hits == 3
    assert r.stall_seconds == pytest.approx(5 * X - 3 * C, rel=1e-9)
    one = simulate(make_trace([[[0, 1], [0, 1]]], model), model=model, hardware=SLOW, capacity=1.0)
    assert r.stall_seconds - one.stall_seconds == pytest.approx(X - C, rel=1e-6)


def test_ttft_tpot_by_hand():
    """One request: 1 prompt token, 2 decoded; top-1 always expert 0; unlimited cache.
    Prefill (kv 1): each layer D1, then its expert misses: router at D1, ready X later, computed C:
    TTFT = 2 (D1 + X + C) (the copy engine is idle when layer 1's router runs).
    Decode steps attend 2 and 3 keys and hit: TPOT = ((2 (D2 + C)) + 2 (D3 + C)) / 2."""
    model = tiny_model(2, 4, 1)
    trace = make_trace([[[0], [0]]] * 3, model, request_lengths=[3], prompt_lengths=[1])
    r = simulate(trace, model=model, hardware=SLOW, capacity=1.0)
    d1, d2, d3 = _dense(1), _dense(2), _dense(3)
    ttft = 2 * (d1 + X + C)
    tpot = (2 * (d2 + C) + 2 * (d3 + C)) / 2
    assert r.ttft_seconds.tolist() == pytest.approx([ttft], rel=1e-12)
    assert r.tpot_seconds.tolist() == pytest.approx([tpot], rel=1e-12)
    assert r.total_seconds == pytest.approx(ttft + 2 * tpot, rel=1e-12)
    assert r.stall_seconds == pytest.approx(2 * X, rel=1e-12)
    assert (r.prompt_tokens, r.output_tokens) == (1, 2)


def test_drop_mode_counts_and_never_transfers():
    """miss='drop': a missing expert is skipped (counted), never loaded; so the cache stays empty and
    every access misses. With the oracle prefetcher the only transfers are prefetches."""
    model = tiny_model(2, 4, 2)
    rng = np.random.default_rng(0)
    ids = np.array([[rng.choice(4, 2, replace=False) for _ in range(2)] for _ in range(6)])
    trace = make_trace(ids, model, request_lengths=[6], prompt_lengths=[2])
    r = simulate(trace, model=model, capacity=slots(model, 3), miss="drop")
    assert r.dropped_experts == r.misses == r.accesses and r.transfers == 0 and r.stall_seconds == 0
    p = simulate(trace, model=model, capacity=slots(model, 3), miss="drop", prefetch="oracle", hardware=FAST,
                 prefetch_budget=4)
    assert p.transfers == p.prefetches_issued > 0
    assert p.dropped_experts == p.misses - p.late_prefetch_misses and p.hits > 0


def test_per_layer_scope_confines_layers():
    """4 slots, 2 layers: per-layer gives each layer 2. Layer 0 cycles over experts 0, 1, 2 and layer 1
    always uses expert 0: globally the 4 objects fit (4 compulsory misses, then hits); per layer, layer 0's
    3 experts cycle through 2 slots under LRU and miss every time (6), layer 1 misses once."""
    model = tiny_model(2, 4, 1)
    ids = [[[t % 3], [0]] for t in range(6)]
    trace = make_trace(ids, model, request_lengths=[6], prompt_lengths=[1])
    g = simulate(trace, model=model, capacity=slots(model, 4), scope="global")
    assert (g.misses, g.compulsory_misses) == (4, 4)
    replay = Replay(trace, model=model, capacity=slots(model, 4), scope="per-layer")
    p = replay.run()
    assert (p.misses, p.compulsory_misses, p.capacity_misses) == (7, 4, 3)
    held = replay.slot_i[0]  # kernel.SL_OBJ row: object per slot
    assert sorted(held[:2].tolist()) == [1, 2] and held[2:].tolist() == [4, -1]  # layer 1 uses one slot of 2


def test_batch_of_two_unions_experts():
    """Two requests (1 prompt + 1 decode token each). Batch 1: 4 passes x 2 layers x 2 experts = 16
    accesses. Batch 2: both prefills (8), then one decode pass for both tokens: layer 0 needs
    {0, 1} | {1, 2} = 3 experts, layer 1 {2, 3} | {2, 3} = 2 -> 13 accesses; 16 token accesses either way."""
    model = tiny_model(2, 4, 2)
    ids = [[[0, 1], [0, 1]], [[0, 1], [2, 3]],    # request 0: prompt, decode
           [[2, 3], [0, 1]], [[1, 2], [2, 3]]]    # request 1: prompt, decode
    trace = make_trace(ids, model, request_lengths=[2, 2], prompt_lengths=[1, 1])
    one = simulate(trace, model=model, capacity=1.0, batch_size=1)
    two = simulate(trace, model=model, capacity=1.0, batch_size=2)
    assert (one.accesses, two.accesses) == (16, 13)
    assert one.token_accesses == two.token_accesses == 16
    assert two.compulsory_misses == 8 and two.misses == 8  # objects 0-3 and 4-7, each once
    assert len(two.ttft_seconds) == 2 and two.output_tokens == 2


def test_oracle_prefetch_all_used_with_enough_budget():
    """Oracle prefetch with a budget of E transfers per layer, an unlimited cache and instant transfers:
    every prefetch is used, none wasted or late, and only layer 0 (never a prefetch target) misses."""
    model = tiny_model(3, 8, 2)
    rng = np.random.default_rng(1)
    ids = np.array([[rng.choice(8, 2, replace=False) for _ in range(3)] for _ in range(10)])
    trace = make_trace(ids, model, request_lengths=[4, 6], prompt_lengths=[2, 3])
    r = simulate(trace, model=model, hardware=FAST, capacity=1.0, prefetch="oracle", prefetch_budget=8)
    assert r.prefetches_issued > 0
    assert r.prefetches_used == r.prefetches_issued
    assert r.prefetches_wasted == r.late_prefetch_misses == r.prefetches_resident_at_end == 0
    assert r.misses == len(np.unique(ids[:, 0, :]))
    assert r.stall_seconds == 0
