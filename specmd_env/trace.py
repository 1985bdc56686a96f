"""The routing-trace format (version 1): what a trace holds, how it is stored, how it is checked.

A trace is a list of requests. Each request is a run of tokens: first its prompt, then the tokens it
generated. For every token and MoE layer the trace holds the ranked top-k expert ids the router chose
and, when known, their gate weights. Optionally it holds speculative scores: for token t and layer l,
``spec_scores[t, l]`` is the probability distribution that layer l+1's router gives to the hidden state
available while layer l runs -- what a real next-layer prefetcher sees. Layer L-1 has no next layer,
so the array has L-1 rows per token.

Storage: one ``.npz`` (a zip of ``.npy`` members) read with this module's own parser, never with
pickle. Members stored uncompressed are memory-mapped, so a large trace is never read whole.

=================  ==========  ===============  ===================================================
member             dtype       shape            meaning
=================  ==========  ===============  ===================================================
meta_json          uint8       [n]              UTF-8 JSON: format, version, model, shape, kind, ...
request_offsets    int64       [R+1]            token range of request r: offsets[r]:offsets[r+1]
prompt_lengths     int64       [R]              the first prompt_lengths[r] tokens are the prompt (0: decode only)
expert_ids         int16       [T, L, k]        ranked top-k expert ids (rank 0 = highest gate)
gate_weights       float32     [T, L, k]        optional; finite, >= 0
spec_scores        float16     [T, L-1, E]      optional; next-layer router probabilities, in [0, 1]
token_ids          int32       [T]              optional; vocabulary ids
=================  ==========  ===============  ===================================================

``meta_json`` keys: ``format`` ("specmd-trace"), ``version`` (1), ``model`` (a name known to
:func:`specmd_env.models.get_model`), ``num_layers``, ``num_experts``, ``top_k``, ``kind``
("recorded", "synthetic" or "imported"), ``source`` (how it was made), ``licence``, ``domains`` (one
per request), ``description``, and any extra keys the producer adds.

A request may be decode only (``prompt_lengths[r] == 0``): a serving engine's trace of generated tokens
whose prompt routing was not recorded. Its first decode pass yields its first token.

Building a :class:`Trace` in memory is forgiving where nothing can be lost: integer arrays of another
dtype are cast when every value fits (else the field is named), and a known ``model`` fills a missing
``num_experts`` (the trace's layers and top-k must then be the model's). Files are read strictly.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specmd_env.errors import SpecMDError, TraceFormatError
from specmd_env.models import get_model

FORMAT_NAME = "specmd-trace"
FORMAT_VERSION = 1
KINDS = ("recorded", "synthetic", "imported")
_REQUIRED_META = ("format", "version", "model", "num_layers", "num_experts", "top_k", "kind")
_MEMBER_DTYPES = {
    "meta_json": np.dtype(np.uint8),
    "request_offsets": np.dtype(np.int64),
    "prompt_lengths": np.dtype(np.int64),
    "expert_ids": np.dtype(np.int16),
    "gate_weights": np.dtype(np.float32),
    "spec_scores": np.dtype(np.float16),
    "token_ids": np.dtype(np.int32),
}
_OPTIONAL = ("gate_weights", "spec_scores", "token_ids")
_VALIDATE_CHUNK = 1 << 14  # tokens checked at a time, so validating a memory-mapped trace stays small


@dataclass
class Trace:
    """A routing trace in memory (arrays may be read-only memory maps). See the module docstring."""

    expert_ids: np.ndarray
    request_offsets: np.ndarray
    prompt_lengths: np.ndarray
    meta: dict[str, Any]
    gate_weights: np.ndarray | None = None
    spec_scores: np.ndarray | None = None
    token_ids: np.ndarray | None = None
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("expert_ids", "request_offsets", "prompt_lengths", "token_ids"):
            setattr(self, name, _cast_integers(name, getattr(self, name)))
        meta = dict(self.meta)
        meta.setdefault("format", FORMAT_NAME)
        meta.setdefault("version", FORMAT_VERSION)
        if getattr(self.expert_ids, "ndim", 0) == 3:
            meta.setdefault("num_layers", int(self.expert_ids.shape[1]))
            meta.setdefault("top_k", int(self.expert_ids.shape[2]))
        _fill_from_model(meta)
        self.meta = meta
        validate(self)

    # -- shape -------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.expert_ids.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.meta["num_layers"])

    @property
    def num_experts(self) -> int:
        return int(self.meta["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    @property
    def num_requests(self) -> int:
        return len(self.prompt_lengths)

    @property
    def model(self) -> str:
        return str(self.meta["model"])

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def domains(self) -> list[str]:
        return list(self.meta.get("domains") or ["unknown"] * self.num_requests)

    def request_slice(self, r: int) -> slice:
        return slice(int(self.request_offsets[r]), int(self.request_offsets[r + 1]))

    def select_requests(self, indices) -> "Trace":
        """A new in-memory trace holding only the given requests, in the given order."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self.num_requests:
                raise TraceFormatError(f"request index {i} out of range [0, {self.num_requests})")
        rows = np.concatenate([np.arange(self.request_offsets[i], self.request_offsets[i + 1]) for i in indices]) \
            if indices else np.zeros(0, np.int64)
        lengths = np.array([self.request_offsets[i + 1] - self.request_offsets[i] for i in indices], np.int64)
        meta = dict(self.meta)
        meta["domains"] = [self.domains[i] for i in indices]
        take = lambda a: None if a is None else np.asarray(a[rows])  # noqa: E731
        return Trace(expert_ids=np.asarray(self.expert_ids[rows]),
                     request_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     prompt_lengths=np.asarray(self.prompt_lengths[indices], np.int64), meta=meta,
                     gate_weights=take(self.gate_weights), spec_scores=take(self.spec_scores),
                     token_ids=take(self.token_ids))

    def __repr__(self) -> str:
        return (f"Trace(model={self.model!r}, kind={self.kind!r}, requests={self.num_requests}, "
                f"tokens={self.num_tokens}, spec_scores={self.spec_scores is not None})")


