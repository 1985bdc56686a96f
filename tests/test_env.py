"""The SpecMD Gymnasium environment: registration, keywords, errors, rewards, equality with the fast path."""

import gymnasium as gym
import numpy as np
import pytest

from specmd_env import SpecMDError, simulate
from specmd_env.agents import load_agent
from specmd_env.catalog import get_trace
from specmd_env.envs import SpecMDCacheEnv, split_requests
from specmd_env.envs.registration import ENV_IDS

SMALL = dict(requests_per_episode=1)


def run_episode(env, agent, seed=0):
    obs, info = env.reset(seed=seed)
    rewards, steps = [], 0
    while True:
        obs, r, terminated, truncated, info = env.step(agent.act(obs, info))
        rewards.append(r)
        steps += 1
        assert env.observation_space.contains(obs)
        if terminated or truncated:
            return rewards, info


def test_registered_on_import():
    for env_id in ENV_IDS:
        assert env_id in gym.registry


def test_make_with_module_prefix():
    env = gym.make("specmd_env:SpecMD-OLMoE-v0", **SMALL)
    obs, info = env.reset(seed=0)
    base = env.unwrapped
    assert isinstance(base, SpecMDCacheEnv)
    assert base.config["model"] == "olmoe-1b-7b" and base.config["capacity_slots"] == 51
    assert base.config["hardware"] == "paper-a100-5gbps" and base.config["fixed_prefetch"] == "score"
    assert env.action_space == gym.spaces.Discrete(52)  # 51 slots, then bypass
    assert info["decision"] in ("demand", "prefetch")
    assert base.replay is not None


@pytest.mark.parametrize("env_id,decision", [("SpecMD-Mixtral-v0", "eviction"), ("SpecMD-Qwen3-v0", "eviction"),
                                             ("SpecMD-OLMoE-Prefetch-v0", "prefetch"),
                                             ("SpecMD-OLMoE-Joint-v0", "joint")])
def test_ids(env_id, decision):
    env = gym.make(env_id, **SMALL)
    env.reset(seed=1)
    assert env.unwrapped.decision == decision


def test_keywords_resolve():
    env = gym.make("SpecMD-OLMoE-v0", capacity=0.1, lookahead=2, batch_size=2, w_collision=2.0, w_latency=10.0,
                   w_miss=0.5, fixed_prefetch="topk", scope="per-layer", split="train", requests_per_episode=2,
                   hardware="paper-a100-5gbps")
    c = env.unwrapped.config
    assert (c["capacity_slots"], c["lookahead"], c["batch_size"], c["scope"], c["split"]) == (102, 2, 2, "per-layer", "train")
    assert env.unwrapped.weights.collision == 2.0 and env.unwrapped.weights.miss == 0.5
    env.reset(seed=0)
    assert all(r % 5 != 4 for r in env.unwrapped.replay.plan.request_ids)


@pytest.mark.parametrize("kwargs,word", [
    (dict(hardware="no-such-gpu"), "hardware"), (dict(capacity=1.5), "capacity"), (dict(capacity=0.0), "capacity"),
    (dict(capacity=0.001), "top_k"), (dict(w_collision=-1.0), "w_collision"), (dict(w_latency=-1.0), "w_latency"),
    (dict(w_miss=-0.1), "w_miss"), (dict(decision="both"), "decision"), (dict(trace="mixtral-synthetic"), "trace shape"),
    (dict(lookahead=0), "lookahead"), (dict(batch_size=0), "batch_size"), (dict(scope="ring"), "scope"),
    (dict(split="val"), "split"), (dict(requests_per_episode=0), "requests_per_episode"),
    (dict(fixed_eviction="mru"), "eviction"), (dict(fixed_prefetch="psychic"), "prefetcher"),
    (dict(invalid_action_penalty=-1), "invalid_action_penalty"), (dict(test_domains=["mars"]), "test_domains"),
    (dict(trace="no-such-trace"), "trace"), (dict(model="gpt-5"), "model"),
])
def test_bad_input_raises_at_make(kwargs, word):
    with pytest.raises(SpecMDError, match=word):
        gym.make("SpecMD-OLMoE-v0", **kwargs)


def test_split_is_deterministic():
    trace = get_trace("olmoe-synthetic")
    test = split_requests(trace, "test")
    train = split_requests(trace, "train")
    assert list(test) == [i for i in range(trace.num_requests) if i % 5 == 4]
    assert sorted(np.concatenate([test, train])) == list(range(trace.num_requests))
    by_domain = split_requests(trace, "test", test_domains=["github"])
    assert all(trace.domains[i] == "github" for i in by_domain)


def test_same_seed_same_episode():
    def trajectory(seed):
        env = gym.make("SpecMD-OLMoE-v0", **SMALL)
        agent = load_agent("random", env, seed=3)
        rewards, info = run_episode(env, agent, seed=seed)
        return rewards, info["metrics"]
    a, b, c = trajectory(7), trajectory(7), trajectory(8)
    assert a[0] == b[0] and a[1] == b[1]
    assert a[1] != c[1]


@pytest.mark.parametrize("env_id,agent", [("SpecMD-OLMoE-v0", "random"), ("SpecMD-OLMoE-Prefetch-v0", "score"),
                                          ("SpecMD-OLMoE-Joint-v0", "lru+topk")])
