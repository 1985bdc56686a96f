"""User errors end in a SpecMDError (or Gymnasium's InvalidAction, as a SpecMDError too) naming the field
and value; the CLI prints it as one line and exits 2, never a traceback; types are strict (a float, a
string or a bool where an integer id belongs is refused, not cast); output paths are checked first."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from specmd_env import SpecMDError, simulate
from specmd_env.agents import evaluate as ev
from specmd_env.catalog import get_trace
from specmd_env.checks import shorten
from specmd_env.cli import main
from specmd_env.errors import InvalidActionError

SMALL = dict(requests_per_episode=1)


def one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith(f"specmd {argv[0]}: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# -- actions and ids are integers -------------------------------------------------------------------

@pytest.mark.parametrize("action", [2.7, "3", True, np.float64(1.0), np.array([3]), None])
def test_eviction_actions_of_the_wrong_type_are_refused(action):
    env = gym.make("SpecMD-OLMoE-v0", **SMALL)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match=r"action must be an integer in \[0, 52\) \(a slot, or 51: bypass") as info:
        env.step(action)
    assert isinstance(info.value, SpecMDError) and isinstance(info.value, gym.error.InvalidAction)
    env.step(np.int64(0))  # an integer of any kind is fine


def test_prefetch_bits_must_be_zero_or_one():
    env = gym.make("SpecMD-OLMoE-Prefetch-v0", **SMALL)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="each 0 or 1"):
        env.step(np.full(64, 0.5))
    with pytest.raises(InvalidActionError, match="MultiBinary"):
        env.step(["1"] * 64)
    env.step(np.ones(64, np.float32))  # Stable-Baselines3 samples MultiBinary actions as floats 0.0 / 1.0


def test_joint_and_vector_actions_must_be_integers():
    env = gym.make("SpecMD-OLMoE-Joint-v0", **SMALL)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="must be integers"):
        env.step(np.zeros(65, np.float64))
    venv = gym.make_vec("SpecMD-Mixtral-v0", num_envs=2, vectorization_mode="vector_entry_point", **SMALL)
    venv.reset(seed=0)
    with pytest.raises(InvalidActionError, match="integers in"):
        venv.step(np.array([0.0, 1.0]))
    venv.step(np.array([0, 1]))


class OnePointSeven:
    name = "bad"

    def propose(self, view):
        return [0.7]  # once silently expert 0


def test_a_prefetcher_returning_a_float_is_refused():
    with pytest.raises(SpecMDError, match=r"prefetch choice \(expert ids\) must hold integers only; item 0 is 0.7"):
        simulate("olmoe-synthetic", prefetch=OnePointSeven(), requests=[0])


def test_request_indices_are_integers():
    trace = get_trace("olmoe-synthetic")
    with pytest.raises(SpecMDError, match="request indices must hold integers only; item 1 is 1.0"):
        trace.select_requests([0, 1.0])
    assert trace.select_requests(np.array([2, 0])).num_requests == 2
    env = gym.make("SpecMD-OLMoE-v0", **SMALL)
    with pytest.raises(SpecMDError, match=r"options\['requests'\] must hold integers only"):
        env.reset(seed=0, options={"requests": [0.0]})
    with pytest.raises(SpecMDError, match=r"options\['requests'\] must be integers in \[0, 20\)"):
        env.reset(seed=0, options={"requests": [20]})


def test_long_lists_are_shortened_in_messages():
    assert shorten(range(1000)) == "[0, 1, 2, 3, 4, 5, 6, 7, ... (992 more)]"
    trace = get_trace("olmoe-synthetic")
    with pytest.raises(SpecMDError) as info:
        trace.select_requests(list(range(1000)))
    assert len(str(info.value)) < 200


# -- the CLI: one line, exit 2 ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragments", [
    (["simulate", "olmoe-synthetic", "--lookahead", "0"], ["--lookahead '0': must be >= 1"]),
    (["simulate", "olmoe-synthetic", "--seed", "-1"], ["seed must be an integer >= 0"]),
    (["trace-stats", "olmoe-synthetic", "--max-domains", "0"], ["max_domains must be an integer >= 1"]),
    (["generate", "--out", "{tmp}/g.npz", "--seed", "-1"], ["seed must be an integer >= 0, got -1"]),
    (["evaluate", "--agent", "lru", "--episodes", "0", "--seeds", "0"], ["episodes (--episodes)", "got 0"]),
    (["evaluate", "--agent", "lru", "--seeds", "1", "1"], ["seeds (--seeds) repeats [1]"]),
    (["train", "--algo", "ppo", "--n-envs", "0", "--log-dir", "{tmp}/t"], ["--n-envs (n_envs) must be an integer >= 1"]),
    (["train", "--algo", "ppo", "--timesteps", "-5", "--log-dir", "{tmp}/t"], ["--timesteps (n_timesteps)", "-5"]),
    (["train", "--algo", "ppo", "--device", "gpu0", "--log-dir", "{tmp}/t"], ["--device 'gpu0' is not a torch device"]),
    (["train", "--algo", "ppo", "--hp", "learning_rate=lin_fast", "--log-dir", "{tmp}/t"],
     ["hyperparameter learning_rate='lin_fast'"]),
])
def test_cli_user_errors_are_one_line(capsys, tmp_path, argv, fragments):
    one_line_error(capsys, [a.format(tmp=tmp_path) for a in argv], *fragments)


@pytest.mark.parametrize("hp, fragments", [
    ("foo=1", ["unknown hyperparameter(s) ['foo'] for PPO", "known: batch_size"]),
    ("learning_rate=abc", ["PPO refused a hyperparameter: The learning rate schedule must be a float",
                           "learning_rate='abc'"]),
    ("n_steps=-1", ["PPO refused a hyperparameter", "n_steps=-1"]),
    ("policy_kwargs=3", ["policy_kwargs must be a mapping, got 3"]),
])
def test_bad_hyperparameters_are_one_line(capsys, tmp_path, hp, fragments):
    one_line_error(capsys, ["train", "--algo", "ppo", "--hp", hp, "--timesteps", "10", "--log-dir", str(tmp_path),
                            "--no-progress-bar"], *fragments)


# -- output paths are checked before the work ---------------------------------------------------------

@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("")
    return path


def test_evaluate_checks_json_before_any_episode(capsys, monkeypatch, a_file):
    def no_work(*args, **kwargs):
        raise AssertionError("episodes ran before --json was checked")
    monkeypatch.setattr(ev, "evaluate", no_work)
    one_line_error(capsys, ["evaluate", "--agent", "lru", "--seeds", "0", "--json", str(a_file / "x.json")],
                   f"--json '{a_file / 'x.json'}': '{a_file}' is a file, not a folder")


@pytest.mark.parametrize("argv, option", [
    (["trace-stats", "olmoe-synthetic", "--markdown", "{bad}"], "--markdown"),
    (["generate", "--out", "{bad}"], "--out"),
    (["import-allenai", "{file}", "--out", "{bad}"], "--out"),
    (["record", "--model", "x", "--prompts", "{file}", "--out", "{bad}", "--max-new-tokens", "1"], "--out"),
    (["train", "--algo", "ppo", "--log-dir", "{file}"], "--log-dir"),
    (["train", "--algo", "ppo", "--log-dir", "{dir}", "--save", "{bad}"], "--save"),
    (["leaderboard", "--out", "{file}"], "--out"),
])
def test_output_paths_are_checked_first(capsys, tmp_path, a_file, argv, option):
    bad = a_file / "below-a-file.npz"
    argv = [a.format(bad=bad, file=a_file, dir=tmp_path / "logs") for a in argv]
    err = one_line_error(capsys, argv, f"{option} '")
    assert "is a file, not a folder" in err
