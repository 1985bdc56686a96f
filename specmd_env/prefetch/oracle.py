"""Oracle prefetch: fetch exactly the experts the next layer will use (most tokens first). It reads
the true routing, so it is an upper bound for prediction, always labelled oracle."""

import numpy as np

from specmd_env.prefetch.base import Prefetcher


class OraclePrefetch(Prefetcher):
    name = "oracle"
    is_oracle = True

    def rank(self, chunk, lookahead):
        counts = chunk.counts[:, lookahead:, :]
        order = np.argsort(-counts, axis=2, kind="stable")
        return order, (counts > 0).sum(axis=2)