def _fail(message: str) -> None:
    raise TraceFormatError(message)


def _cast_integers(name: str, array):
    """An integer array in the member's dtype: any integer dtype is cast when every value fits; a value
    that does not fit, or a non-integer array, is an error naming the field. Arrays already in the right
    dtype (memory maps of a loaded file) are returned untouched."""
    if array is None or not isinstance(array, np.ndarray) or array.dtype == _MEMBER_DTYPES[name]:
        return array
    target = _MEMBER_DTYPES[name]
    if array.dtype.kind not in "iu":
        _fail(f"{name} has dtype {array.dtype}, expected integers ({target})")
    if array.size:
        low, high = np.iinfo(target).min, np.iinfo(target).max
        lo, hi = array.min(), array.max()
        if lo < low or hi > high:
            bad = lo if lo < low else hi
            _fail(f"{name} holds {int(bad)}, which does not fit {target} [{low}, {high}]; not cast")
    return array.astype(target)


def _fill_from_model(meta: dict) -> None:
    """Without ``num_experts``, a model the registry knows supplies it, and then the trace's layers and
    top-k must be the model's. A trace stating its own shape keeps it (simulate checks it against the
    model it replays with)."""
    if "num_experts" in meta or "model" not in meta:
        return
    try:
        spec = get_model(meta["model"])
    except SpecMDError:
        return  # a model outside the registry: the trace must state its own shape (validate says so)
    for key in ("num_layers", "top_k"):
        if key in meta and meta[key] != getattr(spec, key):
            _fail(f"trace metadata {key}={meta[key]!r} does not match model {spec.name!r} ({key}={getattr(spec, key)}), "
                  "whose num_experts it would take")
    meta["num_experts"] = spec.num_experts


