"""Import AllenAI's per-token routing dumps (Hugging Face datasets ``allenai/analysis_olmoe`` and
``allenai/analysis_mixtral``) as specmd traces.

Input: jsonl, one record per text chunk (2048 tokens upstream; any length is accepted)::

    {"input_ids": [T], "predicted_token_ids": [T], "exp_ids": [T][k][L]}

``exp_ids[t][r][l]`` is the r-th ranked expert of token t at layer l. Each record becomes one request.

Prefill and decode: upstream routing came from one teacher-forced forward pass over the chunk. With causal
attention, token t's routing depends only on tokens <= t, exactly as if the chunk had been generated one
token at a time with those tokens. So the last ``decode_tail`` tokens of each chunk can be replayed as
decode steps and their routing is exactly what decoding them would give (routing-wise; the timing of a
real decode differs, which is what the simulator models). ``decode_tail=0`` (default) makes every token
a prompt token.

The dumps hold no gate weights and no next-layer router scores: the trace's metadata says
``missing: ["gate_weights", "spec_scores"]``. The file is read line by line (records are large).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specmd_env.checks import shorten
from specmd_env.errors import SpecMDError, TraceFormatError
from specmd_env.models import get_model
from specmd_env.importers.base import add_common_arguments, write_trace
from specmd_env.outputs import writable_file
from specmd_env.safe_json import load_json
from specmd_env.trace import FORMAT_NAME, FORMAT_VERSION, Trace

_INFER = {(8, 16): "olmoe-1b-7b", (2, 32): "mixtral-8x7b"}
_DATASET = {"olmoe-1b-7b": "allenai/analysis_olmoe", "mixtral-8x7b": "allenai/analysis_mixtral"}
LICENCE = "ODC-BY (AllenAI dataset; check the dataset card)"
MAX_RECORD_BYTES = 64 << 20  # one jsonl line; upstream records (2048 tokens) are about 1 MB


def _bad(path, line_no: int, message: str) -> TraceFormatError:
    return TraceFormatError(f"{path}: line {line_no}: {message}")


def _parse_record(path, line_no: int, line: bytes, num_experts: int | None):
    # the arrays' structure is checked below by numpy; load_json bounds the size and catches deep nesting
    record = load_json(line, f"{path}: line {line_no}", max_bytes=MAX_RECORD_BYTES, max_depth=None)
    if not isinstance(record, dict):
        raise _bad(path, line_no, f"expected a JSON object, got {type(record).__name__}")
    for key in ("input_ids", "exp_ids"):
        if key not in record:
            raise _bad(path, line_no, f"missing key {key!r} (keys: {sorted(record)})")
    tokens = record["input_ids"]
    if not isinstance(tokens, list) or not tokens:
        raise _bad(path, line_no, "field 'input_ids' must be a non-empty list")
    try:
        token_ids = np.asarray(tokens, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _bad(path, line_no, "field 'input_ids' must hold integers") from None
    if token_ids.ndim != 1 or token_ids.min() < 0 or token_ids.max() > np.iinfo(np.int32).max:
        raise _bad(path, line_no, "field 'input_ids' must be a flat list of non-negative int32 token ids")
    predicted = record.get("predicted_token_ids")
    if predicted is not None and (not isinstance(predicted, list) or len(predicted) != len(tokens)):
        raise _bad(path, line_no, f"field 'predicted_token_ids' has {len(predicted) if isinstance(predicted, list) else '?'} "
                                  f"entries, expected {len(tokens)} (as input_ids)")
    try:
        ids = np.asarray(record["exp_ids"])
    except (TypeError, ValueError, OverflowError):
        raise _bad(path, line_no, "field 'exp_ids' is ragged: it must be [tokens][k][layers]") from None
    if ids.ndim != 3 or ids.dtype.kind not in "iu":
        raise _bad(path, line_no, f"field 'exp_ids' must be an integer array [tokens][k][layers], "
                                  f"got shape {ids.shape} of {ids.dtype}")
    if ids.shape[0] != len(tokens):
        raise _bad(path, line_no, f"field 'exp_ids' has {ids.shape[0]} tokens, input_ids has {len(tokens)}")
    ids = np.ascontiguousarray(ids.transpose(0, 2, 1))  # -> [T, L, k]
    if ids.min() < 0 or (num_experts is not None and ids.max() >= num_experts):
        t, l, r = np.argwhere((ids < 0) | (ids >= (num_experts or np.iinfo(np.int64).max)))[0]
        raise _bad(path, line_no, f"field 'exp_ids'[{t}][{r}][{l}]={int(ids[t, l, r])} out of range "
                                  f"[0, {num_experts})")
    ordered = np.sort(ids, axis=2)
    repeated = ordered[:, :, 1:] == ordered[:, :, :-1]
    if repeated.any():
        t, l, _ = np.argwhere(repeated)[0]
        raise _bad(path, line_no, f"field 'exp_ids'[{t}][*][{l}] repeats an expert within one top-k: "
                                  f"{shorten(ids[t, l])}")
    return token_ids.astype(np.int32), ids


def _lines(handle, path):
    """The file's lines, each read only up to MAX_RECORD_BYTES: a longer line is an error, not a huge read."""
    line_no = 0
    while True:
        line = handle.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        line_no += 1
        if len(line) > MAX_RECORD_BYTES:
            raise _bad(path, line_no, f"longer than {MAX_RECORD_BYTES} bytes (a record of 2048 tokens is about 1 MB)")
        yield line


