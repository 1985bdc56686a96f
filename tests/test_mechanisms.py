"""Hand-worked timing for the mechanisms a researcher varies: the copy engine's order (fifo,
demand-first with promotion, preemption at chunk boundaries, an unphysical separate prefetch channel),
several engines sharing the link, the engine's prefetch budget, eviction at the copy's start, and every
miss handler (drop, low-precision, cascade, substitute, cpu).

All cases run on :data:`SLOW` (a transfer takes X = 1 ms, an expert computes in C = 1 us, a layer's
dense part is D = :func:`slow_dense`) with tiny models; objects are layer * E + expert. Every expected
number is derived in the test's docstring from the model in ``specmd_env/kernel/loop.py`` and
``engine.py`` -- never copied from what the code prints.
"""

import dataclasses

import numpy as np
import pytest

from conftest import FAST, SLOW, SLOW_C, SLOW_X, make_trace, slots, slow_dense, tiny_model
from specmd_env import Replay, simulate
from specmd_env.errors import SpecMDError
from specmd_env.kernel.layout import SL_COUNT, SL_OBJ, SL_READY

X, C = SLOW_X, SLOW_C
D1 = slow_dense(1)  # a 1-token prefill's dense part (reads 1 cached token)


def assert_identities(r):
    """What every replay's counters must satisfy, whatever the mechanism."""
    assert r.hits + r.misses == r.accesses
    assert r.compulsory_misses + r.capacity_misses + r.collision_misses == r.misses
    assert 0 <= r.late_prefetch_misses <= r.misses
    demand_misses = r.misses - r.late_prefetch_misses  # each one fetched, dropped, substituted or on the CPU
    fetched = demand_misses - r.dropped_experts - r.substituted_experts - r.cpu_experts
    assert fetched >= 0 and r.transfers == fetched + r.prefetches_issued
    assert r.prefetches_issued == r.prefetches_used + r.prefetches_wasted + r.prefetches_resident_at_end
    assert r.low_precision_transfers <= r.transfers and r.bypassed <= fetched
    lost = r.gate_mass_dropped + r.gate_mass_substituted + r.gate_mass_low_precision
    assert 0 <= lost <= r.gate_mass * (1 + 1e-6)
    assert r.stall_seconds >= 0 and r.demand_wait_seconds >= 0


# -- the copy engine's order -----------------------------------------------------------------------------

def _engine_case(spec_layer1):
    """2 layers x 4 experts, top-1, one 1-token prompt: layer 0 needs expert 0 (object 0), layer 1
    expert 0 (object 4); ``spec_layer1`` are the speculative scores for layer 1."""
    model = tiny_model(2, 4, 1)
    trace = make_trace([[[0], [0]]], model, spec_scores=[[spec_layer1]])
    return model, trace


@pytest.mark.parametrize("engine,ttft,wait", [
    # FIFO: the demand load for object 4 queues behind both prefetches: starts D + 3X.
    ("fifo", D1 + 4 * X + C, (D1 + 3 * X) - (2 * D1 + X + C)),
    # demand-first: it overtakes the queued prefetch (6), not the one in flight (5, ends D + 2X).
    ("demand-first", D1 + 3 * X + C, (D1 + 2 * X) - (2 * D1 + X + C)),
    # preempt, 3 chunks of X/3: prefetch 5 started at D + X; the router runs (D + C) later, inside its
    # first chunk, so the demand load starts at its first boundary D + X + X/3.
    ("preempt", D1 + X + X / 3 + X + C, (D1 + X + X / 3) - (2 * D1 + X + C)),
    # separate (unphysical): the prefetches ran on their own channel from D ([D, D+X], [D+X, D+2X]);
    # the demand channel is idle after D + X, so the load starts at the router: no wait.
    ("separate", 2 * D1 + 2 * X + 2 * C, 0.0),
])
def test_copy_engine_order(engine, ttft, wait):
    """Layer 0: router at D; object 0 misses, its load runs [D, D+X], computed by D + X + C. Then the
    top-2 prefetcher (fixed budget 2) issues layer 1's two highest-scored experts -- 1 and 2, both
    wrong -- at D, behind the demand load: prefetch 5 on [D+X, D+2X], prefetch 6 on [D+2X, D+3X].
    Layer 1 starts at D + X + C, its router runs at 2D + X + C and object 4 misses. Its load starts
    when the engine lets it (parametrised), arrives X later and computes in C: TTFT = start + X + C.
    ``demand_wait_seconds`` = that start - the router time (layer 0's load did not wait)."""
    model, trace = _engine_case([0.0, 0.6, 0.3, 0.1])
    r = simulate(trace, model=model, hardware=SLOW, capacity=1.0, prefetch="top2", prefetch_budget=2,
                 copy_engine=engine, preempt_chunks=3)
    assert r.ttft_seconds.tolist() == pytest.approx([ttft], rel=1e-9)
    assert r.demand_wait_seconds == pytest.approx(wait, rel=1e-9)
    assert r.stall_seconds == pytest.approx(X + (ttft - C) - (2 * D1 + X + C), rel=1e-9)
    assert (r.misses, r.transfers, r.prefetches_issued, r.prefetches_used) == (2, 4, 2, 0)
    assert r.prefetches_resident_at_end == 2 and r.late_prefetch_misses == 0
    assert_identities(r)


