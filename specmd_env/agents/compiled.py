"""A trained row scorer as an eviction policy: its weights, exported without pickle, evaluated in the kernel.

A learned eviction agent (:class:`specmd_env.agents.learned.RowScorer`) scores every row of the
environment's observation -- each cache slot, and the incoming expert -- with one small network and
evicts the best-scoring candidate slot, or bypasses when the incoming row wins. The same computation
runs here as a compiled policy hook: ``victim`` builds the observation with the environment's own
compiled builder (:func:`specmd_env.envs.observation.build_observation`, on the replay's state and a
memory of past routing kept by ``on_events``) and evaluates the network in numba, so a learned agent
replays at the speed of a built-in policy, through ``simulate(eviction=policy)``, the leaderboard and
anything else that takes an :class:`~specmd_env.eviction.EvictionPolicy`.

Weights file (``<name>.npz``, read with ``allow_pickle=False``): ``w0`` [F + G, H1], ``b0`` [H1], then
``w1`` [H1, H2], ``b1`` [H2] for a second hidden layer, then ``w_out`` [H_last], ``b_out`` [1]; ReLU
between layers; the input is a row's F features then the G global features. The hook evaluates it in
float32 with one matrix product per layer, as torch does (the sums may be ordered differently: the two
agree on every decision but near-exact ties; the test suite checks a whole held-out replay).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from specmd_env import policy as sp
from specmd_env.envs import memory as M
from specmd_env.envs.observation import N_GLOBAL_FEATURES, N_SLOT_FEATURES, build_observation
from specmd_env.errors import SpecMDError
from specmd_env.eviction.base import EvictionPolicy
from specmd_env.kernel import layout as _L
from specmd_env.kernel.native import array_at
from specmd_env.kernel.state import unpack

F, G = N_SLOT_FEATURES, N_GLOBAL_FEATURES
MAX_HIDDEN = 2
# state_i header: network shape, then the bypass switch
N_HIDDEN, H1, H2, BYPASS, N_HEADER = range(5)


@dataclass(frozen=True)
class ScorerWeights:
    """A row scorer's weights: hidden layers (weight [in, out], bias [out]), then the output layer."""

    hidden: tuple[tuple[np.ndarray, np.ndarray], ...]
    w_out: np.ndarray
    b_out: float

    def __post_init__(self):
        if not 1 <= len(self.hidden) <= MAX_HIDDEN:
            raise SpecMDError(f"a row scorer has 1 to {MAX_HIDDEN} hidden layers, got {len(self.hidden)}")
        fan_in = F + G
        for i, (w, b) in enumerate(self.hidden):
            if w.ndim != 2 or w.shape[0] != fan_in or b.shape != (w.shape[1],):
                raise SpecMDError(f"row scorer layer {i}: weight {w.shape} / bias {b.shape} do not take {fan_in} inputs")
            fan_in = w.shape[1]
        if self.w_out.shape != (fan_in,):
            raise SpecMDError(f"row scorer output weight {self.w_out.shape} does not take {fan_in} inputs")
        for name, a in self.arrays().items():
            if not np.all(np.isfinite(a)):
                raise SpecMDError(f"row scorer weight {name} holds a non-finite value")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(w.shape[1] for w, _ in self.hidden)

    @property
    def flops(self) -> int:
        """Multiply-adds per row (the globals' share is computed once per decision)."""
        sizes = (F,) + self.sizes
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) + sizes[-1]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (w, b) in enumerate(self.hidden):
            out[f"w{i}"], out[f"b{i}"] = w, b
        out["w_out"], out["b_out"] = self.w_out, np.array([self.b_out])
        return out

    def flat(self) -> np.ndarray:
        """The float32 parameter block the hook reads: per hidden layer W (row-major [in, out]) then b;
        then w_out, b_out."""
        parts = [np.asarray(a, np.float32).ravel() for w, b in self.hidden for a in (w, b)]
        return np.concatenate(parts + [np.asarray(self.w_out, np.float32), np.array([self.b_out], np.float32)])

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        """``<path>.npz`` (plain arrays) and, with ``metadata``, ``<path>.json`` beside it."""
        path = Path(path).with_suffix(".npz")
        np.savez(path, **{k: np.asarray(v, np.float32 if k != "b_out" else np.float64) for k, v in self.arrays().items()})
        if metadata is not None:
            path.with_suffix(".json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScorerWeights":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise SpecMDError(f"{path}: not a row scorer weights file ({exc})") from None
        hidden = []
        while f"w{len(hidden)}" in arrays:
            i = len(hidden)
            if f"b{i}" not in arrays:
                raise SpecMDError(f"{path}: weight w{i} has no bias b{i}")
            hidden.append((arrays[f"w{i}"].astype(np.float64), arrays[f"b{i}"].astype(np.float64)))
        if "w_out" not in arrays or "b_out" not in arrays:
            raise SpecMDError(f"{path}: no output layer (w_out, b_out); members: {sorted(arrays)}")
        unknown = set(arrays) - set(cls(tuple(hidden), arrays["w_out"].astype(np.float64),
                                        float(arrays["b_out"].ravel()[0])).arrays())
        if unknown:
            raise SpecMDError(f"{path}: unknown members {sorted(unknown)}")
        return cls(tuple(hidden), arrays["w_out"].astype(np.float64), float(arrays["b_out"].ravel()[0]))


# -- where things live in the policy's state ---------------------------------------------------------
@njit(cache=True, inline="always")
def _n_weights(h1, h2):
    """float32 parameters of a scorer with hidden sizes h1 (and h2 > 0 for a second layer)."""
    n = (F + G) * h1 + h1
    if h2 > 0:
        n += h1 * h2 + h2
    return n + (h2 if h2 > 0 else h1) + 1


@njit(cache=True, inline="always")
def _sections(capacity, n_obj, layers, h1, h2):
    """Offsets in state_f (float64 items) of: the memory, the rank and layer tables, the observation
    (float32, two per item); and the total length. The weights (float32) come first."""
    mem = (_n_weights(h1, h2) + 1) // 2
    rank = mem + M.N_ROWS * n_obj
    layer = rank + capacity
    obs = layer + layers
    return mem, rank, layer, obs, obs + ((capacity + 1) * F + G + 1) // 2


def _state_sizes(h1: int, h2: int):
    def sizes(capacity, num_layers, num_experts, num_scopes):
        end = int(_sections(capacity, num_layers * num_experts, num_layers, h1, h2)[-1])
        return N_HEADER + capacity + 1, end  # ints: header, then the action mask (one byte each is enough)
    return sizes


# -- the network, compiled ---------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _relu_bias(a, bias):
    for r in range(a.shape[0]):
        for j in range(a.shape[1]):
            x = a[r, j] + bias[j]
            a[r, j] = x if x > 0 else np.float32(0.0)


@njit(cache=True)
def scores(w, obs, rows, h1, h2):
    """The network's score of each of the ``rows`` rows of ``obs`` (float32, as torch computes it: one
    matrix product per layer; the globals' share of the first layer is computed once)."""
    x = obs[:rows * F].reshape(rows, F)
    glob = obs[rows * F:rows * F + G]
    w0 = w[:(F + G) * h1].reshape(F + G, h1)
    at = (F + G) * h1
    first = w[at:at + h1].copy()  # b0 + globals @ W0[F:]
    for g in range(G):
        if glob[g] != 0:
            for j in range(h1):
                first[j] += glob[g] * w0[F + g, j]
    a = x @ w0[:F]
    _relu_bias(a, first)
    at += h1
    if h2 > 0:
        w1 = w[at:at + h1 * h2].reshape(h1, h2)
        a = a @ w1
        _relu_bias(a, w[at + h1 * h2:at + h1 * h2 + h2])
        at += h1 * h2 + h2
    n_last = a.shape[1]
    return a @ w[at:at + n_last] + w[at + n_last]


@sp.hook
def victim(tab, lo, hi):
    k = unpack(tab)
    v = sp.cache_view(tab)
    C, L, E = k.capacity, k.num_layers, k.num_experts
    h1, h2 = v.state_i[H1], v.state_i[H2]
    mem_at, rank_at, layer_at, obs_at, _ = _sections(C, L * E, L, h1, h2)
    sf = v.state_f
    w = array_at(sf.ctypes.data, _n_weights(h1, h2), np.float32)
    obs = array_at(sf.ctypes.data + 8 * obs_at, (C + 1) * F + G, np.float32)
    mask = array_at(v.state_i.ctypes.data + 8 * N_HEADER, C + 1, np.bool_)
    build_observation(k, obs, mask, False, sf[rank_at:layer_at], sf[layer_at:obs_at], sf[mem_at:rank_at], C,
                      v.state_i[BYPASS] == 1)
    score = scores(w, obs, C + 1, h1, h2)
    best, best_score = -1, -np.inf
    for r in range(C + 1):
        if mask[r] and score[r] > best_score:  # ties: the lower row, as torch's argmax
            best, best_score = r, score[r]
    return -1 if best == C else best


@sp.hook
def on_events(tab, n, _):
    k = unpack(tab)
    v = sp.cache_view(tab)
    C, L, E = k.capacity, k.num_layers, k.num_experts
    n_obj = L * E
    mem_at, rank_at, layer_at, obs_at, _ = _sections(C, n_obj, L, v.state_i[H1], v.state_i[H2])
    mem = v.state_f[mem_at:rank_at]
    for i in range(n):
        kind, _, obj = sp.event_at(v, i)
        if kind == sp.EV_INIT:
            M.clear(mem, n_obj)
            size = 0  # the rank table of the environment's replay: j / (largest scope - 1)
            for sc in range(k.scope.shape[1]):
                size = max(size, k.scope[_L.SC_HI, sc] - k.scope[_L.SC_LO, sc])
            denom = max(size - 1, 1)
            for j in range(C):
                v.state_f[rank_at + j] = j / denom
            for d in range(L):
                v.state_f[layer_at + d] = d / L
        elif kind == sp.EV_LAYER:
            M.absorb_event(mem, n_obj, k.ev_ptr, k.ev_obj, k.ev_pass, obj)
    return 0


def learned_eviction(weights: ScorerWeights, name: str = "learned", bypass: str = "yes",
                     source: str = "") -> EvictionPolicy:
    """The eviction policy that evicts what ``weights`` score highest (bypass: the incoming row)."""
    sizes = weights.sizes
    h1, h2 = sizes[0], (sizes[1] if len(sizes) > 1 else 0)
    flat = weights.flat()
    if flat.size != _n_weights(h1, h2):  # pragma: no cover - ScorerWeights checks the shapes
        raise SpecMDError("row scorer weights do not fit their declared shape")

    def setup(state_i, state_f, params):
        state_i[N_HIDDEN], state_i[H1], state_i[H2] = len(sizes), h1, h2
        state_i[BYPASS] = params["bypass"] == "yes"
        state_f.view(np.float32)[:flat.size] = flat

    return EvictionPolicy(
        name, f"a learned row scorer ({'-'.join(map(str, (F + G,) + sizes + (1,)))}, ReLU)", victim, on_events,
        ("init", "layer"), state=_state_sizes(h1, h2), setup=setup, params={"bypass": bypass},
        choices={"bypass": ("no", "yes")}, needs_orders=True, source=source or "specmd_env.agents.learned")


__all__ = ["ScorerWeights", "learned_eviction"]
