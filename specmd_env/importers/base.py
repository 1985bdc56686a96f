"""What every importer shares: the model a source's shape belongs to, id checks that name the source's
own field, and the assembly of per-request routing into a :class:`~specmd_env.trace.Trace`.

An importer reads its format into :class:`RequestRouting` objects (prompt rows, decode rows, optional
gate weights and token ids, all in the source's own rank order), checks every id against the model with
:func:`check_routing` (errors name the source field, the request and the position), and hands them to
:func:`build_trace`, which writes honest metadata: ``kind: imported``, where it came from, and what the
source does not hold (``missing``: never speculative scores; gate weights or token ids when absent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specmd_env.errors import TraceFormatError
from specmd_env.models import ModelSpec, get_model, list_models
from specmd_env.trace import FORMAT_NAME, FORMAT_VERSION, Trace, save_trace


@dataclass
class RequestRouting:
    """One request's routing: ``prompt`` [P, L, k] then ``decode`` [G, L, k] expert ids (P or G may be 0,
    not both), with gate weights of the same shapes and token ids [P + G] when the source has them."""

    prompt: np.ndarray
    decode: np.ndarray
    prompt_weights: np.ndarray | None = None
    decode_weights: np.ndarray | None = None
    token_ids: np.ndarray | None = None
    domain: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.decode)


def resolve_model(model: str | None, *, num_layers: int, top_k: int, where: str,
                  num_experts: int | None = None) -> ModelSpec:
    """``model`` if given (its layers and top-k must match the source's), else the one registered model of
    that shape; several or none is an error asking for ``--model``."""
    if model is not None:
        spec = get_model(model)
        if (spec.num_layers, spec.top_k) != (num_layers, top_k) or num_experts not in (None, spec.num_experts):
            raise TraceFormatError(f"{where}: the source has {num_layers} MoE layers, top-{top_k}"
                                   + (f", {num_experts} experts" if num_experts else "")
                                   + f"; model {spec.name} has {spec.num_layers} layers, top-{spec.top_k}, "
                                     f"{spec.num_experts} experts")
        return spec
    fits = [get_model(name) for name in list_models()]
    fits = [s for s in fits if (s.num_layers, s.top_k) == (num_layers, top_k)
            and num_experts in (None, s.num_experts)]
    if len(fits) != 1:
        raise TraceFormatError(f"{where}: cannot infer the model from {num_layers} layers, top-{top_k}"
                               + (f", {num_experts} experts" if num_experts else "")
                               + (f" (candidates: {', '.join(s.name for s in fits)})" if fits else
                                  f" (no registered model has that shape; known: {', '.join(list_models())})")
                               + "; pass --model")
    return fits[0]


def check_routing(ids, field: str, spec: ModelSpec) -> np.ndarray:
    """``ids`` as int16 [T, L, k] after checking its shape, range and distinctness against ``spec``;
    every error names ``field`` (the source's name for it, with the request) and the position."""
    try:
        array = np.asarray(ids)
    except (TypeError, ValueError):
        raise TraceFormatError(f"{field} is ragged: it must be [tokens][layers][top_k]") from None
    if array.size == 0:  # no rows (an empty list or array): nothing to check
        return np.zeros((0, spec.num_layers, spec.top_k), np.int16)
    if array.ndim != 3 or array.dtype.kind not in "iu":
        raise TraceFormatError(f"{field} must be an integer array [tokens, layers, top_k], got shape "
                               f"{array.shape} of {array.dtype}")
    if array.shape[1:] != (spec.num_layers, spec.top_k):
        raise TraceFormatError(f"{field} has shape {array.shape}: {array.shape[1]} layers x top-{array.shape[2]}, "
                               f"model {spec.name} has {spec.num_layers} layers x top-{spec.top_k}")
    bad = (array < 0) | (array >= spec.num_experts)
    if bad.any():
        t, layer, rank = np.argwhere(bad)[0]
        raise TraceFormatError(f"{field}[{t}, {layer}, {rank}]={int(array[t, layer, rank])} out of range "
                               f"[0, {spec.num_experts}) (model {spec.name})")
    ordered = np.sort(array, axis=2)
    repeated = ordered[:, :, 1:] == ordered[:, :, :-1]
    if repeated.any():
        t, layer, _ = np.argwhere(repeated)[0]
        raise TraceFormatError(f"{field}[{t}, {layer}] repeats an expert within one top-k: {array[t, layer].tolist()}")
    return array.astype(np.int16)


def check_weights(weights, field: str, shape: tuple) -> np.ndarray:
    """Gate weights as float32 of ``shape``, finite and >= 0, or an error naming ``field``."""
    array = np.asarray(weights, dtype=np.float64)
    if array.size == 0:
        array = array.reshape(shape)
    if array.shape != shape:
        raise TraceFormatError(f"{field} has shape {array.shape}, expected {shape} (as the expert ids)")
    bad = ~np.isfinite(array) | (array < 0)
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise TraceFormatError(f"{field}{list(position)}={array[position]} must be finite and >= 0")
    return array.astype(np.float32)


def build_trace(requests: list[RequestRouting], spec: ModelSpec, *, source: str, description: str,
                licence: str = "as the source's", extra_meta: dict | None = None) -> Trace:
    """The trace of ``requests`` (in order). Gate weights and token ids are kept only when every request has
    them; ``missing`` lists what the source did not provide."""
    if not requests:
        raise TraceFormatError(f"{source}: no requests")
    for i, request in enumerate(requests):
        if request.num_tokens == 0:
            raise TraceFormatError(f"{source}: request {i} has no routed tokens (neither prompt nor decode rows)")
    with_weights = all(r.prompt_weights is not None and r.decode_weights is not None for r in requests)
    with_tokens = all(r.token_ids is not None for r in requests)
    lengths = np.array([r.num_tokens for r in requests], np.int64)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": spec.name, "num_layers": spec.num_layers,
            "num_experts": spec.num_experts, "top_k": spec.top_k, "kind": "imported", "source": source,
            "licence": licence, "description": description,
            "missing": (["gate_weights"] if not with_weights else []) + ["spec_scores"]
                       + (["token_ids"] if not with_tokens else []),
            "domains": [r.domain or "unknown" for r in requests]}
    meta.update(extra_meta or {})
    gates = None
    if with_weights:
        gates = np.concatenate([w for r in requests for w in (r.prompt_weights, r.decode_weights)]).astype(np.float32)
    return Trace(expert_ids=np.concatenate([a for r in requests for a in (r.prompt, r.decode)]).astype(np.int16),
                 request_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                 prompt_lengths=np.array([len(r.prompt) for r in requests], np.int64), meta=meta,
                 gate_weights=gates,
                 token_ids=np.concatenate([r.token_ids for r in requests]).astype(np.int32) if with_tokens else None)


# -- the command line: what every `specmd import FORMAT` takes, and how the result is written ---------

def add_common_arguments(parser, *, file_help: str) -> None:
    parser.add_argument("file", help=file_help)
    parser.add_argument("--out", required=True, help="output trace (.npz)")
    parser.add_argument("--model", default=None, help="model name (default: inferred from the source's shape)")
    parser.add_argument("--domain", default=None, help="domain name of every request (default: the file's stem)")
    parser.add_argument("--compress", action="store_true", help="deflate the output (smaller; not memory-mapped)")


def write_trace(trace: Trace, args) -> int:
    """Save an imported trace to ``args.out`` (checked writable before any work: see :func:`check_output`)."""
    path = save_trace(trace, args.out, compress=args.compress)
    decode_only = int(np.sum(np.asarray(trace.prompt_lengths) == 0))
    print(f"wrote {path}: {trace!r}" + (f"; {decode_only} decode-only request(s)" if decode_only else "")
          + f"; missing: {', '.join(trace.meta.get('missing') or ['nothing'])}")
    return 0


def default_domain(path, domain: str | None) -> str:
    return domain or Path(path).stem


__all__ = ["RequestRouting", "add_common_arguments", "build_trace", "check_routing", "check_weights",
           "default_domain", "resolve_model", "write_trace"]