@pytest.mark.parametrize("engine,arrival", [
    # FIFO: the queued prefetch of object 4 keeps its place: [D+3X, D+4X].
    ("fifo", D1 + 4 * X),
    # demand-first: promoted to the front of the queue -- behind the one in flight (5, ends D+2X).
    ("demand-first", D1 + 3 * X),
    # preempt: promoted, and prefetch 5 is preempted at its first chunk boundary D + X + X/3.
    ("preempt", D1 + X + X / 3 + X),
    # separate: the prefetch channel runs 5 [D, D+X], 6 [D+X, D+2X], 4 [D+2X, D+3X]; nothing is promoted.
    ("separate", D1 + 3 * X),
])
def test_queued_prefetch_is_promoted(engine, arrival):
    """As above, but the top-3 prefetcher (fixed budget 3) ranks layer 1's experts 1, 2, 0: prefetches
    5 [D+X, D+2X], 6 [D+2X, D+3X] and 4 [D+3X, D+4X] are queued at D. Layer 1's router (2D + X + C)
    finds object 4 resident but not arrived: a late prefetch miss, no new transfer. A demand-first
    engine moves its queued copy to the front (parametrised arrival); layer 1 computes it on arrival,
    TTFT = arrival + C, and the prefetch it overtook (6) arrives X later than planned."""
    model, trace = _engine_case([0.1, 0.6, 0.3, 0.0])
    replay = Replay(trace, model=model, hardware=SLOW, capacity=1.0, prefetch="top3", prefetch_budget=3,
                    copy_engine=engine, preempt_chunks=3)
    r = replay.run()
    assert r.ttft_seconds.tolist() == pytest.approx([arrival + C], rel=1e-9)
    assert (r.misses, r.late_prefetch_misses, r.transfers) == (2, 1, 4)
    assert (r.prefetches_issued, r.prefetches_used, r.prefetches_resident_at_end) == (3, 1, 2)
    assert_identities(r)
    ready = dict(zip(replay.slot_i[SL_OBJ].tolist(), replay.slot_f[SL_READY].tolist()))
    after = {"fifo": D1 + 3 * X, "demand-first": D1 + 4 * X, "preempt": D1 + 4 * X, "separate": D1 + 2 * X}[engine]
    assert ready[6] == pytest.approx(after, rel=1e-9)
    assert ready[4] == pytest.approx(arrival, rel=1e-9)


def test_two_engines_share_the_link():
    """copy_engines=2: two copies run at once, each at half the link's bandwidth (2X). 2 layers x 4
    experts, top-2, one 1-token prompt needing experts 0, 1 at both layers, no prefetch.
    One engine: layer 0's loads arrive D+X and D+2X; computed by D+X+C and D+2X+C; layer 1 likewise
    from 2D+2X+C: TTFT = 2D + 4X + 2C, the second load of each layer waiting X for the engine.
    Two engines: both loads of a layer run [router, router + 2X]: layer 0 ends D + 2X + 2C, layer 1
    2D + 4X + 4C; no load waits for an engine."""
    model = tiny_model(2, 4, 2)
    trace = make_trace([[[0, 1], [0, 1]]], model)
    one = simulate(trace, model=model, hardware=SLOW, capacity=1.0, copy_engines=1)
    two = simulate(trace, model=model, hardware=SLOW, capacity=1.0, copy_engines=2)
    assert one.ttft_seconds.tolist() == pytest.approx([2 * D1 + 4 * X + 2 * C], rel=1e-9)
    assert two.ttft_seconds.tolist() == pytest.approx([2 * D1 + 4 * X + 4 * C], rel=1e-9)
    assert one.demand_wait_seconds == pytest.approx(2 * X, rel=1e-9) and two.demand_wait_seconds == 0
    assert one.stall_seconds == pytest.approx(2 * (2 * X - C), rel=1e-9)
    assert two.stall_seconds == pytest.approx(4 * X, rel=1e-9)
    assert one.transfers == two.transfers == 4
    assert_identities(one)
    assert_identities(two)


