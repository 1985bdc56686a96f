"""A prefetcher written as a user would (docs/POLICIES.md): when layer l's router runs, fetch the one
expert of layer l + 1 with the best predicted score that is not resident yet.

    from docs.examples.next_top1 import NextTop1   # or load it from the file
    simulate("olmoe-synthetic", eviction="lru", prefetch=NextTop1())
"""

from specmd_env import policy as sp
from specmd_env.prefetch.base import Prefetcher


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    target = v.layer + 1
    base = sp.predicted_scores(v, target)   # where layer `target`'s scores start in v.spec; -1 if none
    if base < 0:
        return 0
    best = -1
    for x in range(v.num_experts):
        missing = v.resident_slot[target * v.num_experts + x] < 0
        if missing and (best < 0 or v.spec[base + x] > v.spec[base + best]):
            best = x
    if best < 0:
        return 0
    v.proposals[0] = target * v.num_experts + best   # objects to fetch, best first
    return 1                                          # how many were written


class NextTop1(Prefetcher):
    name = "next-top1"
    needs_spec_scores = True

    def __init__(self):
        self.propose = propose
