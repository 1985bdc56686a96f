"""Hand-worked cases for serving under load: the continuous-batching scheduler (arrivals, chunked
prefill, mixed steps), static batching that waits for arrivals, and the two-link memory hierarchy.

Step times are computed here from the hardware profile's own formulas (``dense_seconds``,
``expert_roofline``, transfer times) applied to the step compositions worked out by hand below."""

from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

from conftest import FAST, SLOW, make_trace, slots, tiny_model
from specmd_env import simulate
from specmd_env.errors import SpecMDError

MODEL = tiny_model(2, 4, 1)


def step_seconds(hw, tokens: int, attended: float, kv: float) -> float:
    """A step of ``tokens`` tokens that all route expert 0 (one access per layer, all hits or free
    misses): per layer, the dense part plus one expert computed for all the tokens."""
    per_token, floor = hw.expert_roofline(MODEL)
    expert = max(per_token * tokens, floor)
    return MODEL.num_layers * (float(hw.dense_seconds(MODEL, tokens, attended, kv)) + expert)


def two_requests():
    """A: prompt 3, generates 2 (rows 0-4); B: prompt 2, generates 1 (rows 5-7). Every token routes
    expert 0 at both layers."""
    return make_trace([[[0], [0]]] * 8, MODEL, request_lengths=[5, 3], prompt_lengths=[3, 2])


def test_continuous_batching_with_chunked_prefill_by_hand():
    """max_num_batched_tokens 4, max_num_seqs 2, both arrive at 0 (FAST: transfers cost nothing).
    step 0: A's prompt (rows 0-2: attended 1+2+3, KV 3) and one chunk of B's (row 5: attended 1, KV 1)
            -> 4 tokens, attended 7, KV 4; A's prompt is done: its first token.
    step 1: A decodes row 3 (attended 4, KV 4); B's last prompt token, row 6 (attended 2, KV 2): its first
            token -> 2 tokens, attended 6, KV 6.
    step 2: A decodes row 4 (attended 5, KV 5), B row 7 (attended 3, KV 3) -> 2 tokens, attended 8, KV 8;
            both finish."""
    r = simulate(two_requests(), model=MODEL, hardware=FAST, capacity=1.0, scheduler="continuous",
                 max_num_batched_tokens=4, max_num_seqs=2)
    t0 = step_seconds(FAST, 4, 7, 4)
    t1 = t0 + step_seconds(FAST, 2, 6, 6)
    t2 = t1 + step_seconds(FAST, 2, 8, 8)
    assert r.ttft_seconds.tolist() == pytest.approx([t0, t1], rel=1e-9)
    assert r.tpot_seconds.tolist() == pytest.approx([(t2 - t0) / 2, t2 - t1], rel=1e-9)
    assert sorted(r.itl_seconds.tolist()) == pytest.approx(sorted([t1 - t0, t2 - t1, t2 - t1]), rel=1e-9)
    assert r.total_seconds == pytest.approx(t2, rel=1e-9)
    assert r.accesses == 3 * MODEL.num_layers and r.token_accesses == 8 * MODEL.num_layers
    assert (r.prompt_tokens, r.output_tokens) == (5, 3)


def test_arrivals_and_idle_gpu():
    """B arrives at 1 s, long after A (alone: prefill 3 tokens, then two decode steps) has finished; the
    GPU idles until then. B's TTFT counts from its arrival."""
    r = simulate(two_requests(), model=MODEL, hardware=FAST, capacity=1.0, scheduler="continuous",
                 arrival_times=[0.0, 1.0])
    a0 = step_seconds(FAST, 3, 6, 3)
    a2 = a0 + step_seconds(FAST, 1, 4, 4) + step_seconds(FAST, 1, 5, 5)
    assert a2 < 1.0
    b0 = step_seconds(FAST, 2, 3, 2)
    b1 = b0 + step_seconds(FAST, 1, 3, 3)
    assert r.ttft_seconds.tolist() == pytest.approx([a0, b0], rel=1e-9)
    assert r.tpot_seconds.tolist() == pytest.approx([(a2 - a0) / 2, b1 - b0], rel=1e-9)
    assert r.total_seconds == pytest.approx(1.0 + b1, rel=1e-9)


