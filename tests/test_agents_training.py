"""specmd train / evaluate end to end: each algorithm trains a few hundred steps, saves, reloads as an
Agent and is evaluated through ``specmd_env.agents.evaluate``; resuming from a checkpoint; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

import specmd_env  # noqa: E402,F401  (registers the env ids)
from specmd_env.errors import SpecMDError  # noqa: E402

from specmd_env.agents import evaluate as ev  # noqa: E402
from specmd_env.agents.learned import TRAINED_DIR as TRAINED  # noqa: E402
from specmd_env.agents.learned import LearnedAgent, infer_algo, load_learned_agent  # noqa: E402
from specmd_env.agents.train import TrainConfig, load_hyperparams, parse_kwargs, train  # noqa: E402

EVICT, PREFETCH = "SpecMD-OLMoE-v0", "SpecMD-OLMoE-Prefetch-v0"
SMALL = {"requests_per_episode": 1}
FAST_PPO = {"n_steps": 64, "batch_size": 32, "n_epochs": 1}

if EVICT not in gym.registry:  # pragma: no cover - the env package is not installed
    pytest.skip("SpecMD envs are not registered", allow_module_level=True)


def _train(tmp_path, algo, env, hp, timesteps=128, **kw):
    env_kwargs = {**SMALL, **kw.pop("env_kwargs_extra", {})}
    cfg = TrainConfig(algo=algo, env=env, env_kwargs=env_kwargs, timesteps=timesteps, n_envs=kw.pop("n_envs", 1),
                      seed=0, log_dir=str(tmp_path / f"{algo}-run"), save=str(tmp_path / f"{algo}.zip"),
                      hp=hp, progress_bar=False, **kw)
    return train(cfg)


def _short_eval(spec, env_id, seeds=(0, 1), **env_kwargs):
    return ev.evaluate(spec, env_id, {**SMALL, **env_kwargs}, split="test", seeds=seeds)


def test_parse_kwargs_and_hyperparams():
    assert parse_kwargs(["capacity=0.1", "split=train", "requests_per_episode=None", "fixed_eviction=lru"]) == {
        "capacity": 0.1, "split": "train", "requests_per_episode": None, "fixed_eviction": "lru"}
    with pytest.raises(SpecMDError):
        parse_kwargs(["capacity"])
    hp = load_hyperparams("maskable_ppo", EVICT)
    assert hp["n_timesteps"] > 0 and "policy_kwargs" in hp
    assert hp["policy"] == "RowScorerMaskablePolicy" and not any(k.startswith("pretrain") for k in hp)
    assert "policy" not in load_hyperparams("maskable_ppo", "Unknown-v0")  # only the default entry applies


def test_maskable_ppo_train_save_load_evaluate(tmp_path):
    meta = _train(tmp_path, "maskable_ppo", EVICT, FAST_PPO, n_envs=2, checkpoint_freq=64, bc_teacher="belady",
                  bc_steps=128, bc_epochs=1, bc_rounds=2)  # behaviour cloning (2 DAgger rounds), then RL
    assert meta["recipe"] == "bc+rl" and meta["behaviour_cloning"]["teacher"] == "belady (oracle)"
    assert [h["played_by"] for h in meta["behaviour_cloning"]["history"]] == ["teacher", "student"]
    assert "--bc-teacher belady" in meta["command"] and Path(meta["weights_path"]).is_file()
    path = tmp_path / "maskable_ppo.zip"
    assert path.is_file() and meta["num_timesteps"] >= 128
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["algo"] == "maskable_ppo" and saved["env_kwargs"]["split"] == "train"
    assert saved["command"].startswith("specmd train --algo maskable_ppo")
    assert list((tmp_path / "maskable_ppo-run" / "checkpoints").glob("*.zip"))
    assert infer_algo(path) == "maskable_ppo"

    env = ev.make_eval_env(EVICT, dict(SMALL))
    agent = load_learned_agent(str(path), env)
    assert isinstance(agent, LearnedAgent) and not agent.is_oracle
    obs, info = env.reset(seed=0)
    action = agent.act(obs, info)
    assert env.unwrapped.action_masks()[action]  # a masked agent picks a legal slot
    env.close()

    from specmd_env.agents import load_agent
    agent2 = load_agent(str(path), env=ev.make_eval_env(EVICT, dict(SMALL)))
    assert agent2.name == agent.name

    rows = _short_eval(str(path), EVICT, seeds=(3,))
    again = _short_eval(str(path), EVICT, seeds=(3,))
    assert rows[0]["episode_reward"] == again[0]["episode_reward"]  # deterministic given the seed
    table = ev.format_table(ev.summarize(rows + _short_eval("lru", EVICT, seeds=(3,))))
    assert "lru" in table and "hit rate" in table


def test_behaviour_cloning_only_and_no_hidden_cloning(tmp_path):
    meta = _train(tmp_path, "maskable_ppo", EVICT, FAST_PPO, timesteps=0, bc_teacher="belady-bypass",
                  bc_target="next-use", bc_steps=200, bc_epochs=1, eval_freq=1)
    assert meta["recipe"] == "bc" and meta["num_timesteps"] == 0 and meta["behaviour_cloning"]["target"] == "next-use"
    rows = (tmp_path / "maskable_ppo-run" / "eval_fixed_train_episode.csv").read_text().splitlines()
    assert len(rows) == 2 and "expected-next-use:bypass=yes" in meta["eval_fixed_train_episode"]["references"]
    with pytest.raises(SpecMDError, match="--bc-teacher"):
        _train(tmp_path, "maskable_ppo", EVICT, {**FAST_PPO, "pretrain_agent": "belady"})
    with pytest.raises(SpecMDError, match="trains nothing"):
        _train(tmp_path, "maskable_ppo", EVICT, FAST_PPO, timesteps=0)


def test_training_across_variants_on_the_compiled_vector_env(tmp_path):
    meta = _train(tmp_path, "maskable_ppo", EVICT, FAST_PPO, n_envs=2, timesteps=128, vec="specmd",
                  variants=[{"capacity": 0.02}, {"trace": "qwen3-synthetic", "model": "qwen3-30b-a3b", "capacity": 0.01}],
                  env_kwargs_extra={"observation_slots": 64})
    assert meta["variants"][1]["trace"] == "qwen3-synthetic" and meta["num_timesteps"] >= 128
    assert "Discrete(65)" in meta["action_space"]


def test_ppo_prefetch_train_and_evaluate(tmp_path):
    meta = _train(tmp_path, "ppo", PREFETCH, FAST_PPO)
    capacity = meta["env_kwargs"]["capacity"]   # the observation's size depends on it
    with pytest.raises(SpecMDError, match="trained on observation space"):
        load_learned_agent(str(tmp_path / "ppo.zip"), ev.make_eval_env(PREFETCH, {"capacity": capacity / 2}))
    rows = _short_eval(str(tmp_path / "ppo.zip"), PREFETCH, seeds=(0,), capacity=capacity)
    assert np.isfinite(rows[0]["episode_reward"]) and 0.0 <= rows[0]["hit_rate"] <= 1.0


def test_dqn_eviction_and_cli_evaluate(tmp_path, capsys):
    _train(tmp_path, "dqn", EVICT, {"learning_starts": 32, "buffer_size": 1000, "train_freq": 4}, timesteps=160)
    from specmd_env.cli import main
    assert main(["evaluate", "--agent", str(tmp_path / "dqn.zip"), "lru", "--env", EVICT, "--env-kwargs",
                 "requests_per_episode=1", "--seeds", "3", "4", "--json", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "dqn" in out and "lru" in out and "95% CI" in out
    assert json.loads((tmp_path / "eval.json").read_text())["summary"][0]["n"] == 2


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """Agents are rebuilt from their metadata and given their weights with torch.load(weights_only=True);
    nothing in an archive is ever unpickled, and an archive without metadata is refused clearly."""
    import pickle

    import cloudpickle

    def refuse(*args, **kwargs):
        raise AssertionError("an agent archive was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(cloudpickle, "loads", refuse)
    agent = load_learned_agent("maskable_ppo_olmoe_evict")
    assert agent.name == "maskable_ppo_olmoe_evict"
    orphan = tmp_path / "orphan.zip"
    orphan.write_bytes((TRAINED / "maskable_ppo_olmoe_evict.zip").read_bytes())
    with pytest.raises(SpecMDError, match="no training metadata"):
        load_learned_agent(str(orphan))


def test_resume_from_checkpoint(tmp_path):
    _train(tmp_path, "maskable_ppo", EVICT, FAST_PPO, timesteps=64, checkpoint_freq=64)
    ckpts = sorted((tmp_path / "maskable_ppo-run" / "checkpoints").glob("*.zip"))
    assert ckpts
    cfg = TrainConfig(algo="maskable_ppo", env=EVICT, env_kwargs=dict(SMALL), timesteps=64, seed=1,
                      log_dir=str(tmp_path / "resumed"), save=str(tmp_path / "resumed.zip"), resume=str(ckpts[-1]),
                      progress_bar=False)
    meta = train(cfg)
    assert meta["resumed_at_timesteps"] > 0
    assert meta["num_timesteps"] >= meta["resumed_at_timesteps"] + 64


def test_keep_best_on_fixed_training_episode(tmp_path):
    meta = _train(tmp_path, "ppo", PREFETCH, FAST_PPO, timesteps=128, eval_freq=64, eval_requests=[0], keep_best=True)
    kept = meta["kept_best"]
    assert kept["timesteps"] in (0, 64, 128) and np.isfinite(kept["fixed_train_episode_return"])
    rows = (tmp_path / "ppo-run" / "eval_fixed_train_episode.csv").read_text().splitlines()
    assert rows[0].startswith("timesteps,reward") and len(rows) >= 3
    assert meta["eval_fixed_train_episode"]["requests"] == [0]


def test_dqn_on_multibinary_is_a_clear_error(tmp_path):
    with pytest.raises(SpecMDError, match="DQN needs a Discrete action space"):
        _train(tmp_path, "dqn", PREFETCH, {})


@pytest.mark.parametrize("name,env_id", [("maskable_ppo_olmoe_evict", EVICT), ("ppo_olmoe_prefetch", PREFETCH)])
def test_committed_agents_load_and_act(name, env_id):
    from specmd_env.agents.learned import TRAINED_DIR, read_metadata
    from specmd_env.agents import load_agent

    meta = read_metadata(TRAINED_DIR / f"{name}.zip")
    reports = Path(__file__).resolve().parent.parent / "agents" / "trained"  # in the checkout, not installed
    assert meta["command"].startswith("specmd train") and (reports / f"{name}.md").is_file()
    assert (reports / f"{name}_curve.png").is_file()
    shape_kwargs = {k: v for k, v in meta["env_kwargs"].items() if k == "capacity"}
    env = ev.make_eval_env(env_id, {**SMALL, **shape_kwargs})
    agent = load_agent(name, env=env)
    obs, info = env.reset(seed=0)
    for _ in range(20):
        action = agent.act(obs, info)
        assert env.action_space.contains(np.asarray(action) if np.ndim(action) else action)
        obs, _, terminated, _, info = env.step(action)
        assert not info["invalid_action"]
        if terminated:
            break


def test_unknown_learned_agent_is_a_clear_error():
    with pytest.raises(SpecMDError, match="neither a .zip"):
        load_learned_agent("no-such-agent")
    with pytest.raises(SpecMDError, match="does not exist"):
        load_learned_agent("missing.zip")


def test_mean_ci():
    m, lo, hi = ev.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 3.0 and lo < 3.0 < hi
    assert ev.mean_ci([2.0, 2.0]) == (2.0, 2.0, 2.0)
