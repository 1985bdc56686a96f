"""Eviction policies as agents (``specmd evaluate --agent <policy spec or file.py:NAME>``) and
``Replay.policy_victim``: an agent answering with the policy's own victim replays what simulate() does."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import specmd_env  # noqa: F401  (registers the env ids)
from specmd_env import Replay, simulate
from specmd_env.agents import load_agent
from specmd_env.agents.policy_agent import CompiledPolicyAgent
from specmd_env.catalog import get_trace
from specmd_env.cli import main as specmd
from specmd_env.errors import SpecMDError

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "layer_distance.py"
REQUESTS = [4, 9]   # two test-split requests of olmoe-synthetic


def episode(env, agent, requests=REQUESTS):
    obs, info = env.reset(seed=0, options={"requests": requests})
    done = False
    while not done:
        obs, _, done, _, info = env.step(agent.act(obs, info))
    return info


@pytest.mark.parametrize("policy", ["hobbit:weights=tuned", "lru:prefetch_at=mru-end", f"{EXAMPLE}:LAYER_DISTANCE",
                                    "expected-next-use:half_life=4"])
def test_policy_agent_replays_simulate(policy):
    env = gym.make("SpecMD-OLMoE-v0", split="test")
    agent = load_agent(policy, env)
    assert isinstance(agent, CompiledPolicyAgent) and not agent.is_oracle
    info = episode(env, agent)
    ref = simulate("olmoe-synthetic", eviction=policy, prefetch="score", requests=REQUESTS).as_dict()
    assert info["episode_steps"] > 100 and agent.bypasses_refused == 0
    for key, value in ref.items():
        if key not in ("eviction", "decisions"):
            assert info["metrics"][key] == value, key


def test_a_bypassing_policy_answers_the_bypass_action():
    policy = "expected-next-use:bypass=yes,half_life=4"
    env = gym.make("SpecMD-OLMoE-v0", split="test")
    agent = load_agent(policy, env)
    info = episode(env, agent, [4])
    ref = simulate("olmoe-synthetic", eviction=policy, prefetch="score", requests=[4])
    assert ref.bypassed > 0 and info["metrics"]["bypassed"] == ref.bypassed and agent.bypasses_refused == 0
    assert info["metrics"]["collision_misses"] == ref.collision_misses


def test_bypass_is_refused_with_a_warning_where_the_env_masks_it():
    env = gym.make("SpecMD-OLMoE-v0", split="test", bypass=False)
    agent = load_agent("expected-next-use:bypass=yes,half_life=4", env)
    with pytest.warns(RuntimeWarning, match="does not allow"):
        info = episode(env, agent, [4])
    assert agent.bypasses_refused > 0 and info["episode_invalid_actions"] == 0


def test_policy_agent_needs_an_eviction_env_and_a_known_policy():
    with pytest.raises(SpecMDError, match="decides evictions"):
        load_agent("hobbit", gym.make("SpecMD-OLMoE-Prefetch-v0"))
    with pytest.raises(SpecMDError, match="does not exist"):
        load_agent("nowhere.py:X", gym.make("SpecMD-OLMoE-v0"))
    with pytest.raises(SpecMDError, match="prefetch_at must be one of"):
        load_agent("lru:prefetch_at=sideways", gym.make("SpecMD-OLMoE-v0"))


def test_policy_victim_drives_a_replay_like_the_kernel():
    trace = get_trace("olmoe-synthetic")
    replay = Replay(trace, eviction="expected-next-use:bypass=yes,half_life=4", prefetch="score", requests=[0],
                    decide=("eviction",))
    with pytest.raises(SpecMDError, match="no eviction decision is pending"):
        replay.policy_victim()
    answers = []
    while replay.advance():
        answers.append(replay.policy_victim())
        replay.decide(answers[-1])
    ref = simulate(trace, eviction="expected-next-use:bypass=yes,half_life=4", prefetch="score", requests=[0])
    got = replay.result()
    assert -1 in answers and got.bypassed == ref.bypassed > 0
    assert (got.hits, got.misses, got.collision_misses, got.stall_seconds) == \
        (ref.hits, ref.misses, ref.collision_misses, ref.stall_seconds)


def test_evaluate_command_takes_policy_specs(capsys):
    argv = ["evaluate", "--agent", f"{EXAMPLE}:LAYER_DISTANCE", "hobbit:weights=tuned", "--seeds", "0",
            "--requests-per-episode", "1"]
    assert specmd(argv) == 0
    out = capsys.readouterr().out
    assert "layer-distance-lists" in out and "hobbit:weights=tuned" in out
    rows = [line for line in out.splitlines() if line.startswith(("layer-distance-lists", "hobbit"))]
    assert len(rows) == 2 and all(np.isfinite(float(r.split()[2].replace(",", ""))) for r in rows)
