"""Gymnasium ids for the SpecMD environments, registered on ``import specmd_env``.

Each id fixes a model (and so its default trace) and a decision mode; every other setting is a keyword
of ``gym.make`` (see :class:`specmd_env.envs.cache_env.SpecMDCacheEnv`). The version suffix changes
whenever the dynamics, observation or reward change, so that results stay comparable.
"""

from __future__ import annotations

import difflib
import inspect

import gymnasium as gym

from specmd_env.errors import SpecMDError

# The ids make the environments through these two functions, which name an unknown keyword (with the
# nearest valid one) instead of letting the constructor raise a bare TypeError.
ENTRY_POINT = "specmd_env.envs.registration:make_env"
VECTOR_ENTRY_POINT = "specmd_env.envs.registration:make_vector_env"

ENV_IDS: dict[str, dict] = {
    "SpecMD-OLMoE-v0": {"model": "olmoe-1b-7b", "decision": "eviction"},
    "SpecMD-Mixtral-v0": {"model": "mixtral-8x7b", "decision": "eviction"},
    "SpecMD-Qwen3-v0": {"model": "qwen3-30b-a3b", "decision": "eviction"},
    "SpecMD-OLMoE-Prefetch-v0": {"model": "olmoe-1b-7b", "decision": "prefetch"},
    "SpecMD-OLMoE-Joint-v0": {"model": "olmoe-1b-7b", "decision": "joint"},
    "SpecMD-Mixtral-Prefetch-v0": {"model": "mixtral-8x7b", "decision": "prefetch"},
    "SpecMD-Mixtral-Joint-v0": {"model": "mixtral-8x7b", "decision": "joint"},
    "SpecMD-Qwen3-Prefetch-v0": {"model": "qwen3-30b-a3b", "decision": "prefetch"},
    "SpecMD-Qwen3-Joint-v0": {"model": "qwen3-30b-a3b", "decision": "joint"},
}


def env_keywords() -> list[str]:
    """The keywords ``gym.make`` accepts for a SpecMD id: the environment constructor's parameters."""
    from specmd_env.envs.cache_env import SpecMDCacheEnv

    return [name for name in inspect.signature(SpecMDCacheEnv.__init__).parameters if name != "self"]


def check_keywords(kwargs: dict) -> None:
    """Raise a :class:`SpecMDError` naming every unknown keyword, with near names, and the valid ones."""
    valid = env_keywords()
    unknown = [name for name in kwargs if name not in valid]
    if not unknown:
        return
    named = []
    for name in unknown:
        near = difflib.get_close_matches(name, valid, n=2, cutoff=0.6)
        named.append(f"{name!r}" + (f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""))
    raise SpecMDError(f"unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(named)} for a SpecMD "
                      f"environment; valid keywords: {', '.join(valid)}")


def make_env(**kwargs):
    """The entry point of every SpecMD id: checks the keywords, then builds :class:`SpecMDCacheEnv`."""
    from specmd_env.envs.cache_env import SpecMDCacheEnv

    check_keywords(kwargs)
    return SpecMDCacheEnv(**kwargs)


def make_vector_env(num_envs: int = 1, max_episode_steps: int | None = None, variants: list | None = None, **kwargs):
    """The vector entry point (``vectorization_mode="vector_entry_point"``), with the same keyword check
    (on the common keywords and on each of ``variants``)."""
    from specmd_env.envs.vector_env import SpecMDVectorEnv

    check_keywords(kwargs)
    for variant in variants or []:
        check_keywords(variant if isinstance(variant, dict) else {})
    return SpecMDVectorEnv(num_envs=num_envs, max_episode_steps=max_episode_steps, variants=variants, **kwargs)


def register_envs() -> None:
    for env_id, kwargs in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                     kwargs=dict(kwargs), disable_env_checker=False)


register_envs()
