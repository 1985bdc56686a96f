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
:func:`specmd_env.models.get_model`, or any name the producer vouches for), ``num_layers``,
``num_experts``, ``top_k`` (those of the model when it is registered), ``kind`` ("recorded",
"synthetic" or "imported"), ``source`` (how it was made), ``licence``, ``domains`` (one string per
request), ``description``, and any extra keys the producer adds.

A request may be decode only (``prompt_lengths[r] == 0``): a serving engine's trace of generated tokens
whose prompt routing was not recorded. Its first decode pass yields its first token.

Building a :class:`Trace` in memory is forgiving where nothing can be lost: integer arrays of another
dtype are cast when every value fits (else the field is named), and a known ``model`` fills a missing
``num_experts`` (the trace's layers and top-k must then be the model's). Files are read strictly.

Reading hostile files. :func:`load_trace` reads nothing it has not bounded first: the zip directory
(known member names only, stored or deflated, compressed members inflating to at most
:data:`MAX_INFLATED_BYTES` together), then ``meta_json`` (at most :data:`MAX_META_BYTES`, checked by
:func:`specmd_env.safe_json.load_json`, shape fields within :data:`MAX_LAYERS` / :data:`MAX_EXPERTS`
and equal to the registered model's), then each array member only once its declared dtype and shape
match what the metadata and the members read before imply, reading exactly those bytes. Every defect is
a :class:`TraceFormatError`.

Memory-mapped files that change. A mapped file that shrinks while a reader uses it would kill the
process with SIGBUS; one rewritten in place would change the data under a replay. A loaded trace keeps
its file open (:class:`MappedFile`); readers call :meth:`Trace.check_file` before each chunk they read,
which refuses a file whose size or modification time changed since loading. Replacing the file (as
:func:`save_trace` does, by rename) is harmless: the mapping keeps the old contents. Not covered: a
change in the instant between a check and the chunk it guards.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specmd_env.checks import integer_array, is_integer, shorten
from specmd_env.errors import SpecMDError, TraceFormatError
from specmd_env.models import get_model
from specmd_env.safe_json import load_json

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
_VALIDATE_CELLS = 1 << 21  # (token, layer, id or score) cells checked at a time: validation memory stays small

# Bounds on what a file may claim, far above any real MoE model or trace, so that a lying header can
# never make a reader allocate without limit (largest models today: 512 routed experts, under 100 MoE layers).
MAX_LAYERS = 1024
MAX_EXPERTS = 4096                # expert ids are int16 anyway
MAX_META_BYTES = 4 << 20          # meta_json: room for the domain names of about 400k requests
MAX_INFLATED_BYTES = 256 << 20    # all deflated members together; larger traces are saved uncompressed
MAX_INFLATE_RATIO = 32            # ... and at most 32x their compressed bytes (+16 MiB): real traces deflate 1-5x,
_INFLATE_FLOOR = 16 << 20         # so a small file cannot stand for a huge amount of work
_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_READ_PIECE = 16 << 20            # inflate into the final array in pieces: no second copy of a member


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
    mapped_file: "MappedFile | None" = field(default=None, compare=False, repr=False)

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

    def __getstate__(self) -> dict:
        """A copied or pickled trace holds its arrays in memory (numpy copies memory maps as plain arrays),
        so it has no mapped file to check: the open descriptor means nothing in another process."""
        return {**self.__dict__, "mapped_file": None}

    def check_file(self) -> None:
        """Raise :class:`TraceFormatError` if the file this trace's arrays are mapped from has changed
        since it was loaded (see the module docstring); nothing to check for an in-memory trace."""
        if self.mapped_file is not None:
            self.mapped_file.check()

    def select_requests(self, indices) -> "Trace":
        """A new in-memory trace holding only the given requests, in the given order."""
        indices = integer_array("request indices", indices, 0, self.num_requests).tolist()
        self.check_file()
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


def check_meta(meta: dict) -> tuple[int, int, int]:
    """Check the metadata every reader relies on; return its (num_layers, num_experts, top_k)."""
    if not isinstance(meta, dict):
        _fail(f"trace metadata must be a JSON object, got {type(meta).__name__}")
    for key in _REQUIRED_META:
        if key not in meta:
            _fail(f"trace metadata is missing {key!r}")
    if meta["format"] != FORMAT_NAME:
        _fail(f"trace metadata format is {meta['format']!r:.80}, expected {FORMAT_NAME!r}")
    if not is_integer(meta["version"]) or meta["version"] != FORMAT_VERSION:
        _fail(f"trace format version {meta['version']!r:.80} is not supported (this reader knows {FORMAT_VERSION})")
    if meta["kind"] not in KINDS:
        _fail(f"trace metadata kind is {meta['kind']!r:.80}, expected one of {KINDS}")
    if not isinstance(meta["model"], str) or not 0 < len(meta["model"]) <= 200:
        _fail(f"trace metadata model must be a model name (1 to 200 characters), got {meta['model']!r:.80}")
    for key, limit in (("num_layers", MAX_LAYERS), ("num_experts", MAX_EXPERTS), ("top_k", MAX_EXPERTS)):
        if not is_integer(meta[key]) or not 1 <= meta[key] <= limit:
            _fail(f"trace metadata {key} must be an integer in [1, {limit}], got {meta[key]!r:.80}")
    num_layers, num_experts, top_k = meta["num_layers"], meta["num_experts"], meta["top_k"]
    if top_k > num_experts:
        _fail(f"trace metadata top_k={top_k} exceeds num_experts={num_experts}")
    spec = _registered_model(meta["model"])
    if spec is not None and (num_layers, num_experts, top_k) != (spec.num_layers, spec.num_experts, spec.top_k):
        _fail(f"trace metadata says {num_layers} layers x {num_experts} experts, top-{top_k}, but model "
              f"{meta['model']!r} is registered with {spec.num_layers} x {spec.num_experts}, top-{spec.top_k}")
    domains = meta.get("domains")
    if domains is not None:
        if not isinstance(domains, list):
            _fail(f"trace metadata domains must be a list of strings, got {type(domains).__name__}")
        bad = next((i for i, d in enumerate(domains) if not isinstance(d, str)), None)
        if bad is not None:
            _fail(f"trace metadata domains[{bad}] must be a string, got {domains[bad]!r:.80}")
    return num_layers, num_experts, top_k


def _registered_model(name: str):
    try:
        return get_model(name)
    except SpecMDError:
        return None  # not registered: the producer vouches for its shape (within the bounds above)


def _check_offsets(offsets) -> int:
    """Check request_offsets (0, then strictly increasing); return the token count it implies."""
    _check_array("request_offsets", offsets, None)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
        _fail(f"request_offsets must be a list starting at 0, got {shorten(np.asarray(offsets)[:3])} "
              f"(length {len(offsets)})")
    lengths = np.diff(offsets)
    if np.any(lengths <= 0):
        _fail(f"request_offsets must be strictly increasing: request {int(np.argmax(lengths <= 0))} is empty")
    return int(offsets[-1])


def validate(trace: Trace) -> None:
    """Check every field of a trace; raise :class:`TraceFormatError` naming the field and value."""
    meta = trace.meta
    num_layers, num_experts, top_k = check_meta(meta)

    ids = trace.expert_ids
    _check_array("expert_ids", ids, None)
    if ids.ndim != 3 or ids.shape[1:] != (num_layers, top_k):
        _fail(f"expert_ids has shape {ids.shape}, expected (tokens, {num_layers}, {top_k})")
    num_tokens = ids.shape[0]
    offsets, prompts = trace.request_offsets, trace.prompt_lengths
    if _check_offsets(offsets) != num_tokens:
        _fail(f"request_offsets must end at the token count {num_tokens}, got {int(offsets[-1])}")
    lengths = np.diff(offsets)
    _check_array("prompt_lengths", prompts, None)
    if prompts.ndim != 1 or len(prompts) != len(lengths):
        _fail(f"prompt_lengths has {len(prompts)} entries for {len(lengths)} requests")
    if np.any(prompts < 0) or np.any(prompts > lengths):
        bad = int(np.argmax((prompts < 0) | (prompts > lengths)))
        _fail(f"prompt_lengths[{bad}]={int(prompts[bad])} outside [0, {int(lengths[bad])}] (the request's length)")
    domains = meta.get("domains")
    if domains is not None and len(domains) != len(lengths):
        _fail(f"metadata domains must list one domain per request ({len(lengths)}), got {len(domains)}: "
              f"{shorten(domains, 4)}")

    optional_shapes = {"gate_weights": (num_tokens, num_layers, top_k),
                       "spec_scores": (num_tokens, num_layers - 1, num_experts),
                       "token_ids": (num_tokens,)}
    for name, shape in optional_shapes.items():
        array = getattr(trace, name)
        if array is not None:
            _check_array(name, array, shape)

    step = max(1, _VALIDATE_CELLS // (num_layers * max(top_k, num_experts if trace.spec_scores is not None else 1)))
    for start in range(0, num_tokens, step):
        stop = min(start + step, num_tokens)
        trace.check_file()
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
            _fail(f"expert_ids[{start + t}, {layer}] repeats an expert id within one top-k: {shorten(chunk[t, layer])}")
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
    compressed ones are smaller. The file appears under its name only once it is complete, and only if
    :func:`load_trace` will read it back (metadata and compressed sizes within its limits)."""
    validate(trace)
    path = Path(path)
    meta = json.dumps(trace.meta, sort_keys=True).encode()
    load_json(meta, "meta_json", max_bytes=MAX_META_BYTES)
    members = {"meta_json": np.frombuffer(meta, np.uint8),
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
            infos = zf.infolist()
        packed, inflated = sum(i.compress_size for i in infos), sum(i.file_size for i in infos)
        if compress and inflated > inflate_limit(packed):
            raise TraceFormatError(f"{path}: this trace deflates to {packed} bytes that inflate to {inflated}, over "
                                   f"what load_trace accepts ({inflate_limit(packed)}); save it uncompressed")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_trace(path: str | os.PathLike, *, mmap: bool = True) -> Trace:
    """Read and validate a trace file. Never unpickles; reads nothing it has not bounded first (see the
    module docstring); every defect is a :class:`TraceFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"trace file {str(path)!r} does not exist")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot open the trace file ({exc.strerror})") from None
    try:
        with os.fdopen(os.dup(fd), "rb") as handle, zipfile.ZipFile(handle) as zf:
            arrays = _read_members(_MemberReader(handle, zf, mmap))
    except TraceFormatError as exc:
        os.close(fd)
        raise TraceFormatError(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error, zlib.error,
            NotImplementedError, RuntimeError, KeyError) as exc:
        os.close(fd)
        raise TraceFormatError(f"{path}: not a readable specmd trace ({type(exc).__name__}: {exc})") from None
    meta = arrays.pop("meta")
    mapped = MappedFile(path, fd) if any(isinstance(a, np.memmap) for a in arrays.values()) else None
    if mapped is None:
        os.close(fd)
    try:
        return Trace(meta=meta, path=path, mapped_file=mapped, **arrays)
    except TraceFormatError as exc:
        raise TraceFormatError(f"{path}: {exc}") from None


def inflate_limit(compressed_bytes: int) -> int:
    """How many bytes deflated members of ``compressed_bytes`` may inflate to (see MAX_INFLATE_RATIO)."""
    return min(MAX_INFLATED_BYTES, _INFLATE_FLOOR + MAX_INFLATE_RATIO * compressed_bytes)


def _read_members(reader: "_MemberReader") -> dict:
    """The members in dependency order, each read only after its shape is known to be the right one."""
    raw_meta = reader.read("meta_json", (None,), max_bytes=MAX_META_BYTES)
    meta = load_json(raw_meta.tobytes(), "meta_json", max_bytes=MAX_META_BYTES)
    num_layers, num_experts, top_k = check_meta(meta)
    domains = meta.get("domains")
    requests = len(domains) if domains is not None else None
    offsets = reader.read("request_offsets", (None if requests is None else requests + 1,))
    tokens = _check_offsets(offsets)
    arrays = {"meta": meta, "request_offsets": offsets,
              "prompt_lengths": reader.read("prompt_lengths", (len(offsets) - 1,)),
              "expert_ids": reader.read("expert_ids", (tokens, num_layers, top_k))}
    optional = {"gate_weights": (tokens, num_layers, top_k), "spec_scores": (tokens, num_layers - 1, num_experts),
                "token_ids": (tokens,)}
    for name, shape in optional.items():
        if name in reader.members:
            arrays[name] = reader.read(name, shape)
    return arrays


class _MemberReader:
    """One trace file's zip members. The directory is checked when the reader is made (known names only,
    stored or deflated, bounded inflated size); :meth:`read` checks a member's header before its data."""

    def __init__(self, handle, zf: zipfile.ZipFile, mmap: bool):
        self.handle, self.zf, self.mmap = handle, zf, mmap
        self.file_size = os.fstat(handle.fileno()).st_size
        self.members: dict[str, zipfile.ZipInfo] = {}
        unexpected, inflated, deflated = [], 0, 0
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            if name not in _MEMBER_DTYPES or not info.filename.endswith(".npy"):
                unexpected.append(info.filename)
                continue
            if name in self.members:
                _fail(f"member {info.filename!r} appears twice")
            if info.compress_type not in _COMPRESSIONS:
                _fail(f"member {info.filename!r} uses zip compression method {info.compress_type}; a specmd trace's "
                      f"members are {' or '.join(_COMPRESSIONS.values())}")
            if info.compress_type == zipfile.ZIP_STORED and (info.compress_size != info.file_size or
                                                             info.header_offset + info.file_size > self.file_size):
                _fail(f"member {info.filename!r} claims {info.file_size} bytes, more than the file holds")
            if info.compress_type == zipfile.ZIP_DEFLATED:
                inflated, deflated = inflated + info.file_size, deflated + info.compress_size
            self.members[name] = info
        if unexpected:
            _fail(f"unexpected members {shorten(unexpected)} (not a specmd trace v{FORMAT_VERSION})")
        for name in _MEMBER_DTYPES:
            if name not in _OPTIONAL and name not in self.members:
                _fail(f"required member {name + '.npy'!r} is missing")
        limit = inflate_limit(deflated)
        if inflated > limit:
            _fail(f"its deflated members ({deflated} bytes) would inflate to {inflated} bytes, over the limit of "
                  f"{limit} (save large or repetitive traces uncompressed: they are memory-mapped, never read whole)")

    def read(self, name: str, shape: tuple, max_bytes: int | None = None) -> np.ndarray:
        """Member ``name``, whose declared shape must be ``shape`` (None: any length on that axis, the
        member's byte count then bounds it). Exactly the declared bytes are read, into their final array."""
        info = self.members[name]
        if max_bytes is not None and info.file_size > max_bytes + 10_000:
            _fail(f"member {name!r} holds {info.file_size} bytes, over the limit of {max_bytes}")
        with self.zf.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0), (3, 0)):
                _fail(f"member {name!r} has unknown .npy version {version}")
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            declared, fortran, dtype = reader(stream, max_header_size=10_000)
            header_len = stream.tell()
            expected = _MEMBER_DTYPES[name]
            if dtype != expected or fortran:
                _fail(f"member {name!r} has dtype {dtype} (fortran={fortran}), expected {expected}")
            if len(declared) != len(shape) or any(want is not None and got != want for got, want in zip(declared, shape)):
                wanted = "(" + ", ".join("any" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
                _fail(f"member {name!r} declares shape {declared}, expected {wanted}")
            count = math.prod(declared)
            if min(declared, default=0) < 0 or count * dtype.itemsize != info.file_size - header_len:
                _fail(f"member {name!r} declares shape {declared} ({count * dtype.itemsize} bytes) "
                      f"but holds {info.file_size - header_len} bytes")
            if self.mmap and info.compress_type == zipfile.ZIP_STORED and count > 0:
                return np.memmap(self.handle, dtype=dtype, mode="r", shape=declared,
                                 offset=self._data_offset(info) + header_len)
            out = np.empty(declared, dtype)
            view = memoryview(out.reshape(-1).view(np.uint8))
            done = 0
            while done < len(view):
                piece = stream.read(min(_READ_PIECE, len(view) - done))
                if not piece:
                    _fail(f"member {name!r} is truncated")
                view[done:done + len(piece)] = piece
                done += len(piece)
        return out

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes start: after its local header, whose extra field may differ
        from the central directory's."""
        local = os.pread(self.handle.fileno(), 30, info.header_offset)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            _fail(f"corrupt zip local header for {info.filename!r}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        return info.header_offset + 30 + name_len + extra_len


class MappedFile:
    """The open file a loaded trace's arrays are memory-mapped from, and its size and modification time
    at load time. :meth:`check` refuses a file that has changed since (see the module docstring). The
    descriptor is closed when this object is collected."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd
        stat = os.fstat(fd)
        self.size, self.mtime_ns = stat.st_size, stat.st_mtime_ns
        weakref.finalize(self, os.close, fd)

    def check(self) -> None:
        stat = os.fstat(self.fd)
        if (stat.st_size, stat.st_mtime_ns) != (self.size, self.mtime_ns):
            raise TraceFormatError(
                f"{self.path}: the trace file changed on disk while in use (size {self.size} -> {stat.st_size} "
                f"bytes, modified {(stat.st_mtime_ns - self.mtime_ns) / 1e9:+.3f} s); its memory-mapped arrays "
                "are no longer valid: load it again")
