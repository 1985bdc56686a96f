"""MoE model shapes, read from ``data/models.toml``.

Only what the cache and the timing model need: how many MoE layers and routed experts there are, how
many each token picks, and how big an expert is. Expert bytes are derived from the dimensions and the
dtype (gate, up and down projections), never typed in, so a new model is one table in the data file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from specmd_env.errors import SpecMDError

BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5,
                   "mxfp4": 4.25 / 8}  # MXFP4: 4-bit values plus one 8-bit scale per 32 values


@dataclass(frozen=True)
class ModelSpec:
    """One MoE model's routing topology and sizes (see ``data/models.toml`` for the sources)."""

    name: str
    display_name: str
    num_layers: int
    num_experts: int
    top_k: int
    hidden_size: int
    expert_intermediate_size: int
    dtype: str
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    num_shared_experts: int = 0
    shared_intermediate_size: int = 0
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in ("num_layers", "num_experts", "top_k", "hidden_size", "expert_intermediate_size",
                      "num_attention_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise SpecMDError(f"model {self.name!r}: {field} must be a positive integer, got {value!r}")
        if self.top_k > self.num_experts:
            raise SpecMDError(f"model {self.name!r}: top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.dtype not in BYTES_PER_PARAM:
            raise SpecMDError(f"model {self.name!r}: unknown dtype {self.dtype!r}; known: {sorted(BYTES_PER_PARAM)}")

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert: gate and up (hidden x inter) and down (inter x hidden)."""
        return 3 * self.hidden_size * self.expert_intermediate_size

    @property
    def expert_bytes(self) -> int:
        return int(round(self.expert_params * BYTES_PER_PARAM[self.dtype]))

    @property
    def num_routed_experts(self) -> int:
        return self.num_layers * self.num_experts

    @property
    def routed_expert_bytes(self) -> int:
        """All routed experts of the model: what a capacity fraction is a fraction of."""
        return self.num_routed_experts * self.expert_bytes

    @property
    def shared_expert_bytes_per_layer(self) -> int:
        """Shared experts stay resident: they cost VRAM and compute, never a cache slot."""
        return int(round(3 * self.hidden_size * self.shared_intermediate_size * self.num_shared_experts
                         * BYTES_PER_PARAM["bf16"]))

    @property
    def attention_params_per_layer(self) -> int:
        """q and o projections (heads x head_dim) plus k and v (kv heads x head_dim)."""
        q_width = self.num_attention_heads * self.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        return self.hidden_size * (2 * q_width + 2 * kv_width)


@cache
def _model_table() -> dict[str, dict]:
    text = resources.files("specmd_env").joinpath("data/models.toml").read_text()
    return tomllib.loads(text)


def list_models() -> list[str]:
    return sorted(_model_table())


def get_model(name: str | ModelSpec) -> ModelSpec:
    """Look a model up by its name or an alias (case-insensitive)."""
    if isinstance(name, ModelSpec):
        return name
    key = str(name).lower()
    for model_name, row in _model_table().items():
        if key == model_name or key in row.get("aliases", ()):
            fields = {k: v for k, v in row.items() if k != "aliases"}
            return ModelSpec(name=model_name, aliases=tuple(row.get("aliases", ())), **fields)
    raise SpecMDError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
