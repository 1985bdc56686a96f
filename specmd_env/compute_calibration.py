"""Published batch-1 latencies (``data/calibration/compute/figures.toml``) and the engine constants
fitted to them.

The simulator times MoE layers; a published time per output token (TPOT) or time to first token (TTFT)
times a whole forward pass of a model with every expert resident on the GPU. This module rebuilds that
pass from the very methods the simulator uses -- :meth:`HardwareProfile.non_expert_seconds` (which
``dense_seconds`` is) and :meth:`HardwareProfile.expert_seconds` -- plus the LM head, which the
simulator does not time, so that the head's cost does not leak into the per-layer constants.

Two simplifications, both about the measured pass and not about the simulator:

* decode attention reads the mean context of the measured generation (prompt + half the output);
  attention cost is linear in the context, so the mean pass is the mean cost;
* a prefill's tokens are routed uniformly (each expert gets ``tokens x top_k / experts`` of them,
  ``experts x (1 - (1 - top_k / experts)^tokens)`` experts are touched). Real routing is skewed; the
  total arithmetic is the same and a prompt of 128 or more tokens touches nearly every expert anyway.

Figures measured through a serving client (a ``series``) carry a request overhead in their TTFT --
HTTP, tokenisation, scheduling -- that is not a forward pass. The fit estimates it once per series as a
nuisance constant and reports it; it is not part of any engine, so the simulator never charges it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from specmd_env.errors import SpecMDError
from specmd_env.hardware import EngineCalibration, HardwareProfile, get_engine
from specmd_env.models import ModelSpec, get_model

FIGURES = "data/calibration/compute/figures.toml"
_DTYPE_OF_BITS = {16: "bf16", 8: "int8", 4: "int4"}
_EFFICIENCIES = ("weight_bandwidth_efficiency", "kv_bandwidth_efficiency", "compute_efficiency",
                "expert_compute_efficiency")


@dataclass(frozen=True)
class MeasuredModel:
    """A model as it ran in a measurement: its layers (a :class:`ModelSpec`; a dense model's MLP is its
    one always-on shared expert), whether it routes, and the LM head it read per pass."""

    name: str
    spec: ModelSpec
    dense: bool
    vocab_size: int
    source: str


@dataclass(frozen=True)
class Figure:
    id: str
    engine: str
    gpu: str
    gpu_mem_bandwidth_gbps: float
    bf16_tflops: float
    model: MeasuredModel
    metric: str
    prompt_tokens: int
    output_tokens: int
    weight_bits: int
    published_ms: float
    role: str
    source: str
    series: str = ""
    note: str = ""


def _measured_model(name: str, row: dict) -> MeasuredModel:
    if "catalogue" in row:
        spec = get_model(row["catalogue"])
        return MeasuredModel(name, spec, False, row["vocab_size"], row["source"])
    width = row["intermediate_size"]
    spec = ModelSpec(name=name, display_name=name, num_layers=row["num_layers"], num_experts=1, top_k=1,
                     hidden_size=row["hidden_size"], expert_intermediate_size=width, dtype="bf16",
                     num_attention_heads=row["num_attention_heads"], num_kv_heads=row["num_kv_heads"],
                     head_dim=row["head_dim"], num_shared_experts=1, shared_intermediate_size=width)
    return MeasuredModel(name, spec, True, row["vocab_size"], row["source"])


def load_figures(path: str | Path | None = None) -> list[Figure]:
    text = Path(path).read_text() if path else resources.files("specmd_env").joinpath(FIGURES).read_text()
    raw = tomllib.loads(text)
    models = {name: _measured_model(name, row) for name, row in raw["models"].items()}
    figures = []
    for row in raw["figures"]:
        gpu = raw["gpus"][row["gpu"]]
        if row["metric"] not in ("tpot", "ttft") or row["role"] not in ("fit", "check", "excluded"):
            raise SpecMDError(f"figure {row['id']!r}: metric must be tpot or ttft, role fit, check or excluded")
        figures.append(Figure(id=row["id"], engine=row["engine"], gpu=row["gpu"],
                              gpu_mem_bandwidth_gbps=gpu["gpu_mem_bandwidth_gbps"], bf16_tflops=gpu["bf16_tflops"],
                              model=models[row["model"]], metric=row["metric"], prompt_tokens=row["prompt_tokens"],
                              output_tokens=row["output_tokens"], weight_bits=row.get("weight_bits", 16),
                              published_ms=row["published_ms"], role=row["role"], source=row["source"],
                              series=row.get("series", ""), note=row.get("note", "")))
    return figures


def gpu_profile(name: str, gpu_mem_bandwidth_gbps: float, bf16_tflops: float,
                engine: str | EngineCalibration) -> HardwareProfile:
    """A profile for compute only (the host link plays no part when every expert is resident)."""
    return HardwareProfile(name=name, description="compute calibration", h2d_bandwidth_gbps=1.0,
                           transfer_latency_us=0.0, gpu_mem_bandwidth_gbps=gpu_mem_bandwidth_gbps,
                           bf16_tflops=bf16_tflops, engine=engine)


def pass_seconds(profile: HardwareProfile, measured: MeasuredModel, num_tokens: int, context: float,
                 *, prefill: bool, weight_bits: int = 16) -> float:
    """One forward pass of ``measured`` with every expert resident: ``num_tokens`` new tokens, attending
    to ``context`` cached tokens (decode) or causally among themselves (prefill), plus the LM head of the
    last token."""
    spec = measured.spec
    if weight_bits != 16:
        if weight_bits not in _DTYPE_OF_BITS:
            raise SpecMDError(f"weight_bits must be one of {sorted(_DTYPE_OF_BITS)}, got {weight_bits}")
        spec = dataclasses.replace(spec, dtype=_DTYPE_OF_BITS[weight_bits])
    bytes_per_param = weight_bits / 8
    attended = num_tokens * (num_tokens + 1) / 2 if prefill else context
    kv = num_tokens if prefill else context
    dense = profile.non_expert_seconds(spec, num_tokens, attended, kv, moe=not measured.dense,
                                       dense_bytes_per_param=bytes_per_param)
    experts = 0.0
    if not measured.dense:
        share = spec.top_k / spec.num_experts
        active = spec.num_experts * (1.0 - (1.0 - share) ** num_tokens)
        experts = active * float(profile.expert_seconds(spec, num_tokens * spec.top_k / active))
    cal = profile.calibration
    head_params = measured.vocab_size * spec.hidden_size
    head = max(profile.matmul_seconds(2.0 * head_params, cal.compute_efficiency),
               profile.read_seconds(head_params * bytes_per_param, cal.weight_bandwidth_efficiency))
    return spec.num_layers * (float(dense) + experts) + head


def modelled_ms(figure: Figure, engine: str | EngineCalibration | None = None,
                request_overhead_ms: dict[str, float] | None = None) -> float:
    """The figure as the calibrated model predicts it, in milliseconds; a TTFT of a series includes the
    series' request overhead when one is given."""
    profile = gpu_profile(figure.gpu, figure.gpu_mem_bandwidth_gbps, figure.bf16_tflops,
                          figure.engine if engine is None else engine)
    if figure.metric == "ttft":
        seconds = pass_seconds(profile, figure.model, figure.prompt_tokens, 0, prefill=True,
                               weight_bits=figure.weight_bits)
    else:
        seconds = pass_seconds(profile, figure.model, 1, figure.prompt_tokens + figure.output_tokens / 2,
                               prefill=False, weight_bits=figure.weight_bits)
    offset = (request_overhead_ms or {}).get(figure.series, 0.0) if figure.metric == "ttft" else 0.0
    return seconds * 1e3 + offset


