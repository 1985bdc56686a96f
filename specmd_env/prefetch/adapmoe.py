"""AdapMoE's prefetch (Zhong et al., ICCAD 2024; code: PKU-SEC-Lab/AdapMoE, src/custom_layers.py).

In a decode step, when layer l's router runs, apply layer l+1's gate to the current hidden state (here:
the trace's speculative scores for l+1) and take its top 2; prefetch the first of them, in rank order,
that is not resident -- at most one expert per layer. Prefill passes prefetch nothing (the code
prefetches only for one-token batches). AdapMoE keeps a wrong prefetch in a side buffer so that it does
not pollute the cache; here it enters the cache like any prefetch (its eviction policy decides).
"""

from specmd_env import policy as sp
from specmd_env.prefetch.base import Prefetcher


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    target = v.layer + 1
    base = sp.predicted_scores(v, target)
    if base < 0 or not sp.is_decode(v):
        return 0
    first, second = -1, -1
    for x in range(v.num_experts):
        score = v.spec[base + x]
        if first < 0 or score > v.spec[base + first]:
            first, second = x, first
        elif second < 0 or score > v.spec[base + second]:
            second = x
    for x in (first, second):
        obj = target * v.num_experts + x
        if x >= 0 and v.resident_slot[obj] < 0:
            v.proposals[0] = obj
            return 1
    return 0


class AdapMoEPrefetch(Prefetcher):
    name = "adapmoe"
    needs_spec_scores = True

    def __init__(self):
        self.propose = propose
