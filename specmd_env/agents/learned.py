"""Learned agents: a Stable-Baselines3 model (.zip) behind the :class:`specmd_env.agents` Agent interface.

``load_learned_agent("runs/agents/my_run/model.zip")`` or, for a committed agent, its name
(``load_learned_agent("row_scorer_olmoe_evict")`` resolves to ``specmd_env/data/agents/<name>.zip``, else
``<name>.npz``: an exported row scorer, acting through its compiled scoring function). The
algorithm is read from the metadata JSON written beside every model by ``specmd train`` (``<stem>.json``),
else inferred from the policy class stored in the .zip itself. ``act(obs, info)`` is
``model.predict(obs, deterministic=True)``; for MaskablePPO the action mask comes from ``info["action_mask"]``,
an ``"action_mask"`` entry of a Dict observation, or the env's ``action_masks()``, in that order.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from specmd_env.agents import TRAINED_DIR
from specmd_env.envs.observation import (G_PENDING_LAYER, N_GLOBAL_FEATURES, N_SLOT_FEATURES, S_LAYER_AHEAD,
                                         S_OCCUPIED, S_SPEC)
from specmd_env.errors import SpecMDError

# name -> (module, class); imported lazily so that `import specmd_env.agents.learned` stays cheap.
ALGOS: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "a2c": ("stable_baselines3", "A2C"),
    "dqn": ("stable_baselines3", "DQN"),
    "maskable_ppo": ("sb3_contrib", "MaskablePPO"),
}


def algo_class(algo: str):
    """The SB3 class of an algorithm name (ppo, maskable_ppo, dqn, a2c)."""
    import importlib

    key = algo.lower().replace("-", "_")
    if key not in ALGOS:
        raise SpecMDError(f"unknown algorithm {algo!r}; known: {', '.join(ALGOS)}")
    module, cls = ALGOS[key]
    return getattr(importlib.import_module(module), cls)


def list_trained() -> list[str]:
    """Names of the committed learned agents (specmd_env/data/agents/<name>.zip or .npz)."""
    return sorted({p.stem for p in TRAINED_DIR.glob("*.zip")} | {p.stem for p in TRAINED_DIR.glob("*.npz")})


def resolve_model_path(path_or_name: str | Path) -> Path:
    """A .zip (SB3 model) or .npz (exported row scorer) path as given, or a committed agent's name ->
    specmd_env/data/agents/<name>.zip (else <name>.npz)."""
    text = str(path_or_name)
    path = Path(text)
    if text.endswith((".zip", ".npz")):
        if not path.is_file():
            raise SpecMDError(f"model file {text!r} does not exist")
        return path
    for suffix in (".zip", ".npz"):
        candidate = TRAINED_DIR / f"{text}{suffix}"
        if candidate.is_file():
            return candidate
    try:
        from specmd_env.agents import HANDCRAFTED
        handcrafted = f"; handcrafted agents: {', '.join(HANDCRAFTED)}"
    except ImportError:  # pragma: no cover
        handcrafted = ""
    raise SpecMDError(f"{text!r} is neither a .zip / .npz model file nor a committed learned agent; "
                      f"committed agents: {', '.join(list_trained()) or '(none)'}{handcrafted}")


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    """The run metadata ``specmd train`` wrote beside the model (``<stem>.json``), or {}."""
    meta = Path(model_path).with_suffix(".json")
    if meta.is_file():
        with open(meta) as fh:
            return json.load(fh)
    return {}


def infer_algo(model_path: str | Path) -> str:
    """The algorithm that saved ``model_path``, from the metadata ``specmd train`` wrote beside it."""
    algo = read_metadata(model_path).get("algo")
    if not algo:
        raise SpecMDError(f"{model_path}: no training metadata ({Path(model_path).with_suffix('.json').name}) beside it; "
                          "this project loads agents without unpickling, which needs the algorithm, policy and env "
                          "recorded there by `specmd train`")
    return str(algo)


def archive_timesteps(model_path: str | Path) -> int:
    """``num_timesteps`` from an SB3 archive's ``data`` member, read as plain JSON (nothing unpickled)."""
    try:
        with zipfile.ZipFile(model_path) as zf:
            return int(json.loads(zf.read("data").decode()).get("num_timesteps", 0))
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise SpecMDError(f"{model_path} is not a Stable-Baselines3 model archive ({exc})") from None


