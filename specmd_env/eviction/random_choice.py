"""Random: evict a uniformly random candidate, from the replay's own seeded generator (xorshift64*),
so the same seed gives the same victims. The leaderboard's normalisation floor."""

from specmd_env import kernel
from specmd_env.eviction.base import EvictionPolicy

RANDOM = EvictionPolicy("random", kernel.RANDOM, "uniform over candidates, seeded")
