"""``specmd train``: train an RL eviction or prefetch agent with Stable-Baselines3 (rl-zoo3 style).

    specmd train --algo maskable_ppo --env SpecMD-OLMoE-v0 --seed 0 --eval-freq 50000 \\
        --save runs/agents/my_agent.zip

Hyperparameters come from ``specmd_env/data/hyperparams/<algo>.yml`` keyed by env id (``default`` applies to
every env; the env's own entry overrides it); ``--hyperparams FILE`` reads another file of the same
shape and ``--hp key=value`` overrides single entries. Besides the algorithm's arguments an entry may
name ``n_timesteps``, ``n_envs``, ``policy`` and ``env_kwargs``.

Behaviour cloning is a flag, never a hidden default: ``--bc-teacher belady-bypass`` first fits the
policy to a teacher's decisions on training requests (``--bc-steps`` per round, ``--bc-rounds`` DAgger
rounds, ``--bc-epochs``; :mod:`specmd_env.agents.imitation`), then RL runs ``--timesteps`` steps
(``--timesteps 0``: behaviour cloning only). The three recipes: ``--bc-teacher T --timesteps 0`` (BC
only), no ``--bc-teacher`` (RL only), ``--bc-teacher T --timesteps N`` (BC then RL).

``--variants "trace=qwen3-synthetic capacity=0.02" "capacity=0.1" ...`` trains one network across
settings: sub-environment i uses the common ``--env-kwargs`` updated by variant i mod the number of
variants (eviction environments of different capacities need ``observation_slots`` to share spaces).
The default vectorisation (``--vec specmd``) steps all sub-environments in one compiled call
(:class:`specmd_env.envs.vector_env.SpecMDVectorEnv`).

A row-scorer policy (``RowScorerMaskablePolicy``) is also exported as ``<save>.npz`` (plain arrays,
:mod:`specmd_env.agents.compiled`): the compiled eviction policy that the leaderboard and ``simulate``
run, and that ``--eval-freq`` uses for the learning curve.

Training uses the env's deterministic ``split="train"`` requests unless ``--env-kwargs split=...`` says
otherwise; evaluate with ``specmd evaluate --split test``. ``--eval-freq N`` plays the greedy policy on a
fixed episode of *training* requests every N steps (the learning curve; ``--keep-best`` saves the best
of those policies, model selection on training data only). Every run writes, under ``--log-dir``:
TensorBoard logs (``tb/``), Monitor CSVs (``monitor/``), periodic checkpoints (``checkpoints/``), and
the model (``--save``, default ``<log-dir>/model.zip``) with its full configuration and exact command
beside it (``<model>.json``) and a learning curve (``<model>_curve.png``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from specmd_env.checks import count, integer, shorten
from specmd_env.errors import SpecMDError
from specmd_env.outputs import writable_dir, writable_file

HYPERPARAMS_DIR = Path(str(resources.files("specmd_env").joinpath("data", "hyperparams")))  # package data
TRAIN_ALGOS = ("ppo", "maskable_ppo", "dqn")
# Keys of a hyperparameter entry that are not algorithm constructor arguments.
RUN_KEYS = ("n_timesteps", "n_envs", "policy", "env_kwargs", "vec", "normalize")
VECS = ("specmd", "dummy", "subproc")


@dataclass
class TrainConfig:
    """Everything one training run depends on (saved as JSON beside the model)."""

    algo: str                                   # ppo | maskable_ppo | dqn
    env: str = "SpecMD-OLMoE-v0"                 # a registered gymnasium id
    env_kwargs: dict = field(default_factory=dict)  # gym.make keywords (split defaults to "train")
    timesteps: int | None = None                # env steps to train (None: the hyperparameter file's n_timesteps)
    n_envs: int | None = None                   # parallel envs (None: the hyperparameter file's, else 1)
    vec: str = "specmd"                         # specmd (one compiled call) | dummy | subproc
    seed: int = 0
    device: str = "cpu"
    log_dir: str | None = None                  # default runs/agents/<algo>-<env>-s<seed>
    checkpoint_freq: int = 0                    # env steps between checkpoints (0: none)
    resume: str | None = None                   # a .zip to continue training from
    save: str | None = None                     # default <log_dir>/model.zip
    hyperparams: str | None = None              # YAML file (default specmd_env/data/hyperparams/<algo>.yml)
    hp: dict = field(default_factory=dict)      # single hyperparameter overrides
    progress_bar: bool = True
    threads: int = 1                            # torch CPU threads
    name: str | None = None                     # a name for the agent (metadata; default: the model's stem)
    eval_freq: int = 0                          # env steps between greedy evaluations on a fixed TRAIN episode (0: none)
    eval_requests: list | None = None           # trace request ids of that episode (default: the train split's first 2)
    keep_best: bool = False                     # save the evaluation with the best fixed-TRAIN-episode return, not the last
    variants: list | None = None                # per-sub-env keyword overrides (train across settings)
    bc_teacher: str | None = None               # behaviour cloning from this agent first (None: no cloning)
    bc_steps: int = 50_000                      # decisions gathered per cloning round
    bc_rounds: int = 1                          # 1: the teacher's trajectories only; more: DAgger rounds
    bc_epochs: int = 10                         # passes over the gathered decisions per round
    bc_target: str = "choice"                   # choice: the teacher's decisions; next-use: Belady's key, per row
    bc_ties: str = "set"                        # set: -log P(any of the teacher's equally good rows); teacher: its choice
    bc_every: int = 1                           # keep every n-th decision
    bc_lr: float = 1e-3


# -- small parsers --------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, 'None'/'null' -> None, '[1,2]' -> [1, 2], else the string."""
    if text in ("None", "none", "null", "~"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads '1e-4' as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_kwargs(items: list[str] | None, what: str = "--env-kwargs") -> dict[str, Any]:
    """``["capacity=0.1", "split=train"]`` -> ``{"capacity": 0.1, "split": "train"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SpecMDError(f"{what} entries are key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def load_hyperparams(algo: str, env_id: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The merged hyperparameters of ``algo`` on ``env_id``: the file's ``default`` entry, then ``env_id``'s."""
    path = Path(path) if path else HYPERPARAMS_DIR / f"{algo}.yml"
    if not path.is_file():
        raise SpecMDError(f"hyperparameter file {path} does not exist")
    with open(path) as fh:
        table = yaml.safe_load(fh) or {}
    if not isinstance(table, dict):
        raise SpecMDError(f"{path} must map env ids (and 'default') to hyperparameters")
    merged: dict[str, Any] = {}
    for key in ("default", env_id):
        entry = table.get(key) or {}
        for name, value in entry.items():
            if name in ("policy_kwargs", "env_kwargs") and isinstance(value, dict):
                merged[name] = {**merged.get(name, {}), **value}
            else:
                merged[name] = value
    return merged


_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "elu": "ELU", "leaky_relu": "LeakyReLU", "gelu": "GELU"}


