"""The one reward every policy is scored on: collision misses and transfer latency (stall time).

    reward = -(w_collision x collision misses + w_latency x stall seconds + w_miss x other misses)

accrued since the last decision (environment) or over a whole replay (leaderboard). Defaults weigh
one collision miss like 10 ms of stall (about four expert transfers at 5 GB/s), and other misses only
through the stall they cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from specmd_env.errors import SpecMDError


@dataclass(frozen=True)
class RewardWeights:
    collision: float = 1.0    # per collision miss
    latency: float = 100.0    # per second of compute stalled on transfers
    miss: float = 0.0         # per compulsory or capacity miss

    def __post_init__(self) -> None:
        for name in ("collision", "latency", "miss"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise SpecMDError(f"reward weight w_{name} must be a finite number >= 0, got {value!r}")

    def reward(self, collision_misses: float, stall_seconds: float, misses: float) -> float:
        """Reward for the given increments (``misses`` counts every miss; collisions are split out)."""
        other = misses - collision_misses
        return -(self.collision * collision_misses + self.latency * stall_seconds + self.miss * other)

    def score(self, result) -> float:
        """A whole replay's return, from a :class:`specmd_env.Result`."""
        return self.reward(result.collision_misses, result.stall_seconds, result.misses)
