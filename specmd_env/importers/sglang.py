"""Import SGLang's expert-distribution recorder dump in ``per_token`` mode.

A server started with ``--expert-distribution-recorder-mode per_token`` records every forward pass between
``/start_expert_distribution_record`` and ``/stop_expert_distribution_record``; ``/dump_expert_distribution_record``
writes ``expert_distribution_recorder_<time>_<rank>.pt`` with ``torch.save``::

    {"records": [{"forward_pass_id": int, "rank": int, "gatherer_key": str,
                  "input_ids": [n], "positions": [n], "extend_seq_lens": [b] or None, "forward_mode": int,
                  "topk_ids_of_layer": int32 tensor [layers, n, 8] (-1 = empty),
                  "misc_objects": [...], "global_physical_count": tensor}, ...],
     "last_physical_to_logical_map": int tensor [layers, physical experts]}

The file is a pickle, so it is read only with ``torch.load(weights_only=True)``, which refuses anything but
tensors, lists, dicts, numbers and strings; a file it refuses is a :class:`TraceFormatError`, never
unpickled further.

Ids are *physical* (with expert-parallel load balancing an expert may have several replicas); each is mapped
to its logical expert through ``last_physical_to_logical_map`` -- the map at dump time, so a rebalance during
the recording would remap earlier passes wrongly (record without EPLB rebalancing). The 8 columns are padded
with -1 beyond the model's top-k; layers the recorder never filled (dense layers) are dropped when that
leaves the model's MoE layer count.

Records carry no request ids, so passes are linked into requests by position: ``forward_mode`` 1 (EXTEND)
and 3 (MIXED) split their tokens by ``extend_seq_lens``, 2 (DECODE) has one token per request, 4 (IDLE) is
skipped; other modes (speculative verify, draft) are refused. A segment continues the open request whose
next position is its first position -- among several, the one seen in the latest pass, then the oldest, which
is SGLang's stable batch order -- and otherwise starts a new request (at position > 0 when its prefix came
from the radix cache: those tokens were not recomputed, so they have no routing and are not replayed).
Continuations in EXTEND passes are prompt chunks (chunked prefill); single tokens in DECODE passes, and
single-token continuations of a request already decoding in MIXED passes, are decode steps. A single-token
*last prefill chunk* in a MIXED pass is indistinguishable from a decode step and is read as one.

With tensor parallelism every rank records the same tokens: import one rank's file. No gate weights or
next-layer scores are recorded; the top-k order is SGLang's, kept as the rank.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specmd_env.errors import TraceFormatError
from specmd_env.importers.base import (RequestRouting, add_common_arguments, build_trace, check_routing,
                                       default_domain, resolve_model, write_trace)
from specmd_env.models import get_model
from specmd_env.trace import Trace

EXTEND, DECODE, MIXED, IDLE = 1, 2, 3, 4  # sglang.srt.model_executor.forward_batch_info.ForwardMode values


def _load(path: Path) -> dict:
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; such files are refused below
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceFormatError(f"{path}: refused: torch.load(weights_only=True) cannot read it as plain tensors, "
                               f"lists and numbers ({first[:200]}); SGLang's per_token dump is only read that way") from None
    if not isinstance(data, dict):
        raise TraceFormatError(f"{path}: expected a dict with 'records', got {type(data).__name__}")
    if "logical_count" in data:
        raise TraceFormatError(f"{path}: a stat-mode dump (per-layer counts, no tokens); record with "
                               "--expert-distribution-recorder-mode per_token")
    for key in ("records", "last_physical_to_logical_map"):
        if key not in data:
            raise TraceFormatError(f"{path}: missing {key!r} (keys: {sorted(map(str, data))})")
    return data


def _numpy(value, field: str) -> np.ndarray:
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if array.dtype.kind not in "iu":
        raise TraceFormatError(f"{field} must hold integers, got {array.dtype}")
    return array


@dataclass
class _Open:
    """A request being reassembled: its rows so far, the position it continues at, when it was last seen."""

    index: int
    next_position: int
    last_pass: int
    prompt: list = field(default_factory=list)
    decode: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    cached_prefix: int = 0

    @property
    def decoding(self) -> bool:
        return bool(self.decode)


def _segments(record: dict, where: str, n: int) -> list[tuple[int, int]]:
    mode = record["forward_mode"]
    if mode == DECODE:
        return [(i, 1) for i in range(n)]
    lens = record.get("extend_seq_lens")
    if lens is None:
        raise TraceFormatError(f"{where}: forward_mode {mode} needs extend_seq_lens, got None")
    lens = [int(x) for x in lens]
    if sum(lens) != n or any(x <= 0 for x in lens):
        raise TraceFormatError(f"{where}: extend_seq_lens {lens[:8]} must be positive and sum to the pass's "
                               f"{n} tokens")
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return list(zip(starts.tolist(), lens))


def import_sglang(path, *, model: str | None = None, domain: str | None = None) -> Trace:
    """Read one rank's ``expert_distribution_recorder_*.pt`` (per_token mode) into a trace."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"{path}: no such file")
    data = _load(path)
    mapping = _numpy(data["last_physical_to_logical_map"], "last_physical_to_logical_map")
    if mapping.ndim != 2:
        raise TraceFormatError(f"last_physical_to_logical_map has shape {mapping.shape}, expected [layers, physical]")
    records = data["records"]
    if not isinstance(records, list) or not records:
        raise TraceFormatError(f"{path}: 'records' must be a non-empty list (was anything recorded between "
                               "/start_expert_distribution_record and /stop_expert_distribution_record?)")
    passes = []  # (where, record, physical ids [L, n, 8])
    for i, record in enumerate(sorted(records, key=lambda r: r.get("forward_pass_id", 0) if isinstance(r, dict) else 0)):
        where = f"records[{i}]"
        if not isinstance(record, dict):
            raise TraceFormatError(f"{where} must be a dict, got {type(record).__name__}")
        for key in ("forward_pass_id", "topk_ids_of_layer", "input_ids", "positions", "forward_mode"):
            if key not in record:
                raise TraceFormatError(f"{where}: missing {key!r} (keys: {sorted(record)})")
        where = f"records[{i}] (forward_pass_id {record['forward_pass_id']})"
        if record["forward_mode"] == IDLE:
            continue
        if record["forward_mode"] not in (EXTEND, DECODE, MIXED):
            raise TraceFormatError(f"{where}: forward_mode {record['forward_mode']} is not EXTEND (1), DECODE (2), "
                                   "MIXED (3) or IDLE (4); speculative passes cannot be replayed")
        ids = _numpy(record["topk_ids_of_layer"], f"{where} topk_ids_of_layer")
        n = len(record["input_ids"])
        if ids.ndim != 3 or ids.shape[0] != mapping.shape[0] or ids.shape[1] != n or len(record["positions"]) != n:
            raise TraceFormatError(f"{where}: topk_ids_of_layer has shape {ids.shape}, expected "
                                   f"[{mapping.shape[0]} layers, {n} tokens (input_ids), k]; positions has "
                                   f"{len(record['positions'])}")
        passes.append((where, record, ids))
    if not passes:
        raise TraceFormatError(f"{path}: every record is an IDLE pass: no tokens")

    recorded = np.zeros(mapping.shape[0], bool)
    width = 0
    for _, _, ids in passes:
        recorded |= (ids >= 0).any(axis=(1, 2))
        width = max(width, int((ids >= 0).sum(axis=2).max(initial=0)))
    layers = np.flatnonzero(recorded) if recorded.sum() < mapping.shape[0] else np.arange(mapping.shape[0])
    top_k = get_model(model).top_k if model is not None else width  # a named model's k: wider rows are named below
    spec = resolve_model(model, num_layers=len(layers), top_k=top_k, where=str(path))
    dropped = sorted(set(range(mapping.shape[0])) - set(layers.tolist()))

    open_requests: list[_Open] = []
    for p, (where, record, ids) in enumerate(passes):
        physical = ids[layers].transpose(1, 0, 2)                        # [n, L, 8]
        if (physical[:, :, spec.top_k:] != -1).any():
            t, layer, rank = np.argwhere(physical[:, :, spec.top_k:] != -1)[0]
            raise TraceFormatError(f"{where} topk_ids_of_layer[{layers[layer]}, {t}, {spec.top_k + rank}] is "
                                   f"{int(physical[t, layer, spec.top_k + rank])}: more than top-{spec.top_k} experts")
        physical = physical[:, :, :spec.top_k]
        if ((physical < 0) | (physical >= mapping.shape[1])).any():
            t, layer, rank = np.argwhere((physical < 0) | (physical >= mapping.shape[1]))[0]
            raise TraceFormatError(f"{where} topk_ids_of_layer[{layers[layer]}, {t}, {rank}]="
                                   f"{int(physical[t, layer, rank])} is not a physical expert id "
                                   f"[0, {mapping.shape[1]}) of last_physical_to_logical_map")
        logical = mapping[layers[None, :, None], physical]
        logical = check_routing(logical, f"{where} topk_ids_of_layer (mapped to logical experts)", spec)
        positions = np.asarray(record["positions"], np.int64)
        used: set[int] = set()
        for start, length in _segments(record, where, len(positions)):
            first = int(positions[start])
            if not np.array_equal(positions[start:start + length], np.arange(first, first + length)):
                raise TraceFormatError(f"{where}: positions {positions[start:start + length][:8].tolist()} of one "
                                       "request's segment are not consecutive")
            candidates = sorted((r for r in open_requests if r.next_position == first and r.index not in used),
                                key=lambda r: (-r.last_pass, r.index))
            request = candidates[0] if candidates else None
            mode = record["forward_mode"]
            as_decode = mode == DECODE or (mode == MIXED and length == 1 and request is not None
                                           and (request.decoding or request.prompt))
            if mode == DECODE and request is None:
                raise TraceFormatError(f"{where}: the decode token at position {first} continues no request seen "
                                       "so far (was recording started in the middle of a request?)")
            if request is None or (not as_decode and request.decoding):
                request = _Open(index=len(open_requests), next_position=first, last_pass=p, cached_prefix=first)
                open_requests.append(request)
            rows = logical[start:start + length]
            (request.decode if as_decode else request.prompt).append(rows)
            request.tokens.append(np.asarray(record["input_ids"][start:start + length], np.int64))
            request.next_position = first + length
            request.last_pass = p
            used.add(request.index)

    name = default_domain(path, domain)
    empty = np.zeros((0, spec.num_layers, spec.top_k), np.int16)
    requests = [RequestRouting(prompt=np.concatenate(r.prompt) if r.prompt else empty,
                               decode=np.concatenate(r.decode) if r.decode else empty,
                               token_ids=np.concatenate(r.tokens), domain=name) for r in open_requests]
    cached = [r.cached_prefix for r in open_requests]
    return build_trace(requests, spec, source=f"SGLang expert distribution recorder (per_token), file {path.name}, "
                                              f"{len(passes)} forward passes, {len(requests)} requests",
                       description=f"Real {spec.display_name} routing recorded by SGLang; physical expert ids mapped "
                                   "to logical ones with the dump's last_physical_to_logical_map; requests linked "
                                   "by position (see specmd_env/importers/sglang.py). Rank order as SGLang's top-k; "
                                   "no gate weights or next-layer scores.",
                       extra_meta={"rank_order": "SGLang's top-k order", "dense_layers_dropped": dropped,
                                   "cached_prefix_tokens": cached})


def configure(parser) -> None:
    add_common_arguments(parser, file_help="SGLang expert_distribution_recorder_*.pt (per_token mode)")


def run(args) -> int:
    return write_trace(import_sglang(args.file, model=args.model, domain=args.domain), args)