def test_sequence_cap_queues_arrivals():
    """max_num_seqs 1: B waits until A has finished, then starts at the next step."""
    r = simulate(two_requests(), model=MODEL, hardware=FAST, capacity=1.0, scheduler="continuous",
                 max_num_seqs=1, max_num_batched_tokens=4)
    a2 = step_seconds(FAST, 3, 6, 3) + step_seconds(FAST, 1, 4, 4) + step_seconds(FAST, 1, 5, 5)
    b0 = a2 + step_seconds(FAST, 2, 3, 2)
    assert r.ttft_seconds[1] == pytest.approx(b0, rel=1e-9)


def test_poisson_arrivals_are_seeded():
    trace = two_requests()
    one = simulate(trace, model=MODEL, hardware=FAST, capacity=1.0, scheduler="continuous", arrival_rate=5.0, seed=3)
    two = simulate(trace, model=MODEL, hardware=FAST, capacity=1.0, scheduler="continuous", arrival_rate=5.0, seed=3)
    other = simulate(trace, model=MODEL, hardware=FAST, capacity=1.0, scheduler="continuous", arrival_rate=5.0, seed=4)
    assert one.total_seconds == two.total_seconds != other.total_seconds
    assert one.goodput(ttft_slo=10.0, tpot_slo=10.0) == pytest.approx(2 / one.total_seconds)
    assert one.goodput(ttft_slo=0.0, tpot_slo=10.0) == 0.0


def test_static_batch_waits_for_its_last_arrival():
    """batch_size 2, B arrives at 0.5 s: the group (A's prefill, B's prefill, then joint decodes) starts
    at 0.5; each TTFT counts from its own request's arrival."""
    r = simulate(two_requests(), model=MODEL, hardware=FAST, capacity=1.0, batch_size=2, arrival_times=[0.0, 0.5])
    a = 0.5 + step_seconds(FAST, 3, 6, 3)
    b = a + step_seconds(FAST, 2, 3, 2)
    assert r.ttft_seconds.tolist() == pytest.approx([a - 0.0, b - 0.5], rel=1e-9)


def test_continuous_batching_refuses_oracles():
    with pytest.raises(SpecMDError, match="reads the future of the schedule"):
        simulate(two_requests(), model=MODEL, capacity=1.0, eviction="belady", scheduler="continuous")


# -- the memory hierarchy ----------------------------------------------------------------------------

def two_tier(host_experts: int):
    """SLOW's link (1 ms per expert), host memory for ``host_experts`` experts, an SSD at 2 ms per expert."""
    gib = host_experts * MODEL.expert_bytes / 2**30
    return replace(SLOW, name="two-tier", host_expert_gib=gib, ssd_bandwidth_gbps=MODEL.expert_bytes / 2e-3 / 1e9,
                   ssd_latency_us=0.0)


def test_two_links_by_hand():
    """One token, expert 0 at both layers (objects 0 and 4), unlimited GPU cache, host memory for one
    expert. Layer 0: its router at D, the SSD read [D, D + S], the copy [D + S, D + S + X], compute C.
    Layer 1 likewise after its own dense part (the SSD read evicts object 0 from host memory):
    TTFT = 2 (D + S + X + C). One tier: 2 (D + X + C)."""
    trace = make_trace([[[0], [0]]], MODEL)
    hw = two_tier(1)
    S, X = hw.ssd_read_seconds(MODEL.expert_bytes), hw.transfer_seconds(MODEL.expert_bytes)
    D = float(hw.dense_seconds(MODEL, 1, 1, 1))
    C = hw.expert_roofline(MODEL)[1]
    r = simulate(trace, model=MODEL, hardware=hw, capacity=1.0)
    assert r.ssd_reads == 2
    assert r.ttft_seconds[0] == pytest.approx(2 * (D + S + X + C), rel=1e-9)
    one = simulate(trace, model=MODEL, hardware=SLOW, capacity=1.0)
    assert one.ssd_reads == 0 and one.ttft_seconds[0] == pytest.approx(2 * (D + X + C), rel=1e-9)


