"""What the leaderboard ranks: the rows (eviction, prefetch, preset) of a sweep, without a combinatorial
explosion.

* Every eviction of ``--evictions`` is crossed with the *crossed* prefetchers of ``--prefetches``
  (none, score, oracle: no prefetching, the causal baseline prefetcher, the perfect one).
* The other prefetchers of ``--prefetches`` (the literature's: topk, adapmoe, hobbit, moe-infinity,
  pregated) each run with the *reference* evictions that are in ``--evictions``: LRU and the strongest
  causal policy (:data:`BEST_CAUSAL`). ``--cross-all`` crosses every eviction with every prefetcher.
* An eviction that reads a prefetcher's state (``moe-infinity``) runs only with that prefetcher. It is
  not in the default ``--evictions``: the ``preset:moe-infinity`` row is exactly that pair.
* Every preset of ``--presets`` is a row of its own (``preset:NAME``): a literature system's eviction,
  prefetch, scope, copy engine and miss handler together (``specmd_env/data/presets.toml``).

:data:`BEST_CAUSAL` is the best causal policy of the committed leaderboard, with the half-life fitted on
the train split by experiments/tune_policies.py (experiments/results/tuning.md).
"""

from __future__ import annotations

from functools import lru_cache

from specmd_env.errors import SpecMDError

BEST_CAUSAL = "expected-next-use:bypass=yes,half_life=6"
EVICTIONS = ("lru", "lru:prefetch_at=mru-end", "fifo", "lfu", "lfu:count=history", "random", "least-stale",
             "least-stale:order=insert", "layer-distance", "expected-next-use", BEST_CAUSAL, "hobbit",
             "hobbit:weights=tuned", "belady", "belady-bypass")
CROSSED_PREFETCHES = ("none", "score", "oracle")
PREFETCHES = CROSSED_PREFETCHES + ("topk", "adapmoe", "hobbit", "moe-infinity", "pregated")
REFERENCE_EVICTIONS = ("lru", BEST_CAUSAL)
PRESET_PREFIX = "preset:"


def presets() -> tuple[str, ...]:
    from specmd_env.presets import list_presets
    return tuple(list_presets())


@lru_cache(maxsize=256)
def _eviction(spec: str):
    from specmd_env.eviction import get_eviction
    return get_eviction(spec)


@lru_cache(maxsize=64)
def _prefetcher(spec: str):
    from specmd_env.prefetch import get_prefetcher
    return get_prefetcher(spec, 1)


def check_eviction(spec: str) -> None:
    """Raise SpecMDError if ``spec`` names no eviction policy (a name with parameters or file.py:NAME)."""
    _eviction(spec)


def check_prefetch(spec: str) -> None:
    _prefetcher(spec)


def check_preset(name: str) -> None:
    if name not in presets():
        raise SpecMDError(f"unknown preset {name!r}; known: {', '.join(presets())}")


def required_prefetcher(eviction: str) -> str | None:
    return getattr(_eviction(eviction), "requires_prefetcher", None)


def preset_settings(name: str) -> dict:
    from specmd_env.presets import presets as table
    return table()[name]


def is_oracle(eviction: str, prefetch: str) -> bool:
    """Whether a row reads the future (a learned agent's own decisions, ``learned:NAME``, do not)."""
    ev = not eviction.startswith("learned:") and bool(getattr(_eviction(eviction), "is_oracle", False))
    pf = not prefetch.startswith("learned:") and _prefetcher(prefetch).is_oracle
    return ev or pf


def grid_rows(evictions, prefetches, preset_names=(), *, cross_all: bool = False) -> list[tuple[str, str, str]]:
    """(eviction, prefetch, preset) of every row, in a fixed order (see the module docstring)."""
    rows: list[tuple[str, str, str]] = []
    for ev in evictions:
        needed = required_prefetcher(ev)
        if needed is not None:
            rows.append((ev, needed, ""))
            continue
        for pf in prefetches:
            if cross_all or pf in CROSSED_PREFETCHES or ev in REFERENCE_EVICTIONS:
                rows.append((ev, pf, ""))
    for name in preset_names:
        settings = preset_settings(name)
        rows.append((str(settings.get("eviction", "lru")), str(settings.get("prefetch", "none")), name))
    seen = set()
    return [r for r in rows if not (r in seen or seen.add(r))]


def row_label(eviction: str, prefetch: str, preset: str, oracle: bool) -> str:
    name = f"{PRESET_PREFIX}{preset}" if preset else f"{eviction} + {prefetch}"
    return f"{name} (oracle)" if oracle else name


__all__ = ["BEST_CAUSAL", "CROSSED_PREFETCHES", "EVICTIONS", "PREFETCHES", "PRESET_PREFIX", "REFERENCE_EVICTIONS",
           "check_eviction", "check_prefetch", "check_preset", "grid_rows", "is_oracle", "presets", "row_label"]