def load_weights(model, path: str | Path, device: str = "cpu") -> None:
    """Put an archive's weights (and optimiser state) into ``model``. SB3's ``set_parameters`` reads only
    the ``.pth`` members, with ``torch.load(weights_only=True)``; ``Algorithm.load`` would also
    cloudpickle-decode the ``data`` member, which this project never does."""
    try:
        model.set_parameters(str(path), exact_match=True, device=device)
    except (KeyError, ValueError, RuntimeError, zipfile.BadZipFile) as exc:
        raise SpecMDError(f"{path}: its weights do not fit the network rebuilt from its metadata ({exc})") from None


def rebuild_model(path: str | Path, meta: dict[str, Any], env=None, device: str = "cpu"):
    """The trained model, rebuilt from its metadata (algorithm, policy, policy kwargs, the env's spaces)
    with its weights loaded by :func:`load_weights`: no pickle anywhere."""
    import gymnasium as gym

    import specmd_env  # noqa: F401  (registers the environments)
    from specmd_env.agents.train import _policy_kwargs, resolve_policy

    hp = meta.get("hyperparams") or {}
    own_env = env is None
    env = gym.make(meta["env_id"], **(meta.get("env_kwargs") or {})) if own_env else env
    try:
        algo = infer_algo(path)
        extra = {"buffer_size": 1} if algo == "dqn" else {}  # inference only: no replay memory
        policy = resolve_policy(hp.get("policy") or meta.get("policy") or "MlpPolicy")
        model = algo_class(algo)(policy, env, policy_kwargs=_policy_kwargs(hp.get("policy_kwargs")), device=device,
                                 verbose=0, **extra)
    finally:
        if own_env:
            env.close()
    load_weights(model, path, device)
    return model


def _action_mask(obs, info, env) -> np.ndarray | None:
    if isinstance(info, dict) and info.get("action_mask") is not None:
        return np.asarray(info["action_mask"], bool)
    if isinstance(obs, dict) and "action_mask" in obs:
        return np.asarray(obs["action_mask"], bool)
    if env is not None:
        try:
            return np.asarray(env.get_wrapper_attr("action_masks")(), bool)
        except AttributeError:
            return None
    return None


try:
    from specmd_env.agents import Agent as _AgentBase
except ImportError:  # pragma: no cover - the env's agent registry is missing
    _AgentBase = object


class LearnedAgent(_AgentBase):
    """An SB3 model acting greedily (``deterministic=True``): same observation, same action."""

    is_oracle = False

    def __init__(self, model, algo: str, name: str, env=None, metadata: dict | None = None):
        self.model = model
        self.algo = algo
        self.name = name
        self.env = env
        self.metadata = metadata or {}
        self.uses_masks = algo == "maskable_ppo"

    def bind(self, env) -> "LearnedAgent":
        """Use ``env`` for action masks when neither the observation nor info carries one."""
        self.env = env
        return self

    def reset(self, seed: int | None = None) -> None:  # a policy net keeps no state between episodes
        return None

    def act(self, obs, info=None):
        if self.uses_masks:
            mask = _action_mask(obs, info, self.env)
            action, _ = self.model.predict(obs, deterministic=True, action_masks=mask)
        else:
            action, _ = self.model.predict(obs, deterministic=True)
        if np.ndim(action) == 0:
            return int(action)
        return np.asarray(action)

    def __repr__(self) -> str:
        return f"LearnedAgent(name={self.name!r}, algo={self.algo!r})"


