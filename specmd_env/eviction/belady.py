"""Belady's MIN (oracle): evict the expert whose next use is farthest in the future.

Two definitions, both oracles (they read the trace's future accesses):

* ``belady`` always admits the missed expert and evicts the resident with the farthest next use.
* ``belady-bypass`` may decline to cache a missed expert when its own next use is no nearer than every
  candidate's: it is then served from a staging buffer (transferred and computed, not cached). This is
  the true optimum for demand misses and scores higher. (Prefetches are always admitted.)

Next use is measured in access positions of the flattened request stream, within one replay chunk
(2^14 tokens); reuse beyond the chunk counts as never. Every shipped trace fits in one chunk. Ties
(equal next use, e.g. never) go to the least recently used.
"""


from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy

BYPASS = 0  # state_i[0]: 1 for belady-bypass


@sp.njit_policy
def _farthest_first(v, s):
    return -sp.next_use(v, s)


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    slot = sp.lowest(v, lo, hi, _farthest_first)
    if v.state_i[BYPASS] == 1 and v.decision == sp.DEMAND and \
            sp.next_use_of(v, v.incoming) >= sp.next_use(v, slot):
        return -1
    return slot


def _bypass(state_i, state_f, params):
    state_i[BYPASS] = 1


BELADY = EvictionPolicy("belady", "farthest next use, always admit", victim, state=lambda *_: (1, 0),
                        is_oracle=True, source="Belady 1966 (MIN); libCacheSim's Belady")
BELADY_BYPASS = EvictionPolicy("belady-bypass", "farthest next use, may bypass the cache", victim,
                               state=lambda *_: (1, 0), setup=_bypass, is_oracle=True,
                               source="Belady 1966 (MIN with bypass: the optimum for demand misses)")
