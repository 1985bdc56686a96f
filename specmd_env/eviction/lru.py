"""LRU: evict the expert whose last use (demand hit or insertion) is oldest.

Prefetch hints for experts already resident are not uses, so they do not refresh recency.
"""

from specmd_env import kernel
from specmd_env.eviction.base import EvictionPolicy

LRU = EvictionPolicy("lru", kernel.LRU, "least recently used")