class CompiledAgent(_AgentBase):
    """An exported row scorer (``.npz``) acting on the environment's observation with the compiled scoring
    function the eviction policy uses (no torch): the masked row with the highest score."""

    is_oracle = False

    def __init__(self, weights, name: str, env=None, metadata: dict | None = None):
        from specmd_env.agents.compiled import scores  # noqa: F401  (compiled on first use)

        self.weights, self.flat, self.name, self.env = weights, weights.flat(), name, env
        self.metadata = metadata or {}
        sizes = weights.sizes
        self.h1, self.h2 = sizes[0], (sizes[1] if len(sizes) > 1 else 0)

    def bind(self, env) -> "CompiledAgent":
        self.env = env
        return self

    def reset(self, seed: int | None = None) -> None:
        return None

    def act(self, obs, info=None):
        from specmd_env.agents.compiled import scores

        mask = _action_mask(obs, info, self.env)
        if mask is None:
            raise SpecMDError(f"agent {self.name!r} needs the environment's action mask: load it with env=...")
        s = scores(self.flat, np.asarray(obs, np.float32), len(mask), self.h1, self.h2)
        allowed = np.flatnonzero(mask)
        return int(allowed[np.argmax(s[allowed])])

    def __repr__(self) -> str:
        return f"CompiledAgent(name={self.name!r})"


def check_spaces(model, env) -> None:
    """Raise a clear error when ``env``'s spaces are not the ones ``model`` was trained on."""
    if env is None:
        return
    if model.observation_space != env.observation_space:
        raise SpecMDError(f"the model was trained on observation space {model.observation_space}, but this env has "
                          f"{env.observation_space}; evaluate it with the env kwargs it was trained with "
                          "(see its .json metadata: env_kwargs) — capacity and model must match")
    if model.action_space != env.action_space:
        raise SpecMDError(f"the model acts in {model.action_space}, but this env expects {env.action_space}")


def load_learned_agent(path_or_name: str | Path, env=None, device: str = "cpu") -> LearnedAgent:
    """Load an SB3 .zip (path, or the name of a committed agent in specmd_env/data/agents/) as an Agent.

    env: optional env the agent will act in; its spaces are checked against the model's, and it supplies
    action masks for MaskablePPO when neither ``info`` nor the observation carries one.
    """
    path = resolve_model_path(path_or_name)
    if path.suffix == ".npz":
        from specmd_env.agents.compiled import ScorerWeights

        meta = read_metadata(path)
        if env is not None and env.unwrapped.decision != "eviction":
            raise SpecMDError(f"{path.name} is a row scorer: it decides evictions, not {env.unwrapped.decision!r}")
        return CompiledAgent(ScorerWeights.load(path), meta.get("name", path.stem), env=env, metadata=meta)
    algo = infer_algo(path)
    meta = read_metadata(path)
    model = rebuild_model(path, meta, device=device)
    check_spaces(model, env)
    return LearnedAgent(model, algo, name=meta.get("name", path.stem), env=env, metadata=meta)


# -- policies with a shared per-row / per-expert scorer -------------------------------------------------------
#
# The SpecMD observation is row-major (``rows + 1`` rows of F features -- every cache slot, then the
# incoming expert -- then G global features, then -- prefetch and joint modes -- E speculative scores). A
# plain MLP over the flat vector must learn the same rule once per slot index and serves one capacity;
# these policies score every row (eviction: the rows are the actions, the last one = bypass) or every
# expert of the next layer (prefetch) with ONE small network shared across rows, whose input is that
# row's features plus the global features. The action logits are those scores, so the policy is
# permutation-equivariant over slots and one set of weights serves any capacity, model shape and trace;
# the value head reads the mean row embedding and the globals. A trained eviction scorer is exported
# (:meth:`RowScorer.export`) and runs compiled inside the replay (:mod:`specmd_env.agents.compiled`).

F_ROW, G_GLOBAL = N_SLOT_FEATURES, N_GLOBAL_FEATURES