def _evict_at_case(evict_at):
    """2 layers x 4 experts, top-1, 2 slots, LRU (a prefetched, unused expert is least recent),
    demand-first. One 1-token prompt using expert 0 at both layers; the top-1 prefetcher (budget 1)
    wrongly predicts expert 1 for layer 1."""
    model = tiny_model(2, 4, 1)
    trace = make_trace([[[0], [0]]], model, spec_scores=[[[0.1, 0.7, 0.1, 0.1]]])
    replay = Replay(trace, model=model, hardware=SLOW, capacity=slots(model, 2), eviction="lru",
                    prefetch="top1", prefetch_budget=1, evict_at=evict_at)
    return replay, replay.run()


def test_evict_at_start_sees_arrived_prefetch():
    """Layer 0: object 0 loads into slot 0 on [D, D+X]; prefetch 5 goes to slot 1 on [D+X, D+2X].
    Layer 1's router (2D + X + C) misses object 4 with both slots full. Its copy waits for the
    prefetch in flight: it starts at D + 2X and arrives D + 3X either way (TTFT D + 3X + C).
    evict_at='issue': the victim is chosen at the router; object 5 is still in flight then, so the only
    candidate is object 0 (computed) -> cache {4, 5}, nothing wasted.
    evict_at='start': chosen at D + 2X, when prefetch 5 has arrived; LRU puts it (unused) first ->
    cache {0, 4}, one prefetch wasted."""
    issue_replay, issue = _evict_at_case("issue")
    start_replay, start = _evict_at_case("start")
    assert sorted(issue_replay.slot_i[SL_OBJ].tolist()) == [4, 5]
    assert sorted(start_replay.slot_i[SL_OBJ].tolist()) == [0, 4]
    assert (issue.prefetches_wasted, start.prefetches_wasted) == (0, 1)
    assert issue.evictions == start.evictions == 1
    for r in (issue, start):
        assert r.ttft_seconds.tolist() == pytest.approx([D1 + 3 * X + C], rel=1e-9)
        assert_identities(r)
    # the load waited for the engine from the router to D + 2X, whenever its victim was chosen
    assert issue.demand_wait_seconds == pytest.approx(X - D1 - C, rel=1e-9)


# 'separate' passes: its demand channel has no queue of prefetches, and this load does not wait
@pytest.mark.parametrize("engine", ["fifo", "demand-first", "preempt", "separate"])
def test_evict_at_start_changes_only_the_victim(engine):
    """With an unlimited cache nothing is evicted, so evict_at must not change anything: the case of
    test_copy_engine_order gives the same TTFT and demand wait at 'start' as at 'issue' (there: FIFO
    D + 4X + C, demand-first D + 3X + C, preempt D + 7X/3 + C; waits measured from the router)."""
    model, trace = _engine_case([0.0, 0.6, 0.3, 0.1])
    runs = [simulate(trace, model=model, hardware=SLOW, capacity=1.0, prefetch="top2", prefetch_budget=2,
                     copy_engine=engine, evict_at=evict_at) for evict_at in ("issue", "start")]
    assert runs[1].ttft_seconds.tolist() == pytest.approx(runs[0].ttft_seconds.tolist(), rel=1e-12)
    assert runs[1].demand_wait_seconds == pytest.approx(runs[0].demand_wait_seconds, rel=1e-12)


@pytest.mark.parametrize("hardware,budget", [
    # a 10x faster link (X' = X/10): ceil((D + C) / X') = ceil(103.01 us / 100 us) = 2
    (dataclasses.replace(SLOW, name="slow-link-x10", h2d_bandwidth_gbps=12.288e-2), 2),
    # an (effectively) infinite link: every object of the model, 2 x 4 -- not an int64 overflow
    (FAST, 8),
])
def test_engine_budget_by_hand(hardware, budget):
    """prefetch_budget='engine': the transfers the copy engine can start before layer l + 1's router.
    2 layers x 4 experts, top-1, a 1-token prompt: layer 0 misses object 0, loaded on [D, D + X'];
    computed by D + X' + C. Layer 1's router is expected D later: the engine, free from D + X', can
    start ceil((D + C) / X') copies before it."""
    model = tiny_model(2, 4, 1)
    replay = Replay(make_trace([[[0], [0]]], model), model=model, hardware=hardware, capacity=1.0,
                    decide=("prefetch",))
    assert replay.advance() and replay.pending_kind == "prefetch-choice" and replay.current_event == (0, 0)
    assert replay.prefetch_budget == budget


