"""No prefetching: every expert is fetched on demand."""

from specmd_env.prefetch.base import Prefetcher


class NoPrefetch(Prefetcher):
    name = "none"
