"""Score-based dynamic prefetch (SpecMD): fetch the next layer's experts in score order until they
cover probability mass ``mass`` (at most ``max_count``), within what the copy engine can move before
that layer starts. Confident predictions fetch few experts, uncertain ones more."""

import numpy as np

from specmd_env.prefetch.base import Prefetcher


class ScorePrefetch(Prefetcher):
    name = "score"
    needs_spec_scores = True

    def __init__(self, mass: float = 0.8, max_count: int | None = None):
        self.mass = mass
        self.max_count = max_count

    def rank(self, chunk, lookahead):
        scores = self.scores(chunk, lookahead)
        order = np.argsort(-scores, axis=2, kind="stable")
        ranked = np.take_along_axis(scores, order, axis=2)
        total = ranked.sum(axis=2, keepdims=True)
        covered = np.cumsum(ranked, axis=2) / np.maximum(total, 1e-12)
        take = 1 + (covered < self.mass).sum(axis=2)
        max_count = scores.shape[2] if self.max_count is None else self.max_count
        return order, np.minimum(take, max_count)
