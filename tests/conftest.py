"""Shared helpers for tests: tiny model shapes, hand-made traces, fast hardware, hypothesis strategies.

Generic on purpose (other test modules import from here):

* :func:`tiny_model` -- a :class:`ModelSpec` of any small shape (pass it as ``model=`` to simulate/Replay).
* :func:`make_trace` -- an in-memory :class:`Trace` from nested expert-id lists or an array.
* :data:`FAST` -- a hardware profile with effectively infinite bandwidth and zero latency.
* :data:`SLOW` -- hand-computable timing (:data:`SLOW_X` per transfer, :data:`SLOW_C` per expert,
  :func:`slow_dense` per layer's dense part).
* :func:`routing_cases` -- a hypothesis strategy of ``(model, trace)`` small random routing traces.
"""

from __future__ import annotations

import numpy as np
import pytest

from specmd_env import HardwareProfile, ModelSpec, Trace

try:
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a test extra; modules that need it import it themselves
    st = None


def tiny_model(num_layers: int = 2, num_experts: int = 4, top_k: int = 2, name: str = "tiny") -> ModelSpec:
    """A small MoE shape. Expert bytes = 3 * 64 * 32 * 2 = 12288."""
    return ModelSpec(name=name, display_name=name.title(), num_layers=num_layers, num_experts=num_experts,
                     top_k=top_k, hidden_size=64, expert_intermediate_size=32, dtype="bf16",
                     num_attention_heads=2, num_kv_heads=1, head_dim=32)


def slots(model: ModelSpec, n: int) -> int:
    """A capacity in bytes holding exactly ``n`` expert slots (capacity ints > 1 are byte counts)."""
    return n * model.expert_bytes


def make_trace(expert_ids, model: ModelSpec, *, request_lengths=None, prompt_lengths=None,
               gate_weights=None, spec_scores=None, meta=None) -> Trace:
    """A trace of ``expert_ids`` ([tokens][layers][k]); one request holding every token (prompt of 1)
    unless ``request_lengths`` / ``prompt_lengths`` say otherwise."""
    ids = np.asarray(expert_ids, dtype=np.int16).reshape(-1, model.num_layers, model.top_k)
    lengths = [len(ids)] if request_lengths is None else list(request_lengths)
    prompts = [1] * len(lengths) if prompt_lengths is None else list(prompt_lengths)
    full_meta = {"format": "specmd-trace", "version": 1, "model": model.name, "num_layers": model.num_layers,
                 "num_experts": model.num_experts, "top_k": model.top_k, "kind": "synthetic",
                 "source": "tests/conftest.py"}
    full_meta.update(meta or {})
    return Trace(expert_ids=ids, request_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                 prompt_lengths=np.asarray(prompts, np.int64), meta=full_meta,
                 gate_weights=None if gate_weights is None else np.asarray(gate_weights, np.float32),
                 spec_scores=None if spec_scores is None else np.asarray(spec_scores, np.float16))


def random_spec_scores(rng: np.random.Generator, num_tokens: int, model: ModelSpec) -> np.ndarray:
    """Valid speculative scores: a probability vector per token and layer l < L-1."""
    raw = rng.dirichlet(np.ones(model.num_experts), size=(num_tokens, model.num_layers - 1))
    return raw.astype(np.float16)


#: Effectively infinite host-to-GPU bandwidth and no transfer latency (bandwidth must be positive).
FAST = HardwareProfile(name="fast", description="infinite link", h2d_bandwidth_gbps=1e30, transfer_latency_us=0.0,
                       gpu_mem_bandwidth_gbps=2000.0, bf16_tflops=300.0, layer_overhead_us=10.0)

#: Hand-computable timing: 1 ms per transfer, 0.1 ms per layer, expert compute 1 us (memory bound).
#: Expert bytes 12288 -> transfer 12288 / 12.288e6 B/s = 1 ms; compute min = 12288 / 12.288e9 = 1 us.
SLOW = HardwareProfile(name="slow", description="hand-computable", h2d_bandwidth_gbps=12.288e-3,
                       transfer_latency_us=0.0, gpu_mem_bandwidth_gbps=12.288, bf16_tflops=1e6,
                       layer_overhead_us=100.0)
SLOW_X = 1e-3   # SLOW: one transfer of a tiny_model expert, 12288 B at 12.288 MB/s
SLOW_C = 1e-6   # SLOW: one expert computed (memory bound: 12288 B at 12.288 GB/s)


def slow_dense(kv_tokens: int) -> float:
    """SLOW's dense part of a tiny_model layer: 100 us overhead + attention weights (12288 params, bf16)
    and KV (2 x kv x 1 head x 32 dims x 2 bytes) read at 12.288 GB/s (the FLOP term is negligible at
    1e6 TFLOP/s). A prefill of n tokens reads n cached tokens, a decode step all it attends to."""
    return 100e-6 + (2 * 12288 + 128 * kv_tokens) / 12.288e9


@pytest.fixture
def tiny():
    return tiny_model()


if st is not None:
    @st.composite
    def routing_cases(draw, *, max_layers: int = 3, max_experts: int = 6, max_requests: int = 3,
                      max_tokens: int = 6, with_spec: bool | None = None):
        """(model, trace): random small shapes (L >= 2 so lookahead 1 is valid), 1..max_requests
        requests of 1..max_tokens tokens, random prompt split, expert ids skewed towards low ids so
        that reuse (and eviction) happens; spec scores optionally."""
        L = draw(st.integers(2, max_layers))
        E = draw(st.integers(2, max_experts))
        k = draw(st.integers(1, min(3, E)))
        model = tiny_model(L, E, k)
        lengths = draw(st.lists(st.integers(1, max_tokens), min_size=1, max_size=max_requests))
        prompts = [draw(st.integers(1, n)) for n in lengths]
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        T = sum(lengths)
        weights = 1.0 / (1.0 + np.arange(E)) ** draw(st.sampled_from([0.0, 1.0, 2.0]))
        ids = np.empty((T, L, k), np.int16)
        for t in range(T):
            for layer in range(L):
                ids[t, layer] = rng.choice(E, size=k, replace=False, p=weights / weights.sum())
        spec = draw(st.booleans()) if with_spec is None else with_spec
        scores = random_spec_scores(rng, T, model) if spec else None
        return model, make_trace(ids, model, request_lengths=lengths, prompt_lengths=prompts, spec_scores=scores)
