"""N SpecMD environments stepped in one compiled call (``gym.make_vec(..., vectorization_mode=
"vector_entry_point")``)."""

from __future__ import annotations

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from specmd_env import kernel as K
from specmd_env.envs import _core
from specmd_env.envs.cache_env import SpecMDCacheEnv
from specmd_env.checks import shorten
from specmd_env.errors import InvalidActionError, SpecMDError


class SpecMDVectorEnv(VectorEnv):
    """``num_envs`` copies of :class:`SpecMDCacheEnv` with the same keywords, stepped together.

    One ``step`` is one compiled call (:func:`specmd_env.envs._core.step_batch`) over the N replays'
    state arenas; Python runs only for the rare events (a schedule chunk ends, an episode ends).
    Observations, masks and actions live in [N, ...] arrays that the sub-environments write into.
    Autoreset follows Gymnasium 1.x *next-step* semantics: the step after an episode ended resets that
    environment (its action is ignored, its reward is 0). Sub-environment i is seeded ``seed + i``.
    ``info`` holds ``invalid_action`` [N] every step (and ``next_use`` / ``next_experts`` with
    ``oracle_info``); an ending episode's ``metrics``, ``score`` and ``episode_reward`` appear under
    the usual vector-info masks (``info["_episode_reward"]``).

    ``variants``: a list of keyword dicts; sub-environment i is made with the common keywords updated by
    ``variants[i % len(variants)]`` -- e.g. different traces, capacities or hardware profiles, to train
    one network across them. They must share the observation and action spaces: eviction environments
    of different capacities do when ``observation_slots`` pads them to the same number of rows.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, max_episode_steps: int | None = None, variants: list | None = None,
                 **kwargs):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise SpecMDError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.num_envs = int(num_envs)
        if variants is not None and (not isinstance(variants, (list, tuple)) or not variants
                                     or not all(isinstance(v, dict) for v in variants)):
            raise SpecMDError(f"variants must be a non-empty list of keyword dicts, got {variants!r:.80}")
        variants = list(variants or [{}])
        self.envs = [SpecMDCacheEnv(**{**kwargs, **variants[i % len(variants)]}) for i in range(self.num_envs)]
        first = self.envs[0]
        for i, env in enumerate(self.envs[1:], 1):
            if env.observation_space != first.observation_space or env.action_space != first.action_space \
                    or env.decision != first.decision:
                raise SpecMDError(f"variants give sub-environments different spaces (env 0: {first.observation_space}, "
                                  f"{first.action_space}; env {i}: {env.observation_space}, {env.action_space}); "
                                  "pad eviction observations to one size with observation_slots=N")
        self.config = dict(first.config, num_envs=self.num_envs, variants=variants)
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.max_episode_steps = max_episode_steps
        N = self.num_envs
        self._obs = np.zeros((N, first.layout.size), np.float32)
        self._mask = np.ones((N, first.rows + 1), bool)
        self._act = np.zeros((N, 1 + max(env.num_experts for env in self.envs)), np.int64)
        self._orc = np.zeros((N, max(env.scratch_size for env in self.envs)), np.int64)
        self._tab = np.zeros((N, 2 * K.N_ARGS), np.int64)  # the argument tables (rows: sub-envs')
        for i, env in enumerate(self.envs):
            env._bind_buffers(self._obs[i], self._mask[i], self._act[i, :1 + env.num_experts],
                              self._orc[i, :env.scratch_size], self._tab[i:i + 1])
        self._status = np.zeros(N, np.int64)
        self._rewards = np.zeros(N, np.float64)
        self._invalid = np.zeros(N, np.int64)
        self._has_action = np.ones(N, np.int64)
        self._autoreset = np.zeros(N, bool)
        self._steps = np.zeros(N, np.int64)
        self._nodecision = np.zeros(N, bool)
        self._ep_reward = np.zeros(N, np.float64)
        self._ep_steps = np.zeros(N, np.int64)
        self._ep_invalid = np.zeros(N, np.int64)
        self._any_special = False

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def replays(self):
        return [env.replay for env in self.envs]

    def _infos(self, finals: dict[int, dict]) -> dict:
        info: dict = {"invalid_action": self._invalid == 1}
        if self.envs[0].oracle_info:
            info["next_use"], info["next_experts"] = self.envs[0].oracle_facts(self._orc)
        for i, final in finals.items():
            info = self._add_info(info, final, i)
        return info

    # -- Gymnasium API -----------------------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        for env, s in zip(self.envs, seeds):
            env.reset(seed=s, options=options)
        self._autoreset[:] = False
        self._steps[:] = 0
        self._nodecision = np.array([env._done for env in self.envs])
        self._any_special = bool(self._nodecision.any())
        self._ep_reward[:] = 0.0
        self._ep_steps[:] = 0
        self._ep_invalid[:] = 0
        return self._obs.copy(), {}

    def step(self, actions):
        actions = np.asarray(actions)
        envs = self.envs
        first = envs[0]
        N = self.num_envs
        n_actions = first.rows + 1
        if first.decision == "eviction":
            if actions.shape != (N,) or actions.dtype.kind not in "iu" or \
                    not _core.set_slots(self._act, actions, n_actions):
                raise InvalidActionError(f"actions must be {N} integers in [0, {n_actions}) (slots, {first.rows}: "
                                         f"bypass), got "
                                         f"{actions.dtype} shape {actions.shape}: {shorten(actions)}")
        elif first.decision == "prefetch":
            if actions.shape != (N, first.num_experts) or actions.dtype.kind not in "biuf" \
                    or np.any((actions != 0) & (actions != 1)):
                raise InvalidActionError(f"actions must be [{N}, {first.num_experts}] bits (0 or 1), got "
                                         f"{actions.dtype} shape {actions.shape}")
            self._act[:, 1:] = actions
        else:
            if actions.shape != (N, 1 + first.num_experts) or actions.dtype.kind not in "iu" \
                    or actions[:, 0].min() < 0 or actions[:, 0].max() >= n_actions \
                    or np.any((actions[:, 1:] != 0) & (actions[:, 1:] != 1)):
                raise InvalidActionError(f"actions must be integers [{N}, {1 + first.num_experts}] (slot in "
                                         f"[0, {n_actions}) + bits), got {actions.dtype} shape {actions.shape}")
            self._act[:] = actions
        has = self._has_action
        special = self._any_special  # an env to reset (next-step autoreset) or one that needs no decision
        if special:
            has[:] = 1
            resets = np.flatnonzero(self._autoreset)
            for i in resets:
                envs[i].reset()
                self._nodecision[i] = envs[i]._done
                self._ep_reward[i] = 0.0
                self._ep_steps[i] = 0
                self._ep_invalid[i] = 0
            has[resets] = -1
            no_decision = np.flatnonzero(self._nodecision & ~self._autoreset)
            has[no_decision] = -1
        # one compiled call: every env's step, its reward (less the penalty) and, unless its chunk ended,
        # its step and episode counters
        n_done = _core.step_batch(self._tab, has, self._status, self._rewards, self._invalid,
                                  first.invalid_action_penalty, self._steps, self._ep_reward, self._ep_steps,
                                  self._ep_invalid)
        ended = []
        if n_done:
            for i in np.flatnonzero((has == 1) & (self._status == K.DONE)):
                env = envs[i]
                status = K.DONE
                while status == K.DONE:  # a chunk ended: load the next, or the episode is over
                    if env.replay._next_chunk():
                        status = _core.step_one(env._tab.ctypes.data, 0)
                        self._rewards[i] += env._reward_part[_core.R_REWARD]
                    else:
                        env.replay.done = True
                        env._done = True
                        self._mask[i] = True
                        ended.append(int(i))
                        break
                self._steps[i] += 1
                self._ep_reward[i] += self._rewards[i]
                self._ep_steps[i] += 1
                self._ep_invalid[i] += self._invalid[i]
        if special:
            for i in no_decision:  # a replay that needed no decision: its one step ends it
                met = envs[i].replay.met
                self._rewards[i] = first.weights.reward(met[K.M_COLLISION], met[K.M_STALL], met[K.M_MISSES])
                self._nodecision[i] = False
                ended.append(int(i))
                self._steps[i] += 1
                self._ep_reward[i] += self._rewards[i]
                self._ep_steps[i] += 1
            self._steps[resets] = 0
            has[:] = 1
        terminated = np.zeros(N, bool)
        finals: dict[int, dict] = {}
        for i in ended:
            terminated[i] = True
            result = envs[i].replay.result()
            finals[i] = dict(metrics=result.as_dict(), score=first.weights.score(result),
                             episode_reward=float(self._ep_reward[i]), episode_steps=int(self._ep_steps[i]),
                             episode_invalid_actions=int(self._ep_invalid[i]))
        if self.max_episode_steps is not None:
            truncated = (self._steps >= self.max_episode_steps) & ~terminated
            self._autoreset = terminated | truncated
            self._any_special = bool(ended) or bool(truncated.any())
        else:
            truncated = np.zeros(N, bool)
            self._autoreset = terminated
            self._any_special = bool(ended)
        if special and not self._any_special:  # a reset replay that needs no decision is handled next step
            self._any_special = bool(self._nodecision.any())
        return self._obs.copy(), self._rewards.copy(), terminated, truncated, self._infos(finals)

    def reset_one(self, i: int, seed: int | None = None) -> np.ndarray:
        """Reset sub-environment ``i`` now (same-step autoreset, as Stable-Baselines3's VecEnv does) and
        return its first observation; the next step then steps it normally."""
        env = self.envs[i]
        env.reset(seed=seed)
        self._autoreset[i] = False
        self._nodecision[i] = env._done
        self._any_special = bool(self._autoreset.any() or self._nodecision.any())
        self._steps[i] = 0
        self._ep_reward[i] = 0.0
        self._ep_steps[i] = 0
        self._ep_invalid[i] = 0
        return self._obs[i].copy()

    def action_masks(self) -> np.ndarray:
        """[N, ...] masks for MaskablePPO."""
        return np.stack([env.action_masks() for env in self.envs])

    def render(self):
        return [env.render() for env in self.envs] if self.render_mode is not None else None