def test_reward_sum_equals_score(env_id, agent):
    env = gym.make(env_id, **SMALL)
    rewards, info = run_episode(env, load_agent(agent, env))
    assert info["episode_invalid_actions"] == 0
    assert np.isclose(sum(rewards), info["score"], rtol=1e-9, atol=1e-9)
    assert np.isclose(info["episode_reward"], info["score"], rtol=1e-9, atol=1e-9)
    assert set(info["metrics"]) >= {"hits", "misses", "collision_misses", "stall_seconds", "total_seconds"}


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "least-stale", "belady", "belady-bypass"])
def test_agents_through_env_equal_fast_path(policy):
    env = gym.make("SpecMD-OLMoE-v0", split="test", requests_per_episode=None, oracle_info=policy.startswith("belady"))
    rewards, info = run_episode(env, load_agent(policy, env))
    ref = simulate("olmoe-synthetic", eviction=policy, prefetch="score", requests=env.unwrapped.split_ids).as_dict()
    got = info["metrics"]
    assert got["decisions"] == info["episode_steps"] > 1000
    for key, value in ref.items():
        if key in ("eviction", "decisions"):  # the label, and decisions (counted only when asked externally)
            continue
        assert got[key] == value, key


def test_fixed_eviction_in_prefetch_mode_equals_fast_path():
    env = gym.make("SpecMD-OLMoE-Prefetch-v0", split="test", requests_per_episode=None, fixed_eviction="lru")
    rewards, info = run_episode(env, load_agent("topk", env))
    ref = simulate("olmoe-synthetic", eviction="lru", prefetch="topk", requests=env.unwrapped.split_ids).as_dict()
    for key in ("hits", "misses", "collision_misses", "prefetches_issued", "prefetches_used", "stall_seconds"):
        assert info["metrics"][key] == ref[key], key


def test_invalid_action_falls_back_with_penalty():
    env = gym.make("SpecMD-OLMoE-v0", **SMALL, invalid_action_penalty=2.5)
    obs, info = env.reset(seed=0)
    base = env.unwrapped
    masked = np.flatnonzero(~env.unwrapped.action_masks())
    assert len(masked)  # a full cache always has pinned / in-flight slots or another scope
    expected = base.replay.slot_i[0].copy()
    ref = load_agent("least-stale", env).act(obs, info)  # the fallback's choice
    evicted_obj = expected[ref]
    obs, r, term, trunc, info = env.step(int(masked[0]))
    assert info["invalid_action"] is True
    assert evicted_obj not in base.replay.slot_i[0] or base.replay.slot_i[0][ref] != evicted_obj
    obs2, r2, *_ , info2 = env.step(load_agent("least-stale", env).act(obs, info))
    assert info2["invalid_action"] is False
    with pytest.raises(SpecMDError):
        env.step(base.rows + 1)  # outside the action space (base.rows: bypass)


def test_no_decision_episode_has_one_step():
    env = gym.make("SpecMD-Mixtral-v0", capacity=1.0, **SMALL)
    obs, info = env.reset(seed=0)
    assert info["decision"] is None and env.unwrapped.action_masks().all()
    obs, r, term, trunc, info = env.step(0)
    assert term and np.isclose(r, info["score"])


@pytest.mark.parametrize("env_id", ["SpecMD-OLMoE-v0", "SpecMD-OLMoE-Joint-v0"])
def test_render_modes(env_id):
    env = gym.make(env_id, render_mode="ansi", **SMALL)
    env.reset(seed=0)
    text = env.render()
    assert "L00" in text and "pending" in text
    env = gym.make(env_id, render_mode="rgb_array", **SMALL)
    env.reset(seed=0)
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.max() > img.min()


def test_observation_has_no_future_and_oracle_in_info():
    env = gym.make("SpecMD-OLMoE-Joint-v0", **SMALL, oracle_info=True)
    obs, info = env.reset(seed=0)
    lay = env.unwrapped.layout
    assert obs.shape == (lay.size,) and len(lay.names()) == lay.size
    assert info["next_use"].shape == (52,) and info["next_experts"].shape == (64,)
    assert "next_use" not in gym.make("SpecMD-OLMoE-v0", **SMALL).reset(seed=0)[1]


def test_vector_env_steps_and_autoresets():
    venv = gym.make_vec("SpecMD-Mixtral-v0", num_envs=3, vectorization_mode="vector_entry_point", **SMALL)
    from specmd_env.envs.vector_env import SpecMDVectorEnv
    assert isinstance(venv, SpecMDVectorEnv) and isinstance(venv, gym.vector.VectorEnv)
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3, venv.single_observation_space.shape[0])
    agents = [load_agent("lru", venv.envs[i]) for i in range(3)]
    ended, totals = 0, np.zeros(3)
    single = gym.make("SpecMD-Mixtral-v0", **SMALL)
    ref_rewards, ref_info = run_episode(single, load_agent("lru", single), seed=0)
    for _ in range(20000):
        actions = np.array([a.act(o, {}) for a, o in zip(agents, obs)])
        obs, rewards, term, trunc, info = venv.step(actions)
        totals += rewards
        if term[0] and ended == 0:
            assert np.isclose(info["episode_reward"][0], ref_info["episode_reward"])  # env 0 = seed 0 = single env
            assert info["_episode_reward"][0]
        if term.any():
            ended += int(term.sum())
            done = term.copy()
            obs, rewards, term, trunc, info = venv.step(actions)  # next-step autoreset
            assert np.all(rewards[done] == 0) and not term[done].any()
            if ended >= 4:
                break
    assert ended >= 4
