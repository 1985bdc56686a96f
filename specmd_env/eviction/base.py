"""What an eviction policy is: a name, compiled hooks, the state it keeps, and its parameters.

The kernel calls ``victim`` when a full scope needs room and delivers the event kinds listed in
``events`` to ``on_events``; both read the named view of :mod:`specmd_env.policy`. ``state(capacity, layers, experts,
scopes) -> (ints, floats)`` sizes the policy's own arrays; ``setup(state_i, state_f, params)`` writes
its parameters into them before a replay starts (so one compiled policy serves every parameter value).
Parameters are given by name: ``get_eviction("lru:prefetch=mru")``.

Plain Python objects with a ``victim(view) -> slot`` method are policies too (the slow path, for
prototyping; see :class:`specmd_env.replay.PythonView`): the kernel pauses at every decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from specmd_env.errors import SpecMDError
from specmd_env.kernel.layout import EVENT_NAMES, KEEP_ALL, ORDER_BITS


def no_state(capacity: int, num_layers: int, num_experts: int, num_scopes: int) -> tuple[int, int]:
    return 0, 0


@dataclass(frozen=True)
class EvictionPolicy:
    name: str
    summary: str
    victim: object                                   # a compiled hook (specmd_env.policy.hook)
    on_events: object = None                         # a compiled hook, or None
    events: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()  # kinds on_events wants (given params)
    state: Callable[[int, int, int, int], tuple[int, int]] = no_state
    setup: Callable[[np.ndarray, np.ndarray, dict], None] | None = None
    params: dict = field(default_factory=dict)       # defaults; every allowed key must be here
    choices: dict = field(default_factory=dict)      # allowed values, for parameters that have a fixed set
    is_oracle: bool = False                          # reads the future (next use); always labelled so
    needs_orders: bool | tuple[str, ...] = False     # reads the kernel's own slot orders (policy.oldest): True
                                                     # for all three, or those named ("use", "touch", "insert")
    requires_prefetcher: str | None = None           # reads this prefetcher's state (its name)
    needs_spec_scores: bool = False                  # reads the trace's speculative scores (policy.spec_score)
    source: str = ""                                 # where the rule comes from
    defaults: dict | None = None                     # the parameters' defaults (set from params)

    def __post_init__(self):
        if self.defaults is None:
            object.__setattr__(self, "defaults", dict(self.params))
        if self.needs_orders not in (True, False) and not set(self.needs_orders) <= set(ORDER_BITS):
            raise SpecMDError(f"policy {self.name!r}: needs_orders names {sorted(set(self.needs_orders) - set(ORDER_BITS))}; "
                              f"the kernel's orders are {sorted(ORDER_BITS)} (or True for all)")
        kinds = self.event_kinds
        unknown = set(kinds) - set(EVENT_NAMES)
        if unknown:
            raise SpecMDError(f"policy {self.name!r}: unknown event kinds {sorted(unknown)}; known: {EVENT_NAMES}")
        if kinds and self.on_events is None:
            raise SpecMDError(f"policy {self.name!r} lists events {kinds} but has no on_events hook")

    @property
    def label(self) -> str:
        """The name with its non-default parameters, marked (oracle) if it reads the future."""
        changed = {k: v for k, v in self.params.items() if v != self.defaults[k]}
        name = self.name + (":" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in changed.items()) if changed else "")
        return f"{name} (oracle)" if self.is_oracle else name

    @property
    def event_kinds(self) -> tuple[str, ...]:
        return tuple(self.events(self.params) if callable(self.events) else self.events)

    @property
    def order_mask(self) -> int:
        """The kernel orders to keep for this policy (layout.KEEP_* bits)."""
        if self.needs_orders is True:
            return KEEP_ALL
        return sum(ORDER_BITS[name] for name in set(self.needs_orders or ()))

    @property
    def event_mask(self) -> int:
        return sum(1 << EVENT_NAMES.index(kind) for kind in self.event_kinds)

    @property
    def hook_addresses(self) -> tuple[int, int]:
        return self.victim.address, (self.on_events.address if self.on_events is not None else 0)

    def with_params(self, **params) -> "EvictionPolicy":
        """The same policy with some parameters changed (names checked against the defaults)."""
        unknown = set(params) - set(self.params)
        if unknown:
            raise SpecMDError(f"policy {self.name!r} has no parameter {sorted(unknown)[0]!r}; its parameters: "
                              f"{sorted(self.params) or 'none'}")
        for key, value in list(params.items()):
            if isinstance(self.defaults[key], float) and isinstance(value, int) and not isinstance(value, bool):
                params[key] = value = float(value)
            allowed = self.choices.get(key)
            if allowed is not None and value not in allowed:
                raise SpecMDError(f"policy {self.name!r}: {key} must be one of {allowed}, got {value!r}")
            if allowed is None and not isinstance(value, type(self.defaults[key])):
                raise SpecMDError(f"policy {self.name!r}: {key} must be a {type(self.defaults[key]).__name__}, "
                                  f"got {value!r}")
        return replace(self, params={**self.params, **params})

    def new_state(self, capacity: int, num_layers: int, num_experts: int, num_scopes: int):
        """Fresh (int64, float64) state arrays with the parameters written in."""
        n_i, n_f = self.state(capacity, num_layers, num_experts, num_scopes)
        state_i, state_f = np.zeros(n_i, np.int64), np.zeros(n_f, np.float64)
        if self.setup is not None:
            self.setup(state_i, state_f, self.params)
        return state_i, state_f
