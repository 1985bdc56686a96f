"""AdapMoE's two mechanisms beyond its prefetcher (Zhong et al., ICCAD 2024, arXiv 2408.10284; code:
PKU-SEC-Lab/AdapMoE at 297c349b, run.py and src/dp.py): adaptive gating and per-layer cache sizes.

* **Adaptive gating** (``gating="adaptive"``): in a decode step, layer l drops a token's second expert
  when ``s_l * w2^2 < 0.005``, w2 its renormalised second gate weight and s_l the layer's sensitivity
  (profiled offline on Mixtral-8x7B; the code's 32 values are below). The dropped gate mass is reported
  as a quality cost (``Result.gate_mass_dropped``). Only for top-2 models with known sensitivities:
  Mixtral-8x7B here; other models are refused rather than given made-up sensitivities.
* **Per-layer cache sizes** (``scope="adapmoe"``): a dynamic programme splits the slots over the layers
  to minimise the expected misses per token, ``sum_l f(l, s_l)``, where with s of a layer's E experts
  resident (uniformly, as the code assumes), k routed per token, prefetch accuracy a_l and a share r_l
  of tokens whose second expert is dropped:
  ``f(l, s) = r_l (1 - s/E)(1 - a_l) + (1 - r_l) [k (1 - s/E) - a_l (1 - C(s, k) / C(E, k))]``
  -- the code's expression for E = 8, k = 2, written for any E and k. a_l is measured on the trace's
  train split (the top-k overlap of the speculative scores with the true routing; 0 for layer 0, which
  nothing predicts), r_l likewise (0 without adaptive gating).
"""

from __future__ import annotations

from math import comb

import numpy as np

from specmd_env.errors import SpecMDError

#: run.py's per-layer sensitivities of Mixtral-8x7B (layers 0..31).
MIXTRAL_SENSITIVITY = np.array([
    46.69, 17.30, 13.02, 7.64, 4.17, 2.23, 1.256, 0.844, 0.684, 0.560, 0.513, 0.478, 0.445, 0.436, 0.384, 0.310,
    0.233, 0.176, 0.138, 0.114, 0.105, 0.0954, 0.0862, 0.0771, 0.0694, 0.0611, 0.0502, 0.0426, 0.0335, 0.0253,
    0.0207, 0.0229])
TOLERANCE = 0.005
SENSITIVITIES = {"mixtral-8x7b": MIXTRAL_SENSITIVITY}


def sensitivities(model) -> np.ndarray:
    if model.top_k != 2 or model.name not in SENSITIVITIES:
        raise SpecMDError(f"gating='adaptive' needs a top-2 model with AdapMoE's profiled layer sensitivities "
                          f"({', '.join(SENSITIVITIES)}); model {model.name!r} has none")
    return SENSITIVITIES[model.name]


def dropped_second(gates: np.ndarray, decode: np.ndarray, sensitivity: np.ndarray) -> np.ndarray:
    """[tokens, L] True where adaptive gating drops the token's second expert (``gates`` [tokens, L, 2],
    ``decode`` [tokens] True for decode tokens)."""
    w = np.asarray(gates, np.float64)
    total = w.sum(axis=2)
    w2 = np.divide(w[:, :, 1], total, out=np.zeros_like(total), where=total > 0)
    return decode[:, None] & (sensitivity[None, :] * w2 * w2 < TOLERANCE)


def _expected_misses(s: int, E: int, k: int, accuracy: float, drop_share: float) -> float:
    s = min(s, E)
    miss_share = 1.0 - s / E
    some_missing = 1.0 - comb(s, k) / comb(E, k)
    top1_only = miss_share * (1.0 - accuracy)
    full = k * miss_share - accuracy * some_missing
    return drop_share * top1_only + (1.0 - drop_share) * full


def layer_sizes(capacity: int, num_experts: int, top_k: int, accuracy, drop_share) -> list[int]:
    """AdapMoE's DP: per-layer slots (summing to ``capacity``) minimising the expected misses per token."""
    L = len(accuracy)
    least = 1 if capacity >= L else 0  # "a layer gets >= 1 slot whenever capacity remains"
    f = np.array([[_expected_misses(s, num_experts, top_k, accuracy[layer], drop_share[layer])
                   for s in range(capacity + 1)] for layer in range(L)])
    cost = np.full((L + 1, capacity + 1), np.inf)
    choice = np.zeros((L + 1, capacity + 1), np.int64)
    cost[0, 0] = 0.0
    for layer in range(L):
        for used in range(capacity + 1):
            if not np.isfinite(cost[layer, used]):
                continue
            for s in range(least, min(num_experts, capacity - used) + 1):
                c = cost[layer, used] + f[layer, s]
                if c < cost[layer + 1, used + s] - 1e-15:
                    cost[layer + 1, used + s] = c
                    choice[layer + 1, used + s] = s
    used = int(np.argmin(cost[L]))  # every slot is used unless more would not help
    sizes = []
    for layer in range(L, 0, -1):
        sizes.append(int(choice[layer, used]))
        used -= sizes[-1]
    return sizes[::-1]


def measured_rates(trace, requests, gating: bool):
    """Per layer: the speculative scores' top-k accuracy (0 at layer 0) and the share of decode tokens
    whose second expert adaptive gating drops (0 without it), over ``requests``."""
    L, E, k = trace.num_layers, trace.num_experts, trace.top_k
    offsets, prompts = np.asarray(trace.request_offsets), np.asarray(trace.prompt_lengths)
    hits, tokens = np.zeros(L), 0
    dropped, decode_tokens = np.zeros(L), 0
    for r in requests:
        lo, hi = int(offsets[r]), int(offsets[r + 1])
        ids = np.asarray(trace.expert_ids[lo:hi])
        if trace.spec_scores is not None:
            scores = np.asarray(trace.spec_scores[lo:hi], np.float32)       # [n, L-1, E]
            predicted = np.argpartition(scores, E - k, axis=2)[:, :, -k:]
            hits[1:] += (predicted[:, :, :, None] == ids[:, 1:, None, :]).sum(axis=(0, 2, 3)) / k
            tokens += hi - lo
        if gating and trace.gate_weights is not None:
            decode = np.arange(hi - lo) >= prompts[r]
            gates = np.asarray(trace.gate_weights[lo:hi])
            dropped += dropped_second(gates, decode, sensitivities_for_shape(trace)).sum(axis=0)
            decode_tokens += int(decode.sum())
    accuracy = hits / tokens if tokens else np.zeros(L)
    drop_share = dropped / decode_tokens if decode_tokens else np.zeros(L)
    return accuracy, drop_share


def sensitivities_for_shape(trace) -> np.ndarray:
    from specmd_env.models import get_model
    return sensitivities(get_model(trace.model))
