"""Belady's MIN (oracle): evict the expert whose next use is farthest in the future.

Two definitions, both oracles (they read the trace's future accesses):

* ``belady`` always admits the missed expert and evicts the resident with the farthest next use.
* ``belady-bypass`` may decline to cache the missed expert when its own next use is no nearer than
  every candidate's: it is then served from a staging buffer (transferred and computed, not cached).
  This is the true optimum for demand misses and scores higher.

Next use is measured in access positions of the flattened request stream, within one replay chunk
(2^14 tokens); reuse beyond the chunk counts as never. Every shipped trace fits in one chunk.
"""

from specmd_env import kernel
from specmd_env.eviction.base import EvictionPolicy

BELADY = EvictionPolicy("belady", kernel.BELADY, "farthest next use, always admit", is_oracle=True)
BELADY_BYPASS = EvictionPolicy("belady-bypass", kernel.BELADY_BYPASS,
                               "farthest next use, may bypass the cache", is_oracle=True)
