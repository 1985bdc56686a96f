"""``SpecMD-*-v1``: the expert cache of MoE inference as a Gymnasium environment."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
from gymnasium import spaces

from specmd_env import kernel as K
from specmd_env.catalog import default_trace_name, get_trace
from specmd_env.checks import integer_array, is_integer, shorten
from specmd_env.errors import InvalidActionError, SpecMDError
from specmd_env.eviction import EvictionPolicy, get_eviction
from specmd_env.replay import Replay
from specmd_env.reward import RewardWeights
from specmd_env.envs import _core
from specmd_env.envs.observation import ObservationLayout

DECISIONS = ("eviction", "prefetch", "joint")
SPLITS = ("all", "train", "test")
TEST_EVERY = 5  # request i is a test request when i % 5 == 4
_PENDING = {K.DEMAND: "demand", K.PREFETCH: "prefetch", K.PREFETCH_CHOICE: "prefetch-choice"}


def split_requests(trace, split: str = "all", test_domains=None) -> np.ndarray:
    """Trace request indices of a split: test = every fifth request (i % 5 == 4), or the requests of
    ``test_domains`` when given; train = the rest; all = every request. Deterministic."""
    if split not in SPLITS:
        raise SpecMDError(f"split must be one of {SPLITS}, got {split!r}")
    n = trace.num_requests
    if test_domains is None:
        is_test = np.arange(n) % TEST_EVERY == TEST_EVERY - 1
    else:
        wanted = {test_domains} if isinstance(test_domains, str) else set(test_domains)
        domains = np.asarray(trace.domains)
        unknown = wanted - set(domains.tolist())
        if unknown:
            raise SpecMDError(f"test_domains {shorten(unknown)} are not in the trace; its domains: "
                              f"{shorten(set(domains.tolist()))}")
        is_test = np.isin(domains, sorted(wanted))
    if split == "all":
        return np.arange(n)
    chosen = np.flatnonzero(is_test if split == "test" else ~is_test)
    if len(chosen) == 0:
        raise SpecMDError(f"split {split!r} of this trace has no requests")
    return chosen


class SpecMDCacheEnv(gym.Env):
    """
    ## Description

    A Mixture-of-Experts model runs its layers one after another; each layer needs a few of its E
    experts, chosen by a router. Only a fraction of all experts fits in GPU memory (the *cache*); a
    missing expert is copied over the host link (one FIFO copy engine) while the GPU stalls. This
    environment replays a routing trace (prefill and decode forward passes of real-shaped requests)
    through the compiled, hardware-timed cache of :mod:`specmd_env.kernel` and hands the agent the
    decisions a cache manager makes: *which expert to evict* when room is needed, and/or *which experts
    of the next layer to prefetch* while the current layer computes. Everything else (hits, in-flight
    arrivals, compute, the fixed policy for the part the agent does not decide) is simulated inside
    ``step``. The reward is :class:`specmd_env.RewardWeights`: collision misses and stall time.

    ## Action Space

    * ``decision="eviction"`` (``SpecMD-OLMoE-v0``): ``Discrete(rows + 1)``, the slot to evict, or
      ``rows`` (the *incoming* row) to **bypass**: do not cache the expert that needs room (a demand
      miss is then served from a staging buffer, transferred and computed but not kept; a prefetch is
      skipped). ``rows`` is the capacity unless ``observation_slots`` pads the observation (then actions
      in [capacity, rows) are never valid). Asked only when the cache must make room, for a demand miss
      (``pending_demand``) or for a prefetch (``pending_prefetch``). Only *candidate* slots may be
      evicted (occupied, not pinned by the layer computing, not in flight), and bypass only with
      ``bypass=True``: ``action_masks()`` (sb3-contrib MaskablePPO) and the ``candidate`` feature say which.
    * ``decision="prefetch"`` (``SpecMD-OLMoE-Prefetch-v0``): ``MultiBinary(E)``, asked at every layer
      event that has a next layer: 1 = fetch that expert of layer ``l + lookahead``. Selected experts are
      fetched in order of speculative score (best first, ties to the lower id) within the copy engine's
      budget (transfers that can start before that layer's router runs); already-resident ones are
      hinted (marked current) instead. Eviction is ``fixed_eviction``.
    * ``decision="joint"`` (``SpecMD-OLMoE-Joint-v0``): ``MultiDiscrete([rows + 1] + [2] * E)``. At an
      eviction decision only ``action[0]`` (the slot, or ``rows`` = bypass) is used; at a prefetch choice
      only ``action[1:]`` (the bits). The observation's ``pending_*`` one-hot says which is due;
      ``action_masks()`` masks the slot part (all allowed at prefetch choices, where it is ignored).

    An invalid choice (a masked one) is not an error: the eviction falls back to ``fixed_eviction``'s
    choice among the candidates, the step's reward is reduced by ``invalid_action_penalty`` and
    ``info["invalid_action"]`` is True. An action outside the action space raises
    :class:`specmd_env.errors.InvalidActionError` (a SpecMDError and a ``gymnasium.error.InvalidAction``),
    and so does one of the wrong type: a slot must be an integer (``2.7``, ``"3"`` and ``True`` are refused,
    not cast); prefetch bits may be of any numeric dtype (Stable-Baselines3 gives floats) but must be 0 or 1.

    ## Observation Space

    ``Box(0, 1, ((rows + 1) * 20 + 11 [+ E],), float32)``: 20 features per row -- ``rows`` cache slots
    (slot-major; all-zero rows are empty slots, or padding), then the *incoming* expert (the one that
    needs room; all zero when no eviction is due) -- then 11 global features, and in prefetch and joint
    modes the next layer's E speculative scores. One network applied to every row serves any capacity,
    model shape and trace (``specmd_env.agents.learned``). Ages are exact ranks: 1 = the oldest occupied
    slot of its scope (the first victim of that order), 0 = the newest, spaced 1 / (scope size - 1).
    Frequencies come from the replay's memory of past routing (:mod:`specmd_env.envs.memory`): p =
    (uses + 1) / (passes + 2) over the whole history, or with each use weighing 2^(-age / h) for a short
    (h = 2 passes) and a long (h = 8) memory over a window of 1 / (1 - 2^(-1/h)) passes. The
    ``expected_reuse`` features are the expected-next-use estimate ``steps = d + L (1/p - 1)`` (layer steps
    until the expert is used, d = layers until its layer's next turn) as ``L / (L + steps)``: 1 = surely at
    the next layer, 0 = never.

    | Index | Feature | Meaning | Min | Max |
    |-------|---------|---------|-----|-----|
    | 20r+0 | occupied | slot r holds an expert | 0 | 1 |
    | 20r+1 | layer_ahead | (its layer - layer computing) mod L, / L: how far ahead in the sweep | 0 | 1 |
    | 20r+2 | current | touched (used, inserted, or hinted by the prefetcher) in this forward pass | 0 | 1 |
    | 20r+3 | use_age | rank by last use (LRU order; unused prefetches are oldest) | 0 | 1 |
    | 20r+4 | touch_age | rank by last touch (Least-Stale order) | 0 | 1 |
    | 20r+5 | insert_age | rank by insertion (FIFO order) | 0 | 1 |
    | 20r+6 | use_count | uses since insertion c, as c / (c + 16) | 0 | 1 |
    | 20r+7 | spec_score | its expert's speculative score if its layer is l + lookahead, else 0 | 0 | 1 |
    | 20r+8 | in_flight | its transfer has not arrived by the decision time | 0 | 1 |
    | 20r+9 | prefetched_unused | prefetched and not yet used | 0 | 1 |
    | 20r+10 | candidate | may be chosen now (= action mask at an eviction decision; incoming row: bypass allowed) | 0 | 1 |
    | 20r+11 | incoming | 1 on the incoming row only | 0 | 1 |
    | 20r+12 | next_turn | layers until its layer runs again (1 = next layer ... L = the layer computing), / L | 0 | 1 |
    | 20r+13 | frequency | its expert's share of passes that used it, whole history (Laplace) | 0 | 1 |
    | 20r+14 | frequency_short | the same, recency-weighted, half-life 2 passes | 0 | 1 |
    | 20r+15 | frequency_long | the same, recency-weighted, half-life 8 passes | 0 | 1 |
    | 20r+16 | recency | 1 / (1 + passes since its expert's last use); 0 if never used | 0 | 1 |
    | 20r+17 | expected_reuse | L / (L + expected layer steps to its next use), from ``frequency`` | 0 | 1 |
    | 20r+18 | expected_reuse_short | the same from ``frequency_short`` | 0 | 1 |
    | 20r+19 | expected_reuse_long | the same from ``frequency_long`` | 0 | 1 |
    | G+0 | layer | layer computing / L | 0 | 1 |
    | G+1 | decode | 1 in a decode pass, 0 in a prefill | 0 | 1 |
    | G+2 | request_progress | passes since the batch group began / 256, clipped | 0 | 1 |
    | G+3 | copy_backlog | copy engine busy time ahead, in transfer times / 16, clipped | 0 | 1 |
    | G+4 | pending_demand | an eviction for a demand miss is due | 0 | 1 |
    | G+5 | pending_prefetch | an eviction for a prefetch is due | 0 | 1 |
    | G+6 | pending_prefetch_choice | a prefetch choice is due | 0 | 1 |
    | G+7 | pending_layer_ahead | (pending expert's layer - layer computing) mod L, / L | 0 | 1 |
    | G+8 | prefetch_budget | transfers the copy engine may still start for the prefetch / E | 0 | 1 |
    | G+9 | occupancy | occupied slots / capacity | 0 | 1 |
    | G+10 | candidate_fraction | candidate slots / capacity | 0 | 1 |
    | G+11+x | score.x | (prefetch, joint) speculative score of expert x of layer l + lookahead | 0 | 1 |

    (r = row in [0, rows]: the slot rows, then the incoming row at r = rows; G = 20 (rows + 1).) On the
    incoming row the slot-only features (occupied, current, the ages, use_count, in_flight,
    prefetched_unused) are 0. A layer event's routing enters the memory once its router has run: the
    frequencies of a demand decision count the layer computing.

    Nothing in the observation comes from the future. Oracle facts are in ``info`` when ``oracle_info=True``:
    ``info["next_use"]`` (per row, the incoming row last: accesses until its expert's next use, -1 empty,
    ``kernel.NEVER`` none in the chunk; at eviction decisions) and ``info["next_experts"]`` (tokens of this pass routed
    to each expert of layer l + lookahead).

    ## Rewards

    ``RewardWeights(w_collision, w_latency, w_miss).reward(Δcollision misses, Δstall seconds, Δmisses)``
    accrued from the previous decision (or the episode start) up to this one; the last step includes
    everything up to the end of the replay. So the sum of an episode's rewards equals
    ``RewardWeights.score(result)`` exactly up to float rounding, minus ``invalid_action_penalty`` per
    invalid action.

    ## Starting State

    An empty cache at time 0. An episode replays ``requests_per_episode`` requests drawn without
    replacement from the split with the env's ``np_random`` (``None``: every request of the split, in
    order). ``reset(options={"requests": [...]})`` replays given trace request indices instead.

    ## Episode End

    Terminated when the replay ends; the final ``info`` holds ``metrics`` (``Result.as_dict()``: every
    simulator metric), ``score`` (RewardWeights.score), ``episode_reward``, ``episode_steps`` and
    ``episode_invalid_actions``. Truncation only through ``max_episode_steps`` (TimeLimit). A replay that
    needs no decision at all still has one step: its observation has no pending flag, every action is
    accepted and ignored, and the step terminates with the whole replay's reward.

    ## Arguments

    ``gym.make("SpecMD-OLMoE-v0", **kwargs)`` (all optional): ``trace`` (catalog name, path or Trace;
    default the model's default trace), ``model`` (default from the env id), ``hardware``
    ("paper-a100-5gbps"), ``capacity`` (0.05: fraction of expert bytes, or a byte count), ``lookahead``
    (1), ``batch_size`` (1), ``scope`` ("global" | "per-layer"), ``decision`` ("eviction" | "prefetch" |
    "joint"), ``fixed_eviction`` ("least-stale": eviction when the agent does not decide it, and the
    fallback for invalid slots), ``fixed_prefetch`` ("score": prefetch in eviction mode; none | topk |
    top<N> | score | oracle), ``prefetch_mass`` (0.8, for score), ``w_collision`` (1.0), ``w_latency``
    (100.0), ``w_miss`` (0.0), ``split`` ("all" | "train" | "test"), ``test_domains`` (None: test = every
    fifth request; else the requests of these domains), ``requests_per_episode`` (4; None = all),
    ``invalid_action_penalty`` (1.0), ``oracle_info`` (False; True adds ``next_use`` and
    ``next_experts`` to ``info`` for oracle agents, at ~2 us per step), ``bypass`` (True: the incoming
    row may be chosen; False masks it out, as for a cache that must admit every expert),
    ``observation_slots`` (None: one row per slot; N >= capacity pads the observation to N slot rows so
    that environments of different capacities share one observation and action space),
    ``scheduler`` ("static" | "continuous": vLLM-style continuous batching, :mod:`specmd_env.serving`),
    ``arrival_rate`` (Poisson requests/s, seeded by the episode) or ``arrival_times`` (one per replayed
    request), ``max_num_seqs`` (256) and ``max_num_batched_tokens`` (8192): the scheduler's caps; under
    continuous batching the observation gains the serving features ``running_sequences`` (running /
    max_num_seqs) and ``queue_length`` (waiting w as w / (w + max_num_seqs)) after the globals.
    ``host_policy`` ("lru" | "fifo"): host memory's own policy on a two-tier hardware profile (tiers come
    with ``hardware``). The final ``info["metrics"]`` has p50/p90/p99 TTFT, TPOT and inter-token latency.
    ``render_mode`` ("ansi" | "rgb_array").
    Bad values raise SpecMDError naming the keyword.

    ## Vectorized environment

    ``gym.make_vec("SpecMD-OLMoE-v0", num_envs=N, vectorization_mode="vector_entry_point")`` returns
    :class:`specmd_env.envs.vector_env.SpecMDVectorEnv`: N environments stepped in one compiled call,
    with next-step autoreset.

    ## Version History

    * v0 (pre-release, changed in place until the first release so that the id users know keeps working):
      the incoming row and the bypass action (``Discrete(rows + 1)``), nine more features per row (incoming,
      next turn, frequencies, recency, expected reuse), ``bypass`` and ``observation_slots``; earlier: 11
      features per slot and ``Discrete(capacity)``. Agents record the observation layout they were trained
      on and refuse to load into a different one.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, trace=None, model=None, hardware="paper-a100-5gbps", capacity=0.05, lookahead: int = 1,
                 batch_size: int = 1, scope: str = "global", decision: str = "eviction",
                 fixed_eviction: str = "least-stale", fixed_prefetch: str = "score", prefetch_mass: float = 0.8,
                 w_collision: float = 1.0, w_latency: float = 100.0, w_miss: float = 0.0, split: str = "all",
                 test_domains=None, requests_per_episode: int | None = 4, invalid_action_penalty: float = 1.0,
                 oracle_info: bool = False, bypass: bool = True, observation_slots: int | None = None,
                 scheduler: str = "static", arrival_rate: float | None = None, arrival_times=None,
                 max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, host_policy: str = "lru",
                 render_mode: str | None = None):
        if decision not in DECISIONS:
            raise SpecMDError(f"decision must be one of {DECISIONS}, got {decision!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise SpecMDError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if trace is None:
            trace = default_trace_name(model if model is not None else "olmoe")
        self.trace = get_trace(trace)
        self.decision = decision
        self.weights = RewardWeights(collision=w_collision, latency=w_latency, miss=w_miss)
        penalty = invalid_action_penalty
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not np.isfinite(penalty) or penalty < 0:
            raise SpecMDError(f"invalid_action_penalty must be a finite number >= 0, got {penalty!r}")
        self.invalid_action_penalty = float(penalty)
        self.split_ids = split_requests(self.trace, split, test_domains)
        if requests_per_episode is not None:
            if isinstance(requests_per_episode, bool) or not isinstance(requests_per_episode, (int, np.integer)) \
                    or not 1 <= requests_per_episode <= len(self.split_ids):
                raise SpecMDError(f"requests_per_episode must be None or an integer in [1, {len(self.split_ids)}] "
                                  f"(the requests of split {split!r}), got {requests_per_episode!r}")
            requests_per_episode = int(requests_per_episode)
        self.requests_per_episode = requests_per_episode
        fixed_ev = get_eviction(fixed_eviction)
        if not isinstance(fixed_ev, EvictionPolicy):
            raise SpecMDError(f"fixed_eviction must be a compiled eviction policy (a name or an EvictionPolicy), "
                              f"got {fixed_eviction!r}")
        agent_evicts = decision in ("eviction", "joint")
        agent_prefetches = decision in ("prefetch", "joint")
        self._replay_kwargs = dict(
            model=model, hardware=hardware, capacity=capacity, lookahead=lookahead, batch_size=batch_size,
            scope=scope, eviction=fixed_ev, prefetch="none" if agent_prefetches else fixed_prefetch,
            prefetch_mass=prefetch_mass, scheduler=scheduler, arrival_rate=arrival_rate,
            arrival_times=arrival_times, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            host_policy=host_policy, observe=True,
            decide=(("eviction",) if agent_evicts else ()) + (("prefetch",) if agent_prefetches else ()))
        probe = Replay(self.trace, requests=self.split_ids[:1], **self._replay_kwargs)  # validates every keyword
        self.model = probe.model
        self.capacity = probe.capacity
        self.num_layers, self.num_experts = self.model.num_layers, self.model.num_experts
        self.oracle_info = bool(oracle_info)
        self.render_mode = render_mode
        self.config = dict(
            trace=self.trace.meta.get("name", trace if isinstance(trace, str) else "custom"),
            model=self.model.name, hardware=probe.hardware.name, capacity=capacity, capacity_slots=self.capacity,
            lookahead=probe.lookahead, batch_size=probe.batch_size, scope=probe.scope, decision=decision,
            fixed_eviction=fixed_ev.label, fixed_prefetch=probe.prefetch_label if not agent_prefetches else "agent",
            prefetch_mass=prefetch_mass, w_collision=self.weights.collision, w_latency=self.weights.latency,
            w_miss=self.weights.miss, split=split, test_domains=test_domains,
            split_requests=self.split_ids.tolist(), requests_per_episode=requests_per_episode,
            invalid_action_penalty=self.invalid_action_penalty, oracle_info=self.oracle_info)
        if not isinstance(bypass, (bool, np.bool_)):
            raise SpecMDError(f"bypass must be True or False, got {bypass!r}")
        self.bypass = bool(bypass)
        if observation_slots is not None and (isinstance(observation_slots, bool) or not is_integer(observation_slots)
                                              or observation_slots < self.capacity):
            raise SpecMDError(f"observation_slots must be None or an integer >= the capacity ({self.capacity} slots), "
                              f"got {observation_slots!r}")
        self.config.update(bypass=self.bypass, observation_slots=observation_slots, scheduler=probe.scheduler,
                           arrival_rate=arrival_rate, max_num_seqs=max_num_seqs,
                           max_num_batched_tokens=max_num_batched_tokens, host_policy=host_policy)
        self.max_num_seqs = int(max_num_seqs)
        self.layout = ObservationLayout(self.capacity, self.num_experts, with_scores=agent_prefetches,
                                        rows=observation_slots, with_serving=probe.scheduler == "continuous")
        self.rows = self.layout.rows
        self.observation_space = spaces.Box(0.0, 1.0, (self.layout.size,), np.float32)
        E = self.num_experts
        if decision == "eviction":
            self.action_space = spaces.Discrete(self.rows + 1)
        elif decision == "prefetch":
            self.action_space = spaces.MultiBinary(E)
        else:
            self.action_space = spaces.MultiDiscrete(np.array([self.rows + 1] + [2] * E, np.int64))
        # per-step output buffers (the vector env re-binds them to rows of its batch arrays), and the
        # argument table of the compiled step (the vector env re-binds it to a row of its own)
        self.replay: Replay | None = None
        self._tab = np.zeros((1, 2 * K.N_ARGS), np.int64)
        self._terminated = False
        self._bind_buffers(np.zeros(self.layout.size, np.float32), np.ones(self.rows + 1, bool),
                           np.zeros(1 + E, np.int64), np.zeros(self.scratch_size, np.int64))
        self._done = True

    def replay_settings(self) -> dict:
        """The keywords of :func:`specmd_env.simulate` that replay what this environment replays (trace,
        model, hardware, capacity, lookahead, batch size, scope, fixed prefetcher): give them an eviction
        policy (e.g. a compiled learned one) to replay an episode without the environment."""
        kwargs = {k: v for k, v in self._replay_kwargs.items() if k not in ("observe", "decide", "eviction")}
        return {"trace": self.trace, **kwargs}

    # -- plumbing ------------------------------------------------------------------------------------
    @property
    def scratch_size(self) -> int:
        """int64 items of the step's scratch buffer (settings, memory, oracle facts: see envs/_core.py)."""
        return _core.scratch_size(self.rows, self.num_experts, self.num_layers * self.num_experts)

    def _bind_buffers(self, obs, mask, act, orc, tab=None):
        """Use these output buffers (and argument-table row), e.g. rows of a vector env's batch arrays."""
        self._obs, self._mask, self._act, self._orc = obs, mask, act, orc
        orc[_core.X_ROWS] = self.rows
        orc[_core.X_BYPASS] = int(self.bypass)
        orc[_core.X_SERVING] = self.layout.serving_start if self.layout.with_serving else -1
        orc[_core.X_MAX_SEQS] = self.max_num_seqs
        if tab is not None:
            tab[:] = self._tab
            self._tab = tab
        if self.replay is not None:
            self.replay.bind_table(self._tab[0])
        self._write_buffer_addresses()

    def _write_buffer_addresses(self) -> None:
        row = self._tab[0]
        for k, a in ((K.A_OBS, self._obs), (K.A_MASK, self._mask), (K.A_ACT, self._act), (K.A_ORC, self._orc)):
            row[k] = a.__array_interface__["data"][0]
            row[K.N_ARGS + k] = a.size

    @property
    def _reward_part(self) -> np.ndarray:
        o = int(self.replay.si[K.H_REWARD])
        return self.replay.sf[o:o + _core.N_REWARD]

    def _run(self, has_action: int) -> float:
        """One compiled step, then chunk changes in Python until a decision is due or the replay ends."""
        replay = self.replay
        address = self._tab.ctypes.data
        status = _core.step_one(address, has_action)
        reward = self._reward_part[_core.R_REWARD]
        while status in (K.DONE, K.BAD_VICTIM):
            if status == K.BAD_VICTIM:
                raise SpecMDError(f"fixed_eviction {replay.eviction_label!r} answered slot "
                                  f"{int(replay.ist[K.I_ACTION])}, which it may not evict now")
            if replay._next_chunk():
                status = _core.step_one(address, 0)
                reward += self._reward_part[_core.R_REWARD]
            else:
                replay.done = True
                self._done = True
                self._mask[:] = True
                break
        return reward

    def _start(self, requests) -> None:
        self.replay = replay = Replay(self.trace, requests=requests, seed=int(self.np_random.integers(2**31 - 1)),
                                      **self._replay_kwargs)
        replay.bind_table(self._tab[0])
        self._write_buffer_addresses()
        replay.si[K.H_ORACLE] = int(self.oracle_info)
        replay.si[K.H_SCORES] = int(self.layout.with_scores)
        _core.reset_memory(self._tab.ctypes.data)
        r = self._reward_part
        r[_core.R_W_COL], r[_core.R_W_LAT], r[_core.R_W_MISS] = (self.weights.collision, self.weights.latency,
                                                                  self.weights.miss)
        self._done = replay.done
        self._episode_reward = 0.0
        self._episode_steps = 0
        self._episode_invalid = 0
        if self._done:  # nothing to replay
            self._obs[:] = 0.0
            self._mask[:] = True
            return
        self._run(0)  # reward up to the first decision is paid with the first step (prev counters kept)
        r[_core.R_PREV_COL] = r[_core.R_PREV_STALL] = r[_core.R_PREV_MISS] = 0.0
        if self._done:
            self._obs[:] = 0.0
            self._mask[:] = True

    def _info(self) -> dict:
        info = {"decision": self.pending}
        if self.oracle_info:
            info["next_use"], info["next_experts"] = self.oracle_facts(self._orc)
        return info

    def oracle_facts(self, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(next_use [.., rows + 1], next_experts [.., E]) copied out of a step scratch (or a batch of them)."""
        base, rows = _core.X_HEADER, self.rows
        return (scratch[..., base:base + rows + 1].copy(),
                scratch[..., base + rows + 1:base + rows + 1 + self.num_experts].copy())

    # -- Gymnasium API -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and options.get("requests") is not None:
            requests = integer_array("options['requests']", options["requests"], 0, self.trace.num_requests)
        elif self.requests_per_episode is None:
            requests = self.split_ids
        else:
            requests = self.np_random.choice(self.split_ids, size=self.requests_per_episode, replace=False)
        self._terminated = False
        self._start(requests)
        return self._obs.copy(), self._info()

    def step(self, action):
        if self.replay is None:
            raise SpecMDError("call reset() before step()")
        if self._terminated:
            raise SpecMDError("the episode has ended: call reset()")
        self._write_action(action)
        if self._done:  # no decision was ever due: one step ends the replay
            met = self.replay.met
            reward = self.weights.reward(met[K.M_COLLISION], met[K.M_STALL], met[K.M_MISSES])
            invalid = False
        else:
            reward = self._run(1)
            invalid = self.replay.si[K.H_INVALID] == 1
        if invalid:
            reward -= self.invalid_action_penalty
            self._episode_invalid += 1
        self._episode_reward += reward
        self._episode_steps += 1
        terminated = self._terminated = self._done
        info = self._info()
        info["invalid_action"] = bool(invalid)
        if terminated:
            result = self.replay.result()
            info.update(metrics=result.as_dict(), score=self.weights.score(result),
                        episode_reward=np.float64(self._episode_reward), episode_steps=self._episode_steps,
                        episode_invalid_actions=self._episode_invalid)
        return self._obs.copy(), float(reward), terminated, False, info

    def _write_action(self, action) -> None:
        """Copy a valid action into the step's buffer; anything outside the action space (including a
        slot that is not an integer, or a bit that is not 0 or 1) raises InvalidActionError, uncast."""
        act = self._act
        E = self.num_experts
        n = self.rows + 1
        if self.decision == "eviction":
            if not is_integer(action) or not 0 <= action < n:
                raise InvalidActionError(f"action must be an integer in [0, {n}) (a slot, or {self.rows}: bypass; "
                                         f"Discrete({n})), got {action!r:.60} ({type(action).__name__})")
            act[0] = action
            return
        a = np.asarray(action)
        if self.decision == "prefetch":
            if a.shape != (E,) or a.dtype.kind not in "biuf" or np.any((a != 0) & (a != 1)):
                raise InvalidActionError(f"action must be {E} bits, each 0 or 1 (MultiBinary({E})), got "
                                         f"{a.dtype} shape {a.shape}: {shorten(a)}")
            act[1:] = a
        else:
            if a.shape != (1 + E,) or a.dtype.kind not in "iu" or not 0 <= a[0] < n \
                    or np.any((a[1:] != 0) & (a[1:] != 1)):
                raise InvalidActionError(f"action must be integers [slot in [0, {n})] + {E} bits, got "
                                         f"{a.dtype} shape {a.shape}: {shorten(a)}")
            act[:] = a

    def action_masks(self) -> np.ndarray:
        """Valid actions for sb3-contrib's MaskablePPO (flattened per action dimension)."""
        if self.decision == "eviction":
            return self._mask.copy()
        bits = np.ones(2 * self.num_experts, bool)
        if self.decision == "prefetch":
            return bits
        return np.concatenate([self._mask, bits])

    @property
    def pending(self) -> str | None:
        """The decision now due: 'demand', 'prefetch', 'prefetch-choice', or None."""
        if self.replay is None or self._done:
            return None
        return _PENDING.get(int(self.replay.ist[K.I_PENDING]))

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode (use 'ansi' or 'rgb_array')")
            return None
        from specmd_env.envs import render as _render
        if self.render_mode == "ansi":
            return _render.render_ansi(self)
        return _render.render_rgb(self)