def _policy_kwargs(raw: dict | None) -> dict:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise SpecMDError(f"hyperparameter policy_kwargs must be a mapping, got {raw!r:.80}")
    import torch.nn as nn

    out = dict(raw)
    act = out.get("activation_fn")
    if isinstance(act, str):
        key = act.lower().replace("nn.", "")
        if key not in _ACTIVATIONS:
            raise SpecMDError(f"unknown activation_fn {act!r}; known: {', '.join(_ACTIVATIONS)}")
        out["activation_fn"] = getattr(nn, _ACTIVATIONS[key])
    return out


def _schedule(name: str, value):
    """rl-zoo3 'lin_3e-4' -> a linear schedule from 3e-4 to 0."""
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            start = float(value[4:])
        except ValueError:
            raise SpecMDError(f"hyperparameter {name}={value!r}: a linear schedule is lin_<start>, e.g. lin_3e-4") \
                from None
        return lambda progress_remaining: progress_remaining * start
    return value


_SET_BY_TRAIN = ("policy", "env", "seed", "device", "tensorboard_log", "verbose", "_init_setup_model")


def algo_kwargs(cls, hp: dict) -> dict:
    """The hyperparameters that go to the SB3 algorithm ``cls``, each checked by name against its
    constructor (an unknown or misspelt one is an error naming it, not a TypeError deep inside SB3)."""
    kwargs = {k: _schedule(k, v) for k, v in hp.items() if k not in RUN_KEYS}
    known = set(inspect.signature(cls.__init__).parameters) - set(_SET_BY_TRAIN) - {"self", "kwargs"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise SpecMDError(f"unknown hyperparameter(s) {shorten(unknown)} for {cls.__name__} (from --hp or the "
                          f"hyperparameter file; {', '.join(_SET_BY_TRAIN[2:5])} are set by specmd train); known: "
                          f"{', '.join(sorted(known))}")
    kwargs["policy_kwargs"] = _policy_kwargs(hp.get("policy_kwargs"))
    return kwargs


def _new_model(cls, policy, env, kwargs: dict, **fixed):
    """``cls(policy, env, ...)``: SB3 checks hyperparameter values with asserts and TypeErrors raised from
    its constructor; those are the user's values, so they come back as one SpecMDError naming them."""
    try:
        return cls(policy, env, **fixed, **kwargs)
    except (AssertionError, TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "policy_kwargs" or v)
        raise SpecMDError(f"{cls.__name__} refused a hyperparameter: {str(exc).strip()[:200]} (hyperparameters: "
                          f"{shown[:300]})") from None


def _check_device(device: str) -> None:
    import torch
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise SpecMDError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, auto)") from None


def resolve_policy(name: str):
    """'MlpPolicy' (SB3's own names) as is; a scorer policy of specmd_env.agents.learned by name; 'module:Class' imported."""
    from specmd_env.agents.learned import POLICIES

    if name in POLICIES:
        return POLICIES[name]
    if ":" in name:
        import importlib

        module, cls = name.split(":", 1)
        return getattr(importlib.import_module(module), cls)
    return name


# -- environments --------------------------------------------------------------------------------------

def make_env_kwargs(env_kwargs: dict | None, split: str = "train") -> dict:
    kwargs = dict(env_kwargs or {})
    kwargs.setdefault("split", split)
    return kwargs


