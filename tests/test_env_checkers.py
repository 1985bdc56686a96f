"""Gymnasium's and Stable-Baselines3's environment checkers pass in every decision mode."""

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import specmd_env  # noqa: F401

IDS = ["SpecMD-OLMoE-v1", "SpecMD-OLMoE-Prefetch-v1", "SpecMD-OLMoE-Joint-v1", "SpecMD-Mixtral-v1"]


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_checker(env_id):
    env = gym.make(env_id, requests_per_episode=1, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)
        gym_check_env(env.unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_checker(env_id):
    env = gym.make(env_id, requests_per_episode=1)
    sb3_check_env(env.unwrapped, warn=True)


def test_maskable_ppo_smoke():
    from sb3_contrib import MaskablePPO
    env = gym.make("SpecMD-Mixtral-v1", requests_per_episode=1)
    model = MaskablePPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
    assert env.unwrapped.action_masks()[int(action)]


def test_ppo_accepts_joint_mode():
    from stable_baselines3 import PPO
    env = gym.make("SpecMD-Mixtral-Joint-v1", requests_per_episode=1)
    PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu").learn(64)
