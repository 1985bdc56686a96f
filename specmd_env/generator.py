"""Synthetic routing traces, calibrated to published routing statistics of the real models.

**These traces are synthetic.** No model runs here: a small stochastic process produces, for every
token and MoE layer, a ranked top-k of expert ids, gate weights and (optionally) the scores a
next-layer predictor would see. What each model is calibrated to (every trace lists it in its metadata,
``calibrated_to``, and what stayed a free choice in ``parametric``):

* OLMoE-1B-7B and Mixtral-8x7B with AllenAI's domain names (arxiv, book, c4, github, wikipedia): the
  per-expert popularity to AllenAI's real expert counts (:mod:`specmd_env.calibration`).
* Persistence (how often consecutive tokens keep their experts), from :mod:`specmd_env.published`:
  OLMoE to the published 2.55 of 8 experts shared at layer 0; Mixtral per domain and layer to the Mixtral
  paper's repetition table (layers 0, 15, 31); Qwen3-30B-A3B, DeepSeek-V2-Lite and Qwen1.5-MoE to
  Liang et al.'s segment routing best performance SRP(m=16), one value for all layers.
* The spread of expert load over all layers (Liang et al.'s activation-frequency SD): Mixtral's layers
  16-31, which AllenAI's counts do not cover, reuse layer 15's profile (permuted) with its CV scaled to
  it; models without per-expert counts get parametric popularity whose load CV is scaled to it.

The process (a Thurstonian / Gaussian-latent router):

* **Popularity prior** ``a[d, l, e]``: a log-prior per domain, layer and expert. Target per-expert
  inclusion probabilities (fraction of tokens whose top-k holds the expert) come from AllenAI's counts
  at layers 0, 7 and 15; intermediate layers mix the neighbouring anchors in log space and are sharpened
  until their load CV interpolates the anchors' CVs; layers past the last anchor reuse its profile with
  the expert ids permuted (and, where a published model-level spread exists, its CV scaled by the one
  factor that matches it). Without calibration data, ``log-prior = s_l * (sqrt(1-rho_l^2) z_shared +
  rho_l z_domain)`` with ``rho_l`` (the domain-specific part) and the CV both growing with depth.
  The priors are then fitted (a few fixed-point steps on a simulated sample) so that the *whole
  process*, not just the prior, has the target inclusion probabilities.
* **Token-to-token reuse**: ``u[t, l, e]``, an AR(1) Gaussian latent along the tokens of a request,
  ``u_t = phi u_{t-1} + sqrt(1-phi^2) eps_t`` (stationary N(0, 1), so reuse does not change popularity).
  ``phi`` (per domain and layer) is fitted to the published figures above on a simulated sample of the
  whole process (the cross-layer term carries persistence from layer to layer too); Mixtral's is fitted
  at layers 0, 15, 31 and interpolated linearly in between, balancing the two figures of each cell
  (first-choice and any-choice repetition: one coefficient cannot match both, the fit makes their
  signed relative errors cancel). Models without a published figure use ``persistence`` (default 0.6).
* **Cross-layer correlation**: layer l's logits get ``gamma * sum_r g_r B_l[i_r]``, the rows of a
  seeded random matrix ``B_l`` [E, E] picked by layer l-1's chosen experts ``i_r``, weighted by their
  renormalised gate weights ``g_r`` (a stand-in for the residual stream carrying the experts' outputs).
* ``logits = a[d, l] + sigma * u + crosslayer term``; experts = top-k of the logits, ranked, no repeats;
  gate weights = softmax over all E logits, the k chosen probabilities (not renormalised, as OLMoE).
* **Speculative scores** ``spec_scores[t, l] = softmax(logits[t, l+1] + eta_l * noise)``: a noisy view of
  the next layer's router. ``eta_l`` is found by bisection, per layer and chunk, on the very noise that is
  written, so the top-k accuracy ``|topk(spec) & topk(true)| / k`` equals ``spec_accuracy`` (+-0.01 on
  the default traces).
* **Prompt and decode** tokens follow the same process; the decode part of a request continues the same
  AR chain. ``decode_persistence_boost`` (default 0) raises ``phi`` for decode tokens if wanted; it is 0
  by default because the calibration data are teacher-forced (prefill) counts and nothing here measures
  decode-time reuse.

Requests are laid out round-robin over the domains (request 0 of each domain, then request 1, ...).
Everything is deterministic given ``seed`` (the tokens) and ``structure_seed`` (priors, matrices): each
request draws from its own ``np.random.default_rng([seed, request_index])``, so routing does not depend
on how the work is chunked; only the spec-score noise scale is re-fitted per chunk.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.signal import lfilter

from specmd_env import calibration, published
from specmd_env.checks import integer
from specmd_env.errors import SpecMDError
from specmd_env.locality import (
    first_choice_same,
    segment_histogram,
    shared_experts,
    srp_from_histogram,
)
from specmd_env.models import ModelSpec, get_model
from specmd_env.trace import FORMAT_NAME, FORMAT_VERSION, Trace

GENERATOR_VERSION = "2"
ALLENAI_DOMAINS = ("arxiv", "book", "c4", "github", "wikipedia")
_ANCHORS = (0, 7, 15)
LICENCE = ("Apache-2.0 (synthetic; generator calibrated to AllenAI's Apache-2.0 OLMoE routing counts, "
           "see specmd_env/data/calibration/allenai-olmoe/LICENSE)")
_FIT_TOKENS = 1536  # per domain
_FIT_STEPS = 14
#: Load CV of a parametric domain at the first / last layer when no published figure fixes its scale.
DEFAULT_CV_RANGE = (0.6, 0.9)
#: AR(1) coefficient where no published figure fixes it.
DEFAULT_PERSISTENCE = 0.6
_REPETITION_FIT = (96, 48)   # sequences per domain, tokens per sequence, for the repetition fit
_CHUNK_BYTES = 96 << 20  # float32 work arrays per chunk, roughly


@dataclass(frozen=True)
class _Structure:
    """What a (model, domains, structure_seed, knobs) fixes: priors, persistence, transition matrices."""

    prior: np.ndarray       # [D, L, E] float32 log-priors (fitted)
    gamma: np.ndarray       # [D, L] float32 cross-layer weights (fitted where AllenAI gives transitions)
    target: np.ndarray      # [D, L, E] target inclusion probabilities (sum k per layer)
    phi: np.ndarray         # [D, L] AR(1) coefficient per domain and layer
    matrices: np.ndarray    # [L, E, E] float32 (row 0 unused)
    calibrated: tuple[bool, ...]   # per domain: popularity fitted to AllenAI's counts
    cv_range: tuple[float, float]  # load CV range of the parametric domains (fitted or default)
    phi_anchors: tuple[int, ...]   # layers whose phi was fitted separately (others interpolated), () if uniform
    calibrated_to: tuple[str, ...]  # what the process was fitted to, with sources
    parametric: tuple[str, ...]     # what was not fitted to any real figure


# -- target popularity -----------------------------------------------------------------------------

def _water_fill(weights: np.ndarray, k: int) -> np.ndarray:
    """Inclusion probabilities ``min(1, c * w)`` summing to k, per row of ``weights`` [..., E]."""
    w = np.maximum(np.asarray(weights, np.float64), 1e-300)
    lo = np.zeros(w.shape[:-1])
    hi = np.maximum(k / w.min(axis=-1) + 1.0, 1.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        low = np.minimum(1.0, mid[..., None] * w).sum(axis=-1) < k
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return np.minimum(1.0, hi[..., None] * w)


def _cv(x: np.ndarray) -> np.ndarray:
    """Coefficient of variation of each row (a float for a vector)."""
    return np.std(x, axis=-1) / np.mean(x, axis=-1)


def _sharpen_to_cv(log_weights: np.ndarray, k: int, cv) -> np.ndarray:
    """Water-filled inclusion probabilities of ``exp(tau * log_weights)``, tau chosen per row so their CV
    is ``cv`` (rows of ``log_weights`` [..., E], ``cv`` a float or one per row)."""
    return _sharpen(log_weights - log_weights.mean(axis=-1, keepdims=True), k, cv)


@np.errstate(over="ignore")  # a CV near the largest possible drives tau up; exp saturates to inf, harmlessly
def _sharpen(centred: np.ndarray, k: int, cv) -> np.ndarray:
    cv = np.broadcast_to(np.asarray(cv, np.float64), centred.shape[:-1])
    lo, hi = np.zeros(cv.shape), np.ones(cv.shape)
    while np.any(grow := (_cv(_water_fill(np.exp(hi[..., None] * centred), k)) < cv) & (hi < 1e3)):
        lo, hi = np.where(grow, hi, lo), np.where(grow, hi * 2, hi)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        low = _cv(_water_fill(np.exp(mid[..., None] * centred), k)) < cv
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return _water_fill(np.exp(hi[..., None] * centred), k)


def _domain_seed(domain: str) -> int:
    return zlib.crc32(domain.encode())


def _calibrated_targets(key: str, domain: str, spec: ModelSpec, perms: np.ndarray) -> np.ndarray | None:
    counts = calibration.expert_counts().get(key, {}).get(domain, {}).get("top_k")
    if not counts or any(str(a) not in counts for a in _ANCHORS):
        return None
    anchors = {a: np.asarray(counts[str(a)], np.float64) for a in _ANCHORS}
    if any(len(v) != spec.num_experts for v in anchors.values()):
        return None
    k = spec.top_k
    anchors = {a: np.clip(v / v.sum() * k, 1e-5, 1.0) for a, v in anchors.items()}
    out = np.empty((spec.num_layers, spec.num_experts))
    for layer in range(spec.num_layers):
        if layer in anchors:
            out[layer] = anchors[layer]
        elif layer > _ANCHORS[-1]:
            out[layer] = anchors[_ANCHORS[-1]][perms[layer]]
        else:
            a = max(x for x in _ANCHORS if x < layer)
            b = min(x for x in _ANCHORS if x > layer)
            w = (layer - a) / (b - a)
            mix = (1 - w) * np.log(anchors[a]) + w * np.log(anchors[b])
            out[layer] = _sharpen_to_cv(mix, k, (1 - w) * _cv(anchors[a]) + w * _cv(anchors[b]))
    return out


def _parametric_targets(spec: ModelSpec, domains, structure_seed: int, cv_range, rho_range) -> np.ndarray:
    """[D, L, E] targets: log-weights ``sqrt(1-rho^2) z_shared + rho z_domain``, sharpened to the CV range."""
    L, E, k = spec.num_layers, spec.num_experts, spec.top_k
    shared = np.random.default_rng([structure_seed, 1]).standard_normal((L, E))
    own = np.stack([np.random.default_rng([structure_seed, 2, _domain_seed(d)]).standard_normal((L, E))
                    for d in domains])
    depth = np.arange(L) / max(L - 1, 1)
    rho = rho_range[0] + (rho_range[1] - rho_range[0]) * depth
    cv = cv_range[0] + (cv_range[1] - cv_range[0]) * depth
    mix = np.sqrt(1 - rho[:, None] ** 2) * shared + rho[:, None] * own
    max_cv = np.sqrt(E / k - 1)  # k experts at probability 1, the rest 0
    return _sharpen_to_cv(mix, k, np.minimum(cv, 0.95 * max_cv))


def _activation_sd(targets: np.ndarray) -> float:
    """Standard deviation over all layers' experts of the percentage of tokens choosing each, the domains
    of ``targets`` [D, L, E] mixed in equal parts (Liang et al.'s "LB")."""
    return 100.0 * float(targets.mean(axis=0).std())


def _fit_deep_layers(targets: np.ndarray, k: int, target_sd: float) -> tuple[float, np.ndarray]:
    """(scale, targets) with the layers past the last AllenAI anchor (which reuse its profile, permuted)
    flattened or sharpened to the anchor's CV times one ``scale``, chosen so that ``_activation_sd`` is
    ``target_sd``: AllenAI's counts stop at layer 15, the published spread covers every layer."""
    last = _ANCHORS[-1]
    deep = np.log(targets[:, last + 1:])
    anchor_cv = _cv(targets[:, last])[:, None]   # [D, 1]

    def scaled(scale: float) -> np.ndarray:
        out = targets.copy()
        out[:, last + 1:] = _sharpen_to_cv(deep, k, np.broadcast_to(scale * anchor_cv, deep.shape[:-1]))
        return out

    top = 0.95 * np.sqrt(targets.shape[2] / k - 1) / float(anchor_cv.max())   # below the largest CV
    def excess(scale: float) -> float:
        return _activation_sd(scaled(scale)) - target_sd

    if excess(0.0) >= 0:
        scale = 0.0
    else:
        scale = top if excess(top) <= 0 else brentq(excess, 0.0, top, xtol=1e-4)
    return scale, scaled(scale)


def _fit_cv_range(spec: ModelSpec, domains, structure_seed: int, rho_range, target_sd: float) -> tuple[float, float]:
    """``DEFAULT_CV_RANGE`` scaled so that the standard deviation of all experts' activation frequencies
    (percent of tokens, every layer, the domains mixed in equal parts) is ``target_sd``."""
    def excess(scale: float) -> float:
        cv_range = (DEFAULT_CV_RANGE[0] * scale, DEFAULT_CV_RANGE[1] * scale)
        return _activation_sd(_parametric_targets(spec, domains, structure_seed, cv_range, rho_range)) - target_sd

    top = 0.95 * np.sqrt(spec.num_experts / spec.top_k - 1) / DEFAULT_CV_RANGE[1]  # below the largest CV
    scale = top if excess(top) <= 0 else brentq(excess, 1e-3, top, xtol=1e-4)
    return (round(DEFAULT_CV_RANGE[0] * scale, 4), round(DEFAULT_CV_RANGE[1] * scale, 4))


# -- the process -----------------------------------------------------------------------------------

def _topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranked top-k ids [N, k] and their softmax-over-all probabilities [N, k]."""
    part = np.argpartition(logits, logits.shape[1] - k, axis=1)[:, -k:]
    vals = np.take_along_axis(logits, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(vals, order, axis=1)
    m = logits.max(axis=1, keepdims=True)
    z = np.exp(logits - m).sum(axis=1, keepdims=True)
    return ids, (np.exp(top - m) / z).astype(np.float32)


def _cross_term(matrix: np.ndarray, ids: np.ndarray, gates: np.ndarray) -> np.ndarray:
    """sum_r g_r matrix[ids_r] with g the renormalised gates, as one dense matrix product."""
    weights = np.zeros((ids.shape[0], matrix.shape[0]), np.float32)
    np.put_along_axis(weights, ids.astype(np.int64), gates / gates.sum(axis=1, keepdims=True), axis=1)
    return weights @ matrix


def _run_layers(prior_of_token, latent_of_layer, matrices, gamma_of_token, sigma, k, num_layers):
    """Yield (layer, logits, ids, gates) layer by layer; prior_of_token(l) -> [N, E], latent_of_layer(l) -> [N, E],
    gamma_of_token(l) -> [N, 1] (weight of the previous layer's choice)."""
    ids = gates = None
    for layer in range(num_layers):
        logits = prior_of_token(layer) + sigma * latent_of_layer(layer)
        if layer > 0:
            logits += gamma_of_token(layer) * _cross_term(matrices[layer], ids, gates)
        ids, gates = _topk(logits, k)
        yield layer, logits, ids, gates


@lru_cache(maxsize=32)
def _structure(model_name: str, domains: tuple[str, ...], structure_seed: int, sigma: float, gamma_default: float,
               persistence: float | None, target_overlap: float, cv_range: tuple | None, rho_range: tuple,
               depth_gain: float) -> _Structure:
    spec = get_model(model_name)
    L, E, k = spec.num_layers, spec.num_experts, spec.top_k
    rng = np.random.default_rng([structure_seed, 0])
    perms = np.stack([rng.permutation(E) for _ in range(L)])
    matrices = rng.standard_normal((L, E, E)).astype(np.float32)
    key = calibration.MODEL_KEYS.get(spec.name)
    lrc = published.locality(spec.name)
    calibrated_to, parametric = [], []
    targets = [_calibrated_targets(key, domain, spec, perms) if key else None for domain in domains]
    calibrated = [t is not None for t in targets]
    if any(calibrated):
        calibrated_to.append(f"per-expert popularity of {[d for d, c in zip(domains, calibrated) if c]}: AllenAI's "
                             f"{spec.display_name} top-{k} counts at layers {list(_ANCHORS)} "
                             "(specmd_env/data/calibration/allenai-olmoe)")
    if any(calibrated) and lrc is not None and L > _ANCHORS[-1] + 1:
        known = np.stack([t for t in targets if t is not None])
        scale, known = _fit_deep_layers(known, k, lrc.figures["activation_freq_sd"])
        fitted = iter(known)
        targets = [next(fitted) if t is not None else None for t in targets]
        calibrated_to.append(f"layers {_ANCHORS[-1] + 1}-{L - 1} of the same domains (past AllenAI's last layer): "
                             f"layer {_ANCHORS[-1]}'s profile, permuted, its CV times {scale:.3f} so that the "
                             f"activation-frequency SD over all experts is {lrc.figures['activation_freq_sd']}% "
                             f"({lrc.source}, Table 2)")
    loose = [d for d, c in zip(domains, calibrated) if not c]
    if loose:
        if cv_range is None and lrc is not None:
            cv_range = _fit_cv_range(spec, loose, structure_seed, rho_range, lrc.figures["activation_freq_sd"])
            calibrated_to.append(f"spread of popularity of {loose}: activation-frequency SD "
                                 f"{lrc.figures['activation_freq_sd']}% over all experts ({lrc.source}, Table 2); "
                                 f"load CV range {list(cv_range)} from the first to the last layer")
        cv_range = cv_range or DEFAULT_CV_RANGE
        parametric.append(f"which experts of {loose} are popular, the per-layer load profile (CV {list(cv_range)}) "
                          f"and the domain-specific share ({list(rho_range)}): no per-expert data for them")
        fitted = iter(_parametric_targets(spec, loose, structure_seed, cv_range, rho_range))
        targets = [t if t is not None else next(fitted) for t in targets]
    parametric.append("the cross-layer correlation and the speculative-score noise")
    target = np.stack(targets)  # [D, L, E]

    # Fit the log-priors so that the whole process (with its cross-layer term) has the target marginals.
    D = len(domains)
    prior = np.log(target).astype(np.float32)
    log_target = np.log(np.clip(target, 1e-4, 1.0))
    depth = np.clip((np.arange(L) - 1) / max(L - 2, 1), 0.0, 1.0)
    gamma = np.tile((gamma_default * (1.0 + depth_gain * depth)).astype(np.float32), (D, 1))
    n = _FIT_TOKENS
    dom_idx = np.repeat(np.arange(D), n)
    noise = np.random.default_rng([structure_seed, 3]).standard_normal((L, D * n, E), dtype=np.float32)
    for step in range(_FIT_STEPS):
        freq = np.empty((D, L, E))
        for layer, _, ids, _ in _run_layers(lambda l: prior[dom_idx, l], lambda l: noise[l], matrices,
                                            lambda l: gamma[dom_idx, l][:, None], sigma, k, L):
            freq[:, layer] = np.bincount((dom_idx[:, None] * E + ids).ravel(), minlength=D * E).reshape(D, E) / n
        step_size = 1.0 if step < _FIT_STEPS - 4 else 0.5
        prior += step_size * np.clip(log_target - np.log(np.clip(freq, 1e-4, 1.0)), -2, 2).astype(np.float32)
        prior -= prior.mean(axis=2, keepdims=True)

    process = _Process(prior, gamma, matrices, sigma, k, structure_seed)
    phi, anchors, unfitted = np.full((D, L), DEFAULT_PERSISTENCE), (), []
    table = published.repetition(spec.name)
    if persistence is not None:
        phi[:] = persistence
        parametric.append(f"persistence {persistence} (given)")
    elif key == "olmoe":
        for d in np.flatnonzero(calibrated):
            phi[d] = _fit_persistence(prior[d, 0], sigma, k, target_overlap, structure_seed)
        if any(calibrated):
            calibrated_to.append(f"persistence of {[d for d, c in zip(domains, calibrated) if c]}: consecutive "
                                 f"prompt tokens share {target_overlap} of {k} experts at layer 0 (published "
                                 "OLMoE figure)")
        unfitted = loose
    elif table is not None:
        phi, anchors = _fit_repetition(process, domains, table, L)
        matched = {d: table.for_domain(d)[0] for d in domains}
        calibrated_to.append(f"persistence per domain and layer: consecutive-token expert repetition at layers "
                             f"{list(anchors)} ({table.source}; compared domains {matched})")
    elif lrc is not None:
        phi[:] = _fit_segment_persistence(process, D, L, lrc)
        calibrated_to.append(f"persistence: segment routing best performance SRP(m=16) = "
                             f"{100 * lrc.figures['srp_m16']:.2f}% over {lrc.sequence_tokens}-token sequences "
                             f"({lrc.source}, Table 2)")
    else:
        unfitted = list(domains)
    if unfitted:
        parametric.append(f"persistence {DEFAULT_PERSISTENCE} of {unfitted} (no published locality figure)")
    return _Structure(prior=prior, gamma=gamma, target=target, phi=phi, matrices=matrices, calibrated=tuple(calibrated),
                      cv_range=tuple(cv_range or DEFAULT_CV_RANGE), phi_anchors=anchors,
                      calibrated_to=tuple(calibrated_to), parametric=tuple(parametric))


@dataclass(frozen=True)
class _Process:
    """The fitted router process, for simulating samples while persistence is fitted."""

    prior: np.ndarray
    gamma: np.ndarray
    matrices: np.ndarray
    sigma: float
    k: int
    seed: int

    def run(self, dom_of_seq: np.ndarray, tokens: int, phi: np.ndarray, num_layers: int):
        """Yield (layer, ids [R, tokens, k]) for R sequences (domain indices ``dom_of_seq``) with AR(1)
        coefficients ``phi[domain, layer]``; the noise is fixed per layer, so fits compare like with like."""
        R, E = len(dom_of_seq), self.prior.shape[2]
        dom_tok = np.repeat(dom_of_seq, tokens)

        def latent(layer: int) -> np.ndarray:
            u = np.random.default_rng([self.seed, 5, layer]).standard_normal((R, tokens, E), dtype=np.float32)
            for f in np.unique(phi[dom_of_seq, layer]):
                rows = phi[dom_of_seq, layer] == f
                c = np.sqrt(1 - f * f)  # u_t = f u_{t-1} + c eps_t with u_0 = eps_0 (stationary start)
                u[rows] = lfilter([c], [1.0, -f], u[rows], axis=1, zi=(1 - c) * u[rows][:, :1])[0]
            return u.reshape(R * tokens, E)

        for layer, _, ids, _ in _run_layers(lambda l: self.prior[dom_tok, l], latent, self.matrices,
                                            lambda l: self.gamma[dom_tok, l][:, None], self.sigma, self.k,
                                            num_layers):
            yield layer, ids.reshape(R, tokens, self.k)


def _fit_repetition(process: _Process, domains, table: published.Repetition, num_layers: int):
    """Per-domain phi at each published layer (linear in between, constant beyond) such that the
    consecutive-token repetition there matches the table: the root of ``first / first_target +
    any / any_target - 2`` (signed relative errors summing to zero), found by bisection layer after layer
    on the whole process, since the cross-layer term carries persistence from the layers below."""
    anchors = tuple(a for a in table.layers if a < num_layers)
    D = len(domains)
    rows = [table.for_domain(d)[1] for d in domains]
    goal = np.array([[[row[f"repeat_first_L{a}"], row[f"repeat_any_L{a}"]] for a in anchors] for row in rows])
    per_domain, tokens = _REPETITION_FIT
    dom_of_seq = np.repeat(np.arange(D), per_domain)
    phi = np.zeros((D, num_layers))

    def with_anchor(i: int, value: np.ndarray) -> np.ndarray:
        out = phi.copy()
        a = anchors[i]
        if i == 0:
            out[:, :a + 1] = value[:, None]
        else:
            b = anchors[i - 1]
            w = (np.arange(b, a + 1) - b) / (a - b)
            out[:, b:a + 1] = (1 - w) * phi[:, b:b + 1] + w * value[:, None]
        out[:, a + 1:] = value[:, None]
        return out

    def excess(i: int, value: np.ndarray) -> np.ndarray:
        ids = None
        for _, ids in process.run(dom_of_seq, tokens, with_anchor(i, value), anchors[i] + 1):
            pass
        prev, cur = ids[:, :-1], ids[:, 1:]
        first = first_choice_same(prev, cur).reshape(D, -1).mean(axis=1)
        any_ = (shared_experts(prev, cur) >= 1).reshape(D, -1).mean(axis=1)
        return first / goal[:, i, 0] + any_ / goal[:, i, 1] - 2.0

    for i in range(len(anchors)):
        lo, hi = np.zeros(D), np.full(D, 0.995)
        floor = excess(i, lo) >= 0
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            low = excess(i, mid) < 0
            lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
        phi = with_anchor(i, np.where(floor, 0.0, 0.5 * (lo + hi)))
    return phi, anchors


def _fit_segment_persistence(process: _Process, num_domains: int, num_layers: int, lrc: published.Locality) -> float:
    """One phi for all layers and domains giving the published SRP(m=16) on sequences as long as the
    paper's (the domains mixed in equal parts)."""
    dom_of_seq = np.arange(max(num_domains, 4)) % num_domains
    tokens, segment = lrc.sequence_tokens, 16

    @cache
    def excess(value: float) -> float:
        hist = np.zeros(segment + 1, np.int64)
        phi = np.full((num_domains, num_layers), value)
        for _, ids in process.run(dom_of_seq, tokens, phi, num_layers):
            hist += segment_histogram(ids.transpose(1, 0, 2), process.prior.shape[2], segment)  # sequences as layers
        return srp_from_histogram(hist) - lrc.figures["srp_m16"]

    lo, hi = 0.0, 0.99
    if excess(lo) >= 0:
        return lo
    if excess(hi) <= 0:
        return hi
    return float(brentq(excess, lo, hi, xtol=2e-3))


def _fit_persistence(prior0: np.ndarray, sigma: float, k: int, target: float, structure_seed: int) -> float:
    """AR(1) coefficient giving a mean consecutive-token overlap of ``target`` at layer 0."""
    rng = np.random.default_rng([structure_seed, 4])
    R, P, E = 48, 48, prior0.shape[0]
    eps = rng.standard_normal((P, R, E), dtype=np.float32)

    def overlap(phi: float) -> float:
        u = eps[0].copy()
        c = np.sqrt(1 - phi * phi)
        prev = _topk(prior0 + sigma * u, k)[0]
        total = 0.0
        for p in range(1, P):
            u = phi * u + c * eps[p]
            ids = _topk(prior0 + sigma * u, k)[0]
            total += shared_experts(prev, ids).mean()
            prev = ids
        return total / (P - 1)

    lo, hi = 0.0, 0.995
    if overlap(lo) >= target:
        return lo
    for _ in range(11):
        mid = 0.5 * (lo + hi)
        if overlap(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# -- spec scores -----------------------------------------------------------------------------------

def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def _topk_set_accuracy(scores: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    E = scores.shape[1]
    pred = np.argpartition(scores, E - k, axis=1)[:, -k:]
    return float(shared_experts(pred, true_ids).mean() / k)


def _quantise(probs: np.ndarray, quantum: float | None) -> np.ndarray:
    """float16 probabilities, optionally rounded to multiples of ``quantum`` (compresses far better)."""
    if quantum:
        probs = np.round(probs / quantum) * quantum
    return probs.astype(np.float16)


def _spec_scores_for_layer(next_logits, next_ids, noise, k, accuracy, quantum=None, max_fit=3072):
    """softmax(next_logits + eta * noise) with eta bisected so the top-k accuracy is ``accuracy``."""
    n = next_logits.shape[0]
    sample = slice(None) if n <= max_fit else np.linspace(0, n - 1, max_fit).astype(np.int64)
    lg, nz, ids = next_logits[sample], noise[sample], next_ids[sample]

    def acc(eta: float) -> float:  # measured on the stored float16 probabilities, as trace-stats reads them
        return _topk_set_accuracy(_quantise(_softmax(lg + eta * nz), quantum), ids, k)

    if accuracy >= 1.0 or acc(0.0) <= accuracy:
        eta = 0.0
    else:
        lo, hi = 0.0, 1.0
        while acc(hi) > accuracy and hi < 1e4:
            lo, hi = hi, hi * 2
        for _ in range(18):
            mid = 0.5 * (lo + hi)
            if acc(mid) > accuracy:
                lo = mid
            else:
                hi = mid
        eta = 0.5 * (lo + hi)
    return _quantise(_softmax(next_logits + eta * noise), quantum), eta


# -- generation ------------------------------------------------------------------------------------

def _lengths(spec, n: int, rng: np.random.Generator, name: str) -> np.ndarray:
    if isinstance(spec, (int, np.integer)):
        lo = hi = int(spec)
    else:
        lo, hi = (int(x) for x in spec)
    if lo < 0 or hi < lo:
        raise SpecMDError(f"{name} must be a non-negative int or a (min, max) pair, got {spec!r}")
    return rng.integers(lo, hi + 1, size=n) if hi > lo else np.full(n, lo, np.int64)


def _check_args(domains, requests_per_domain, spec_accuracy, sigma, gamma, persistence):
    if not domains or any(not isinstance(d, str) or not d for d in domains):
        raise SpecMDError(f"domains must be a non-empty list of names, got {domains!r}")
    if len(set(domains)) != len(domains):
        raise SpecMDError(f"domains must not repeat, got {domains!r}")
    integer("requests_per_domain", requests_per_domain, minimum=1)
    if not 0.0 < spec_accuracy <= 1.0:
        raise SpecMDError(f"spec_accuracy must be in (0, 1], got {spec_accuracy!r}")
    if sigma <= 0 or gamma < 0:
        raise SpecMDError(f"noise_scale must be > 0 and crosslayer_strength >= 0, got {sigma!r}, {gamma!r}")
    if persistence is not None and not 0.0 <= persistence < 1.0:
        raise SpecMDError(f"persistence must be in [0, 1), got {persistence!r}")


def iter_generate(model: str | ModelSpec = "olmoe-1b-7b", *, domains: Sequence[str] = ALLENAI_DOMAINS,
                  requests_per_domain: int = 4, prompt_len=128, decode_len=32, seed: int = 0,
                  spec_accuracy: float = 0.9, with_spec_scores: bool = True, structure_seed: int = 0,
                  noise_scale: float = 1.0, crosslayer_strength: float = 1.0, crosslayer_depth_gain: float = 1.5,
                  persistence: float | None = None,
                  target_overlap_l0: float = 2.55, decode_persistence_boost: float = 0.0,
                  cv_range: tuple[float, float] | None = None, rho_range: tuple[float, float] = (0.3, 0.8),
                  spec_quantum: float | None = None, chunk_tokens: int | None = None) -> Iterator[Trace]:
    """Generate a synthetic trace as a sequence of chunk traces (each holds whole requests, in order).

    Memory is bounded by ``chunk_tokens`` (default: about 96 MiB of float32 work arrays). Concatenating
    the chunks gives what :func:`generate_trace` returns.

    ``prompt_len`` / ``decode_len``: an int or an inclusive ``(min, max)`` range drawn per request.
    ``spec_accuracy``: the top-k accuracy of the speculative scores (published predictors: ~0.55-0.97).
    ``persistence``: AR(1) coefficient of the latent along tokens; None = fitted to the published figures
    of the model (OLMoE: ``target_overlap_l0`` shared experts between consecutive tokens at layer 0;
    Mixtral: repetition by layer and domain; models Liang et al. measured: SRP(m=16)), else 0.6.
    ``crosslayer_strength``: weight of the previous layer's choice in the next layer's logits at layer 1;
    it grows linearly to ``crosslayer_strength * (1 + crosslayer_depth_gain)`` at the last layer.
    ``spec_quantum``: round spec-score probabilities to multiples of this (e.g. 2**-10) so compressed files
    stay small; the accuracy is fitted on the rounded values. None keeps full float16 precision.
    ``cv_range`` / ``rho_range``: load CV and domain-specific share at the first/last layer, used only
    where no AllenAI counts calibrate the model and domain; ``cv_range=None`` scales ``DEFAULT_CV_RANGE``
    to the model's published activation-frequency spread where there is one, else uses it as is.
    """
    spec = get_model(model)
    domains = tuple(domains)
    _check_args(domains, requests_per_domain, spec_accuracy, noise_scale, crosslayer_strength, persistence)
    seed, structure_seed = integer("seed", seed, minimum=0), integer("structure_seed", structure_seed, minimum=0)
    L, E, k = spec.num_layers, spec.num_experts, spec.top_k
    structure = _structure(spec.name, domains, int(structure_seed), float(noise_scale), float(crosslayer_strength),
                           None if persistence is None else float(persistence), float(target_overlap_l0),
                           None if cv_range is None else tuple(map(float, cv_range)), tuple(map(float, rho_range)),
                           float(crosslayer_depth_gain))
    n_req = len(domains) * requests_per_domain
    len_rng = np.random.default_rng([seed, 1 << 30])
    prompts = np.maximum(_lengths(prompt_len, n_req, len_rng, "prompt_len"), 1)
    decodes = _lengths(decode_len, n_req, len_rng, "decode_len")
    totals = prompts + decodes
    dom_of_req = np.arange(n_req) % len(domains)  # round-robin over domains
    if chunk_tokens is None:
        per_token = 4 * (L * E * 3 + ((L - 1) * E * 2 if with_spec_scores else 0))
        chunk_tokens = max(1, _CHUNK_BYTES // per_token)
    meta = _meta(spec, domains, dom_of_req, seed, spec_accuracy, with_spec_scores, structure, locals())

    start = 0
    while start < n_req:
        stop, used = start, 0
        while stop < n_req and (stop == start or used + totals[stop] <= chunk_tokens):
            used += totals[stop]
            stop += 1
        yield _generate_chunk(spec, structure, range(start, stop), prompts, totals, dom_of_req, seed,
                              spec_accuracy, with_spec_scores, noise_scale,
                              decode_persistence_boost, meta, domains, spec_quantum)
        start = stop


def _generate_chunk(spec, structure, requests, prompts, totals, dom_of_req, seed, spec_accuracy, with_spec,
                    sigma, decode_boost, meta, domains, spec_quantum=None) -> Trace:
    L, E, k = spec.num_layers, spec.num_experts, spec.top_k
    reqs = list(requests)
    lengths = totals[reqs]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    T = int(offsets[-1])
    dom_tok = np.repeat(dom_of_req[reqs], lengths)
    # latent[l, t, e]: AR(1) along each request's tokens, drawn from the request's own generator.
    latent = np.empty((L, T, E), np.float32)
    spec_noise = np.empty((L - 1, T, E), np.float32) if with_spec and L > 1 else None
    for j, r in enumerate(reqs):
        rng = np.random.default_rng([seed, r])
        eps = rng.standard_normal((L, int(lengths[j]), E), dtype=np.float32)
        phi = np.repeat(structure.phi[dom_of_req[r]][None, :, None].astype(np.float32), int(lengths[j]), axis=0)
        phi[int(prompts[r]):] = np.minimum(phi[int(prompts[r]):] + decode_boost, 0.995)  # [tokens, L, 1]
        c = np.sqrt(1 - phi * phi)
        x = eps[:, 0]
        out = latent[:, offsets[j]:offsets[j + 1]]
        out[:, 0] = x
        for p in range(1, int(lengths[j])):
            x = phi[p] * x + c[p] * eps[:, p]
            out[:, p] = x
        if spec_noise is not None:
            spec_noise[:, offsets[j]:offsets[j + 1]] = rng.standard_normal((L - 1, int(lengths[j]), E),
                                                                           dtype=np.float32)
    prior = structure.prior  # [D, L, E]
    expert_ids = np.empty((T, L, k), np.int16)
    gate_weights = np.empty((T, L, k), np.float32)
    spec_scores = np.empty((T, L - 1, E), np.float16) if spec_noise is not None else None
    etas = []
    gamma_tok = structure.gamma
    for layer, logits, ids, gates in _run_layers(lambda l: prior[dom_tok, l], lambda l: latent[l],
                                                 structure.matrices, lambda l: gamma_tok[dom_tok, l][:, None],
                                                 sigma, k, L):
        expert_ids[:, layer] = ids
        gate_weights[:, layer] = gates
        if spec_scores is not None and layer > 0:
            spec_scores[:, layer - 1], eta = _spec_scores_for_layer(logits, ids, spec_noise[layer - 1], k,
                                                                    spec_accuracy, spec_quantum)
            etas.append(round(float(eta), 4))
    chunk_meta = dict(meta)
    chunk_meta["domains"] = [domains[dom_of_req[r]] for r in reqs]
    if etas:
        chunk_meta["spec_noise_scales"] = etas
    return Trace(expert_ids=expert_ids, request_offsets=offsets, prompt_lengths=prompts[reqs].astype(np.int64),
                 meta=chunk_meta, gate_weights=gate_weights, spec_scores=spec_scores)


def _meta(spec, domains, dom_of_req, seed, spec_accuracy, with_spec, structure, args) -> dict:
    params = {name: args[name] for name in ("requests_per_domain", "prompt_len", "decode_len", "structure_seed",
                                            "noise_scale", "crosslayer_strength", "crosslayer_depth_gain", "persistence",
                                            "target_overlap_l0", "decode_persistence_boost", "cv_range",
                                            "rho_range", "spec_quantum")}
    params = json.loads(json.dumps(params, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    params["spec_accuracy"] = spec_accuracy if with_spec else None
    params["fitted_persistence"] = {
        d: ({f"L{a}": round(float(phi[a]), 4) for a in structure.phi_anchors} if structure.phi_anchors
            else round(float(phi[0]), 4)) for d, phi in zip(domains, structure.phi)}
    source = (f"specmd_env.generator v{GENERATOR_VERSION}, seed={seed}, "
              + ", ".join(f"{k}={v}" for k, v in params.items() if k != "fitted_persistence"))
    fitted = "; ".join(structure.calibrated_to) or "nothing (all parametric)"
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "model": spec.name, "num_layers": spec.num_layers,
        "num_experts": spec.num_experts, "top_k": spec.top_k, "kind": "synthetic", "source": source,
        "licence": LICENCE,
        "description": (f"SYNTHETIC routing trace for {spec.display_name} (no model was run): a Gaussian-latent "
                        f"router process with token-to-token reuse and cross-layer correlation, calibrated to "
                        f"{fitted}. Not a recording of real routing."),
        "calibrated_to": list(structure.calibrated_to),
        "parametric": list(structure.parametric),
        "generator": {"name": "specmd_env.generator", "version": GENERATOR_VERSION, "seed": seed, **params},
        "domains": [domains[d] for d in dom_of_req],
    }


def concat_traces(chunks: Sequence[Trace]) -> Trace:
    """Join chunk traces of one generation (same model and options) into one trace."""
    chunks = list(chunks)
    if not chunks:
        raise SpecMDError("no chunks to join")
    if len(chunks) == 1:
        return chunks[0]
    meta = dict(chunks[0].meta)
    meta["domains"] = [d for c in chunks for d in c.domains]
    meta.pop("spec_noise_scales", None)
    sizes = np.cumsum([0] + [c.num_tokens for c in chunks])
    offsets = np.concatenate([[0]] + [np.asarray(c.request_offsets[1:]) + s for c, s in zip(chunks, sizes)])
    cat = lambda name: (None if getattr(chunks[0], name) is None  # noqa: E731
                        else np.concatenate([np.asarray(getattr(c, name)) for c in chunks]))
    return Trace(expert_ids=cat("expert_ids"), request_offsets=offsets.astype(np.int64),
                 prompt_lengths=cat("prompt_lengths"), meta=meta, gate_weights=cat("gate_weights"),
                 spec_scores=cat("spec_scores"))


def generate_trace(model: str | ModelSpec = "olmoe-1b-7b", **options) -> Trace:
    """A synthetic routing trace for any model in ``data/models.toml``, in memory. Takes the same keyword
    arguments as :func:`iter_generate` (which documents them) and concatenates its chunks."""
    return concat_traces(list(iter_generate(model, **options)))


def write_trace(path: str | os.PathLike, *, compress: bool = False, **kwargs) -> Path:
    """Generate and write a trace chunk by chunk (bounded memory, any size). Returns the path.

    Arrays are spooled to temporary files next to ``path`` and then streamed into the ``.npz``, so a
    million-token trace never sits in memory whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=path.name + ".", dir=path.parent) as tmp:
        spools: dict[str, tuple] = {}
        offsets, prompts, domains, meta, base = [np.zeros(1, np.int64)], [], [], None, 0
        shapes: dict[str, tuple] = {}
        for chunk in iter_generate(**kwargs):
            meta = meta or dict(chunk.meta)
            domains += chunk.domains
            prompts.append(np.asarray(chunk.prompt_lengths))
            offsets.append(np.asarray(chunk.request_offsets[1:]) + base)
            base += chunk.num_tokens
            for name in ("expert_ids", "gate_weights", "spec_scores"):
                array = getattr(chunk, name)
                if array is None:
                    continue
                if name not in spools:
                    spools[name] = (open(os.path.join(tmp, name), "wb"), array.dtype)
                    shapes[name] = array.shape[1:]
                spools[name][0].write(np.ascontiguousarray(array).tobytes())
        for handle, _ in spools.values():
            handle.close()
        meta.pop("spec_noise_scales", None)
        meta["domains"] = domains
        small = {"meta_json": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
                 "request_offsets": np.concatenate(offsets).astype(np.int64),
                 "prompt_lengths": np.concatenate(prompts).astype(np.int64)}
        partial = os.path.join(tmp, "out.npz")
        mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(partial, "w", compression=mode) as zf:
            for name, array in small.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, array, allow_pickle=False)
            for name, (_, dtype) in spools.items():
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                          "shape": (base, *shapes[name])}
                with zf.open(name + ".npy", "w", force_zip64=True) as out, open(os.path.join(tmp, name), "rb") as src:
                    np.lib.format.write_array_header_2_0(out, header)
                    while block := src.read(1 << 24):
                        out.write(block)
        os.replace(partial, path)
    return path


# -- CLI -------------------------------------------------------------------------------------------

def configure(parser) -> None:
    parser.add_argument("--model", default="olmoe-1b-7b", help="model name or alias (default olmoe-1b-7b)")
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domains", default=",".join(ALLENAI_DOMAINS),
                        help="comma-separated domain names (default: the five AllenAI domains)")
    parser.add_argument("--requests-per-domain", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-len", type=int, default=32)
    parser.add_argument("--spec-accuracy", type=float, default=0.9,
                        help="top-k accuracy of the speculative next-layer scores (default 0.9)")
    parser.add_argument("--no-spec-scores", action="store_true", help="omit spec_scores (much smaller, faster)")
    parser.add_argument("--compress", action="store_true", help="deflate the .npz (smaller, not memory-mapped)")


def run(args) -> int:
    import time

    from specmd_env.outputs import writable_file

    writable_file(args.out, "--out")
    started = time.perf_counter()
    path = write_trace(args.out, compress=args.compress, model=args.model,
                       domains=tuple(d.strip() for d in args.domains.split(",") if d.strip()),
                       requests_per_domain=args.requests_per_domain, prompt_len=args.prompt_len,
                       decode_len=args.decode_len, seed=args.seed, spec_accuracy=args.spec_accuracy,
                       with_spec_scores=not args.no_spec_scores)
    from specmd_env.trace import load_trace

    trace = load_trace(path)
    print(f"wrote {path}: {trace!r}, {path.stat().st_size / 1e6:.2f} MB, "
          f"{time.perf_counter() - started:.1f} s (synthetic)")
    return 0