# -- miss handlers ---------------------------------------------------------------------------------------

def test_drop_reports_its_quality_cost():
    """miss='drop', no prefetch: every access misses and is skipped -- no transfer, no stall, no expert
    computed: each layer is its dense part only, TTFT = 2D. The gate mass of every access is dropped:
    0.7 + 0.3 + 0.6 + 0.4 = 2.0, so degraded_mass_fraction = 1."""
    model = tiny_model(2, 4, 2)
    trace = make_trace([[[0, 1], [2, 3]]], model, gate_weights=[[[0.7, 0.3], [0.6, 0.4]]])
    r = simulate(trace, model=model, hardware=SLOW, capacity=1.0, miss="drop")
    assert (r.accesses, r.misses, r.dropped_experts, r.transfers) == (4, 4, 4, 0)
    assert r.gate_mass == pytest.approx(2.0) and r.gate_mass_dropped == pytest.approx(2.0)
    assert r.degraded_mass_fraction == pytest.approx(1.0)
    assert r.ttft_seconds.tolist() == pytest.approx([2 * D1], rel=1e-12) and r.stall_seconds == 0
    assert_identities(r)


def test_low_precision_transfers_and_later_hits():
    """miss='low-precision' (4 bits): a tiny_model expert has 3 x 64 x 32 = 6144 weights -> 6144 / 2 =
    3072 bytes packed + 48 groups of 128 x 4 bytes of scales = 3264 bytes: XL = 3264 / 12.288e6 s =
    0.265625 ms (``expert_transfer_seconds(model, bits=4)``), and moves those 3264 bytes. One request: a 1-token prompt and one
    decoded token, top-1, expert 0 at both layers, gates 0.5 / 0.25 (prompt) and 0.125 / 1.0 (decode).
    Prefill: each layer misses and waits XL: TTFT = 2 (D1 + XL + C). Decode (2 keys): both hit the
    low-precision copies: TPOT = 2 (D2 + C). Low-precision mass: the two loads (0.75) and the two
    hits on those copies (1.125) = all 1.875 of it."""
    model = tiny_model(2, 4, 1)
    xl = 3264 / 12.288e6
    assert SLOW.expert_transfer_seconds(model, bits=4) == pytest.approx(xl, rel=1e-12)
    trace = make_trace([[[0], [0]], [[0], [0]]], model, request_lengths=[2], prompt_lengths=[1],
                       gate_weights=[[[0.5], [0.25]], [[0.125], [1.0]]])
    r = simulate(trace, model=model, hardware=SLOW, capacity=1.0, miss="low-precision", low_bits=4)
    assert r.ttft_seconds.tolist() == pytest.approx([2 * (D1 + xl + C)], rel=1e-9)
    assert r.tpot_seconds.tolist() == pytest.approx([2 * (slow_dense(2) + C)], rel=1e-9)
    assert (r.misses, r.hits, r.transfers, r.low_precision_transfers) == (2, 2, 2, 2)
    assert r.gate_mass_low_precision == pytest.approx(1.875) and r.degraded_mass_fraction == pytest.approx(1.0)
    assert r.bytes_moved == 2 * 3264  # the low-precision copies' bytes, not 2 x 12288
    assert_identities(r)


