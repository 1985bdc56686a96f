"""What an eviction policy is: a named rule the compiled kernel applies when the cache must make room.

A built-in policy is a *victim rule* over per-slot bookkeeping that the kernel keeps anyway (last use,
last touch, insertion order, use count, next use); choosing among the candidate slots (not pinned by the
layer now computing, not in flight) is one scan, with ties broken by least recent use. Policies that
are not built in run through the same kernel as *external* decisions (see :mod:`specmd_env.replay`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvictionPolicy:
    name: str
    code: int               # the kernel's policy code (specmd_env.kernel)
    summary: str
    is_oracle: bool = False  # reads the future (next use); always labelled as such

    @property
    def label(self) -> str:
        return f"{self.name} (oracle)" if self.is_oracle else self.name
