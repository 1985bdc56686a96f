"""FIFO: evict the expert that entered the cache first; hits do not change the order."""

from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy


@sp.hook
def victim(tab, lo, hi):
    return sp.oldest(sp.cache_view(tab), sp.BY_INSERT)


FIFO = EvictionPolicy("fifo", "first in, first out", victim, needs_orders=("insert",), source="textbook FIFO")