def validate(trace: Trace) -> None:
    """Check every field of a trace; raise :class:`TraceFormatError` naming the field and value."""
    meta = trace.meta
    for key in _REQUIRED_META:
        if key not in meta:
            _fail(f"trace metadata is missing {key!r}")
    if meta["format"] != FORMAT_NAME:
        _fail(f"trace metadata format is {meta['format']!r}, expected {FORMAT_NAME!r}")
    if meta["version"] != FORMAT_VERSION:
        _fail(f"trace format version {meta['version']!r} is not supported (this reader knows {FORMAT_VERSION})")
    if meta["kind"] not in KINDS:
        _fail(f"trace metadata kind is {meta['kind']!r}, expected one of {KINDS}")
    for key in ("num_layers", "num_experts", "top_k"):
        if not isinstance(meta[key], int) or meta[key] <= 0:
            _fail(f"trace metadata {key} must be a positive integer, got {meta[key]!r}")
    num_layers, num_experts, top_k = meta["num_layers"], meta["num_experts"], meta["top_k"]
    if top_k > num_experts:
        _fail(f"trace metadata top_k={top_k} exceeds num_experts={num_experts}")

    ids = trace.expert_ids
    _check_array("expert_ids", ids, None)
    if ids.ndim != 3 or ids.shape[1:] != (num_layers, top_k):
        _fail(f"expert_ids has shape {ids.shape}, expected (tokens, {num_layers}, {top_k})")
    num_tokens = ids.shape[0]
    offsets, prompts = trace.request_offsets, trace.prompt_lengths
    _check_array("request_offsets", offsets, None)
    _check_array("prompt_lengths", prompts, None)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != num_tokens:
        _fail(f"request_offsets must start at 0 and end at the token count {num_tokens}, "
              f"got {np.asarray(offsets)[:3]}...{np.asarray(offsets)[-3:]} (length {len(offsets)})")
    lengths = np.diff(offsets)
    if np.any(lengths <= 0):
        _fail(f"request_offsets must be strictly increasing: request {int(np.argmax(lengths <= 0))} is empty")
    if prompts.ndim != 1 or len(prompts) != len(lengths):
        _fail(f"prompt_lengths has {len(prompts)} entries for {len(lengths)} requests")
    if np.any(prompts < 0) or np.any(prompts > lengths):
        bad = int(np.argmax((prompts < 0) | (prompts > lengths)))
        _fail(f"prompt_lengths[{bad}]={int(prompts[bad])} outside [0, {int(lengths[bad])}] (the request's length)")
    domains = meta.get("domains")
    if domains is not None and (not isinstance(domains, list) or len(domains) != len(lengths)):
        _fail(f"metadata domains must list one domain per request ({len(lengths)}), got {domains!r:.80}")

    optional_shapes = {"gate_weights": (num_tokens, num_layers, top_k),
                       "spec_scores": (num_tokens, num_layers - 1, num_experts),
                       "token_ids": (num_tokens,)}
    for name, shape in optional_shapes.items():
        array = getattr(trace, name)
        if array is not None:
            _check_array(name, array, shape)

    for start in range(0, num_tokens, _VALIDATE_CHUNK):
        stop = min(start + _VALIDATE_CHUNK, num_tokens)
        chunk = np.asarray(ids[start:stop])
        if chunk.min(initial=0) < 0 or chunk.max(initial=0) >= num_experts:
            flat = int(np.argmax((chunk < 0) | (chunk >= num_experts)))
            t, rest = divmod(flat, num_layers * top_k)
            _fail(f"expert_ids[{start + t}, {rest // top_k}, {rest % top_k}]={int(chunk.flat[flat])} "
                  f"out of range [0, {num_experts})")
        ordered = np.sort(chunk, axis=2)
        repeated = ordered[:, :, 1:] == ordered[:, :, :-1]
        if repeated.any():
            t, layer, _ = np.argwhere(repeated)[0]
            _fail(f"expert_ids[{start + t}, {layer}] repeats an expert id within one top-k: {chunk[t, layer].tolist()}")
        if trace.gate_weights is not None:
            gates = np.asarray(trace.gate_weights[start:stop])
            if not np.all(np.isfinite(gates)) or np.any(gates < 0):
                t, layer, rank = np.argwhere(~np.isfinite(gates) | (gates < 0))[0]
                _fail(f"gate_weights[{start + t}, {layer}, {rank}]={gates[t, layer, rank]} must be finite and >= 0")
        if trace.spec_scores is not None:
            scores = np.asarray(trace.spec_scores[start:stop], dtype=np.float32)
            if not np.all(np.isfinite(scores)) or np.any(scores < 0) or np.any(scores > 1.001):
                t, layer, e = np.argwhere(~np.isfinite(scores) | (scores < 0) | (scores > 1.001))[0]
                _fail(f"spec_scores[{start + t}, {layer}, {e}]={scores[t, layer, e]} must be a probability in [0, 1]")
        for array in (ids, trace.gate_weights, trace.spec_scores):
            _drop_pages(array)


