"""Prefetchers, discoverable by name, with parameters after a colon (``score:mass=0.9``).

From the speculative scores or the true routing: ``none``, ``topk`` / ``top<N>`` (``window``), ``score``
(``mass``, ``max_count``, ``window``), ``oracle``. Deciding over the cache's state too: ``adapmoe``,
``hobbit`` (``depth``), ``moe-infinity`` (``capacity``), ``pregated`` (``accuracy``; reads the true
routing: an oracle). All are compiled hooks (:mod:`specmd_env.prefetch.base`).
"""

from __future__ import annotations

import re

from specmd_env.errors import SpecMDError
from specmd_env.prefetch.adapmoe import AdapMoEPrefetch
from specmd_env.prefetch.base import Prefetcher
from specmd_env.prefetch.hobbit import HobbitPrefetch
from specmd_env.prefetch.moe_infinity import MoEInfinityPrefetch
from specmd_env.prefetch.none import NoPrefetch
from specmd_env.prefetch.oracle import OraclePrefetch
from specmd_env.prefetch.pregated import PreGatedPrefetch
from specmd_env.prefetch.score import ScorePrefetch
from specmd_env.prefetch.topk import TopKPrefetch
from specmd_env.user_code import parse_params

PREFETCHERS = ("none", "topk", "score", "oracle", "adapmoe", "hobbit", "moe-infinity", "pregated")
_PARAMS = {"none": (), "oracle": (), "topk": ("window",), "adapmoe": (), "score": ("mass", "max_count", "window"),
           "hobbit": ("depth",), "moe-infinity": ("capacity",), "pregated": ("accuracy",)}


def get_prefetcher(prefetch: str | Prefetcher | None, top_k: int, *, mass: float = 0.8,
                   max_count: int | None = None) -> Prefetcher:
    """A prefetcher by name; ``topk`` defaults to the model's ``top_k``, ``top<N>`` fixes N; ``score``
    takes ``mass`` / ``max_count`` from the keywords unless the name gives them."""
    if isinstance(prefetch, Prefetcher):
        return prefetch
    name, params = parse_params("none" if prefetch is None else str(prefetch))
    key = name.lower()
    match = re.fullmatch(r"top(\d+)", key)
    if key not in _PARAMS and not (match and int(match.group(1)) >= 1):
        raise SpecMDError(f"unknown prefetcher {prefetch!r}; known: {', '.join(PREFETCHERS)} (or top<N>)")
    allowed = _PARAMS.get("topk" if match else key, ())
    unknown = set(params) - set(allowed)
    if unknown:
        raise SpecMDError(f"prefetcher {name!r} has no parameter {sorted(unknown)[0]!r}; its parameters: "
                          f"{', '.join(allowed) or 'none'}")
    if key == "none":
        return NoPrefetch()
    if key == "oracle":
        return OraclePrefetch()
    if key == "topk":
        return TopKPrefetch(top_k, **params)
    if match:
        return TopKPrefetch(int(match.group(1)), **params)
    if key == "score":
        mass, max_count = params.get("mass", mass), params.get("max_count", max_count)
        if not 0 < mass <= 1:
            raise SpecMDError(f"prefetch mass must be in (0, 1], got {mass!r}")
        if max_count is not None and max_count < 1:
            raise SpecMDError(f"prefetch max_count must be >= 1, got {max_count!r}")
        return ScorePrefetch(mass=mass, max_count=max_count, window=params.get("window", 1))
    if key == "adapmoe":
        return AdapMoEPrefetch()
    if key == "hobbit":
        return HobbitPrefetch(top_k, **params)
    if key == "moe-infinity":
        return MoEInfinityPrefetch(**params)
    return PreGatedPrefetch(**params)


__all__ = ["PREFETCHERS", "Prefetcher", "get_prefetcher"]