def _check_env_id(env_id: str) -> None:
    import gymnasium as gym
    import specmd_env  # noqa: F401  (registers the SpecMD ids)

    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if "SpecMD" in k)
        raise SpecMDError(f"unknown env id {env_id!r}; SpecMD ids: {', '.join(known) or '(none registered)'}")


def build_vec_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict, vec: str = "specmd",
                  monitor_dir: str | None = None, variants: list | None = None):
    """A monitored SB3 VecEnv of ``env_id``: ``vec="specmd"`` steps every sub-environment in one compiled
    call (``gym.make_vec(..., vectorization_mode="vector_entry_point")``); ``dummy`` / ``subproc`` are
    SB3's own. Sub-environment i is made with ``env_kwargs`` updated by ``variants[i % len(variants)]``."""
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

    _check_env_id(env_id)
    if vec not in VECS:
        raise SpecMDError(f"--vec must be one of {', '.join(VECS)}, got {vec!r}")
    variants = list(variants or [{}])
    if vec == "specmd":
        from specmd_env.agents.vec import SpecMDVecEnv

        venv = SpecMDVecEnv(gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point",
                                         variants=variants, **env_kwargs))
        venv.seed(seed)
        filename = None
        if monitor_dir is not None:
            Path(monitor_dir).mkdir(parents=True, exist_ok=True)
            filename = str(Path(monitor_dir) / "vec")
        return VecMonitor(venv, filename=filename)
    if len(variants) > 1:
        fns = [(lambda kw: (lambda: gym.make(env_id, **kw)))({**env_kwargs, **variants[i % len(variants)]})
               for i in range(n_envs)]
        venv = (SubprocVecEnv(fns) if vec == "subproc" and n_envs > 1 else DummyVecEnv(fns))
        venv.seed(seed)
        return VecMonitor(venv, filename=str(Path(monitor_dir) / "vec") if monitor_dir else None)
    vec_cls = SubprocVecEnv if vec == "subproc" and n_envs > 1 else DummyVecEnv
    vec_kwargs = {"start_method": "fork" if sys.platform.startswith("linux") else "spawn"} if vec_cls is SubprocVecEnv else None
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, vec_env_cls=vec_cls,
                        vec_env_kwargs=vec_kwargs, monitor_dir=monitor_dir)


def check_algo_env(algo: str, action_space) -> None:
    """A clear error for algorithm / action-space combinations SB3 cannot train."""
    from gymnasium import spaces

    if algo == "dqn" and not isinstance(action_space, spaces.Discrete):
        raise SpecMDError(f"DQN needs a Discrete action space, but this env's is {action_space}; "
                          "use --algo ppo (MultiBinary / MultiDiscrete / Box) or maskable_ppo (Discrete with masks)")
    if algo == "maskable_ppo" and not isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete,
                                                                 spaces.MultiBinary)):
        raise SpecMDError(f"MaskablePPO needs a Discrete, MultiDiscrete or MultiBinary action space, got {action_space}")


def parse_variants(items: list[str] | None) -> list[dict] | None:
    """``["trace=qwen3-synthetic capacity=0.02", "capacity=0.1"]`` -> a list of keyword dicts."""
    if not items:
        return None
    return [parse_kwargs(item.split(), "--variants") for item in items]


# -- behaviour cloning ------------------------------------------------------------------------------------

