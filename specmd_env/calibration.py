"""Real OLMoE routing statistics (AllenAI, Apache-2.0) and the reference figures derived from them.

The data in ``data/calibration/allenai-olmoe/`` are AllenAI's published expert-selection histograms for
OLMoE-1B-7B-0924 (and Mixtral-8x7B, stored under the model key ``"mistral"``) measured with teacher-forced
2048-token chunks of five text domains (see ``SOURCE.md`` and ``LICENSE`` beside them). They are
histograms, not per-token traces: they calibrate and check :mod:`specmd_env.generator` and
:mod:`specmd_env.trace_stats`.

Reference figures (all computed here from the files, except the consecutive-token overlap, which is a
published number that the files cannot give):

* ``load_cv``: coefficient of variation (population std / mean) of per-expert top-k load at a layer.
* ``hottest_share``: fraction of tokens whose top-k contains the hottest expert
  (= top-k count of the hottest expert / tokens).
* ``transition``: top-1 transition predictability from layer a to layer b: the fraction of tokens whose
  layer-b top-1 expert equals the most frequent layer-b successor of their layer-a top-1 expert
  (sum over rows of the row maximum / total of the top-1 cross-layer matrix).
* ``consecutive overlap``: consecutive prompt tokens at OLMoE layer 0 share on average 2.55 of their 8
  experts (random: 8 * 8 / 64 = 1.0).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np

from specmd_env.errors import SpecMDError

DATA_DIR = "data/calibration/allenai-olmoe"
LAYERS = (0, 7, 15)
TRANSITIONS = ((0, 7), (7, 15))
OLMOE_DOMAINS = ("arxiv", "book", "c4", "github", "wikipedia")
#: Published mean number of experts (of 8) shared by consecutive prompt tokens at OLMoE layer 0.
OLMOE_CONSECUTIVE_OVERLAP_L0 = 2.55
#: What independent uniform choices would give: k * k / E = 8 * 8 / 64.
OLMOE_CONSECUTIVE_OVERLAP_RANDOM = 1.0
_TOP_K = {"olmoe": 8, "olmoe-sft": 8, "olmoe-dpo": 8, "mistral": 2}
#: Which AllenAI count set belongs to which model (canonical names of ``data/models.toml``).
MODEL_KEYS = {"olmoe-1b-7b": "olmoe", "mixtral-8x7b": "mistral"}


@cache
def expert_counts() -> dict:
    """``counts[model][domain]["top_k"|"top1"][layer]`` -> list of per-expert counts (layer "0", "7", "15")."""
    text = resources.files("specmd_env").joinpath(DATA_DIR, "derived", "expert_counts.json").read_text()
    return json.loads(text)["counts"]


@cache
def crosslayer_counts() -> dict[str, np.ndarray]:
    """``"MODEL/DOMAIN/top1/L0_L7"`` (and ``L7_L15``, ``rank_aligned_topk``) -> int64 [E, E] matrix."""
    path = resources.files("specmd_env").joinpath(DATA_DIR, "derived", "crosslayer_counts.npz")
    with resources.as_file(path) as real, np.load(real, allow_pickle=False) as data:
        return {key: np.asarray(data[key]) for key in data.files}


def _counts(model: str, domain: str, kind: str, layer: int) -> np.ndarray:
    try:
        return np.asarray(expert_counts()[model][domain][kind][str(layer)], dtype=np.float64)
    except KeyError:
        raise SpecMDError(f"no AllenAI {kind} counts for model {model!r}, domain {domain!r}, layer {layer}; "
                          f"known: {available()}") from None


def available() -> dict[str, list[str]]:
    """Model key -> domains with counts."""
    return {model: sorted(domains) for model, domains in expert_counts().items()}


def load_cv(counts: np.ndarray) -> float:
    """Coefficient of variation (population std / mean) of a per-expert load vector."""
    counts = np.asarray(counts, dtype=np.float64)
    mean = counts.mean()
    return float(counts.std() / mean) if mean > 0 else 0.0


def transition_predictability(matrix: np.ndarray) -> float:
    """Fraction of tokens whose later top-1 is the most frequent successor of their earlier top-1."""
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    return float(matrix.max(axis=1).sum() / total) if total > 0 else 0.0


def reference_figures(model: str = "olmoe", domain: str = "c4") -> dict[str, float]:
    """The figures of one model key and domain, as a flat dict.

    Keys: ``load_cv_L{l}``, ``hottest_share_L{l}`` for l in 0, 7, 15; ``transition_L0_L7``,
    ``transition_L7_L15`` (where top-1 cross-layer counts exist); ``overlap_L0`` (OLMoE only, published).
    """
    top_k = _TOP_K.get(model)
    if top_k is None:
        raise SpecMDError(f"unknown AllenAI model key {model!r}; known: {sorted(_TOP_K)}")
    figures: dict[str, float] = {}
    for layer in LAYERS:
        counts = _counts(model, domain, "top_k", layer)
        tokens = counts.sum() / top_k
        figures[f"load_cv_L{layer}"] = load_cv(counts)
        figures[f"hottest_share_L{layer}"] = float(counts.max() / tokens)
    matrices = crosslayer_counts()
    for a, b in TRANSITIONS:
        key = f"{model}/{domain}/top1/L{a}_L{b}"
        if key in matrices:
            figures[f"transition_L{a}_L{b}"] = transition_predictability(matrices[key])
    if model == "olmoe":
        figures["overlap_L0"] = OLMOE_CONSECUTIVE_OVERLAP_L0
    return figures


def reference_table(model: str = "olmoe", domains=OLMOE_DOMAINS, *, with_mean: bool = True):
    """A pandas DataFrame: one row per domain (plus ``"mean"`` over them), one column per figure."""
    import pandas as pd

    rows = {domain: reference_figures(model, domain) for domain in domains}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if with_mean:
        frame.loc["mean"] = frame.mean(axis=0)
    frame.index.name = "domain"
    return frame


def domain_distribution(model: str, domain: str, layer: int, kind: str = "top_k") -> np.ndarray:
    """Normalised per-expert selection frequencies (sums to 1)."""
    counts = _counts(model, domain, kind, layer)
    return counts / counts.sum()
