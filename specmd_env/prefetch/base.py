"""What a prefetcher is: for each layer event, a ranked list of next-layer experts to fetch.

When layer l's router runs, the prefetcher names experts of layer l + d (d = lookahead). The kernel
issues them in rank order within the copy engine's budget, skipping (and hinting) those already
resident. Lists are built for a whole schedule chunk at once with numpy, from the chunk's mean
speculative scores (``chunk.spec[p, r]`` predicts layer r + 1 from what exists while layer r runs) or,
for the oracle, from the true routing.

Lookahead d > 1 uses the scores recorded at layer l + d - 1, which a real system would not yet have at
layer l: an optimistic predictor, documented as such. d = 1 (the paper's setting) is exact.
"""

from __future__ import annotations

import numpy as np

from specmd_env.schedule import Chunk


class Prefetcher:
    """A prefetcher: static candidate lists per chunk (:meth:`candidates`, numpy), and/or compiled
    hooks (``propose(tab, event, 0) -> n`` writing objects of any later layer to the view's
    ``proposals``, best first; ``on_event`` for the kinds in ``events``) over its own state."""

    name = "base"
    is_oracle = False
    needs_spec_scores = False
    propose = None       # a compiled hook (specmd_env.policy.hook), or None for static lists only
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
        from specmd_env.kernel.layout import EVENT_NAMES
        return sum(1 << EVENT_NAMES.index(kind) for kind in self.events)

    def rank(self, chunk: Chunk, lookahead: int) -> tuple[np.ndarray, np.ndarray]:
        """(order [passes, L-d, E] expert ids best first, take [passes, L-d] how many to request)."""
        raise NotImplementedError

    def candidates(self, chunk: Chunk, lookahead: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR candidate lists (pf_ptr [events+1], pf_obj) for every event of the chunk (none for a
        prefetcher whose compiled ``propose`` hook decides at run time)."""
        n_pass, L, E = chunk.num_passes, chunk.num_layers, chunk.num_experts
        n_events = n_pass * L
        if self.propose is not None:
            return np.zeros(n_events + 1, np.int64), np.zeros(0, np.int32)
        take = np.zeros((n_pass, L), np.int64)
        if lookahead >= L:
            return np.zeros(n_events + 1, np.int64), np.zeros(0, np.int32)
        order, wanted = self.rank(chunk, lookahead)
        take[:, :L - lookahead] = np.clip(wanted, 0, E)
        mask = np.arange(E)[None, None, :] < take[:, :L - lookahead, None]
        target_layer = np.arange(lookahead, L)[None, :, None]
        objects = (target_layer * E + order)[mask].astype(np.int32)
        pf_ptr = np.zeros(n_events + 1, np.int64)
        np.cumsum(take.ravel(), out=pf_ptr[1:])
        return pf_ptr, objects

    @staticmethod
    def scores(chunk: Chunk, lookahead: int) -> np.ndarray:
        return chunk.spec[:, lookahead - 1:chunk.num_layers - 1, :]