def _mlp(sizes) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class RowScorer(BaseFeaturesExtractor):
    """Features = [per-row logits (rows + 1), mean row embedding (last hidden size), globals (G)].

    The rows are the cache slots and the incoming expert; the input per row is its F features + the G
    globals; ``hidden`` the hidden sizes (1 or 2 layers, ReLU: what the compiled policy evaluates)."""

    def __init__(self, observation_space, hidden=(32,)):
        size = int(observation_space.shape[0])
        n_rows, rest = divmod(size - G_GLOBAL, F_ROW)
        hidden = tuple(int(h) for h in (hidden if isinstance(hidden, (list, tuple)) else (hidden,)))
        if rest or n_rows < 2:
            raise SpecMDError(f"observation size {size} is not an eviction observation ((rows + 1) x {F_ROW} + "
                              f"{G_GLOBAL}); the row scorer serves decision='eviction'")
        if not 1 <= len(hidden) <= 2:
            raise SpecMDError(f"the row scorer has 1 or 2 hidden layers, got hidden={list(hidden)}")
        super().__init__(observation_space, features_dim=n_rows + hidden[-1] + G_GLOBAL)
        self.n_items, self.hidden = n_rows, hidden
        self.body = _mlp((F_ROW + G_GLOBAL,) + hidden)
        self.score = nn.Linear(hidden[-1], 1)

    def rows_and_globals(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        B = obs.shape[0]
        g0 = self.n_items * F_ROW
        glob = obs[:, g0:g0 + G_GLOBAL]
        rows = obs[:, :g0].reshape(B, self.n_items, F_ROW)
        return th.cat([rows, glob.unsqueeze(1).expand(B, self.n_items, G_GLOBAL)], dim=2), glob

    def forward(self, obs: th.Tensor) -> th.Tensor:
        x, glob = self.rows_and_globals(obs)
        h = self.body(x)
        return th.cat([self.score(h).squeeze(-1), h.mean(dim=1), glob], dim=1)

    def export(self):
        """The weights as :class:`specmd_env.agents.compiled.ScorerWeights` (numpy, no torch, no pickle)."""
        from specmd_env.agents.compiled import ScorerWeights

        linears = [m for m in self.body if isinstance(m, nn.Linear)]
        hidden = tuple((m.weight.detach().cpu().numpy().T.astype(np.float64), m.bias.detach().cpu().numpy().astype(np.float64))
                       for m in linears)
        return ScorerWeights(hidden, self.score.weight.detach().cpu().numpy()[0].astype(np.float64),
                             float(self.score.bias.detach().cpu().numpy()[0]))


class ExpertScorer(BaseFeaturesExtractor):
    """Features = [per-expert logits (E), mean expert embedding (hidden), global features (G)] for the
    prefetch choice: input per expert of the target layer = its speculative score, score / best score,
    descending rank / E, score mass of the better-ranked experts (what SpecMD's score prefetcher
    thresholds), whether it is already resident (a fetch of it is only a hint), + the G globals."""

    def __init__(self, observation_space, n_items: int = 0, hidden: int = 32):
        size = int(observation_space.shape[0])
        rows, rest = divmod(size - G_GLOBAL - n_items, F_ROW)
        if rest or rows < 2 or n_items < 1:
            raise SpecMDError(f"observation size {size} does not fit the SpecMD prefetch layout ({n_items} experts)")
        super().__init__(observation_space, features_dim=n_items + hidden + G_GLOBAL)
        self.n_items, self.rows = n_items, rows
        self.body = nn.Sequential(nn.Linear(5 + G_GLOBAL, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.score = nn.Linear(hidden, 1)

    def forward(self, obs: th.Tensor) -> th.Tensor:
        B = obs.shape[0]
        g0 = self.rows * F_ROW
        glob = obs[:, g0:g0 + G_GLOBAL]
        s = obs[:, g0 + G_GLOBAL:g0 + G_GLOBAL + self.n_items]
        total = s.sum(dim=1, keepdim=True).clamp_min(1e-8)
        best = s.max(dim=1, keepdim=True).values.clamp_min(1e-8)
        order = th.argsort(s, dim=1, descending=True, stable=True)
        rank = th.argsort(order, dim=1, stable=True).float() / self.n_items
        sorted_s = th.gather(s, 1, order)
        before = th.empty_like(s).scatter_(1, order, (th.cumsum(sorted_s, dim=1) - sorted_s) / total)
        items = th.stack([s, s / best, rank, before, self.resident(obs, s, glob)], dim=2)
        x = th.cat([items, glob.unsqueeze(1).expand(B, self.n_items, G_GLOBAL)], dim=2)
        h = self.body(x)
        return th.cat([self.score(h).squeeze(-1), h.mean(dim=1), glob], dim=1)

    def resident(self, obs: th.Tensor, s: th.Tensor, glob: th.Tensor) -> th.Tensor:
        """1 where expert x of the target layer is in the cache: a slot of that layer (its ``layer_ahead``
        equals the pending choice's) carries x's speculative score (the same float32)."""
        B = obs.shape[0]
        slots = obs[:, :self.rows * F_ROW].reshape(B, self.rows, F_ROW)[:, :-1]  # not the incoming row
        of_target = (slots[:, :, S_OCCUPIED] > 0.5) & \
            ((slots[:, :, S_LAYER_AHEAD] - glob[:, G_PENDING_LAYER:G_PENDING_LAYER + 1]).abs() < 1e-6)
        same = (slots[:, :, S_SPEC].unsqueeze(2) - s.unsqueeze(1)).abs() < 1e-7
        return ((same & of_target.unsqueeze(2)).any(dim=1) & (s > 0)).float()


class FirstColumns(nn.Module):
    """The action head: the first n columns of the latent, i.e. the extractor's per-item logits."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, latent: th.Tensor) -> th.Tensor:
        return latent[:, :self.n]


class _ScorerMixin:
    """Turns an SB3 actor-critic policy into a shared-scorer one (see the comment above)."""

    extractor = RowScorer

    def __init__(self, observation_space, action_space, lr_schedule, hidden=(32,), vf_arch=(64, 64),
                 score_bias: float = 0.0, **kwargs):
        self.score_bias = float(score_bias)  # initial logit of every item (prefetch: < 0 starts near "fetch nothing")
        kwargs["features_extractor_class"] = self.extractor
        if self.extractor is RowScorer:
            kwargs["features_extractor_kwargs"] = {"hidden": hidden}
        else:
            kwargs["features_extractor_kwargs"] = {"n_items": int(np.prod(getattr(action_space, "shape", ()) or (0,))),
                                                   "hidden": int(hidden[0] if isinstance(hidden, (list, tuple)) else hidden)}
        kwargs["net_arch"] = {"pi": [], "vf": list(vf_arch)}
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = FirstColumns(self.features_extractor.n_items)
        nn.init.orthogonal_(self.features_extractor.score.weight, gain=0.01)  # near-uniform initial policy
        nn.init.constant_(self.features_extractor.score.bias, self.score_bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)


class RowScorerMaskablePolicy(_ScorerMixin, MaskableActorCriticPolicy):
    """MaskablePPO eviction policy: a shared scorer over the rows (slots, then bypass); masked rows get -inf."""


class RowScorerPolicy(_ScorerMixin, ActorCriticPolicy):
    """PPO / A2C eviction policy without masks (invalid rows fall back to the env's fixed policy)."""


class ExpertScorerPolicy(_ScorerMixin, ActorCriticPolicy):
    """PPO prefetch policy for MultiBinary(E): one Bernoulli logit per next-layer expert from a shared scorer."""

    extractor = ExpertScorer


POLICIES = {"RowScorerMaskablePolicy": RowScorerMaskablePolicy, "RowScorerPolicy": RowScorerPolicy,
            "ExpertScorerPolicy": ExpertScorerPolicy}


__all__ = ["ALGOS", "POLICIES", "CompiledAgent", "ExpertScorer", "ExpertScorerPolicy", "LearnedAgent", "RowScorer",
           "RowScorerMaskablePolicy", "RowScorerPolicy", "TRAINED_DIR", "algo_class", "infer_algo", "list_trained",
           "load_learned_agent", "read_metadata", "resolve_model_path"]