def test_cascade_full_low_skip():
    """HOBBIT's loader, thresholds (T1, T2) = (0.6, 0.9), by the gate mass ranked above each missing
    expert. Layer 0 gates [0.7, 0.3]: expert 0 has nothing above it -> full (X); expert 1 has 0.7 >
    T1 -> low precision (XL, queued behind the first: [D+X, D+X+XL]). Layer 1 gates [0.95, 0.05]:
    expert 0 full; expert 1 has 0.95 > T2 -> skipped.
    Layer 0 ends D + X + XL + C; layer 1's router runs D later, its load arrives X after that:
    TTFT = 2D + 2X + XL + 2C. Degraded mass: 0.3 low precision + 0.05 dropped over 2.0 = 0.175."""
    model = tiny_model(2, 4, 2)
    xl = SLOW.expert_transfer_seconds(model, bits=4)
    trace = make_trace([[[0, 1], [0, 1]]], model, gate_weights=[[[0.7, 0.3], [0.95, 0.05]]])
    r = simulate(trace, model=model, hardware=SLOW, capacity=1.0, miss="cascade", cascade=(0.6, 0.9))
    assert r.ttft_seconds.tolist() == pytest.approx([2 * D1 + 2 * X + xl + 2 * C], rel=1e-9)
    assert (r.transfers, r.low_precision_transfers, r.dropped_experts) == (3, 1, 1)
    assert r.gate_mass_low_precision == pytest.approx(0.3) and r.gate_mass_dropped == pytest.approx(0.05)
    assert r.degraded_mass_fraction == pytest.approx(0.175)
    assert_identities(r)


def _substitute_case(prefetch):
    """2 layers x 4 experts, top-2, unlimited cache; a 1-token prompt then one decoded token.
    Prompt: experts 0, 1 | 1, 2 (objects 0, 1 | 5, 6). Decode: 0, 1 | 3, 1 (object 7 is new).
    Speculative scores for layer 1 in the decode step rank expert 2 (0.6) over expert 1 (0.2)."""
    model = tiny_model(2, 4, 2)
    spec = [[[0.25, 0.25, 0.25, 0.25]], [[0.1, 0.2, 0.6, 0.1]]]
    trace = make_trace([[[0, 1], [1, 2]], [[0, 1], [3, 1]]], model, request_lengths=[2], prompt_lengths=[1],
                       spec_scores=spec)
    replay = Replay(trace, model=model, hardware=SLOW, capacity=1.0, miss="substitute", prefetch=prefetch,
                    prefetch_budget=0 if prefetch != "none" else "engine")
    return replay, replay.run()


# "none": the scores must reach the kernel without a prefetcher that reads them (it once picked the
# most-used expert then); "top1" with budget 0 reads them and issues nothing.
@pytest.mark.parametrize("prefetch", ["none", "top1"])
def test_substitute_uses_best_scored_resident(prefetch):
    """Prompt: nothing of either layer is resident and arrived when its misses come, so all four are
    fetched: layer 0's arrive D+X, D+2X (ends D + 2X + C), layer 1's 2D+3X+C, 2D+4X+C: TTFT =
    2D + 4X + 2C. Decode (2 keys): layer 0 hits both (D2 + 2C); layer 1 hits expert 1 and misses
    expert 3, which is computed by the resident expert of layer 1 with the best score: expert 2 (0.6
    over 0.2), no transfer (D2 + 2C). Expert 2's slot has been used twice (its load and the
    substitution), expert 1's twice (its load and its hit). Substituted mass: one access of top-2
    with uniform gates, 0.5."""
    replay, r = _substitute_case(prefetch)
    d2 = slow_dense(2)
    assert r.ttft_seconds.tolist() == pytest.approx([2 * D1 + 4 * X + 2 * C], rel=1e-9)
    assert r.total_seconds == pytest.approx(2 * D1 + 4 * X + 2 * C + 2 * (d2 + 2 * C), rel=1e-9)
    assert (r.transfers, r.substituted_experts, r.misses, r.hits) == (4, 1, 5, 3)
    assert r.gate_mass_substituted == pytest.approx(0.5) and r.degraded_mass_fraction == pytest.approx(0.5 / 4)
    uses = dict(zip(replay.slot_i[SL_OBJ].tolist(), replay.slot_i[SL_COUNT].tolist()))
    assert uses[6] == 2 and uses[5] == 2 and 7 not in uses
    assert_identities(r)


# Fiddler's rule on SLOW with CPU figures: reading an expert from host memory takes 12288 B at
# 0.049152 GB/s = X/4; its arithmetic 2 x 6144 FLOP per token at 1.2288e-4 TFLOP/s = 0.1 ms (X/10).
SLOW_CPU = dataclasses.replace(SLOW, name="slow-cpu", cpu_bf16_tflops=1.2288e-4, cpu_mem_bandwidth_gbps=0.049152)


