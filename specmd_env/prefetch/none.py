"""No prefetching: every expert is fetched on demand."""

import numpy as np

from specmd_env.prefetch.base import Prefetcher


class NoPrefetch(Prefetcher):
    name = "none"

    def candidates(self, chunk, lookahead):
        return np.zeros(chunk.num_passes * chunk.num_layers + 1, np.int64), np.zeros(0, np.int32)
