"""specmd-env: a benchmark for expert caching and prefetching in MoE inference."""

from specmd_env.errors import SpecMDError, TraceFormatError
from specmd_env.hardware import HardwareProfile, capacity_slots, get_profile, list_profiles
from specmd_env.models import ModelSpec, get_model, list_models
from specmd_env.trace import Trace, load_trace, save_trace

__all__ = [
    "HardwareProfile", "ModelSpec", "SpecMDError", "Trace", "TraceFormatError", "capacity_slots",
    "get_model", "get_profile", "list_models", "list_profiles", "load_trace", "save_trace",
]

from specmd_env.replay import Replay  # noqa: E402
from specmd_env.result import Result  # noqa: E402
from specmd_env.simulate import simulate  # noqa: E402

__all__ += ["Replay", "Result", "simulate"]
from specmd_env.envs import registration as _registration  # noqa: E402,F401  (registers the gym ids)
