"""What a prefetcher is: compiled hooks that, when layer l's router runs, name experts of later layers
to fetch, best first.

``propose(tab, event, 0) -> n`` writes n expert objects (layer * E + expert, of any later layer of the
pass) to the view's ``proposals`` (:func:`specmd_env.policy.prefetch_view`); the kernel issues them in
that order within the copy engine's limits, skipping (and hinting to the eviction policy) those already
resident. ``on_events`` sees the event kinds listed in ``events``. A prefetcher keeps its own state
arrays, sized by :meth:`state` and written by :meth:`setup` before a replay starts.

Speculative scores (``policy.predicted_scores``) predict layer r + 1 from what exists while layer r
runs; lookahead d > 1 uses the scores recorded at layer l + d - 1, which a real system would not yet
have at layer l: an optimistic predictor, documented as such. d = 1 (the paper's setting) is exact.
"""

from __future__ import annotations

import numpy as np

from specmd_env.errors import SpecMDError
from specmd_env.kernel.layout import EVENT_NAMES


class Prefetcher:
    name = "base"
    is_oracle = False
    needs_spec_scores = False
    propose = None       # a compiled hook (specmd_env.policy.hook); None: no prefetching
    on_events = None
    events: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name} (oracle)" if self.is_oracle else self.name

    def state(self, capacity: int, num_layers: int, num_experts: int, num_scopes: int) -> tuple[int, int]:
        """Sizes of the (int64, float64) state the hooks keep."""
        return 0, 0

    def setup(self, state_i: np.ndarray, state_f: np.ndarray) -> None:
        """Write parameters into fresh state before a replay starts."""

    def new_state(self, capacity: int, num_layers: int, num_experts: int, num_scopes: int):
        n_i, n_f = self.state(capacity, num_layers, num_experts, num_scopes)
        state_i, state_f = np.zeros(n_i, np.int64), np.zeros(n_f, np.float64)
        self.setup(state_i, state_f)
        return state_i, state_f

    @property
    def hook_addresses(self) -> tuple[int, int]:
        return (self.propose.address if self.propose is not None else 0,
                self.on_events.address if self.on_events is not None else 0)

    @property
    def event_mask(self) -> int:
        return sum(1 << EVENT_NAMES.index(kind) for kind in self.events)


def check_window(window) -> int:
    """A prefetcher's ``window`` (layers looked ahead, nearer first): an integer >= 1."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise SpecMDError(f"prefetch window must be an integer >= 1 (layers looked ahead), got {window!r}")
    return window