@pytest.mark.parametrize("policy, reads", [
    # GPU holds 1 expert, host 2. Stream of objects: 0 4 | 0 4 | 1 4.
    # lru: 0 R, 4 R | 0 (host hit), 4 (host hit) | 1 R evicts host's least recent (0), 4 host hit -> 3 reads
    ("lru", 3),
    # fifo: same reads here (nothing to reorder before the third pass): 0 R, 4 R, 0 hit, 4 hit, 1 R (evicts 0) -> 3
    ("fifo", 3),
])
def test_host_cache_policies(policy, reads):
    trace = make_trace([[[0], [0]], [[0], [0]], [[1], [0]]], MODEL, request_lengths=[3], prompt_lengths=[1])
    r = simulate(trace, model=MODEL, hardware=two_tier(2), capacity=slots(MODEL, 1), host_policy=policy)
    assert r.ssd_reads == reads


def test_host_order_differs_between_lru_and_fifo():
    """GPU 1 slot (every access misses there), host 2. Objects A = layer 0 expert 0, B = layer 1 expert 0,
    C = layer 1 expert 1; stream A B | A C | A C.
    lru: A read, B read, A host hit (newest), C read evicts B, A hit, C hit -> 3 reads.
    fifo: A read, B read, A hit (no reorder), C read evicts A (first in), A read evicts B, C hit -> 4."""
    trace = make_trace([[[0], [0]], [[0], [1]], [[0], [1]]], MODEL, request_lengths=[3], prompt_lengths=[1])
    lru = simulate(trace, model=MODEL, hardware=two_tier(2), capacity=slots(MODEL, 1), host_policy="lru")
    fifo = simulate(trace, model=MODEL, hardware=two_tier(2), capacity=slots(MODEL, 1), host_policy="fifo")
    assert (lru.ssd_reads, fifo.ssd_reads) == (3, 4)
    assert fifo.stall_seconds > lru.stall_seconds


def serving_env(**kw):
    return gym.make("SpecMD-OLMoE-v0", trace=two_requests(), model=MODEL, hardware=FAST, capacity="1slots",
                    fixed_prefetch="none", fixed_eviction="lru", requests_per_episode=None, bypass=False,
                    scheduler="continuous", **kw).unwrapped


def test_env_under_continuous_batching_observes_the_load_and_equals_simulate():
    """One slot for two objects (expert 0 of each layer): every layer evicts the other layer's expert.
    max_num_seqs 1: at the first decision A runs alone and B, arrived at 0, waits -> running 1/1 and
    queue 1 / (1 + 1). Answering with the only candidate replays what simulate() replays."""
    env = serving_env(max_num_seqs=1, max_num_batched_tokens=4)
    obs, _ = env.reset(seed=0)
    assert env.layout.with_serving and env.layout.names()[env.layout.serving_start] == "serving.running_sequences"
    assert env.layout.serving(obs).tolist() == [1.0, 0.5]
    queue_seen, done, metrics = [], False, None
    while not done:
        queue_seen.append(float(env.layout.serving(obs)[1]))
        obs, _, done, _, info = env.step(int(np.flatnonzero(env.action_masks())[0]))
        metrics = info.get("metrics", metrics)
    assert queue_seen[-1] == 0.0  # B was admitted once A finished
    ref = simulate(two_requests(), model=MODEL, hardware=FAST, capacity="1slots", eviction="lru", scheduler="continuous",
                   max_num_seqs=1, max_num_batched_tokens=4)
    assert metrics["misses"] == ref.misses and metrics["p99_ttft_seconds"] == pytest.approx(ref.percentile("ttft", 99))
    assert metrics["total_seconds"] == pytest.approx(ref.total_seconds)


def test_env_serving_options_pass_the_checkers_and_are_checked():
    from gymnasium.utils.env_checker import check_env

    env = serving_env(max_num_seqs=2, arrival_rate=4.0)
    check_env(env, skip_render_check=True)
    plain = gym.make("SpecMD-OLMoE-v0", trace=two_requests(), model=MODEL, hardware=FAST, capacity="1slots",
                     fixed_prefetch="none", requests_per_episode=None).unwrapped
    assert not plain.layout.with_serving
    assert plain.observation_space.shape[0] == env.observation_space.shape[0] - 2
    with pytest.raises(SpecMDError, match="scheduler"):
        gym.make("SpecMD-OLMoE-v0", scheduler="fcfs")
    with pytest.raises(SpecMDError, match="max_num_seqs"):
        serving_env(max_num_seqs=0)
