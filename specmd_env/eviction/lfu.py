"""LFU: evict the expert used least often since it entered the cache (in-cache frequency, as in
libCacheSim); ties go to the least recently used."""

from specmd_env import kernel
from specmd_env.eviction.base import EvictionPolicy

LFU = EvictionPolicy("lfu", kernel.LFU, "least frequently used (in-cache count, LRU tie-break)")
