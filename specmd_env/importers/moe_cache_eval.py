"""Import a route collection of moe-cache-eval (Zhang, arXiv:2608.07911; github.com/shijiuzhang/moe-cache-eval).

Its collectors (``scripts/collect_routes.py``: teacher-forced prompts; ``scripts/collect_decode_routes.py``:
greedy autoregressive decoding) write a directory::

    manifest.json            schema_version 1, status, model {id, commit, model_type, num_layers,
                             num_experts, top_k, ...}, collection {kind: "autoregressive_decode" for the
                             decode collector, ...}, shards [{tensor_file, tensor_sha256, metadata_file,
                             metadata_sha256, ...}]
    routes-00000.safetensors sample_indices int64 [S], sequence_lengths int32 [S], input_ids int32 [S, T],
                             topk_indices int16 [S, layers, T, k] (-1 past a sample's length),
                             topk_weights float16/32 [S, layers, T, k], router_logits, ... (not read)
    samples-00000.jsonl      one row per sample: collection_index, id, metadata, ...

Teacher-forced samples become prompt-only requests (the whole sequence prefilled, as the collector ran
it). Decode samples become *decode-only* requests: the collector prefilled the prompt without recording
its routing, so only the decode forwards are in the trace (their prompt lengths are kept in the
metadata as ``untraced_prompt_tokens``). ``topk_weights`` -- the top-k router probabilities renormalised
to sum 1 -- become the gate weights; ``input_ids`` the token ids. The requests' domain is the
collection's category field (``input.category_field``) when samples carry it. Shard checksums are
verified. Only ``safetensors`` is read (no pickle).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from safetensors import SafetensorError, safe_open

from specmd_env.errors import TraceFormatError
from specmd_env.importers.base import (RequestRouting, add_common_arguments, build_trace, check_routing,
                                       check_weights, resolve_model, write_trace)
from specmd_env.trace import Trace

DECODE_KIND = "autoregressive_decode"
_TENSORS = ("sample_indices", "sequence_lengths", "topk_indices", "topk_weights", "input_ids")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        raise TraceFormatError(f"{root}: no manifest.json (a moe-cache-eval route collection is a directory)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != 1:
        raise TraceFormatError(f"{path}: schema_version {manifest.get('schema_version') if isinstance(manifest, dict) else '?'!r}"
                               " is not 1 (the moe-cache-eval route collection this reader knows)")
    if "events" in manifest.get("artifacts", {}):
        raise TraceFormatError(f"{path}: an event trace (per-layer expert unions, no tokens); import the route "
                               "collection it was built from (its manifest's source.root)")
    for key in ("model", "shards"):
        if key not in manifest:
            raise TraceFormatError(f"{path}: missing {key!r}")
    for key in ("num_layers", "num_experts", "top_k"):
        if not isinstance(manifest["model"].get(key), int):
            raise TraceFormatError(f"{path}: model.{key} must be an integer, got {manifest['model'].get(key)!r}")
    if manifest.get("status") != "complete":
        raise TraceFormatError(f"{path}: status {manifest.get('status')!r}: the collection did not finish")
    return manifest


def _shard(root: Path, shard: dict, verify: bool) -> tuple[dict, list[dict]]:
    tensor_path, metadata_path = root / str(shard.get("tensor_file")), root / str(shard.get("metadata_file"))
    for path, key in ((tensor_path, "tensor_sha256"), (metadata_path, "metadata_sha256")):
        if not path.is_file():
            raise TraceFormatError(f"{path}: listed in manifest.json shards but missing")
        if verify and _sha256(path) != shard.get(key):
            raise TraceFormatError(f"{path}: sha256 differs from manifest.json shards[{shard.get('index')}].{key}")
    try:
        with safe_open(str(tensor_path), framework="numpy") as handle:
            names = set(handle.keys())
            absent = [n for n in _TENSORS if n not in names]
            if absent:
                raise TraceFormatError(f"{tensor_path}: missing tensor(s) {absent}")
            tensors = {name: handle.get_tensor(name) for name in _TENSORS}
    except SafetensorError as exc:
        raise TraceFormatError(f"{tensor_path}: not a readable safetensors file ({exc})") from None
    rows = []
    for line_no, line in enumerate(metadata_path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TraceFormatError(f"{metadata_path}: line {line_no}: not valid JSON ({exc.msg})") from None
    return tensors, rows


def import_moe_cache_eval(path, *, model: str | None = None, domain: str | None = None,
                          verify_checksums: bool = True) -> Trace:
    """Read a moe-cache-eval route collection (its directory, or its manifest.json)."""
    root = Path(path)
    root = root.parent if root.name == "manifest.json" else root
    manifest = _manifest(root)
    info = manifest["model"]
    spec = resolve_model(model, num_layers=info["num_layers"], top_k=info["top_k"], num_experts=info["num_experts"],
                         where=f"{root}/manifest.json model")
    decode = (manifest.get("collection") or {}).get("kind") == DECODE_KIND
    category = (manifest.get("input") or {}).get("category_field")
    requests, untraced = [], []
    for shard in manifest["shards"]:
        tensors, rows = _shard(root, shard, verify_checksums)
        ids_all, weights_all = tensors["topk_indices"], tensors["topk_weights"]
        where = f"{root.name}/{shard.get('tensor_file')}"
        if ids_all.ndim != 4 or ids_all.shape[1] != spec.num_layers or ids_all.shape[3] != spec.top_k:
            raise TraceFormatError(f"{where}: topk_indices has shape {ids_all.shape}, expected [samples, "
                                   f"{spec.num_layers} layers, tokens, top-{spec.top_k}] (model {spec.name})")
        if len(rows) != len(tensors["sample_indices"]):
            raise TraceFormatError(f"{where}: {len(tensors['sample_indices'])} samples but {len(rows)} metadata rows")
        for s, sample in enumerate(tensors["sample_indices"].tolist()):
            row = rows[s]
            if int(row.get("collection_index", -1)) != sample:
                raise TraceFormatError(f"{where}: sample {sample} has metadata row collection_index "
                                       f"{row.get('collection_index')!r}")
            length = int(tensors["sequence_lengths"][s])
            field = f"{where} topk_indices[{s}] (sample {row.get('id', sample)!r}) [token, layer, rank]"
            if (ids_all[s, :, length:] != -1).any():
                raise TraceFormatError(f"{field}: entries past the sample's sequence length {length} must be -1")
            ids = check_routing(ids_all[s, :, :length].transpose(1, 0, 2), field, spec)
            gates = check_weights(weights_all[s, :, :length].transpose(1, 0, 2).astype(np.float64),
                                  f"{where} topk_weights[{s}] [token, layer, rank]", ids.shape)
            empty = ids[:0]
            label = domain or ((row.get("metadata") or {}).get(category) if category else None) or root.name
            request = RequestRouting(prompt=empty if decode else ids, decode=ids if decode else empty,
                                     prompt_weights=gates[:0] if decode else gates,
                                     decode_weights=gates if decode else gates[:0],
                                     token_ids=tensors["input_ids"][s, :length].astype(np.int64),
                                     domain=str(label))
            if request.num_tokens:  # a decode sample that stopped at once has no decode forward: nothing to replay
                requests.append(request)
                untraced.append(int((row.get("metadata") or {}).get("prompt_stored_token_length", 0)) if decode else 0)
    kind = "greedy autoregressive decode (decode forwards only; prompts prefilled untraced)" if decode \
        else "teacher-forced sequences (prefill only)"
    return build_trace(requests, spec, source=f"moe-cache-eval route collection (arXiv:2608.07911) {root.name}: "
                                              f"{info.get('id', '?')}@{info.get('commit') or info.get('revision', '?')}, "
                                              f"{kind}, {len(requests)} requests",
                       description=f"Real {spec.display_name} routing collected by moe-cache-eval's "
                                   f"{'decode' if decode else 'teacher-forced'} collector; gate weights are its "
                                   "top-k router probabilities renormalised to sum 1; no next-layer scores.",
                       extra_meta={"gate_weights_definition": "moe-cache-eval topk_weights: top-k router "
                                                              "probabilities renormalised to sum 1",
                                   "untraced_prompt_tokens": untraced,
                                   **({"missing_prompt_routing": True} if decode else {})})


def configure(parser) -> None:
    add_common_arguments(parser, file_help="a moe-cache-eval route collection directory (or its manifest.json)")
    parser.add_argument("--no-verify", action="store_true", help="skip the shards' sha256 checks")


def run(args) -> int:
    return write_trace(import_moe_cache_eval(args.file, model=args.model, domain=args.domain,
                                             verify_checksums=not args.no_verify), args)
