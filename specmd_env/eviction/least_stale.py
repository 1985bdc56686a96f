"""Least-Stale (SpecMD, reconstructed; the paper has no code), in two readings.

Experts touched in the current forward pass -- used by a layer, inserted, or named by the prefetcher
for a coming layer -- are *current*; all others are *stale*. Evict stale experts first, oldest first,
then current ones, oldest first. A new forward pass makes every current expert stale. "Oldest" is
ambiguous in the paper, so both readings are here (choose with ``order=``):

* ``order=touch`` (default): oldest by *last touch*. Everything touched in this pass is newer than
  everything that was not, so this is LRU over last touch instead of last use. It differs from LRU only
  through the prefetcher: a prediction for a resident expert marks it current, protecting it from the
  evictions that this layer's misses and the other prefetches cause. Without prefetching it evicts
  exactly what LRU evicts (the paper says so of Least-Stale).
* ``order=insert``: FIFO with a pass bit: hits (and hints) only mark an expert current and do not
  reorder; stale experts go first in insertion order, then current ones in insertion order.
"""


from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy

BY_INSERT = 0  # state_i[0]: 1 for the insertion-order reading


@sp.njit_policy
def _stale(v, s):
    return v.touch_pass[s] != v.pass_id


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    if v.state_i[BY_INSERT] == 0:  # by last touch: the stale come first in this order anyway
        return sp.oldest(v, sp.BY_TOUCH)
    return sp.oldest_where(v, sp.BY_INSERT, _stale)


def _setup(state_i, state_f, params):
    state_i[BY_INSERT] = params["order"] == "insert"


LEAST_STALE = EvictionPolicy(
    "least-stale", "stale before current, oldest first", victim, state=lambda *_: (1, 0), setup=_setup,
    params={"order": "touch"}, choices={"order": ("touch", "insert")}, needs_orders=("touch", "insert"),
    source="SpecMD (Hoang et al., ICML 2026), Least-Stale; no code released: reconstructed")