@dataclass(frozen=True)
class Fit:
    engine: EngineCalibration
    request_overhead_ms: dict[str, float]   # per series: the TTFT part that is not a forward pass
    figures: list[Figure]                   # the fit figures it was chosen on

    def error(self, figure: Figure) -> float:
        """(modelled - published) / published."""
        return modelled_ms(figure, self.engine, self.request_overhead_ms) / figure.published_ms - 1.0


def fit_engine(engine: str | EngineCalibration, figures: list[Figure]) -> Fit:
    """The engine with its ``fitted`` constants (and each series' request overhead) chosen to minimise the
    squared log error over its "fit" figures, so that 10% too slow weighs like 10% too fast; its other
    constants stay as they are."""
    from scipy.optimize import least_squares

    base = get_engine(engine)
    mine = [f for f in figures if f.engine == base.name and f.role == "fit"]
    series = sorted({f.series for f in mine if f.metric == "ttft" and f.series})
    names = list(base.fitted)
    if len(mine) < len(names) + len(series):
        raise SpecMDError(f"engine {base.name!r} fits {len(names) + len(series)} constants to {len(mine)} figures")
    lower = [1e-3 if n in _EFFICIENCIES else 0.0 for n in names] + [0.0] * len(series)
    upper = [1.0 if n in _EFFICIENCIES else 1e5 for n in names] + [1e4] * len(series)
    start = [getattr(base, n) if getattr(base, n) is not None else 1.0 for n in names] + [1.0] * len(series)
    start = [min(max(v, lo + 1e-6), hi) for v, lo, hi in zip(start, lower, upper)]
    published = np.log([f.published_ms for f in mine])

    def split(values):
        trial = dataclasses.replace(base, **dict(zip(names, values[:len(names)])))
        return trial, dict(zip(series, values[len(names):]))

    def residuals(values):
        trial, offsets = split(values)
        return np.log([modelled_ms(f, trial, offsets) for f in mine]) - published

    if names or series:
        values = least_squares(residuals, start, bounds=(lower, upper), x_scale="jac").x
    else:
        values = np.zeros(0)
    trial, offsets = split([float(v) for v in values])
    return Fit(engine=trial, request_overhead_ms=offsets, figures=mine)