def _drop_pages(array) -> None:
    """Validation reads every page of a memory-mapped trace; let the kernel drop the pages read so far
    (read-only file mappings only: they are refetched on demand), so checking a large trace does not
    leave it all resident (RSS stays small after load_trace)."""
    mapping = getattr(array, "_mmap", None)
    if isinstance(array, np.memmap) and array.mode == "r" and mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)


def _check_array(name: str, array: np.ndarray, shape: tuple | None) -> None:
    expected = _MEMBER_DTYPES[name]
    if not isinstance(array, np.ndarray):
        _fail(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != expected:
        _fail(f"{name} has dtype {array.dtype}, expected {expected}")
    if shape is not None and array.shape != shape:
        _fail(f"{name} has shape {array.shape}, expected {shape}")


# -- storage ---------------------------------------------------------------------------------------

def save_trace(trace: Trace, path: str | os.PathLike, *, compress: bool = False) -> Path:
    """Write ``trace`` to ``path`` (an ``.npz``). Uncompressed files are memory-mapped when loaded;
    compressed ones are smaller. The file appears under its name only once it is complete."""
    validate(trace)
    path = Path(path)
    members = {"meta_json": np.frombuffer(json.dumps(trace.meta, sort_keys=True).encode(), np.uint8),
               "request_offsets": np.asarray(trace.request_offsets), "prompt_lengths": np.asarray(trace.prompt_lengths),
               "expert_ids": np.asarray(trace.expert_ids)}
    for name in _OPTIONAL:
        if getattr(trace, name) is not None:
            members[name] = np.asarray(getattr(trace, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=mode) as zf:
            for name, array in members.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_trace(path: str | os.PathLike, *, mmap: bool = True) -> Trace:
    """Read and validate a trace file. Never unpickles; every defect is a :class:`TraceFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"trace file {str(path)!r} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {name: _read_member(path, zf, name, mmap) for name in _MEMBER_DTYPES
                      if name + ".npy" in zf.namelist() or name not in _OPTIONAL}
            extra = sorted(set(zf.namelist()) - {n + ".npy" for n in _MEMBER_DTYPES})
    except TraceFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error, zlib.error,
            NotImplementedError, RuntimeError, KeyError, MemoryError) as exc:
        raise TraceFormatError(f"{path}: not a readable specmd trace ({type(exc).__name__}: {exc})") from None
    if extra:
        raise TraceFormatError(f"{path}: unexpected members {extra} (not a specmd trace v{FORMAT_VERSION})")
    try:
        meta = json.loads(bytes(arrays.pop("meta_json")).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceFormatError(f"{path}: meta_json is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{path}: meta_json must be a JSON object, got {type(meta).__name__}")
    try:
        return Trace(meta=meta, path=path, **arrays)
    except TraceFormatError as exc:
        raise TraceFormatError(f"{path}: {exc}") from None


def _read_member(path: Path, zf: zipfile.ZipFile, name: str, mmap: bool) -> np.ndarray:
    member = name + ".npy"
    if member not in zf.namelist():
        raise TraceFormatError(f"{path}: required member {member!r} is missing")
    info = zf.getinfo(member)
    with zf.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise TraceFormatError(f"{path}: member {member!r} has unknown .npy version {version}")
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream, max_header_size=10_000)
        header_len = stream.tell()
        expected = _MEMBER_DTYPES[name]
        if dtype != expected or fortran:
            raise TraceFormatError(f"{path}: member {name!r} has dtype {dtype} (fortran={fortran}), expected {expected}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count < 0 or count * dtype.itemsize != info.file_size - header_len:
            raise TraceFormatError(f"{path}: member {name!r} declares shape {shape} ({count * dtype.itemsize} bytes) "
                                   f"but holds {info.file_size - header_len} bytes")
        if mmap and info.compress_type == zipfile.ZIP_STORED and count > 0:
            return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=_data_offset(path, info) + header_len)
        data = stream.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise TraceFormatError(f"{path}: member {name!r} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header, whose extra field may differ
    from the central directory's."""
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise TraceFormatError(f"{path}: corrupt zip local header for {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len
