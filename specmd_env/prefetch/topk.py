"""Fixed top-k: fetch the k experts of layer l + lookahead with the highest speculative scores (k = the
model's top-k by default), whatever the scores say about confidence. ``window=w``: the same for layers
l + lookahead .. l + lookahead + w - 1, nearer layers first."""

import numpy as np

from specmd_env import policy as sp
from specmd_env.prefetch.base import Prefetcher, check_window

K, WINDOW = 0, 1  # state_i


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    n = 0
    for d in range(v.state_i[WINDOW]):
        target = v.layer + v.lookahead + d
        base = sp.predicted_scores(v, target)
        if base < 0:
            break
        n += sp.best_scored(v, base, target, v.state_i[K], np.inf, n)
    return n


class TopKPrefetch(Prefetcher):
    needs_spec_scores = True

    def __init__(self, k: int, window: int = 1):
        self.k, self.window = int(k), check_window(window)
        self.name = f"top{self.k}" + (f":window={window}" if window != 1 else "")
        self.propose = propose

    def state(self, capacity, num_layers, num_experts, num_scopes):
        return 2, 0

    def setup(self, state_i, state_f):
        state_i[K], state_i[WINDOW] = self.k, self.window
