"""Stable-Baselines3's ``VecEnv`` over :class:`specmd_env.envs.vector_env.SpecMDVectorEnv`.

SB3 steps a ``VecEnv`` with *same-step* autoreset (an ending episode's last observation goes to
``info["terminal_observation"]`` and the returned observation is the next episode's first), while a
Gymnasium vector environment resets on the next step. This adapter resets an ending sub-environment
at once (:meth:`SpecMDVectorEnv.reset_one`) and serves ``env_method("action_masks")`` for MaskablePPO,
so all sub-environments still step in one compiled call. Wrap it in ``VecMonitor`` for episode logs.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv


class SpecMDVecEnv(VecEnv):
    def __init__(self, venv):
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions = None

    def reset(self):
        seeds = self._seeds
        if all(s is None for s in seeds):
            obs, _ = self.venv.reset()
        else:  # SB3 seeds sub-environment i with seed + i, as the vector env does
            obs, _ = self.venv.reset(seed=[None if s is None else int(s) for s in seeds])
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        actions = self._actions
        if actions.dtype.kind == "f" and self.venv.single_action_space.dtype.kind in "iu":
            actions = actions.astype(np.int64)
        obs, rewards, terminated, truncated, _ = self.venv.step(actions)
        dones = terminated | truncated
        infos = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = obs[i].copy()
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            obs[i] = self.venv.reset_one(int(i))
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices):
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices

    def get_attr(self, attr_name, indices=None):
        return [getattr(self.venv.envs[i], attr_name) for i in self._indices(indices)]

    def set_attr(self, attr_name, value, indices=None) -> None:
        for i in self._indices(indices):
            setattr(self.venv.envs[i], attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        if method_name == "action_masks" and indices is None:
            return list(self.venv.action_masks())
        return [getattr(self.venv.envs[i], method_name)(*method_args, **method_kwargs) for i in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False for _ in self._indices(indices)]

    def get_images(self):
        return [None for _ in range(self.num_envs)]


__all__ = ["SpecMDVecEnv"]
