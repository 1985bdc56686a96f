"""MoE-Infinity's activation-aware caching (Xue et al., arXiv 2401.14361, Algorithm 1). Needs the
moe-infinity prefetcher, whose request-to-collection match it reads (``--preset moe-infinity``).

``rule=paper`` (default): every cached expert e gets ``(p[e.layer][e.expert] + eps) (1 - e.layer / L)``,
p the matched collection entry's row for its layer, normalised to sum to 1 (without a match: the
request's own counts so far); the lowest goes. Earlier layers weigh more ("the decay starts from the
first layer"). Ties: least recently used.

``rule=code``: what the released runtime does (core/prefetch/task_pool: RemoveCachedSparseNode). Experts
of the layers still to come in this pass are protected (they are the prefetch candidates), the others go
in *descending* order of in-cache visits (the most visited first -- which reads like an inverted sort;
the commented-out line used the last access time). Kept so that both can be compared.
"""


from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy
from specmd_env.prefetch import moe_infinity as pf

EPS = 1e-8
RULE_CODE = 0  # state_i[0]: 1 for the code's rule


@sp.njit_policy
def _paper_priority(v, s):
    n, cur, coll, _, _ = pf.offsets_of(v.other_i, v.num_layers, v.num_experts)
    c = v.other_i[pf.MATCHED]
    E = v.num_experts
    row = cur + v.slot_layer[s] * E if c < 0 else coll + c * n + v.slot_layer[s] * E
    total = 0.0
    for x in range(E):
        total += v.other_f[row + x]
    p = v.other_f[row + v.slot_expert[s]] / total if total > 0 else 0.0
    return (p + EPS) * (1.0 - v.slot_layer[s] / v.num_layers)


@sp.njit_policy
def _code_priority(v, s):
    protected = v.slot_layer[s] > v.layer  # a later layer of this pass: a prefetch candidate
    return 1e18 if protected else -(v.uses[s] + 1.0)                      # most visited first


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    if v.state_i[RULE_CODE] == 1:
        return sp.lowest(v, lo, hi, _code_priority)
    return sp.lowest(v, lo, hi, _paper_priority)


def _setup(state_i, state_f, params):
    state_i[RULE_CODE] = params["rule"] == "code"


MOE_INFINITY = EvictionPolicy(
    "moe-infinity", "activation-aware priority from the matched expert activation matrix", victim,
    state=lambda *_: (1, 0), setup=_setup, params={"rule": "paper"}, choices={"rule": ("paper", "code")},
    requires_prefetcher="moe-infinity",
    source="Xue et al., MoE-Infinity (arXiv 2401.14361), Algorithm 1; code: EfficientMoE/MoE-Infinity")
