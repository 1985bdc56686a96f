"""Import vLLM's routed-experts output (``enable_return_routed_experts``).

With the engine flag on, vLLM returns, per request, ``RequestOutput.prompt_routed_experts``
[prompt_len, moe_layers, top_k] and, per completion, ``CompletionOutput.routed_experts``
[gen_len, moe_layers, top_k]: integer expert ids in the router's top-k order. vLLM keeps them in memory;
``traces/README.md`` has the snippet that saves them, either as

* ``.npz`` (``numpy.savez``): members ``prompt_routed_experts_<i>`` and ``routed_experts_<i>`` for
  request i = 0, 1, ... (a missing or empty prompt member makes request i decode only), optionally
  ``prompt_token_ids_<i>`` and ``token_ids_<i>``; read with ``allow_pickle=False``;
* ``.json`` (a list of objects) or ``.jsonl`` (one object per line) with the keys ``prompt_routed_experts``,
  ``routed_experts`` (nested lists or null) and optionally ``prompt_token_ids``, ``token_ids``.

Each request's prompt rows are replayed as its prefill and its ``routed_experts`` rows, in order, as its
decode steps. vLLM records no gate weights and no next-layer scores (``missing`` says so); the top-k order
is vLLM's, kept as the rank. Generated ``token_ids`` are stored when every request has them and their
count is the number of decode rows or one more (the last generated token is never fed back).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from specmd_env.errors import TraceFormatError
from specmd_env.importers.base import (RequestRouting, add_common_arguments, build_trace, check_routing,
                                       default_domain, resolve_model, write_trace)
from specmd_env.trace import Trace

_NPZ_KEY = re.compile(r"^(prompt_routed_experts|routed_experts|prompt_token_ids|token_ids)_(\d+)$")


def _read_npz(path: Path) -> list[dict]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise TraceFormatError(f"{path}: not a readable numpy .npz of plain arrays ({exc})") from None
    requests: dict[int, dict] = {}
    for name, array in arrays.items():
        match = _NPZ_KEY.match(name)
        if match is None:
            raise TraceFormatError(f"{path}: unexpected member {name!r} (expected prompt_routed_experts_<i>, "
                                   "routed_experts_<i>, prompt_token_ids_<i>, token_ids_<i>)")
        requests.setdefault(int(match.group(2)), {})[match.group(1)] = array
    missing = sorted(set(range(len(requests))) - set(requests))
    if missing or (requests and max(requests) != len(requests) - 1):
        raise TraceFormatError(f"{path}: request numbers must run 0..{len(requests) - 1}; missing {missing[:5]}")
    return [requests[i] for i in range(len(requests))]


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
            records = records.get("requests", records) if isinstance(records, dict) else records
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise TraceFormatError(f"{path}: expected a list of request objects (or JSON lines of them)")
    return records


def _request(record: dict, i: int, spec, domain: str) -> RequestRouting:
    where = f"request {i}"
    if "routed_experts" not in record and "prompt_routed_experts" not in record:
        raise TraceFormatError(f"{where}: neither 'prompt_routed_experts' nor 'routed_experts' "
                               f"(keys: {sorted(record)})")
    prompt = record.get("prompt_routed_experts")
    decode = record.get("routed_experts")
    prompt = check_routing(np.zeros((0,)) if prompt is None else prompt, f"{where} prompt_routed_experts", spec)
    decode = check_routing(np.zeros((0,)) if decode is None else decode, f"{where} routed_experts", spec)
    tokens = None
    if record.get("token_ids") is not None and (len(prompt) == 0 or record.get("prompt_token_ids") is not None):
        prompt_tokens = np.asarray(record.get("prompt_token_ids") if len(prompt) else [], np.int64)
        generated = np.asarray(record["token_ids"], np.int64)
        if len(prompt_tokens) != len(prompt):
            raise TraceFormatError(f"{where}: prompt_token_ids has {len(prompt_tokens)} tokens, "
                                   f"prompt_routed_experts {len(prompt)} rows")
        if len(generated) not in (len(decode), len(decode) + 1):
            raise TraceFormatError(f"{where}: token_ids has {len(generated)} tokens for {len(decode)} "
                                   "routed_experts rows (expected as many, or one more)")
        tokens = np.concatenate([prompt_tokens, generated[:len(decode)]])
    return RequestRouting(prompt=prompt, decode=decode, token_ids=tokens, domain=domain)


def _shape(records: list[dict], path: Path) -> tuple[int, int]:
    for record in records:
        for key in ("prompt_routed_experts", "routed_experts"):
            array = np.asarray(record.get(key) if record.get(key) is not None else [])
            if array.ndim == 3 and array.size:
                return int(array.shape[1]), int(array.shape[2])
    raise TraceFormatError(f"{path}: no request holds any routed experts")


def import_vllm(path, *, model: str | None = None, domain: str | None = None) -> Trace:
    """Read a file saved by the snippet in ``traces/README.md`` (``.npz``, ``.json`` or ``.jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"{path}: no such file")
    records = _read_npz(path) if path.suffix == ".npz" else _read_json(path)
    layers, top_k = _shape(records, path)
    spec = resolve_model(model, num_layers=layers, top_k=top_k, where=str(path))
    name = default_domain(path, domain)
    requests = [_request(record, i, spec, name) for i, record in enumerate(records)]
    return build_trace(requests, spec, source=f"vLLM routed experts (enable_return_routed_experts), file {path.name}, "
                                              f"{len(requests)} requests",
                       description=f"Real {spec.display_name} routing recorded by vLLM; prompt rows replayed as "
                                   "the prefill, routed_experts rows as decode steps. Rank order as vLLM returns "
                                   "it; no gate weights or next-layer scores.",
                       extra_meta={"rank_order": "vLLM's top-k order"})


def configure(parser) -> None:
    add_common_arguments(parser, file_help="vLLM routed experts saved as .npz, .json or .jsonl (traces/README.md)")


def run(args) -> int:
    return write_trace(import_vllm(args.file, model=args.model, domain=args.domain), args)

