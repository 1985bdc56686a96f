"""Pre-gated MoE (Hwang et al., ISCA 2024): layer l's block computes the gate of layer l+1, so the next
layer's experts are known -- and fetched -- when layer l runs (the first MoE layer is fetched on
demand, the last prefetches nothing).

Emulated from the trace's true routing, with the pre-gate's accuracy as a knob: each expert layer l+1
will use is proposed as it is with probability ``accuracy``, else replaced by an expert of that layer it
will not use (uniform, from the replay's seeded generator). Proposals go most tokens first. Because it
reads the true routing, it is labelled an oracle even below accuracy 1.
"""

from specmd_env import policy as sp
from specmd_env.prefetch.base import Prefetcher

ACCURACY = 0   # state_f[0]
STAMP = 0      # state_i[0:E]: which experts layer l+1 uses (stamped per layer event)


@sp.hook
def propose(tab, e, _):
    v = sp.prefetch_view(tab)
    E = v.num_experts
    if v.layer + 1 >= v.num_layers:
        return 0
    first, last = sp.event_experts(v, e + 1)
    stamp = v.pass_id * v.num_layers + v.layer + 2  # unique over the whole replay (chunks restart e)
    for j in range(first, last):
        v.state_i[STAMP + v.ev_obj[j] - (v.layer + 1) * E] = stamp
    n = 0
    for j in range(first, last):
        obj = v.ev_obj[j]
        if sp.rand_below(v, 1 << 30) >= v.state_f[ACCURACY] * (1 << 30) and last - first < E:
            x = sp.rand_below(v, E)
            while v.state_i[STAMP + x] == stamp:  # a wrong guess: an expert the layer will not use
                x = sp.rand_below(v, E)
            obj = (v.layer + 1) * E + x
        k = n  # most tokens first
        while k > 0 and v.ev_count[v.proposals[k - 1] >> 32] < v.ev_count[j]:
            v.proposals[k] = v.proposals[k - 1]
            k -= 1
        v.proposals[k] = (j << 32) | obj
        n += 1
    for i in range(n):
        v.proposals[i] &= 0xFFFFFFFF
    return n


class PreGatedPrefetch(Prefetcher):
    name = "pregated"
    is_oracle = True

    def __init__(self, accuracy: float = 1.0):
        from specmd_env.errors import SpecMDError
        if not 0.0 <= accuracy <= 1.0:
            raise SpecMDError(f"pregated accuracy must be in [0, 1], got {accuracy!r}")
        self.accuracy = float(accuracy)
        self.propose = propose
        if self.accuracy != 1.0:
            self.name = f"pregated:accuracy={self.accuracy:g}"

    def state(self, capacity, num_layers, num_experts, num_scopes):
        return num_experts, 1

    def setup(self, state_i, state_f):
        state_f[ACCURACY] = self.accuracy
