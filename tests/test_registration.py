"""gym.make with a keyword the SpecMD environments do not take names it, suggests the near one, lists the
valid ones -- a SpecMDError, not a bare TypeError from deep inside the constructor."""

from __future__ import annotations

import gymnasium as gym
import pytest

import specmd_env  # noqa: F401  (registers the ids)
from specmd_env import SpecMDError
from specmd_env.envs.registration import env_keywords


def test_unknown_keyword_names_it_and_the_near_valid_one():
    with pytest.raises(SpecMDError, match=r"unknown keyword 'eviction' \(did you mean 'fixed_eviction'") as info:
        gym.make("SpecMD-OLMoE-v1", eviction="lru")
    assert "valid keywords: " + ", ".join(env_keywords()) in str(info.value)


def test_several_unknown_and_no_near_name():
    with pytest.raises(SpecMDError, match=r"unknown keywords 'capacty' \(did you mean 'capacity'\?\), 'zzz' for"):
        gym.make("SpecMD-Mixtral-v1", capacty=0.1, zzz=1)


def test_vector_entry_point_checks_too():
    with pytest.raises(SpecMDError, match=r"unknown keyword 'bach_size' \(did you mean 'batch_size'"):
        gym.make_vec("SpecMD-OLMoE-v1", num_envs=2, vectorization_mode="vector_entry_point", bach_size=2)


def test_valid_keywords_still_make_the_env():
    env = gym.make("SpecMD-OLMoE-v1", fixed_eviction="lru", requests_per_episode=1, render_mode="ansi")
    assert env.unwrapped.config["fixed_eviction"] == "lru" and env.unwrapped.config["requests_per_episode"] == 1
    env.reset(seed=0)
    env.close()
