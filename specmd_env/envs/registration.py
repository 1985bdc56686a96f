"""Gymnasium ids for the SpecMD environments, registered on ``import specmd_env``.

Each id fixes a model (and so its default trace) and a decision mode; every other setting is a keyword
of ``gym.make`` (see :class:`specmd_env.envs.cache_env.SpecMDCacheEnv`). The version suffix changes
whenever the dynamics, observation or reward change, so that results stay comparable.
"""

from __future__ import annotations

import gymnasium as gym

ENTRY_POINT = "specmd_env.envs.cache_env:SpecMDCacheEnv"
VECTOR_ENTRY_POINT = "specmd_env.envs.vector_env:SpecMDVectorEnv"

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


def register_envs() -> None:
    for env_id, kwargs in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                     kwargs=dict(kwargs), disable_env_checker=False)


register_envs()