def import_allenai(path, *, model: str | None = None, max_records: int | None = None, decode_tail: int = 0,
                   domain: str | None = None) -> Trace:
    """Read an AllenAI ``analysis_olmoe`` / ``analysis_mixtral`` jsonl file into a trace (one request per record).

    ``model``: a model name; None infers it from the shape (k=8, 16 layers -> olmoe-1b-7b; k=2, 32 layers
    -> mixtral-8x7b). ``decode_tail``: the last N tokens of each record become decode tokens (see the module
    docstring). ``domain``: the domain name of every request (default: the file's stem).
    Bad input raises :class:`TraceFormatError` naming the line and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"{path}: no such file")
    if max_records is not None and max_records < 1:
        raise SpecMDError(f"max_records must be >= 1, got {max_records!r}")
    if decode_tail < 0:
        raise SpecMDError(f"decode_tail must be >= 0, got {decode_tail!r}")
    spec = get_model(model) if model is not None else None
    expert_ids, token_ids, lengths = [], [], []
    shape = None
    with open(path, "rb") as handle:
        for line_no, line in enumerate(_lines(handle, path), start=1):
            if not line.strip():
                continue
            if max_records is not None and len(lengths) >= max_records:
                break
            tokens, ids = _parse_record(path, line_no, line, spec.num_experts if spec else None)
            if shape is None:
                shape = ids.shape[1:]
                if spec is None:
                    name = _INFER.get((shape[1], shape[0]))
                    if name is None:
                        raise _bad(path, line_no, f"cannot infer the model from k={shape[1]}, layers={shape[0]}; "
                                                  f"pass model= (known shapes: {_INFER})")
                    spec = get_model(name)
                    if ids.max() >= spec.num_experts:
                        _parse_record(path, line_no, line, spec.num_experts)  # raises with the position
                if shape != (spec.num_layers, spec.top_k):
                    raise _bad(path, line_no, f"field 'exp_ids' has {shape[1]} experts per token and {shape[0]} "
                                              f"layers; model {spec.name} has k={spec.top_k}, "
                                              f"{spec.num_layers} layers")
            elif ids.shape[1:] != shape:
                raise _bad(path, line_no, f"field 'exp_ids' has shape [*][{ids.shape[2]}][{ids.shape[1]}], "
                                          f"earlier records had [*][{shape[1]}][{shape[0]}]")
            if decode_tail >= len(tokens):
                raise _bad(path, line_no, f"decode_tail={decode_tail} leaves no prompt in a {len(tokens)}-token record")
            expert_ids.append(ids.astype(np.int16))
            token_ids.append(tokens)
            lengths.append(len(tokens))
    if not lengths:
        raise TraceFormatError(f"{path}: no records (empty file)")
    lengths_arr = np.asarray(lengths, np.int64)
    dataset = _DATASET.get(spec.name, "an AllenAI routing dump")
    name = domain or path.stem
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": spec.name, "num_layers": spec.num_layers,
            "num_experts": spec.num_experts, "top_k": spec.top_k, "kind": "imported",
            "source": f"{dataset} (Hugging Face), file {path.name}, {len(lengths)} records"
                      + (f" (max_records={max_records})" if max_records else ""),
            "licence": LICENCE, "missing": ["gate_weights", "spec_scores"],
            "description": (f"Real {spec.display_name} routing from AllenAI's {dataset} dump (teacher-forced "
                            f"chunks; one request per record; the last {decode_tail} tokens of each record "
                            "replayed as decode steps). No gate weights or next-layer scores."),
            "decode_tail": decode_tail, "domains": [name] * len(lengths)}
    return Trace(expert_ids=np.concatenate(expert_ids), meta=meta,
                 request_offsets=np.concatenate([[0], np.cumsum(lengths_arr)]).astype(np.int64),
                 prompt_lengths=lengths_arr - decode_tail, token_ids=np.concatenate(token_ids))


def configure(parser) -> None:
    add_common_arguments(parser, file_help="AllenAI analysis_olmoe / analysis_mixtral jsonl file")
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--decode-tail", type=int, default=0,
                        help="replay the last N tokens of each record as decode steps (exact, see docs)")


def run(args) -> int:
    writable_file(args.out, "--out")  # before reading anything
    return write_trace(import_allenai(args.file, model=args.model, max_records=args.max_records,
                                      decode_tail=args.decode_tail, domain=args.domain), args)
