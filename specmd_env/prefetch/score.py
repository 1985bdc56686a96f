"""Score-based dynamic prefetch (SpecMD): fetch layer l + lookahead's experts in order of their
speculative score until they cover probability mass ``mass`` (at most ``max_count``), within what the
copy engine can move before that layer starts. Confident predictions fetch few experts, uncertain ones
more. The scores are the pass's mean over its tokens (``policy.predicted_scores``)."""

from specmd_env import policy as sp
from specmd_env.errors import SpecMDError
from specmd_env.prefetch.base import Prefetcher

MASS = 0        # state_f[0]
MAX_COUNT = 0   # state_i[0]


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    target = v.layer + v.lookahead
    base = sp.predicted_scores(v, target)
    if base < 0:
        return 0
    total = 0.0
    for x in range(v.num_experts):
        total += v.spec[base + x]
    return sp.best_scored(v, base, target, v.state_i[MAX_COUNT], v.state_f[MASS] * total)


class ScorePrefetch(Prefetcher):
    name = "score"
    needs_spec_scores = True

    def __init__(self, mass: float = 0.8, max_count: int | None = None):
        if not 0 < mass <= 1:
            raise SpecMDError(f"prefetch mass must be in (0, 1], got {mass!r}")
        if max_count is not None and max_count < 1:
            raise SpecMDError(f"prefetch max_count must be >= 1, got {max_count!r}")
        self.mass, self.max_count = float(mass), max_count
        self.propose = propose

    def state(self, capacity, num_layers, num_experts, num_scopes):
        return 1, 1

    def setup(self, state_i, state_f):
        state_f[MASS] = self.mass
        state_i[MAX_COUNT] = -1 if self.max_count is None else self.max_count
