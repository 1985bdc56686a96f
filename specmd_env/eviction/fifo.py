"""FIFO: evict the expert that entered the cache first; hits do not change the order."""

from specmd_env import kernel
from specmd_env.eviction.base import EvictionPolicy

FIFO = EvictionPolicy("fifo", kernel.FIFO, "first in, first out")
