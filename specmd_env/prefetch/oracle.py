"""Oracle prefetch: fetch exactly the experts layer l + lookahead will use (most tokens first, ties to
the lower expert id). It reads the true routing, so it is an upper bound for prediction, always
labelled oracle."""

from specmd_env import policy as sp
from specmd_env.prefetch.base import Prefetcher


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    if v.layer + v.lookahead >= v.num_layers:
        return 0
    first, last = sp.event_experts(v, e + v.lookahead)
    n = 0
    for j in range(first, last):  # insertion sort by tokens (descending), then object id
        obj, count = v.ev_obj[j], v.ev_count[j]
        i = n
        while i > 0 and (v.ev_count[v.proposals[i - 1] >> 32] < count or
                         (v.ev_count[v.proposals[i - 1] >> 32] == count and
                          (v.proposals[i - 1] & 0xFFFFFFFF) > obj)):
            v.proposals[i] = v.proposals[i - 1]
            i -= 1
        v.proposals[i] = (j << 32) | obj
        n += 1
    for i in range(n):
        v.proposals[i] &= 0xFFFFFFFF
    return n


class OraclePrefetch(Prefetcher):
    name = "oracle"
    is_oracle = True

    def __init__(self):
        self.propose = propose
