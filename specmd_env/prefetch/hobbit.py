"""HOBBIT's layer-level adaptive prefetch (Tang et al. 2024, arXiv 2411.01433, section 3.3).

"We begin by predicting the experts required for the next layer. If all predicted experts are present
in the expert cache, we then proceed to predict for the subsequent layer. This process continues until
either some predicted experts are missing from the cache or all predictions are completed": at layer
l, for d = 1 .. depth, predict layer l + d's top-k experts; the first layer with a missing prediction
has its missing experts prefetched (best score first), and the search stops there.

Predictions are the trace's speculative scores. They exist for l + 1 (recorded at layer l, as a real
system sees them); for l + d with d > 1 they come from layer l + d - 1's recording -- optimistic,
which the paper's stacked gates (about 90% top-1 accuracy two or three layers ahead) are not. The paper
recommends depth 1 to 3; the default is 2.
"""

from specmd_env import policy as sp
from specmd_env.errors import SpecMDError
from specmd_env.prefetch.base import Prefetcher

DEPTH, TOP_K = 0, 1  # state_i


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    E, k = v.num_experts, v.state_i[TOP_K]
    for d in range(1, v.state_i[DEPTH] + 1):
        target = v.layer + d
        base = sp.predicted_scores(v, target)
        if base < 0:
            return 0
        n = 0
        for _ in range(k):  # the top k, best first, by repeated selection (k is small)
            best = -1
            for x in range(E):
                obj = target * E + x
                taken = False
                for i in range(n):
                    if v.proposals[i] == obj:
                        taken = True
                if not taken and (best < 0 or v.spec[base + x] > v.spec[base + best]):
                    best = x
            v.proposals[n] = target * E + best
            n += 1
        missing = 0
        for i in range(n):
            if v.resident_slot[v.proposals[i]] < 0:
                v.proposals[missing] = v.proposals[i]
                missing += 1
        if missing > 0:
            return missing
    return 0


class HobbitPrefetch(Prefetcher):
    name = "hobbit"
    needs_spec_scores = True

    def __init__(self, top_k: int, depth: int = 2):
        if not 1 <= depth <= 8:
            raise SpecMDError(f"hobbit prefetch depth must be in [1, 8], got {depth!r}")
        self.top_k, self.depth = int(top_k), int(depth)
        self.propose = propose
        if self.depth != 2:
            self.name = f"hobbit:depth={self.depth}"

    def state(self, capacity, num_layers, num_experts, num_scopes):
        return 2, 0

    def setup(self, state_i, state_f):
        state_i[DEPTH], state_i[TOP_K] = self.depth, self.top_k
