"""Agents: the interface, handcrafted agents, and load_agent."""

import gymnasium as gym
import numpy as np
import pytest

import specmd_env  # noqa: F401
from specmd_env import SpecMDError
from specmd_env.agents import Agent, JointAgent, load_agent


@pytest.fixture(scope="module")
def env():
    return gym.make("SpecMD-OLMoE-v1", requests_per_episode=1, oracle_info=True)


@pytest.mark.parametrize("name", ["lru", "fifo", "lfu", "least-stale", "random", "belady"])
def test_eviction_agents_choose_candidates(env, name):
    agent = load_agent(name, env)
    assert isinstance(agent, Agent) and agent.is_oracle == (name == "belady")
    obs, info = env.reset(seed=0)
    for _ in range(200):
        action = agent.act(obs, info)
        assert env.unwrapped.action_masks()[action]
        obs, r, term, trunc, info = env.step(action)
        assert not info["invalid_action"]
        if term:
            break


@pytest.mark.parametrize("name,oracle", [("none", False), ("topk", False), ("score", False), ("oracle", True)])
def test_prefetch_agents(name, oracle):
    env = gym.make("SpecMD-OLMoE-Prefetch-v1", requests_per_episode=1, oracle_info=oracle)
    agent = load_agent(name, env)
    assert agent.is_oracle == oracle
    obs, info = env.reset(seed=0)
    for _ in range(50):
        action = agent.act(obs, info)
        assert env.action_space.contains(action)
        obs, r, term, trunc, info = env.step(action)
    if name == "topk":
        assert action.sum() == 8


def test_joint_agent_and_oracle_labels():
    env = gym.make("SpecMD-OLMoE-Joint-v1", requests_per_episode=1, oracle_info=True)
    agent = load_agent("belady+oracle", env)
    assert isinstance(agent, JointAgent) and agent.is_oracle and agent.label == "belady+oracle (oracle)"
    obs, info = env.reset(seed=0)
    for _ in range(100):
        obs, r, term, trunc, info = env.step(agent.act(obs, info))
        assert not info["invalid_action"]


def test_mode_mismatch_and_unknown_agents(env):
    with pytest.raises(SpecMDError, match="prefetch agent"):
        load_agent("score", env)
    with pytest.raises(SpecMDError):
        load_agent("lru")  # handcrafted agents need the env
    with pytest.raises(SpecMDError):
        load_agent("lru+lfu", gym.make("SpecMD-OLMoE-Joint-v1", requests_per_episode=1))


def test_learned_agents_are_delegated(env, monkeypatch, tmp_path):
    import sys
    import types
    calls = []
    fake = types.ModuleType("specmd_env.agents.learned")
    fake.load_learned_agent = lambda spec, e: calls.append((spec, e)) or "learned"
    monkeypatch.setitem(sys.modules, "specmd_env.agents.learned", fake)
    assert load_agent(str(tmp_path / "model.zip"), env) == "learned"
    assert load_agent("ppo-olmoe", env) == "learned" and len(calls) == 2


def test_missing_learned_module_is_a_clear_error(env, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "specmd_env.agents.learned", None)
    with pytest.raises(SpecMDError, match="learned agents are unavailable"):
        load_agent("some-model.zip", env)


def test_random_agent_is_seeded(env):
    a, b = load_agent("random", env, seed=5), load_agent("random", env, seed=5)
    obs, info = env.reset(seed=0)
    assert [a.act(obs, info) for _ in range(20)] == [b.act(obs, info) for _ in range(20)]
    assert np.all(np.isfinite(obs))
