"""Expected next use: a causal estimate of Belady's rule. Evict the candidate expected to be needed last.

An expert of a layer d layers ahead in the sweep (``next_turn``, 1..L) can next be used in d layers;
if it is used in a fraction p of the passes, the next pass that uses it is about 1/p passes away, so
its expected next use is ``d + L (1/p - 1)`` layer steps from now. p is its frequency of use per pass,
with Laplace's rule (an expert never seen is neither certain nor impossible):

* ``half_life=0`` (default): over the whole history, ``(uses + 1) / (passes + 2)``;
* ``half_life=h`` > 0: over a recent window, each past use weighing ``2^(-age / h)`` (age in passes),
  ``(decayed uses + 1) / (window + 2)`` with ``window = 1 / (1 - 2^(-1/h))`` -- routing persists from
  token to token, so recent use predicts better than lifetime counts.

Ties go to the least recently used. ``bypass=yes``: on a demand miss, do not cache the incoming expert
when its own expected next use is no nearer than the victim's (it is then served from a staging
buffer), as Belady with bypass does with the true future. Every reading is causal.
"""

from specmd_env import policy as sp
from specmd_env.eviction.base import EvictionPolicy

BYPASS = 0            # state_i[0]: 1 to allow bypass
EVENT_PASS = 1        # state_i[1]: the pass of the events being read (a batch may span passes)
LAST_PASS = 2         # state_i[2:]: per object, the pass of its last use (decayed counts are as of then)
DECAY, WINDOW = 0, 1  # state_f[0:2]: per-pass decay (0: whole history), effective window in passes
COUNTS = 2            # state_f[2:]: per object, decayed uses as of its last use


@sp.njit_policy
def frequency(v, obj):
    """Estimated fraction of passes that use ``obj``."""
    decay = v.state_f[DECAY]
    if decay == 0.0:
        return (v.total_uses[obj] + 1.0) / (v.pass_id + 3.0)  # passes so far: pass_id + 1
    count = v.state_f[COUNTS + obj] * decay ** (v.pass_id - v.state_i[LAST_PASS + obj])
    window = min(v.state_f[WINDOW], v.pass_id + 1.0)
    return (count + 1.0) / (window + 2.0)


@sp.njit_policy
def expected_steps(v, obj, turn):
    """Expected layer steps until ``obj`` (whose layer's next turn is ``turn`` steps away) is used."""
    return turn + v.num_layers * (1.0 / frequency(v, obj) - 1.0)


@sp.njit_policy  # inlined: a key that is not gets the whole view per call, 10x slower
def _latest_first(v, s):
    return -expected_steps(v, v.slot_object[s], sp.next_turn(v, s))


@sp.hook
def victim(tab, lo, hi):
    v = sp.cache_view(tab)
    s = sp.lowest(v, lo, hi, _latest_first)
    if v.state_i[BYPASS] == 1 and v.decision == sp.DEMAND and s >= 0:
        turn = v.num_layers if v.incoming_layer == v.layer else (v.incoming_layer - v.layer) % v.num_layers
        if expected_steps(v, v.incoming, turn) >= expected_steps(v, v.slot_object[s], sp.next_turn(v, s)):
            return -1
    return s


@sp.hook
def on_events(tab, n, _):
    v = sp.cache_view(tab)
    decay = v.state_f[DECAY]
    for i in range(n):
        kind, s, obj = sp.event_at(v, i)
        if kind == sp.EV_PASS:  # events arrive in batches: later ones may be of a later pass
            v.state_i[EVENT_PASS] = obj
            continue
        if kind != sp.EV_HIT and kind != sp.EV_MISS:  # the log also holds the prefetcher's kinds
            continue
        p = v.state_i[EVENT_PASS]  # an access (a hit or a miss) in pass p
        age = p - v.state_i[LAST_PASS + obj]
        if age > 0 or v.state_f[COUNTS + obj] == 0.0:
            v.state_f[COUNTS + obj] = v.state_f[COUNTS + obj] * decay ** age + 1.0
            v.state_i[LAST_PASS + obj] = p
    return 0


def _state(capacity, num_layers, num_experts, num_scopes):
    return LAST_PASS + num_layers * num_experts, 2 + num_layers * num_experts


def _setup(state_i, state_f, params):
    state_i[BYPASS] = params["bypass"] == "yes"
    if params["half_life"] > 0:
        state_f[DECAY] = decay = 2.0 ** (-1.0 / params["half_life"])
        state_f[WINDOW] = 1.0 / (1.0 - decay)


def _events(params):
    return ("pass", "hit", "miss") if params["half_life"] > 0 else ()


EXPECTED_NEXT_USE = EvictionPolicy(
    "expected-next-use", "latest expected next use (sweep distance x reuse frequency)", victim, on_events,
    _events, state=_state, setup=_setup, params={"bypass": "no", "half_life": 0.0},
    choices={"bypass": ("no", "yes")},
    source="a causal approximation of Belady's MIN (this project); cf. the EAM idea of MoE-Infinity")
