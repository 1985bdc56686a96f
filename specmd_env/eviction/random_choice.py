"""Random: evict a uniformly random candidate, from the replay's own seeded generator (xorshift64*),
so the same seed gives the same victims. The leaderboard's normalisation floor."""

from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    best, seen = -1, 0
    for s in range(lo, hi):  # reservoir sampling: uniform over candidates in one scan
        if sp.is_candidate(v, s):
            seen += 1
            if sp.rand_below(v, seen) == 0:
                best = s
    return best


RANDOM = EvictionPolicy("random", "uniform over candidates, seeded", victim, source="the normalisation floor")
