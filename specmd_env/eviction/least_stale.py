"""Least-Stale (SpecMD, reconstructed; the paper has no code).

Experts touched in the current forward pass -- used by a layer, inserted, or named by the prefetcher
for a coming layer -- are *current*; all others are *stale*. Evict stale experts first, oldest first,
then current ones, oldest first (which is forward-sweep order). A new forward pass makes every current
expert stale.

Since everything touched in this pass is newer than everything that was not, this is LRU over "last
touch" instead of "last use". The two differ only in what the prefetcher adds: a prediction for an
expert that is already resident marks it current, protecting it from the evictions that the current
layer's misses and the other prefetches cause (LRU has no notion of such a hint). Hence, without
prefetching -- and in particular in single-request decode -- Least-Stale evicts exactly the experts LRU
evicts; its gains come with prefetch. (Choice written down because the paper is silent on it.)
"""

from specmd_env import kernel
from specmd_env.eviction.base import EvictionPolicy

LEAST_STALE = EvictionPolicy("least-stale", kernel.LEAST_STALE, "stale before current, oldest first")
