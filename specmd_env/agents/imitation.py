"""Behaviour cloning: a policy imitates a teacher's decisions, optionally with DAgger rounds.

``specmd train --bc-teacher belady-bypass --bc-steps 60000`` (see :mod:`specmd_env.agents.train`) plays
the *teacher* (a handcrafted or oracle agent of :mod:`specmd_env.agents`, or a learned one) on training
requests, records the observations, action masks and the teacher's choices, and fits the policy's
action distribution to them by maximum likelihood. The student sees only the observation; an oracle
teacher reads the future from ``info`` (the environment's ``oracle_info``), which is how imitation of
Belady's rule for cache replacement works (Parrot, Liu et al. 2020).

Three choices that matter, all named options:

* **What is imitated** (``target``): ``"choice"`` fits the teacher's decisions; ``"next-use"`` (oracle
  teachers that read ``info["next_use"]``: Belady) fits, for every allowed row, the *key* Belady ranks
  by -- how far in the future the row's expert is next used, as ``log2(1 + distance / accesses per
  pass)`` capped at :data:`HORIZON_PASSES` passes -- by least squares, and acts by the largest predicted
  distance. A choice label says only which row was best; the key also says how bad every other row
  was (evicting an expert needed next layer costs a miss, one needed 500 accesses later hardly
  anything), which a per-decision likelihood cannot weigh. This is Belady with learned next-use
  predictions, causal at inference (cf. Parrot, Liu et al. 2020; LRB, Song et al. 2020).
* **Set-valued labels** (``ties="set"``, for ``target="choice"``): Belady often has several equally good
  victims (e.g. every expert never used again). Cloning its tie-break (least recently used) would spend
  the network on an arbitrary rule; instead the loss is ``-log P(any optimal row)``, the probability
  mass the policy puts on the set of rows the teacher rates equally. ``ties="teacher"`` clones the
  teacher's own choice.
* **DAgger** (``rounds`` > 1, Ross et al. 2011): after round 1 (the teacher's own trajectories), each
  round plays the *student* (greedy) and labels the states it visits with the teacher's choices, then
  refits on everything gathered. A cloned cache policy drifts into states the teacher never visits
  (a cache the teacher would not have kept); DAgger trains it there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specmd_env.errors import SpecMDError


TARGETS = ("choice", "next-use")
HORIZON_PASSES = 256  # next uses farther than this many passes (or never) count as this far


@dataclass
class Demonstrations:
    obs: np.ndarray       # [n, obs size] float32
    mask: np.ndarray      # [n, actions] bool: allowed actions
    target: np.ndarray    # [n, actions] bool: the rows the teacher rates best (one for ties="teacher")
    distance: np.ndarray  # [n, actions] float32: log2(1 + next use / accesses per pass), or empty [n, 0]

    def __len__(self) -> int:
        return len(self.obs)

    def extend(self, other: "Demonstrations") -> "Demonstrations":
        return Demonstrations(*(np.concatenate([a, b]) for a, b in zip(
            (self.obs, self.mask, self.target, self.distance), (other.obs, other.mask, other.target, other.distance))))


def next_use_key(next_use: np.ndarray, accesses_per_pass: float) -> np.ndarray:
    """Belady's ranking key as a regression target: ``log2(1 + d / accesses_per_pass)`` for a next use d
    accesses ahead, capped at :data:`HORIZON_PASSES` passes (also for never, and empty rows)."""
    d = np.asarray(next_use, np.float64)
    d = np.where(d < 0, np.inf, d)
    return np.log2(1.0 + np.minimum(d / accesses_per_pass, HORIZON_PASSES)).astype(np.float32)


def teacher_targets(teacher, obs, info, mask, ties: str) -> np.ndarray:
    """The rows the teacher rates best: its choice, or (``ties="set"``, teachers that expose
    ``best_rows``) every row tied with it."""
    if ties == "set" and hasattr(teacher, "best_rows"):
        return teacher.best_rows(obs, info, mask)
    target = np.zeros_like(mask)
    target[int(teacher.act(obs, info))] = True
    return target


def collect(env, teacher, steps: int, seed: int, student=None, ties: str = "set", every: int = 1,
            target: str = "choice") -> Demonstrations:
    """``steps`` labelled decisions from ``env`` (made with ``oracle_info`` for an oracle teacher): the
    teacher acts, or ``student`` (a callable obs, mask -> action) when given; every ``every``-th decision
    is kept (consecutive decisions are much alike). ``target="next-use"`` also records every row's
    next-use key (:func:`next_use_key`) from ``info["next_use"]``."""
    if ties not in ("set", "teacher"):
        raise SpecMDError(f"ties must be 'set' or 'teacher', got {ties!r}")
    if target not in TARGETS:
        raise SpecMDError(f"the cloning target must be one of {TARGETS}, got {target!r}")
    base = env.unwrapped
    per_pass = float(base.num_layers * base.model.top_k)
    obs_buf, mask_buf, target_buf, dist_buf = [], [], [], []
    obs, info = env.reset(seed=seed)
    reset = getattr(teacher, "reset", None)
    if callable(reset):
        reset(seed)
    i = 0
    while len(obs_buf) < steps:
        mask = base.action_masks()
        pending = base.pending in ("demand", "prefetch")
        if pending and i % every == 0:
            obs_buf.append(obs)
            mask_buf.append(mask)
            target_buf.append(teacher_targets(teacher, obs, info, mask, ties))
            if target == "next-use":
                if "next_use" not in info:
                    raise SpecMDError("target='next-use' needs an environment made with oracle_info=True")
                dist_buf.append(next_use_key(info["next_use"], per_pass))
        i += pending
        action = teacher.act(obs, info) if student is None or not pending else student(obs, mask)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            obs, info = env.reset()
    n_actions = len(mask_buf[0]) if mask_buf else 0
    distance = np.array(dist_buf, np.float32) if dist_buf else np.zeros((len(obs_buf), 0), np.float32)
    return Demonstrations(np.array(obs_buf, np.float32), np.array(mask_buf, bool).reshape(-1, n_actions),
                          np.array(target_buf, bool).reshape(-1, n_actions), distance)


def fit(policy, demos: Demonstrations, epochs: int, seed: int, batch_size: int = 256, lr: float = 1e-3,
        log=None) -> dict[str, float]:
    """Fit the actor (with ``share_features_extractor=False`` the critic is untouched): maximum
    likelihood of the target sets under the masked action distribution, or -- when ``demos`` carry
    next-use keys -- least squares of every allowed row's logit on its key. Returns the final loss and
    the share of decisions whose greedy action is in the target set."""
    import torch as th

    extractor = getattr(policy, "pi_features_extractor", None) or policy.features_extractor
    params = list(extractor.parameters()) + list(policy.mlp_extractor.policy_net.parameters()) + \
        list(policy.action_net.parameters())
    optimizer = th.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    obs = th.as_tensor(demos.obs)
    mask = th.as_tensor(demos.mask)
    target = th.as_tensor(demos.target & demos.mask)
    regress = demos.distance.shape[1] > 0
    distance = th.as_tensor(demos.distance) if regress else None
    policy.set_training_mode(True)
    loss_value = float("nan")
    for epoch in range(epochs):
        total, n = 0.0, 0
        for idx in np.array_split(rng.permutation(len(obs)), max(1, len(obs) // batch_size)):
            logits = _logits(policy, obs[idx])
            if regress:
                m = mask[idx]
                loss = ((logits - distance[idx]) ** 2)[m].mean()
            else:
                loss = set_nll(logits, mask[idx], target[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        loss_value = total / max(n, 1)
        if log is not None:
            log(f"  epoch {epoch + 1}/{epochs}: loss {loss_value:.4f}")
    policy.set_training_mode(False)
    return {"final_loss": loss_value, "greedy_in_target": agreement(policy, demos)}


def _logits(policy, obs):
    """The action logits of an SB3 actor-critic policy (before masking)."""
    extractor = getattr(policy, "pi_features_extractor", None) or policy.features_extractor
    latent_pi = policy.mlp_extractor.forward_actor(extractor(obs.float()))
    return policy.action_net(latent_pi)


def set_nll(logits, mask, target):
    """``-log P(target set)`` under the softmax of ``logits`` over the allowed actions."""
    import torch as th

    neg = th.finfo(logits.dtype).min
    allowed = th.where(mask, logits, neg)
    chosen = th.where(target, logits, neg)
    return (th.logsumexp(allowed, dim=1) - th.logsumexp(chosen, dim=1)).mean()


def agreement(policy, demos: Demonstrations, batch: int = 4096) -> float:
    """Share of decisions whose greedy (masked argmax) action is one the teacher rates best."""
    import torch as th

    hits = 0
    with th.no_grad():
        for i in range(0, len(demos), batch):
            logits = _logits(policy, th.as_tensor(demos.obs[i:i + batch]))
            logits = th.where(th.as_tensor(demos.mask[i:i + batch]), logits, th.finfo(logits.dtype).min)
            best = logits.argmax(dim=1).numpy()
            hits += int(demos.target[np.arange(i, i + len(best)), best].sum())
    return hits / max(len(demos), 1)


def greedy_student(policy):
    """The policy's greedy masked action, as a callable (obs, mask) -> action, for DAgger rounds."""
    import torch as th

    def act(obs, mask):
        with th.no_grad():
            logits = _logits(policy, th.as_tensor(obs[None]))[0]
        logits = th.where(th.as_tensor(mask), logits, th.finfo(logits.dtype).min)
        return int(logits.argmax())
    return act


__all__ = ["HORIZON_PASSES", "TARGETS", "Demonstrations", "agreement", "collect", "next_use_key", "fit", "greedy_student", "set_nll",
           "teacher_targets"]
