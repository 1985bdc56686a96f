"""N SpecMD environments stepped in one compiled call (``gym.make_vec(..., vectorization_mode=
"vector_entry_point")``)."""

from __future__ import annotations

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numba import typed

from specmd_env import kernel as K
from specmd_env.envs import _core
from specmd_env.envs.cache_env import SpecMDCacheEnv
from specmd_env.errors import SpecMDError


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
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, max_episode_steps: int | None = None, **kwargs):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise SpecMDError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.envs = [SpecMDCacheEnv(**kwargs) for _ in range(self.num_envs)]
        first = self.envs[0]
        self.config = dict(first.config, num_envs=self.num_envs)
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.max_episode_steps = max_episode_steps
        N, C, E = self.num_envs, first.capacity, first.num_experts
        self._obs = np.zeros((N, first.layout.size), np.float32)
        self._mask = np.ones((N, C), bool)
        self._act = np.zeros((N, 1 + E), np.int64)
        self._orc = np.zeros((N, C + E), np.int64)
        for i, env in enumerate(self.envs):
            env._bind_buffers(self._obs[i], self._mask[i], self._act[i], self._orc[i])
        self._lists = None
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

    # -- plumbing --------------------------------------------------------------------------------
    def _sync(self, i: int | None = None) -> None:
        """Refresh the typed lists of arenas (all of them, or env i's after a reset or chunk change)."""
        if self._lists is None or i is None:
            self._lists = [typed.List([env._args[k] for env in self.envs]) for k in range(6)]
        else:
            for k in range(6):
                self._lists[k][i] = self.envs[i]._args[k]

    @property
    def replays(self):
        return [env.replay for env in self.envs]

    def _infos(self, finals: dict[int, dict]) -> dict:
        info: dict = {"invalid_action": self._invalid == 1}
        if self.envs[0].oracle_info:
            C = self.envs[0].capacity
            info["next_use"] = self._orc[:, :C].copy()
            info["next_experts"] = self._orc[:, C:].copy()
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
        self._sync()
        self._autoreset[:] = False
        self._steps[:] = 0
        self._nodecision = np.array([env._done for env in self.envs])
        self._ep_reward[:] = 0.0
        self._ep_steps[:] = 0
        self._ep_invalid[:] = 0
        return self._obs.copy(), {}

    def step(self, actions):
        actions = np.asarray(actions)
        envs = self.envs
        first = envs[0]
        if first.decision == "eviction":
            if actions.shape != (self.num_envs,) or actions.min() < 0 or actions.max() >= first.capacity:
                raise SpecMDError(f"actions must be {self.num_envs} slot indices in [0, {first.capacity}), got {actions!r}")
            self._act[:, 0] = actions
        elif first.decision == "prefetch":
            if actions.shape != (self.num_envs, first.num_experts) or np.any((actions != 0) & (actions != 1)):
                raise SpecMDError(f"actions must be [{self.num_envs}, {first.num_experts}] bits, got shape {actions.shape}")
            self._act[:, 1:] = actions
        else:
            if actions.shape != (self.num_envs, 1 + first.num_experts) or actions[:, 0].min() < 0 \
                    or actions[:, 0].max() >= first.capacity or np.any((actions[:, 1:] != 0) & (actions[:, 1:] != 1)):
                raise SpecMDError(f"actions must be [{self.num_envs}, {1 + first.num_experts}] (slot + bits)")
            self._act[:] = actions
        has = self._has_action
        has[:] = 1
        resets = np.flatnonzero(self._autoreset)
        for i in resets:
            envs[i].reset()
            self._sync(int(i))
            self._nodecision[i] = envs[i]._done
            self._ep_reward[i] = 0.0
            self._ep_steps[i] = 0
            self._ep_invalid[i] = 0
        has[resets] = -1
        no_decision = np.flatnonzero(self._nodecision & ~self._autoreset)
        has[no_decision] = -1
        self._rewards[:] = 0.0
        self._invalid[:] = 0
        _core.step_batch(*self._lists, self._obs, self._mask, self._act, self._orc, has, self._status,
                         self._rewards, self._invalid)
        stepped = has == 1
        penalty = first.invalid_action_penalty
        if penalty:
            self._rewards -= penalty * (self._invalid == 1)
        ended = []
        for i in np.flatnonzero(stepped & (self._status == K.DONE)):
            env = envs[i]
            status = K.DONE
            while status == K.DONE:  # a chunk ended: load the next, or the episode is over
                if env.replay._next_chunk():
                    env._load_chunk()
                    status = _core.step_core(*env._args, 0)
                    self._rewards[i] += env._sf[_core.F_REWARD]
                    self._sync(int(i))
                else:
                    env.replay.done = True
                    env._done = True
                    self._mask[i] = True
                    ended.append(int(i))
                    break
        for i in no_decision:  # a replay that needed no decision: its one step ends it
            met = envs[i].replay.met
            self._rewards[i] = first.weights.reward(met[K.M_COLLISION], met[K.M_STALL], met[K.M_MISSES])
            self._nodecision[i] = False
            ended.append(int(i))
        stepped[no_decision] = True
        self._rewards[resets] = 0.0
        self._steps += stepped
        self._ep_reward += np.where(stepped, self._rewards, 0.0)
        self._ep_steps += stepped
        self._ep_invalid += self._invalid
        terminated = np.zeros(self.num_envs, bool)
        finals: dict[int, dict] = {}
        for i in ended:
            terminated[i] = True
            result = envs[i].replay.result()
            finals[i] = dict(metrics=result.as_dict(), score=first.weights.score(result),
                             episode_reward=float(self._ep_reward[i]), episode_steps=int(self._ep_steps[i]),
                             episode_invalid_actions=int(self._ep_invalid[i]))
        self._steps[resets] = 0
        truncated = np.zeros(self.num_envs, bool)
        if self.max_episode_steps is not None:
            truncated = (self._steps >= self.max_episode_steps) & ~terminated
        self._autoreset = terminated | truncated
        return self._obs.copy(), self._rewards.copy(), terminated, truncated, self._infos(finals)

    def action_masks(self) -> np.ndarray:
        """[N, ...] masks for MaskablePPO."""
        return np.stack([env.action_masks() for env in self.envs])

    def render(self):
        return [env.render() for env in self.envs] if self.render_mode is not None else None