def prefill_flops(measured: MeasuredModel, tokens: int) -> float:
    """Arithmetic of a prefill of ``tokens`` tokens: 2 FLOPs per active parameter per token, plus causal
    attention (the LM head of the last token only)."""
    spec = measured.spec
    per_layer = spec.attention_params_per_layer + 3 * spec.hidden_size * spec.shared_intermediate_size \
        * spec.num_shared_experts + (0 if measured.dense else spec.top_k * spec.expert_params)
    attention = 4.0 * tokens * (tokens + 1) / 2 * spec.num_attention_heads * spec.head_dim
    return spec.num_layers * (2.0 * per_layer * tokens + attention) + 2.0 * measured.vocab_size * spec.hidden_size


def implied_prefill_tflops(shorter: Figure, longer: Figure) -> float:
    """The arithmetic rate two TTFTs of one model imply: the extra prefill FLOPs of the longer prompt over
    the extra time. Above the GPU's peak, the longer run cannot have computed its whole prompt (a prefix
    cache hit between runs of a sweep is the usual reason)."""
    extra = prefill_flops(longer.model, longer.prompt_tokens) - prefill_flops(shorter.model, shorter.prompt_tokens)
    return extra / ((longer.published_ms - shorter.published_ms) * 1e-3) / 1e12


def per_layer_decode_ms(profile: HardwareProfile, model: ModelSpec, context: float) -> float:
    """What the simulator charges one decode layer with every expert resident: its dense part plus top_k
    single-token experts."""
    return 1e3 * (float(profile.dense_seconds(model, 1, context, context))
                  + model.top_k * float(profile.expert_seconds(model, 1)))

