"""Routing statistics of real MoE models published in papers, read from ``data/calibration/published/``.

The figures live in TOML files beside a ``SOURCES.md`` that cites where each one was printed; this
module only reads them (and converts percent to fractions) so that the generator can be calibrated to
them and ``specmd trace-stats`` can print a trace's figures beside them:

* :func:`repetition`: how often consecutive tokens keep the same expert, by layer and domain
  (Mixtral-8x7B, Jiang et al. 2024, Table 5). Figure names ``repeat_first_L{l}`` (top-1 equal) and
  ``repeat_any_L{l}`` (top-k sets share an expert), as fractions.
* :func:`locality`: model-level local routing consistency (Liang et al. 2025): ``srp_m16``,
  ``sch_m{4,16,64,256}`` (fractions) and ``activation_freq_sd`` (percentage points, as printed).

Definitions of the measures: :mod:`specmd_env.locality`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import tomllib

DATA_DIR = "data/calibration/published"
#: The trace domain a published per-domain figure is compared with when no row matches it.
MEAN = "mean"


@cache
def _read(name: str) -> dict:
    return tomllib.loads(resources.files("specmd_env").joinpath(DATA_DIR, name).read_text())


@dataclass(frozen=True)
class Repetition:
    """Published consecutive-token repetition rates of one model (fractions)."""

    model: str
    source: str
    layers: tuple[int, ...]
    random_first: float
    random_any: float
    rows: dict            # paper domain -> {figure name: fraction}
    allenai_names: dict   # AllenAI domain label -> paper domain

    def figure_names(self) -> list[str]:
        return [f"repeat_{kind}_L{layer}" for kind in ("first", "any") for layer in self.layers]

    def mean_row(self) -> dict[str, float]:
        return {name: sum(row[name] for row in self.rows.values()) / len(self.rows) for name in self.figure_names()}

    def for_domain(self, domain: str) -> tuple[str, dict[str, float]]:
        """(the paper domain it is compared with, its figures). A trace domain matches a paper domain by
        name (case-insensitive) or through the AllenAI-label mapping; otherwise the mean over all rows."""
        by_name = {name.lower(): name for name in self.rows}
        matched = by_name.get(domain.lower()) or self.allenai_names.get(domain.lower())
        if matched is None:
            return MEAN, self.mean_row()
        return matched, dict(self.rows[matched])


@cache
def repetition(model: str) -> Repetition | None:
    """The published repetition table of a model (canonical name), or None."""
    data = _read("mixtral_repetition.toml")
    if data["model"] != model:
        return None
    layers = tuple(int(x) for x in data["layers"])
    rows = {}
    for domain, values in data["domains"].items():
        row = {}
        for kind, key in (("first", "first_choice"), ("any", "first_or_second_choice")):
            for layer, value in zip(layers, values[key], strict=True):
                row[f"repeat_{kind}_L{layer}"] = value / 100.0
        rows[domain] = row
    return Repetition(model=model, source=data["source"], layers=layers,
                      random_first=data["random"]["first_choice"] / 100.0,
                      random_any=data["random"]["first_or_second_choice"] / 100.0,
                      rows=rows, allenai_names={k.lower(): v for k, v in data["allenai_domains"].items()})


@dataclass(frozen=True)
class Locality:
    """Published model-level local routing consistency of one model."""

    model: str
    paper_name: str
    source: str
    sequence_tokens: int
    cache_ratio: float
    figures: dict      # name -> point estimate (fractions; activation_freq_sd in percentage points)
    intervals: dict    # name -> (low, high) where the paper gives a confidence interval


@cache
def locality(model: str) -> Locality | None:
    """Liang et al.'s figures for a model (canonical name), or None if the paper did not measure it."""
    data = _read("local_routing_consistency.toml")
    entry = data["models"].get(model)
    if entry is None:
        return None
    figures = {"activation_freq_sd": float(entry["activation_freq_sd"]), "srp_m16": entry["srp_m16"] / 100.0}
    intervals = {}
    for key, value in entry.items():
        if key.startswith("sch_m"):
            low, high = (v / 100.0 for v in value)
            figures[key] = 0.5 * (low + high)
            intervals[key] = (low, high)
    return Locality(model=model, paper_name=entry["paper_name"], source=data["source"],
                    sequence_tokens=int(data["sequence_tokens"]), cache_ratio=float(data["cache_ratio"]),
                    figures=figures, intervals=intervals)
