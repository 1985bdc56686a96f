"""Fixed top-k: fetch the k experts with the highest speculative scores (k = the model's top-k by
default), whatever the scores say about confidence."""

import numpy as np

from specmd_env.prefetch.base import Prefetcher


class TopKPrefetch(Prefetcher):
    needs_spec_scores = True

    def __init__(self, k: int):
        self.k = int(k)
        self.name = f"top{self.k}"

    def rank(self, chunk, lookahead):
        scores = self.scores(chunk, lookahead)
        order = np.argsort(-scores, axis=2, kind="stable")
        return order, np.full(scores.shape[:2], min(self.k, scores.shape[2]))
