"""Gymnasium environments over the replay kernel: ``SpecMD-OLMoE-v1`` and friends (see registration)."""

from specmd_env.envs.cache_env import SpecMDCacheEnv, split_requests
from specmd_env.envs.observation import ObservationLayout

__all__ = ["ObservationLayout", "SpecMDCacheEnv", "SpecMDVectorEnv", "split_requests"]


def __getattr__(name):
    if name == "SpecMDVectorEnv":
        from specmd_env.envs.vector_env import SpecMDVectorEnv
        return SpecMDVectorEnv
    raise AttributeError(name)
