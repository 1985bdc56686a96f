"""Prefetchers, discoverable by name: ``none``, ``topk`` (or ``top4``...), ``score``, ``oracle``."""

from __future__ import annotations

import re

from specmd_env.errors import SpecMDError
from specmd_env.prefetch.base import Prefetcher
from specmd_env.prefetch.none import NoPrefetch
from specmd_env.prefetch.oracle import OraclePrefetch
from specmd_env.prefetch.score import ScorePrefetch
from specmd_env.prefetch.topk import TopKPrefetch

PREFETCHERS = ("none", "topk", "score", "oracle")


def get_prefetcher(prefetch: str | Prefetcher | None, top_k: int, *, mass: float = 0.8,
                   max_count: int | None = None) -> Prefetcher:
    """A prefetcher by name; ``topk`` defaults to the model's ``top_k``, ``top<N>`` fixes N."""
    if isinstance(prefetch, Prefetcher):
        return prefetch
    key = "none" if prefetch is None else str(prefetch).lower()
    if key == "none":
        return NoPrefetch()
    if key == "oracle":
        return OraclePrefetch()
    if key == "score":
        if not 0 < mass <= 1:
            raise SpecMDError(f"prefetch mass must be in (0, 1], got {mass!r}")
        if max_count is not None and max_count < 1:
            raise SpecMDError(f"prefetch max_count must be >= 1, got {max_count!r}")
        return ScorePrefetch(mass=mass, max_count=max_count)
    if key == "topk":
        return TopKPrefetch(top_k)
    match = re.fullmatch(r"top(\d+)", key)
    if match and int(match.group(1)) >= 1:
        return TopKPrefetch(int(match.group(1)))
    raise SpecMDError(f"unknown prefetcher {prefetch!r}; known: {', '.join(PREFETCHERS)} (or top<N>)")


__all__ = ["PREFETCHERS", "Prefetcher", "get_prefetcher"]
