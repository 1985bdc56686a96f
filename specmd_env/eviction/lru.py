"""LRU: evict the expert whose last use is oldest.

A use is a layer computing with the expert (a hit, or the demand load that brought it in). Prefetching
is not a use: a prefetched expert enters at the least-recent end until a layer uses it (as prefetched
pages do in most LRU caches), and a prefetch hint for a resident expert changes nothing.
"""

from specmd_env import kernel
from specmd_env.eviction.base import EvictionPolicy

LRU = EvictionPolicy("lru", kernel.LRU, "least recently used")