@pytest.mark.parametrize("tokens,on_cpu", [(1, True), (9, True), (11, False)])
def test_cpu_computes_when_faster_than_fetching(tokens, on_cpu):
    """One request, a prompt of ``tokens`` tokens all routed to expert 0 at both layers (top-1). The CPU
    takes max(tokens x X/10, X/4): 1 token X/4, 9 tokens 0.9X -- below a transfer (X): computed on the
    CPU, the layer waiting for it: each layer D + t_cpu, no transfer. 11 tokens: 1.1X > X -> fetched,
    each layer D + X + C. D is the prefill's dense part, reading ``tokens`` cached tokens."""
    assert SLOW_CPU.cpu_expert_seconds(tiny_model(2, 4, 1), [1, 9, 11]).tolist() == pytest.approx(
        [X / 4, 0.9 * X, 1.1 * X], rel=1e-9)
    model = tiny_model(2, 4, 1)
    trace = make_trace([[[0], [0]]] * tokens, model, request_lengths=[tokens], prompt_lengths=[tokens])
    r = simulate(trace, model=model, hardware=SLOW_CPU, capacity=1.0, miss="cpu")
    d = slow_dense(tokens)
    cpu = max(tokens * X / 10, X / 4)
    if on_cpu:
        assert r.ttft_seconds.tolist() == pytest.approx([2 * (d + cpu)], rel=1e-9)
        assert (r.cpu_experts, r.transfers) == (2, 0)
        assert r.cpu_seconds == pytest.approx(2 * cpu, rel=1e-9) and r.stall_seconds == pytest.approx(2 * cpu)
    else:
        assert r.ttft_seconds.tolist() == pytest.approx([2 * (d + X + C)], rel=1e-9)
        assert (r.cpu_experts, r.transfers, r.cpu_seconds) == (0, 2, 0.0)
    assert r.degraded_mass_fraction == 0  # the CPU computes the expert as routed
    assert_identities(r)


def test_cpu_overlaps_the_gpu_and_needs_cpu_figures():
    """Top-2: an 11-token prompt routed to experts 0, 1 at both layers, then one decoded token routed
    to 0, 2. Prompt: each expert serves 11 tokens: the CPU would take 1.1X, so both are fetched
    (arrive D + X, D + 2X): each layer D11 + 2X + C. Decode (12 keys): expert 0 hits and computes on
    the GPU (C) while expert 2 (1 token: X/4 < X) computes on the CPU from the router on; the layer
    waits for the CPU: each layer D12 + X/4, stalling X/4 - C. And a profile without CPU figures is
    refused up front, naming them."""
    model = tiny_model(2, 4, 2)
    trace = make_trace([[[0, 1], [0, 1]]] * 11 + [[[0, 2], [0, 2]]], model, request_lengths=[12],
                       prompt_lengths=[11])
    r = simulate(trace, model=model, hardware=SLOW_CPU, capacity=1.0, miss="cpu")
    assert r.ttft_seconds.tolist() == pytest.approx([2 * (slow_dense(11) + 2 * X + C)], rel=1e-9)
    assert r.tpot_seconds.tolist() == pytest.approx([2 * (slow_dense(12) + X / 4)], rel=1e-9)
    assert r.stall_seconds == pytest.approx(2 * (2 * X - C) + 2 * (X / 4 - C), rel=1e-9)
    assert (r.cpu_experts, r.transfers, r.hits) == (2, 4, 2)
    assert_identities(r)
    with pytest.raises(SpecMDError, match="CPU figures"):
        simulate(trace, model=model, hardware=SLOW, capacity=1.0, miss="cpu")


def test_identities_hold_across_mechanisms():
    """Every combination of handler and engine on a random trace keeps the counters consistent."""
    model = tiny_model(3, 6, 2)
    rng = np.random.default_rng(7)
    ids = np.array([[rng.choice(6, 2, replace=False) for _ in range(3)] for _ in range(12)])
    gates = rng.dirichlet(np.ones(2), size=(12, 3)).astype(np.float32)
    spec = rng.dirichlet(np.ones(6), size=(12, 2)).astype(np.float16)
    trace = make_trace(ids, model, request_lengths=[5, 7], prompt_lengths=[2, 3], gate_weights=gates,
                       spec_scores=spec)
    for miss in ("fetch", "drop", "low-precision", "cascade", "substitute", "cpu"):
        for engine in ("fifo", "demand-first", "preempt", "separate"):
            for evict_at in ("issue", "start"):
                r = simulate(trace, model=model, hardware=SLOW_CPU, capacity=slots(model, 5), prefetch="top2",
                             miss=miss, copy_engine=engine, evict_at=evict_at,
                             copy_engines=None if engine == "separate" else 2)
                assert_identities(r)
