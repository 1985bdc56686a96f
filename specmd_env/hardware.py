"""Hardware profiles (``data/hardware.toml``), the compute engines they run (``data/engines.toml``) and
the timing both imply.

A profile decides how long an expert takes to reach the GPU (the host-to-GPU link, optionally fed by an
SSD tier) and how long the GPU takes to compute a layer. Compute is a roofline -- a kernel is bound by
its arithmetic or its memory traffic -- corrected by the profile's *engine*: the achieved fractions of
peak bandwidth and FLOP/s and the fixed costs (kernel launches, router, dispatch, Python) of a real
inference engine. ``engine = "roofline"`` is the uncorrected model (peak figures plus the profile's
``layer_overhead_us``), kept so that results made before the calibration can be reproduced; ``"vllm"``
and ``"hf-eager"`` are fitted to published batch-1 latencies (``experiments/calibrate_compute.py``,
sources in ``data/calibration/compute/SOURCES.md``). The package profiles use ``"vllm"``: an expert
cache worth studying is one inside an optimised engine, and eager Hugging Face is an order of magnitude
slower per layer, which would hide every transfer.

Profiles come from the package file, then the user's config file (``$XDG_CONFIG_HOME/specmd/
hardware.toml``), then the files named in ``$SPECMD_HARDWARE`` (separated by ``os.pathsep``), then any
``extra_files`` a caller passes. A later file may not redefine an earlier profile's name unless the
table says ``override = true``: results carry only the profile's name, and a silent redefinition of
``paper-a100-5gbps`` would make two different timings look like one.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np

from specmd_env.errors import SpecMDError
from specmd_env.models import ModelSpec

HARDWARE_ENV = "SPECMD_HARDWARE"
GIB = 1 << 30


def _require(owner: str, name: str, value, *, positive: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if positive and not (ok and value > 0):
        raise SpecMDError(f"{owner}: {name} must be a positive number, got {value!r}")
    if not positive and not (ok and value >= 0):
        raise SpecMDError(f"{owner}: {name} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class EngineCalibration:
    """How far a real engine is from the roofline. Efficiencies are fractions of the GPU's peak; costs
    are microseconds. ``fitted`` names the constants ``experiments/calibrate_compute.py`` fits to the
    published figures; the others are fixed (each one's reason is in ``data/engines.toml``)."""

    name: str
    description: str = ""
    weight_bandwidth_efficiency: float = 1.0   # weights streamed from HBM (dense GEMVs, expert GEMVs)
    kv_bandwidth_efficiency: float = 1.0       # cached keys and values read by decode attention
    compute_efficiency: float = 1.0            # dense tensor-core GEMMs (prefill)
    expert_compute_efficiency: float = 1.0     # routed-expert GEMMs, which see few tokens each
    layer_overhead_us: float | None = None     # every layer of every pass; None: the profile's own
    moe_overhead_us: float = 0.0               # every MoE layer of every pass (router, top-k, dispatch)
    expert_overhead_us: float = 0.0            # each routed expert a layer computes (its launches)
    expert_scan_us: float = 0.0                # each expert of the layer, routed or not (eager loops)
    pass_overhead_us: float = 0.0              # every forward pass (scheduler, sampling), spread over layers
    fitted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        owner = f"engine {self.name!r}"
        for name in ("weight_bandwidth_efficiency", "kv_bandwidth_efficiency", "compute_efficiency",
                     "expert_compute_efficiency"):
            value = getattr(self, name)
            _require(owner, name, value, positive=True)
            if value > 1:
                raise SpecMDError(f"{owner}: {name} is a fraction of peak, must be <= 1, got {value!r}")
        for name in ("moe_overhead_us", "expert_overhead_us", "expert_scan_us", "pass_overhead_us"):
            _require(owner, name, getattr(self, name), positive=False)
        if self.layer_overhead_us is not None:
            _require(owner, "layer_overhead_us", self.layer_overhead_us, positive=False)
        unknown = set(self.fitted) - {f.name for f in fields(self)}
        if unknown:
            raise SpecMDError(f"{owner}: fitted names unknown constants {sorted(unknown)}")


@cache
def _engine_table() -> dict[str, EngineCalibration]:
    raw = tomllib.loads(resources.files("specmd_env").joinpath("data/engines.toml").read_text())
    return {name: EngineCalibration(name=name, **{k: tuple(v) if k == "fitted" else v for k, v in row.items()})
            for name, row in raw.items()}


def list_engines() -> list[str]:
    return sorted(_engine_table())


def get_engine(engine: str | EngineCalibration) -> EngineCalibration:
    if isinstance(engine, EngineCalibration):
        return engine
    table = _engine_table()
    if engine not in table:
        raise SpecMDError(f"unknown engine {engine!r}; known engines: {', '.join(list_engines())}")
    return table[engine]


@dataclass(frozen=True)
class HardwareProfile:
    """One GPU, its host and its expert sources. Units are in the field names (``data/hardware.toml``).

    Only the first six fields are required; the rest default to a one-tier machine (every expert in
    pinned host memory), one copy engine, the uncorrected roofline and no CPU compute figures."""

    name: str
    description: str
    h2d_bandwidth_gbps: float
    transfer_latency_us: float
    gpu_mem_bandwidth_gbps: float
    bf16_tflops: float
    layer_overhead_us: float = 0.0
    vram_gib: float = 0.0
    engine: str | EngineCalibration = "roofline"
    copy_engines: int = 1
    cpu: str = ""
    cpu_bf16_tflops: float = 0.0
    cpu_fp32_tflops: float = 0.0
    cpu_mem_bandwidth_gbps: float = 0.0
    host_expert_gib: float | None = None
    ssd_bandwidth_gbps: float | None = None
    ssd_latency_us: float = 0.0
    calibration: EngineCalibration = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owner = f"hardware profile {self.name!r}"
        for name in ("h2d_bandwidth_gbps", "gpu_mem_bandwidth_gbps", "bf16_tflops"):
            _require(owner, name, getattr(self, name), positive=True)
        for name in ("transfer_latency_us", "layer_overhead_us", "vram_gib", "cpu_bf16_tflops", "cpu_fp32_tflops",
                     "cpu_mem_bandwidth_gbps", "ssd_latency_us"):
            _require(owner, name, getattr(self, name), positive=False)
        for name in ("host_expert_gib", "ssd_bandwidth_gbps"):
            if getattr(self, name) is not None:
                _require(owner, name, getattr(self, name), positive=True)
        if type(self.copy_engines) is not int or self.copy_engines < 1:
            raise SpecMDError(f"{owner}: copy_engines must be an integer >= 1, got {self.copy_engines!r}")
        if self.host_expert_gib is not None and self.ssd_bandwidth_gbps is None:
            raise SpecMDError(f"{owner}: host_expert_gib limits host memory, so experts that do not fit need an "
                              f"SSD tier: set ssd_bandwidth_gbps (or drop host_expert_gib: every expert in host memory)")
        if not isinstance(self.engine, (str, EngineCalibration)):
            raise SpecMDError(f"{owner}: engine must be a name ({', '.join(list_engines())}), got {self.engine!r}")
        try:
            calibration = get_engine(self.engine)
        except SpecMDError as exc:
            raise SpecMDError(f"{owner}: {exc}") from None
        object.__setattr__(self, "calibration", calibration)

    # -- host -> GPU ------------------------------------------------------------------------------

    @property
    def copy_engines_for_h2d(self) -> int:
        """Copy engines that serve host-to-GPU transfers at once: 1. GPUs report several (A100/H100: 3),
        but the driver gives each direction its own, and concurrent host-to-GPU copies were observed
        serialised (docs/ARCHITECTURE.md); more is a what-if (``copy_engines=``), sharing the link."""
        return 1

    def transfer_seconds(self, nbytes: float) -> float:
        """One host-to-GPU copy: fixed latency plus bytes over the link bandwidth."""
        return self.transfer_latency_us * 1e-6 + nbytes / (self.h2d_bandwidth_gbps * 1e9)

    def expert_transfer_seconds(self, model: ModelSpec, bits: float | None = None, **quantisation) -> float:
        """One expert's host-to-GPU copy, in the model's dtype or, with ``bits``, as a low-precision copy
        (see :func:`quantized_expert_bytes` for the scales it carries)."""
        nbytes = model.expert_bytes if bits is None else quantized_expert_bytes(model, bits, **quantisation)
        return self.transfer_seconds(nbytes)

    # -- memory hierarchy -------------------------------------------------------------------------

    @property
    def has_ssd_tier(self) -> bool:
        return self.ssd_bandwidth_gbps is not None

    def host_expert_slots(self, model: ModelSpec) -> int:
        """Experts host memory holds; all of them on a one-tier profile."""
        if self.host_expert_gib is None:
            return model.num_routed_experts
        return min(int(self.host_expert_gib * GIB // model.expert_bytes), model.num_routed_experts)

    def ssd_read_seconds(self, nbytes: float) -> float:
        """One SSD-to-host read: fixed latency plus bytes over the SSD's read bandwidth."""
        if self.ssd_bandwidth_gbps is None:
            raise SpecMDError(f"hardware profile {self.name!r} has no SSD tier (set ssd_bandwidth_gbps)")
        return self.ssd_latency_us * 1e-6 + nbytes / (self.ssd_bandwidth_gbps * 1e9)

    # -- CPU --------------------------------------------------------------------------------------

    def cpu_expert_seconds(self, model: ModelSpec, num_tokens):
        """One routed expert computed on the host CPU (Fiddler, kTransformers) for ``num_tokens`` tokens:
        its weights read once from host memory or its arithmetic at the CPU's peak, whichever is slower
        (bf16 rate where the CPU has bf16 units, else fp32). Peak figures, not calibrated. Elementwise."""
        flops = self.cpu_bf16_tflops or self.cpu_fp32_tflops
        if not flops or not self.cpu_mem_bandwidth_gbps:
            raise SpecMDError(f"hardware profile {self.name!r} has no CPU figures (set cpu_bf16_tflops or "
                              f"cpu_fp32_tflops, and cpu_mem_bandwidth_gbps)")
        return np.maximum(2.0 * model.expert_params * np.asarray(num_tokens, np.float64) / (flops * 1e12),
                          model.expert_bytes / (self.cpu_mem_bandwidth_gbps * 1e9))

    # -- GPU compute ------------------------------------------------------------------------------

    def read_seconds(self, nbytes, efficiency: float = 1.0):
        """Streaming ``nbytes`` from device memory at ``efficiency`` x peak bandwidth. Elementwise."""
        return nbytes / (efficiency * self.gpu_mem_bandwidth_gbps * 1e9)

    def matmul_seconds(self, flops, efficiency: float = 1.0):
        """``flops`` of tensor-core arithmetic at ``efficiency`` x peak bf16 FLOP/s. Elementwise."""
        return flops / (efficiency * self.bf16_tflops * 1e12)

    def expert_roofline(self, model: ModelSpec) -> tuple[float, float]:
        """(seconds per token, floor): one routed expert takes max(per_token x tokens, floor) -- its
        arithmetic (2 FLOPs per MAC, at the engine's share of peak) or reading its weights once (at the
        engine's share of peak bandwidth) plus the engine's per-expert cost, whichever is slower."""
        cal = self.calibration
        return (self.matmul_seconds(2.0 * model.expert_params, cal.expert_compute_efficiency),
                self.read_seconds(model.expert_bytes, cal.weight_bandwidth_efficiency) + cal.expert_overhead_us * 1e-6)

    def expert_seconds(self, model: ModelSpec, num_tokens):
        """One routed expert applied to ``num_tokens`` tokens. Elementwise on arrays."""
        per_token, floor = self.expert_roofline(model)
        return np.maximum(per_token * num_tokens, floor)

    def dense_seconds(self, model: ModelSpec, num_tokens, attended_pairs, kv_tokens):
        """A layer's non-routed part for one forward pass: attention projections and shared experts on
        ``num_tokens`` tokens, attention over ``attended_pairs`` (query, key) pairs reading ``kv_tokens``
        cached keys and values, and the engine's fixed costs (per layer, per MoE layer, per expert it
        scans, and its per-pass cost spread over the layers). Elementwise on arrays."""
        return self.non_expert_seconds(model, num_tokens, attended_pairs, kv_tokens)

    def non_expert_seconds(self, model: ModelSpec, num_tokens, attended_pairs, kv_tokens, *, moe: bool = True,
                           dense_bytes_per_param: float = 2.0):
        """:meth:`dense_seconds` with two knobs the calibration needs: ``moe=False`` times a dense model's
        layer (no router, no expert scan) and ``dense_bytes_per_param`` times int8 attention weights."""
        overhead, per_token, per_pair, memory, per_kv = self.dense_coefficients(
            model, moe=moe, dense_bytes_per_param=dense_bytes_per_param)
        return overhead + np.maximum(per_token * np.asarray(num_tokens, np.float64) + per_pair * attended_pairs,
                                     memory + per_kv * np.asarray(kv_tokens, np.float64))

    def dense_coefficients(self, model: ModelSpec, *, moe: bool = True, dense_bytes_per_param: float = 2.0):
        """The dense-time model's constants, ``overhead + max(per_token n + per_pair a, memory + per_kv kv)``
        for n tokens, a attended (query, key) pairs and kv keys read: the one formula, which compiled
        schedulers evaluate too."""
        cal = self.calibration
        params = model.attention_params_per_layer + 3 * model.hidden_size * model.shared_intermediate_size \
            * model.num_shared_experts
        per_token = self.matmul_seconds(2.0 * params, cal.compute_efficiency)
        per_pair = self.matmul_seconds(4.0 * model.num_attention_heads * model.head_dim, cal.compute_efficiency)
        memory = self.read_seconds(params * dense_bytes_per_param, cal.weight_bandwidth_efficiency)
        per_kv = self.read_seconds(2.0 * model.num_kv_heads * model.head_dim * 2, cal.kv_bandwidth_efficiency)
        overhead_us = (self.layer_overhead_us if cal.layer_overhead_us is None else cal.layer_overhead_us) \
            + cal.pass_overhead_us / model.num_layers
        if moe:
            overhead_us += cal.moe_overhead_us + cal.expert_scan_us * model.num_experts
        return overhead_us * 1e-6, per_token, per_pair, memory, per_kv


def quantized_expert_bytes(model: ModelSpec, bits: float, *, group_size: int = 128,
                           metadata_bits_per_group: float = 32.0) -> int:
    """Bytes of one expert copied at ``bits`` bits per weight (int4, int2, ...): the packed weights plus,
    per ``group_size`` weights, a scale and a zero point (fp16 each, 32 bits). Group-wise with group
    size 128 is the default of GPTQ and AWQ; int2 schemes (HQQ) use smaller groups -- pass them."""
    if not (isinstance(bits, numbers.Real) and 0 < bits <= 16):
        raise SpecMDError(f"bits per weight must be in (0, 16], got {bits!r}")
    if type(group_size) is not int or group_size < 1:
        raise SpecMDError(f"group_size must be an integer >= 1, got {group_size!r}")
    _require("quantisation", "metadata_bits_per_group", metadata_bits_per_group, positive=False)
    params = model.expert_params
    return int(math.ceil(params * bits / 8 + math.ceil(params / group_size) * metadata_bits_per_group / 8))


# -- profile files ----------------------------------------------------------------------------------

_PROFILE_FIELDS = frozenset(f.name for f in fields(HardwareProfile) if f.init and f.name != "name")
_REQUIRED = ("description", "h2d_bandwidth_gbps", "transfer_latency_us", "gpu_mem_bandwidth_gbps", "bf16_tflops")
_TYPES = {"description": str, "engine": str, "cpu": str, "copy_engines": int}


def _profile_from_table(name: str, row, source: str) -> tuple[HardwareProfile, bool]:
    """(profile, override flag) from one TOML table; every error names the file, the table and the field."""
    where = f"hardware file {source}, table [{name}]"
    if not isinstance(row, dict):
        raise SpecMDError(f"{where}: a profile must be a table of fields, got {type(row).__name__}")
    row = dict(row)
    override = row.pop("override", False)
    if not isinstance(override, bool):
        raise SpecMDError(f"{where}: field override must be true or false, got {override!r}")
    for key, value in row.items():
        if key not in _PROFILE_FIELDS:
            raise SpecMDError(f"{where}: unknown field {key!r}; known fields: {', '.join(sorted(_PROFILE_FIELDS))}")
        expected = _TYPES.get(key, numbers.Real)
        if isinstance(value, bool) or not isinstance(value, expected):
            kind = {str: "a string", int: "an integer"}.get(expected, "a number")
            raise SpecMDError(f"{where}: field {key} must be {kind}, got {value!r}")
    missing = [key for key in _REQUIRED if key not in row]
    if missing:
        raise SpecMDError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    try:
        return HardwareProfile(name=name, **row), override
    except SpecMDError as exc:
        raise SpecMDError(f"{where}: {exc}") from None


def _read_toml(path: Path, source: str) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecMDError(f"hardware file {source} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecMDError(f"hardware file {source} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecMDError(f"hardware file {source} is not valid TOML: {exc}") from None


def _parse_profiles(raw: dict, source: str) -> dict[str, tuple[HardwareProfile, bool]]:
    return {name: _profile_from_table(name, row, source) for name, row in raw.items()}


def load_profiles(path: str | os.PathLike) -> dict[str, HardwareProfile]:
    """Every profile in one TOML file (one table per profile, fields as in ``data/hardware.toml``)."""
    source = repr(str(path))
    profiles = _parse_profiles(_read_toml(Path(path), source), source)
    return {name: profile for name, (profile, _) in profiles.items()}


@cache
def _package_table() -> dict:
    """The package's ``data/hardware.toml``, as read (the one place it is read)."""
    return tomllib.loads(resources.files("specmd_env").joinpath("data/hardware.toml").read_text())


def _package_profiles() -> dict[str, HardwareProfile]:
    parsed = _parse_profiles(_package_table(), "specmd_env/data/hardware.toml")
    return {name: profile for name, (profile, _) in parsed.items()}


def user_config_path() -> Path:
    """``$XDG_CONFIG_HOME/specmd/hardware.toml`` (default ``~/.config/specmd/hardware.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "specmd" / "hardware.toml"


def hardware_files(extra_files: Iterable[str | os.PathLike] = ()) -> list[tuple[Path, str]]:
    """The user's profile files in the order they are read: (path, how it was named). The user config
    file counts only if it exists; every other named file must exist."""
    files = []
    config = user_config_path()
    if config.is_file():
        files.append((config, f"{str(config)!r} (user config)"))
    for entry in os.environ.get(HARDWARE_ENV, "").split(os.pathsep):
        if entry.strip():
            files.append((Path(entry.strip()), f"{entry.strip()!r} (from ${HARDWARE_ENV})"))
    files.extend((Path(p), repr(str(p))) for p in extra_files)
    return files


def profile_table(extra_files: Iterable[str | os.PathLike] = ()) -> dict[str, HardwareProfile]:
    """Package profiles, then the user's files (:func:`hardware_files`); a later file redefines a name only
    with ``override = true`` in its table."""
    table = dict(_package_profiles())
    origin = {name: "the package" for name in table}
    for path, source in hardware_files(extra_files):
        for name, (profile, override) in _parse_profiles(_read_toml(path, source), source).items():
            if name in table and not override:
                raise SpecMDError(f"hardware file {source}, table [{name}]: profile {name!r} is already defined by "
                                  f"{origin[name]}; rename it, or set override = true in the table to replace it")
            table[name], origin[name] = profile, f"hardware file {source}"
    return table


def list_profiles(extra_files: Iterable[str | os.PathLike] = ()) -> list[str]:
    return sorted(profile_table(extra_files))


def get_profile(profile: str | HardwareProfile, extra_files: Iterable[str | os.PathLike] = ()) -> HardwareProfile:
    if isinstance(profile, HardwareProfile):
        return profile
    table = profile_table(extra_files)
    if profile not in table:
        raise SpecMDError(f"unknown hardware profile {profile!r}; known profiles: {', '.join(sorted(table))}")
    return table[profile]


def use_hardware_files(paths: Iterable[str | os.PathLike]) -> None:
    """What a command's ``--hardware-file PATH`` (repeatable) does: check the files now, so a bad one fails
    before any work, then add them to ``$SPECMD_HARDWARE`` so that every later lookup by name -- in this
    process and in the worker processes it starts -- sees their profiles."""
    paths = [str(Path(p).resolve()) for p in paths]
    if not paths:
        return
    profile_table(paths)
    current = [p for p in os.environ.get(HARDWARE_ENV, "").split(os.pathsep) if p.strip()]
    os.environ[HARDWARE_ENV] = os.pathsep.join(current + [p for p in paths if p not in current])


# -- capacity ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slots:
    """A capacity given as a number of expert slots (``"51slots"``)."""

    count: int

    def __str__(self) -> str:
        return f"{self.count}slots"


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_CAPACITY_RE = re.compile(r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(?P<unit>%|[a-z]*)\s*$", re.IGNORECASE)
_CAPACITY_FORMS = "a fraction (0.05), a percentage (5%), a size (0.6GiB, 600MB, 600000000B) or slots (51slots)"


def parse_capacity(text: str) -> float | int | Slots:
    """A capacity written on a command line: ``"5%"`` and ``"0.05"`` are fractions of all routed-expert
    bytes (float), ``"0.6GiB"``, ``"600MB"``, ``"600000000B"`` and a bare integer are bytes (int; KB, MB, GB
    are powers of 1000, KiB, MiB, GiB of 1024), ``"51slots"`` is a slot count (:class:`Slots`)."""
    match = _CAPACITY_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise SpecMDError(f"capacity must be a fraction in (0, 1] or a byte count, got {text!r}; write {_CAPACITY_FORMS}")
    number, unit = match["number"], match["unit"].lower()
    value = float(number)
    if unit == "%":
        if not 0 < value <= 100:
            raise SpecMDError(f"capacity percentage must be in (0, 100], got {text!r}")
        return value / 100
    if unit in ("slot", "slots"):
        if not value.is_integer() or value < 1:
            raise SpecMDError(f"capacity slots must be a whole number >= 1, got {text!r}")
        return Slots(int(value))
    if unit in _UNITS:
        nbytes = value * _UNITS[unit]
        if unit == "b" and not value.is_integer():
            raise SpecMDError(f"a byte count must be whole, got {text!r}")
        return int(nbytes)
    if unit:
        raise SpecMDError(f"capacity {text!r} has an unknown unit {match['unit']!r}; write {_CAPACITY_FORMS}")
    if re.fullmatch(r"\s*[0-9]+\s*", text):
        return int(text)
    if not 0 < value <= 1:
        raise SpecMDError(f"capacity {text!r}: a plain decimal is a fraction in (0, 1]; for bytes write a whole "
                          f"number or a size (600MB), for a percentage write {value:g}%")
    return value


def capacity_slots(model: ModelSpec, capacity: float | int | str | Slots) -> int:
    """Expert slots for a capacity: a fraction of all routed-expert bytes (a float in (0, 1]), a byte count
    (an int, at least one expert's bytes), a :class:`Slots` or any string :func:`parse_capacity` reads.
    OLMoE at 5%: 0.05 x 12.0 GiB = 0.6 GiB = 51 slots."""
    if isinstance(capacity, str):
        capacity = parse_capacity(capacity)
    if isinstance(capacity, Slots):
        slots = capacity.count
    elif isinstance(capacity, bool) or not isinstance(capacity, numbers.Real) or not math.isfinite(capacity):
        raise SpecMDError(f"capacity must be a fraction in (0, 1] or a byte count, got {capacity!r}")
    elif isinstance(capacity, numbers.Integral):
        if capacity < model.expert_bytes:
            raise SpecMDError(
                f"capacity {capacity!r} is an integer, and integers are bytes: fewer than one expert of "
                f"{model.display_name} ({model.expert_bytes:,} bytes). For a fraction write a float (0.05) or "
                f"'5%'; for a number of experts write '{max(capacity, 1)}slots'")
        slots = int(capacity // model.expert_bytes)
    else:
        if not 0 < capacity <= 1:
            raise SpecMDError(f"capacity fraction must be in (0, 1], got {capacity!r}")
        slots = int(math.floor(capacity * model.num_routed_experts + 1e-9))
    if slots < model.top_k:
        raise SpecMDError(
            f"capacity {capacity!r} gives {slots} expert slots for {model.display_name}, fewer than one "
            f"layer's top_k={model.top_k}")
    return min(slots, model.num_routed_experts)