def _clone(model, cfg: TrainConfig, env_kwargs: dict, variants: list[dict] | None) -> dict:
    """Behaviour cloning of ``cfg.bc_teacher`` into ``model``'s policy (see :mod:`specmd_env.agents.imitation`):
    each round gathers ``bc_steps`` decisions spread over the variants."""
    import gymnasium as gym
    from gymnasium import spaces

    from specmd_env.agents import load_agent
    from specmd_env.agents.imitation import Demonstrations, collect, fit, greedy_student

    if not isinstance(model.action_space, spaces.Discrete) or not hasattr(model.policy, "action_net"):
        raise SpecMDError("--bc-teacher clones eviction decisions into an actor-critic policy (ppo or maskable_ppo on "
                          f"a Discrete action space); this run has {type(model).__name__} on {model.action_space}")
    variants = list(variants or [{}])
    steps = count("--bc-steps", cfg.bc_steps, minimum=1)
    rounds = count("--bc-rounds", cfg.bc_rounds, minimum=1)
    epochs = count("--bc-epochs", cfg.bc_epochs, minimum=1)
    every = count("--bc-every", cfg.bc_every, minimum=1)
    demos, history, label = None, [], cfg.bc_teacher
    t0 = time.time()
    for r in range(rounds):
        student = None if r == 0 else greedy_student(model.policy)
        for i, variant in enumerate(variants):
            env = gym.make(cfg.env, **{**env_kwargs, **variant, "oracle_info": True})
            teacher = load_agent(cfg.bc_teacher, env, seed=cfg.seed)
            label = getattr(teacher, "label", label)
            share = -(-steps // len(variants))
            got = collect(env, teacher, share, seed=cfg.seed + 1000 * r + i, student=student, ties=cfg.bc_ties,
                          every=every, target=cfg.bc_target)
            env.close()
            demos = got if demos is None else demos.extend(got)
        fitted = fit(model.policy, demos, epochs, cfg.seed + r, lr=cfg.bc_lr)
        history.append({"round": r + 1, "played_by": "teacher" if r == 0 else "student", "total": len(demos),
                        **fitted, "seconds": round(time.time() - t0, 1)})
        print(f"behaviour cloning round {r + 1}/{rounds} (played by the {history[-1]['played_by']}): {len(demos)} "
              f"decisions, loss {fitted['final_loss']:.4f}, greedy choice among the teacher's best "
              f"{fitted['greedy_in_target']:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    assert isinstance(demos, Demonstrations)
    return {"teacher": label, "target": cfg.bc_target, "steps_per_round": steps, "rounds": rounds, "epochs": epochs,
            "ties": cfg.bc_ties,
            "every": every, "lr": cfg.bc_lr, "history": history, "wall_seconds": round(time.time() - t0, 1)}


# -- a learning curve on a fixed training episode ---------------------------------------------------------

class FixedEpisodeEval:
    """Greedy return of a policy on one fixed episode of TRAINING requests (never the test split), for a
    learning curve that is not confounded by which requests an episode happened to draw. A row-scorer
    policy is replayed compiled (its exported weights as an eviction policy: milliseconds per episode);
    any other plays the environment step by step."""

    def __init__(self, env_id: str, env_kwargs: dict, requests: list | None = None):
        import gymnasium as gym

        kwargs = {**env_kwargs, "split": env_kwargs.get("split", "train")}
        if kwargs["split"] == "test":
            kwargs["split"] = "train"
        self.env = gym.make(env_id, **kwargs)
        split_ids = self.env.unwrapped.split_ids
        self.requests = [int(r) for r in (requests if requests is not None else split_ids[:2])]

    def compiled(self, policy) -> dict[str, float]:
        """The episode replayed with an eviction policy (an EvictionPolicy or a name), scored as the env does."""
        from specmd_env.simulate import simulate

        base = self.env.unwrapped
        result = simulate(**base.replay_settings(), eviction=policy, requests=self.requests, seed=0)
        return {"reward": float(base.weights.score(result)), "steps": int(result.evictions + result.bypassed),
                "hit_rate": float(result.hit_rate)}

    def episode(self, agent) -> dict[str, float]:
        weights = _exported(getattr(agent, "model", None))
        if weights is not None:
            from specmd_env.agents.compiled import learned_eviction
            return self.compiled(learned_eviction(weights, bypass="yes" if self.env.unwrapped.bypass else "no"))
        obs, info = self.env.reset(seed=0, options={"requests": self.requests})
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, info = self.env.step(agent.act(obs, info))
            total += float(reward)
            steps += 1
            done = terminated or truncated
        metrics = info.get("metrics", {})
        return {"reward": total, "steps": steps, "hit_rate": float(metrics.get("hit_rate", float("nan")))}

    def references(self, names=None) -> dict[str, float]:
        """The same episode under handcrafted policies: eviction ones compiled (labels say oracle),
        prefetch ones as agents in the environment."""
        import gymnasium as gym
        from specmd_env.agents import load_agent
        from specmd_env.eviction import get_eviction

        base = self.env.unwrapped
        if base.decision == "eviction":
            names = names or ("lru", "layer-distance", "expected-next-use:bypass=yes", "belady-bypass")
            return {get_eviction(n).label: self.compiled(n)["reward"] for n in names}
        out = {}
        for name in names or ("none", "score", "oracle"):
            try:
                env = gym.make(self.env.spec.id, **{**self.env.spec.kwargs, "oracle_info": True})
                agent = load_agent(name, env)
            except SpecMDError:
                continue
            obs, info = env.reset(seed=0, options={"requests": self.requests})
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(agent.act(obs, info))
                total += float(reward)
                done = terminated or truncated
            out[agent.label] = total
            env.close()
        return out


def _exported(model):
    """A model's row-scorer weights (:class:`specmd_env.agents.compiled.ScorerWeights`), or None."""
    from specmd_env.agents.learned import RowScorer

    extractor = getattr(getattr(model, "policy", None), "pi_features_extractor", None) or \
        getattr(getattr(model, "policy", None), "features_extractor", None)
    return extractor.export() if isinstance(extractor, RowScorer) else None


def _eval_callback(evaluator: FixedEpisodeEval, algo: str, freq: int, n_envs: int, csv_path: Path,
                   best_path: Path | None = None):
    from stable_baselines3.common.callbacks import BaseCallback

    from specmd_env.agents.learned import LearnedAgent

    class _Callback(BaseCallback):
        def __init__(self):
            super().__init__()
            self.last = -freq
            self.best = (-float("inf"), None)  # (return, timesteps)

        def _evaluate(self):
            agent = LearnedAgent(self.model, algo, "current", env=evaluator.env)
            row = evaluator.episode(agent)
            self.logger.record("eval/fixed_train_episode_reward", row["reward"])
            self.logger.record("eval/fixed_train_episode_hit_rate", row["hit_rate"])
            new = not csv_path.exists()
            with open(csv_path, "a") as fh:
                if new:
                    fh.write("timesteps,reward,hit_rate,steps\n")
                fh.write(f"{self.num_timesteps},{row['reward']},{row['hit_rate']},{row['steps']}\n")
            if best_path is not None and row["reward"] > self.best[0]:
                self.best = (row["reward"], self.num_timesteps)
                self.model.save(str(best_path))

        def _on_training_start(self):
            if self.num_timesteps == 0 or not csv_path.exists():
                self._evaluate()
            self.last = self.num_timesteps

        def _on_step(self) -> bool:
            if self.num_timesteps - self.last >= freq:
                self.last = self.num_timesteps
                self._evaluate()
            return True

        def _on_training_end(self):
            if self.num_timesteps != self.last:
                self._evaluate()

    return _Callback()


# -- training -----------------------------------------------------------------------------------------

def canonical_command(cfg: TrainConfig) -> str:
    """The ``specmd train`` command line that reproduces ``cfg``."""
    parts = ["specmd", "train", "--algo", cfg.algo, "--env", cfg.env]
    if cfg.env_kwargs:
        parts += ["--env-kwargs"] + [f"{k}={'None' if v is None else v}" for k, v in cfg.env_kwargs.items()]
    if cfg.variants:
        parts += ["--variants"] + [" ".join(f"{k}={v}" for k, v in variant.items()) for variant in cfg.variants]
    if cfg.timesteps is not None:
        parts += ["--timesteps", str(cfg.timesteps)]
    if cfg.n_envs is not None:
        parts += ["--n-envs", str(cfg.n_envs)]
    parts += ["--vec", cfg.vec, "--seed", str(cfg.seed), "--device", cfg.device]
    if cfg.bc_teacher:
        parts += ["--bc-teacher", cfg.bc_teacher, "--bc-target", cfg.bc_target, "--bc-steps", str(cfg.bc_steps),
                  "--bc-rounds", str(cfg.bc_rounds), "--bc-epochs", str(cfg.bc_epochs), "--bc-ties", cfg.bc_ties, "--bc-every", str(cfg.bc_every),
                  "--bc-lr", f"{cfg.bc_lr:g}"]
    if cfg.log_dir:
        parts += ["--log-dir", cfg.log_dir]
    if cfg.checkpoint_freq:
        parts += ["--checkpoint-freq", str(cfg.checkpoint_freq)]
    if cfg.resume:
        parts += ["--resume", cfg.resume]
    if cfg.save:
        parts += ["--save", cfg.save]
    if cfg.hyperparams:
        parts += ["--hyperparams", cfg.hyperparams]
    if cfg.hp:
        parts += ["--hp"] + [f"{k}={v}" for k, v in cfg.hp.items()]
    if cfg.name:
        parts += ["--name", cfg.name]
    if cfg.eval_freq:
        parts += ["--eval-freq", str(cfg.eval_freq)]
    if cfg.eval_requests:
        parts += ["--eval-requests"] + [str(r) for r in cfg.eval_requests]
    if cfg.keep_best:
        parts += ["--keep-best"]
    if cfg.threads != 1:
        parts += ["--threads", str(cfg.threads)]
    return shlex.join(parts)


def _versions() -> dict[str, str]:
    import gymnasium
    import sb3_contrib
    import stable_baselines3
    import torch

    return {"python": platform.python_version(), "stable_baselines3": stable_baselines3.__version__,
            "sb3_contrib": sb3_contrib.__version__, "gymnasium": gymnasium.__version__, "torch": torch.__version__,
            "numpy": np.__version__}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one training; return its metadata (also written to ``<save>.json``)."""
    import torch
    from stable_baselines3.common.callbacks import CheckpointCallback

    from specmd_env.agents.learned import algo_class

    algo = cfg.algo.lower().replace("-", "_")
    if algo not in TRAIN_ALGOS:
        raise SpecMDError(f"--algo must be one of {', '.join(TRAIN_ALGOS)}, got {cfg.algo!r}")
    cfg.algo = algo
    # every setting is checked before any work: a typo must not cost a training run
    torch.set_num_threads(integer("--threads", cfg.threads, minimum=1))
    _check_device(cfg.device)
    integer("--seed", cfg.seed, minimum=0)
    hp = load_hyperparams(algo, cfg.env, cfg.hyperparams)
    hp.update(cfg.hp)
    hidden_bc = sorted(k for k in hp if k.startswith("pretrain"))
    if hidden_bc:
        raise SpecMDError(f"hyperparameters {hidden_bc}: behaviour cloning is a command-line choice "
                          "(--bc-teacher, --bc-steps, --bc-rounds, --bc-epochs), not a hyperparameter")
    timesteps = count("--timesteps (n_timesteps)", cfg.timesteps if cfg.timesteps is not None
                      else hp.get("n_timesteps", 100_000), minimum=0)
    if timesteps == 0 and not cfg.bc_teacher:
        raise SpecMDError("--timesteps 0 trains nothing without --bc-teacher (behaviour cloning only)")
    n_envs = count("--n-envs (n_envs)", cfg.n_envs if cfg.n_envs is not None else hp.get("n_envs", 1), minimum=1)
    checkpoint_freq = count("--checkpoint-freq", cfg.checkpoint_freq or 0)
    eval_freq = count("--eval-freq", cfg.eval_freq or 0)
    if cfg.keep_best and not eval_freq:
        raise SpecMDError("--keep-best needs --eval-freq (the best is judged on the fixed training episode)")
    if cfg.resume and not Path(cfg.resume).is_file():
        raise SpecMDError(f"--resume: {cfg.resume} does not exist")
    if cfg.bc_ties not in ("set", "teacher"):
        raise SpecMDError(f"--bc-ties must be set or teacher, got {cfg.bc_ties!r}")
    env_kwargs = make_env_kwargs({**(hp.get("env_kwargs") or {}), **cfg.env_kwargs})
    if env_kwargs.get("split") == "test" or any((v or {}).get("split") == "test" for v in cfg.variants or []):
        print("specmd train: warning: training on split='test' (the held-out requests)", file=sys.stderr)

    log_dir = writable_dir(cfg.log_dir or f"runs/agents/{algo}-{cfg.env}-s{cfg.seed}", "--log-dir")
    save = Path(cfg.save or log_dir / "model.zip")
    if save.suffix != ".zip":
        save = save.with_suffix(".zip")
    writable_file(save, "--save")
    # a resumed run logs its episodes apart (Monitor would overwrite the first run's CSVs)
    monitor_dir = log_dir / ("monitor" if not cfg.resume else f"monitor-resume-{Path(cfg.resume).stem}")

    env = build_vec_env(cfg.env, n_envs, cfg.seed, env_kwargs, cfg.vec, str(monitor_dir), cfg.variants)
    check_algo_env(algo, env.action_space)
    cls = algo_class(algo)

    kwargs = algo_kwargs(cls, hp)
    from gymnasium import spaces
    policy_name = hp.get("policy") or ("MultiInputPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpPolicy")
    policy = resolve_policy(policy_name)

    model = _new_model(cls, policy, env, kwargs, seed=cfg.seed, device=cfg.device,
                       tensorboard_log=str(log_dir / "tb"), verbose=0)
    start = 0
    if cfg.resume:
        # Rebuild the network from this run's settings and load the checkpoint's weights and optimiser
        # state: SB3's cls.load would unpickle parts of the archive, which this project never does.
        from specmd_env.agents.learned import archive_timesteps, load_weights
        load_weights(model, cfg.resume, cfg.device)
        model.num_timesteps = start = archive_timesteps(cfg.resume)

    cloned = None
    if cfg.bc_teacher and not cfg.resume:
        cloned = _clone(model, cfg, env_kwargs, cfg.variants)
    elif cfg.resume:  # continuing a cloned policy is BC then RL (the cloning is the resumed run's)
        resumed_meta = Path(cfg.resume).with_suffix(".json")
        if resumed_meta.is_file():
            cloned = json.loads(resumed_meta.read_text()).get("behaviour_cloning")

    callbacks = []
    evaluator = None
    eval_csv = log_dir / "eval_fixed_train_episode.csv"
    if eval_freq:
        if not cfg.resume and eval_csv.exists():
            eval_csv.unlink()
        evaluator = FixedEpisodeEval(cfg.env, {**env_kwargs, **(cfg.variants or [{}])[0]}, cfg.eval_requests)
        best_path = log_dir / "best_on_train_episode.zip" if cfg.keep_best else None
        eval_cb = _eval_callback(evaluator, algo, eval_freq, n_envs, eval_csv, best_path)
        callbacks.append(eval_cb)
    if checkpoint_freq:
        callbacks.append(CheckpointCallback(save_freq=max(checkpoint_freq // n_envs, 1),
                                            save_path=str(log_dir / "checkpoints"), name_prefix=algo))
    progress = cfg.progress_bar
    if progress:
        try:
            import rich  # noqa: F401
            import tqdm  # noqa: F401
        except ImportError:
            progress = False
    t0 = time.time()
    if timesteps:
        model.learn(total_timesteps=timesteps, callback=callbacks or None, progress_bar=progress,
                    reset_num_timesteps=not cfg.resume, tb_log_name=algo)
    elif eval_freq:  # behaviour cloning only: one point on the curve
        from stable_baselines3.common.logger import configure as configure_logger
        model.set_logger(configure_logger(None, []))
        eval_cb.init_callback(model)
        eval_cb._evaluate()
    wall = time.time() - t0
    selected = None
    if cfg.keep_best and timesteps:
        import shutil

        best_return, best_steps = eval_cb.best
        shutil.copyfile(log_dir / "best_on_train_episode.zip", save)
        load_weights_from = save
        from specmd_env.agents.learned import load_weights
        load_weights(model, load_weights_from, cfg.device)
        selected = {"timesteps": best_steps, "fixed_train_episode_return": best_return,
                    "last_timesteps": int(model.num_timesteps)}
        print(f"kept the policy of step {best_steps} (fixed training episode return {best_return:.2f})", file=sys.stderr)
    else:
        model.save(str(save))
    env.close()

    exported = _exported(model)
    meta = {
        "name": cfg.name or save.stem,
        "algo": algo,
        "env_id": cfg.env,
        "env_kwargs": env_kwargs,
        "variants": cfg.variants,
        "policy": policy_name,
        "hyperparams": {k: v for k, v in hp.items()},
        "recipe": ("bc+rl" if timesteps else "bc") if cloned else "rl",
        "behaviour_cloning": cloned,
        "timesteps_this_run": timesteps,
        "num_timesteps": int(model.num_timesteps),
        "kept_best": selected,
        "resumed_from": cfg.resume,
        "resumed_at_timesteps": start,
        "n_envs": n_envs,
        "vec": cfg.vec,
        "seed": cfg.seed,
        "device": cfg.device,
        "log_dir": str(log_dir),
        "model_path": str(save),
        "weights_path": str(save.with_suffix(".npz")) if exported is not None else None,
        "wall_seconds": round(wall, 1),
        "command": canonical_command(cfg),
        "argv": sys.argv if Path(sys.argv[0]).name == "specmd" else None,
        "config": asdict(cfg),
        "versions": _versions(),
        "observation_space": str(model.observation_space),
        "action_space": str(model.action_space),
    }
    if exported is not None:
        exported.save(save.with_suffix(".npz"))
        meta["network"] = {"hidden": list(exported.sizes), "multiply_adds_per_row": exported.flops}
    references = {}
    if evaluator is not None:
        meta["eval_fixed_train_episode"] = {"requests": evaluator.requests, "csv": str(eval_csv)}
        try:
            references = evaluator.references()
        except Exception as exc:  # reference lines are a nicety
            print(f"specmd train: warning: no reference lines ({exc})", file=sys.stderr)
        meta["eval_fixed_train_episode"]["references"] = references
        evaluator.env.close()
    curve = save.with_name(save.stem + "_curve.png")
    try:
        if plot_learning_curve(monitor_dir, curve, title=f"{algo} on {cfg.env} (seed {cfg.seed})",
                               eval_csv=eval_csv if evaluator is not None else None, references=references):
            meta["curve"] = str(curve)
    except Exception as exc:  # a plot must never lose a trained model
        print(f"specmd train: warning: no learning curve ({exc})", file=sys.stderr)
    with open(save.with_suffix(".json"), "w") as fh:
        json.dump(meta, fh, indent=2, default=str)
    return meta


def read_monitor(monitor_dir: str | os.PathLike) -> np.ndarray:
    """Episodes from the Monitor CSVs of a run, as rows (cumulative env steps, return, length), in time order."""
    rows = []
    for path in sorted(Path(monitor_dir).glob("*.monitor.csv")):
        with open(path) as fh:
            lines = [ln for ln in fh.read().splitlines() if ln and not ln.startswith("#")]
        if len(lines) < 2:
            continue
        header = lines[0].split(",")
        ir, il, it = header.index("r"), header.index("l"), header.index("t")
        for ln in lines[1:]:
            cells = ln.split(",")
            rows.append((float(cells[it]), float(cells[ir]), float(cells[il])))
    if not rows:
        return np.zeros((0, 3))
    rows.sort()
    arr = np.array(rows)
    return np.column_stack([np.cumsum(arr[:, 2]), arr[:, 1], arr[:, 2]])


def plot_learning_curve(monitor_dir: str | os.PathLike, png: str | os.PathLike, title: str = "",
                        window: int = 20, eval_csv: str | os.PathLike | None = None,
                        references: dict[str, float] | None = None) -> bool:
    """Left: training episodes' return per decision vs env steps (Monitor logs) and its rolling mean.
    Right (with ``eval_csv``): the greedy policy's return on the fixed training episode, beside the
    handcrafted ``references`` on that same episode. False when there is nothing to plot."""
    data = read_monitor(monitor_dir)
    evals = None
    if eval_csv is not None and Path(eval_csv).is_file():
        evals = np.loadtxt(eval_csv, delimiter=",", skiprows=1, ndmin=2)
    if len(data) == 0 and evals is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if evals is not None and len(evals) else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.6), dpi=100, squeeze=False)
    ax = axes[0, 0]
    if len(data):
        steps, ret, length = data[:, 0], data[:, 1], data[:, 2]
        per_step = ret / np.maximum(length, 1)
        w = max(1, min(window, len(per_step) // 5 or 1))
        smooth = np.convolve(per_step, np.ones(w) / w, mode="valid")
        ax.plot(steps, per_step, ".", ms=3, alpha=0.4, label="training episode")
        ax.plot(steps[w - 1:], smooth, "-", lw=1.8, label=f"rolling mean ({w})")
    ax.set_xlabel("env steps (decisions)")
    ax.set_ylabel("return per decision")
    ax.set_title("training episodes (random train requests)", fontsize=9)
    ax.grid(alpha=0.3)
    if len(data):
        ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[0, 1]
        ax.plot(evals[:, 0], evals[:, 1], "o-", ms=3, lw=1.5, label="learned (greedy)")
        for i, (name, value) in enumerate((references or {}).items()):
            ax.axhline(value, ls="--", lw=1, color=f"C{i + 1}", label=name)
        ax.set_xlabel("env steps (decisions)")
        ax.set_ylabel("episode return")
        ax.set_title("fixed training episode (greedy policy)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


# -- command line -------------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", required=True, choices=TRAIN_ALGOS, help="learning algorithm")
    parser.add_argument("--env", default="SpecMD-OLMoE-v0", help="gymnasium env id (default %(default)s)")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="K=V",
                        help="gym.make keywords, e.g. capacity=0.1 requests_per_episode=2 (split defaults to train)")
    parser.add_argument("--timesteps", type=int, default=None, help="env steps to train (default: the YAML's n_timesteps); "
                        "with --resume, steps to add")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: the YAML's n_envs, else 1)")
    parser.add_argument("--vec", choices=VECS, default="specmd", help="vectorisation: specmd (all sub-envs in one compiled "
                        "call), or SB3's dummy / subproc (default specmd)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="'K=V K=V'",
                        help="train across settings: sub-env i uses --env-kwargs updated by variant i mod len, e.g. "
                             "'trace=qwen3-synthetic capacity=0.02' 'capacity=0.1'")
    parser.add_argument("--bc-teacher", default=None, metavar="AGENT",
                        help="behaviour cloning first: imitate this agent (belady-bypass, belady, lru, ... or a learned "
                             "one) on training requests, then RL for --timesteps (0: cloning only)")
    parser.add_argument("--bc-steps", type=int, default=50_000, help="decisions gathered per cloning round (default 50000)")
    parser.add_argument("--bc-rounds", type=int, default=1, help="cloning rounds: 1 = the teacher's trajectories; "
                        "more = DAgger (the student plays, the teacher labels) (default 1)")
    parser.add_argument("--bc-epochs", type=int, default=10, help="passes over the gathered decisions per round (default 10)")
    parser.add_argument("--bc-target", choices=("choice", "next-use"), default="choice",
                        help="choice: fit the teacher's decisions; next-use (Belady teachers): fit every row's next-use "
                             "distance, Belady's ranking key, by least squares (default choice)")
    parser.add_argument("--bc-ties", choices=("set", "teacher"), default="set",
                        help="set: maximise the probability of any of the teacher's equally good choices (oracles); "
                             "teacher: clone its own tie-break (default set)")
    parser.add_argument("--bc-every", type=int, default=1, help="keep every n-th decision (default 1)")
    parser.add_argument("--bc-lr", type=float, default=1e-3, help="cloning learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    parser.add_argument("--log-dir", default=None, help="TensorBoard, Monitor and checkpoint directory "
                        "(default runs/agents/<algo>-<env>-s<seed>)")
    parser.add_argument("--checkpoint-freq", type=int, default=0, help="save a checkpoint every N env steps (0: never)")
    parser.add_argument("--resume", default=None, metavar="PATH.zip", help="continue training this model")
    parser.add_argument("--save", default=None, metavar="PATH.zip", help="where to save the model (default <log-dir>/model.zip)")
    parser.add_argument("--hyperparams", default=None, metavar="FILE",
                        help="YAML keyed by env id (default specmd_env/data/hyperparams/<algo>.yml)")
    parser.add_argument("--hp", nargs="*", default=[], metavar="K=V", help="override single hyperparameters")
    parser.add_argument("--name", default=None, help="agent name recorded in the metadata")
    parser.add_argument("--eval-freq", type=int, default=0, help="every N env steps, play the greedy policy on a fixed "
                        "episode of TRAIN requests (learning curve; never the test split); 0: never")
    parser.add_argument("--eval-requests", type=int, nargs="+", default=None,
                        help="trace request ids of that episode (default: the train split's first two)")
    parser.add_argument("--keep-best", action="store_true", help="save the policy with the best --eval-freq return on "
                        "the fixed training episode (model selection on training requests only), not the last one")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-progress-bar", dest="progress_bar", action="store_false", help="no tqdm/rich progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(algo=args.algo, env=args.env, env_kwargs=parse_kwargs(args.env_kwargs),
                       timesteps=args.timesteps, n_envs=args.n_envs, vec=args.vec, seed=args.seed, device=args.device,
                       log_dir=args.log_dir, checkpoint_freq=args.checkpoint_freq, resume=args.resume, save=args.save,
                       hyperparams=args.hyperparams, hp=parse_kwargs(args.hp, "--hp"), progress_bar=args.progress_bar,
                       threads=args.threads, name=args.name, eval_freq=args.eval_freq,
                       eval_requests=args.eval_requests, keep_best=args.keep_best, variants=parse_variants(args.variants),
                       bc_teacher=args.bc_teacher, bc_steps=args.bc_steps, bc_rounds=args.bc_rounds,
                       bc_epochs=args.bc_epochs, bc_target=args.bc_target, bc_ties=args.bc_ties, bc_every=args.bc_every, bc_lr=args.bc_lr)


def run(args: argparse.Namespace) -> int:
    meta = train(config_from_args(args))
    print(f"saved {meta['model_path']} ({meta['num_timesteps']} steps, {meta['wall_seconds']} s); "
          f"config {Path(meta['model_path']).with_suffix('.json')}; TensorBoard: tensorboard --logdir {meta['log_dir']}/tb")
    return 0


__all__ = ["TrainConfig", "algo_kwargs", "build_vec_env", "canonical_command", "check_algo_env", "configure", "load_hyperparams",
           "parse_kwargs", "plot_learning_curve", "read_monitor", "run", "train"]
