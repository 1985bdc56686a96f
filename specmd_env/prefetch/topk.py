"""Fixed top-k: fetch the k experts of layer l + lookahead with the highest speculative scores (k = the
model's top-k by default), whatever the scores say about confidence."""

import numpy as np

from specmd_env import policy as sp
from specmd_env.prefetch.base import Prefetcher

K = 0  # state_i[0]


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    target = v.layer + v.lookahead
    base = sp.predicted_scores(v, target)
    if base < 0:
        return 0
    return sp.best_scored(v, base, target, v.state_i[K], np.inf)


class TopKPrefetch(Prefetcher):
    needs_spec_scores = True

    def __init__(self, k: int):
        self.k = int(k)
        self.name = f"top{self.k}"
        self.propose = propose

    def state(self, capacity, num_layers, num_experts, num_scopes):
        return 1, 0

    def setup(self, state_i, state_f):
        state_i[K] = self.k
