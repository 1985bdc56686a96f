"""Hardware profiles (``data/hardware.toml``) and the roofline timing they imply.

A profile is what decides how long an expert takes to cross the host-to-GPU link and how long the GPU
takes to compute it. Users add profiles by adding a table to the data file, or pass their own
:class:`HardwareProfile`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from specmd_env.errors import SpecMDError
from specmd_env.models import ModelSpec


@dataclass(frozen=True)
class HardwareProfile:
    """One GPU and its expert source. Units are in the field names (see ``data/hardware.toml``)."""

    name: str
    description: str
    h2d_bandwidth_gbps: float
    transfer_latency_us: float
    gpu_mem_bandwidth_gbps: float
    bf16_tflops: float
    layer_overhead_us: float = 0.0
    vram_gib: float = 0.0

    def __post_init__(self) -> None:
        for field in ("h2d_bandwidth_gbps", "gpu_mem_bandwidth_gbps", "bf16_tflops"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SpecMDError(f"hardware profile {self.name!r}: {field} must be a positive number, got {value!r}")
        for field in ("transfer_latency_us", "layer_overhead_us", "vram_gib"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SpecMDError(f"hardware profile {self.name!r}: {field} must be >= 0, got {value!r}")

    def transfer_seconds(self, nbytes: float) -> float:
        """One host-to-GPU copy: fixed latency plus bytes over the link bandwidth."""
        return self.transfer_latency_us * 1e-6 + nbytes / (self.h2d_bandwidth_gbps * 1e9)

    def roofline_seconds(self, flops, nbytes):
        """A kernel is bound by either its arithmetic or its memory traffic, whichever is slower.
        Works elementwise on numpy arrays."""
        return np.maximum(flops / (self.bf16_tflops * 1e12), nbytes / (self.gpu_mem_bandwidth_gbps * 1e9))

    def expert_roofline(self, model: ModelSpec) -> tuple[float, float]:
        """(seconds per token, floor): one routed expert takes max(per_token x tokens, floor) -- its
        arithmetic (2 FLOPs per MAC) or reading its weights once, whichever is slower."""
        return 2.0 * model.expert_params / (self.bf16_tflops * 1e12), \
            model.expert_bytes / (self.gpu_mem_bandwidth_gbps * 1e9)

    def expert_seconds(self, model: ModelSpec, num_tokens):
        """One routed expert applied to ``num_tokens`` tokens. Elementwise on arrays."""
        per_token, floor = self.expert_roofline(model)
        return np.maximum(per_token * num_tokens, floor)

    def dense_seconds(self, model: ModelSpec, num_tokens, attended_pairs, kv_tokens):
        """A layer's non-routed part for one forward pass: attention projections and shared experts on
        ``num_tokens`` tokens, attention over ``attended_pairs`` (query, key) pairs reading
        ``kv_tokens`` cached keys and values, plus the fixed per-layer overhead. Elementwise on arrays."""
        params = model.attention_params_per_layer + 3 * model.hidden_size * model.shared_intermediate_size \
            * model.num_shared_experts
        flops = 2.0 * params * num_tokens + 4.0 * attended_pairs * model.num_attention_heads * model.head_dim
        kv_bytes = 2.0 * kv_tokens * model.num_kv_heads * model.head_dim * 2
        return self.layer_overhead_us * 1e-6 + self.roofline_seconds(flops, params * 2.0 + kv_bytes)


@cache
def _profile_table() -> dict[str, dict]:
    return tomllib.loads(resources.files("specmd_env").joinpath("data/hardware.toml").read_text())


def list_profiles() -> list[str]:
    return sorted(_profile_table())


def get_profile(profile: str | HardwareProfile) -> HardwareProfile:
    if isinstance(profile, HardwareProfile):
        return profile
    table = _profile_table()
    if profile not in table:
        raise SpecMDError(f"unknown hardware profile {profile!r}; known profiles: {', '.join(list_profiles())}")
    return HardwareProfile(name=profile, **table[profile])


def capacity_slots(model: ModelSpec, capacity: float | int) -> int:
    """Expert slots for a capacity given as a fraction of all routed-expert bytes (0 < c <= 1) or as a
    byte count (an int > 1). OLMoE at 5%: 0.05 x 12.0 GiB = 0.6 GiB = 51 slots."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not math.isfinite(capacity):
        raise SpecMDError(f"capacity must be a fraction in (0, 1] or a byte count, got {capacity!r}")
    if isinstance(capacity, float) or capacity <= 1:
        if not 0 < capacity <= 1:
            raise SpecMDError(f"capacity fraction must be in (0, 1], got {capacity!r}")
        slots = int(math.floor(capacity * model.num_routed_experts + 1e-9))
    else:
        slots = int(capacity // model.expert_bytes)
    if slots < model.top_k:
        raise SpecMDError(
            f"capacity {capacity!r} gives {slots} expert slots for {model.display_name}, fewer than one "
            f"layer's top_k={model.top_k}")
    return min(slots, model.num_routed_experts)
