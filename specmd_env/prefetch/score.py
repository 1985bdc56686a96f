"""Score-based dynamic prefetch (SpecMD): fetch layer l + lookahead's experts in order of their
speculative score until they cover probability mass ``mass`` (at most ``max_count``), within what the
copy engine can move before that layer starts. Confident predictions fetch few experts, uncertain ones
more. The scores are the pass's mean over its tokens (``policy.predicted_scores``).

``window=w`` looks further: the same rule for layers l + lookahead .. l + lookahead + w - 1, nearer
layers first (the paper looked one layer ahead; scores beyond l + 1 are optimistic, see
:mod:`specmd_env.prefetch.base`)."""

from specmd_env import policy as sp
from specmd_env.errors import SpecMDError
from specmd_env.prefetch.base import Prefetcher, check_window

MASS = 0                # state_f[0]
MAX_COUNT, WINDOW = 0, 1  # state_i


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    n = 0
    for d in range(v.state_i[WINDOW]):
        target = v.layer + v.lookahead + d
        base = sp.predicted_scores(v, target)
        if base < 0:
            break
        total = 0.0
        for x in range(v.num_experts):
            total += v.spec[base + x]
        n += sp.best_scored(v, base, target, v.state_i[MAX_COUNT], v.state_f[MASS] * total, n)
    return n


class ScorePrefetch(Prefetcher):
    name = "score"
    needs_spec_scores = True

    def __init__(self, mass: float = 0.8, max_count: int | None = None, window: int = 1):
        if not 0 < mass <= 1:
            raise SpecMDError(f"prefetch mass must be in (0, 1], got {mass!r}")
        if max_count is not None and max_count < 1:
            raise SpecMDError(f"prefetch max_count must be >= 1, got {max_count!r}")
        self.mass, self.max_count, self.window = float(mass), max_count, check_window(window)
        self.propose = propose
        if window != 1:
            self.name = f"score:window={window}"

    def state(self, capacity, num_layers, num_experts, num_scopes):
        return 2, 1

    def setup(self, state_i, state_f):
        state_f[MASS] = self.mass
        state_i[MAX_COUNT] = -1 if self.max_count is None else self.max_count
        state_i[WINDOW] = self.window
