"""Each importer on a fixture the test writes in the engine's real layout (field names, dtypes, shapes, id
spaces), checked token by token against the routing the fixture was made from; each imported trace then
replays with one ``specmd simulate``; bad input names the field."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from specmd_env.cli import main
from specmd_env.errors import SpecMDError, TraceFormatError
from specmd_env.importers import import_moe_cache_eval, import_sglang, import_table, import_vllm
from specmd_env.models import get_model

OLMOE, MIXTRAL = get_model("olmoe-1b-7b"), get_model("mixtral-8x7b")


def routing(rng, tokens, spec):
    """[tokens, L, k] distinct experts per (token, layer), as a router's top-k."""
    return np.argsort(rng.random((tokens, spec.num_layers, spec.num_experts)), axis=2)[:, :, :spec.top_k]


def replays(path, tmp_path, capsys):
    """One `specmd simulate` of an imported trace file prints its metrics."""
    assert main(["simulate", str(path), "--capacity", "0.1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["token_hit_rate"] >= 0 and row["total_seconds"] > 0
    return row


# -- vLLM -----------------------------------------------------------------------------------------------

def vllm_requests(rng):
    """Three requests as vLLM returns them (int16 [len, moe_layers, top_k]); the third is decode only."""
    return [{"prompt_routed_experts": routing(rng, 7, OLMOE).astype(np.int16),
             "routed_experts": routing(rng, 4, OLMOE).astype(np.int16),
             "prompt_token_ids": rng.integers(0, 50000, 7), "token_ids": rng.integers(0, 50000, 5)},
            {"prompt_routed_experts": routing(rng, 3, OLMOE).astype(np.int16),
             "routed_experts": routing(rng, 6, OLMOE).astype(np.int16),
             "prompt_token_ids": rng.integers(0, 50000, 3), "token_ids": rng.integers(0, 50000, 6)},
            {"prompt_routed_experts": None, "routed_experts": routing(rng, 5, OLMOE).astype(np.int16)}]


def test_vllm_npz_and_json_layouts(tmp_path, capsys):
    requests = vllm_requests(np.random.default_rng(0))
    npz = tmp_path / "vllm_routing.npz"  # the README snippet: numpy.savez, one member per field and request
    np.savez(npz, **{f"{key}_{i}": value for i, r in enumerate(requests) for key, value in r.items()
                     if value is not None})
    js = tmp_path / "vllm_routing.json"  # the JSON variant: nested lists, null for a missing prompt
    js.write_text(json.dumps([{k: (None if v is None else np.asarray(v).tolist()) for k, v in r.items()}
                              for r in requests]))
    for path in (npz, js):
        trace = import_vllm(path)
        assert trace.model == "olmoe-1b-7b" and trace.kind == "imported" and trace.num_requests == 3
        assert trace.prompt_lengths.tolist() == [7, 3, 0]  # the third request is decode only
        for r, request in enumerate(requests):
            rows = trace.expert_ids[trace.request_slice(r)]
            prompt = request["prompt_routed_experts"]
            expected = request["routed_experts"] if prompt is None else np.concatenate([prompt,
                                                                                       request["routed_experts"]])
            assert np.array_equal(rows, expected)
        assert trace.meta["missing"] == ["gate_weights", "spec_scores", "token_ids"]  # request 2 has no token ids
    out = tmp_path / "vllm.npz"
    assert main(["import", "vllm", str(npz), "--out", str(out)]) == 0
    assert "1 decode-only request(s)" in capsys.readouterr().out
    replays(out, tmp_path, capsys)


def test_vllm_token_ids_kept_when_every_request_has_them(tmp_path):
    requests = vllm_requests(np.random.default_rng(1))[:2]
    np.savez(tmp_path / "v.npz", **{f"{k}_{i}": v for i, r in enumerate(requests) for k, v in r.items()})
    trace = import_vllm(tmp_path / "v.npz")
    assert "token_ids" not in trace.meta["missing"]
    # request 0: 7 prompt tokens then the 4 generated tokens fed back (the 5th is never fed back)
    assert np.array_equal(trace.token_ids[:11], np.concatenate([requests[0]["prompt_token_ids"],
                                                                requests[0]["token_ids"][:4]]))


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[1].update(routed_experts=np.full((2, 16, 8), 64, np.int16)),
     r"request 1 routed_experts\[0, 0, 0\]=64 out of range \[0, 64\)"),
    (lambda r: r[1].update(prompt_routed_experts=routing(np.random.default_rng(2), 3, OLMOE)[:, :4]),
     r"request 1 prompt_routed_experts has shape \(3, 4, 8\): 4 layers x top-8, model olmoe-1b-7b has 16 layers"),
    (lambda r: r[0].update(routed_experts=np.zeros((2, 16, 8), np.int16)),
     r"request 0 routed_experts\[0, 0\] repeats an expert"),
    (lambda r: r[0].update(token_ids=np.arange(9)), r"request 0: token_ids has 9 tokens for 4 routed_experts rows"),
])
def test_vllm_bad_input_names_the_field(tmp_path, mutate, message):
    requests = vllm_requests(np.random.default_rng(3))
    mutate(requests)
    np.savez(tmp_path / "bad.npz", **{f"{k}_{i}": v for i, r in enumerate(requests) for k, v in r.items()
                                      if v is not None})
    with pytest.raises(TraceFormatError, match=message):
        import_vllm(tmp_path / "bad.npz", model="olmoe")


def test_vllm_refuses_pickled_members_and_unknown_shapes(tmp_path):
    np.savez(tmp_path / "obj.npz", routed_experts_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(TraceFormatError, match="not a readable numpy .npz of plain arrays"):
        import_vllm(tmp_path / "obj.npz")
    np.savez(tmp_path / "shape.npz", routed_experts_0=np.zeros((2, 5, 3), np.int16))
    with pytest.raises(TraceFormatError, match="cannot infer the model from 5 layers, top-3"):
        import_vllm(tmp_path / "shape.npz")


# -- SGLang ---------------------------------------------------------------------------------------------

SGL_LAYERS = MIXTRAL.num_layers + 1  # the recorder's layer axis is num_hidden_layers; one is left unfilled here


def sglang_dump(rng):
    """A per_token dump of 4 requests (A, B prefilled together; C chunked and mixed with A's last decode;
    D starting at position 4 after a radix-cache hit), an IDLE pass, physical ids with 2 replicated experts,
    top-2 padded with -1 to 8 columns, one layer never recorded. Returns (dump, truth per request)."""
    import torch

    mapping = np.stack([np.concatenate([rng.permutation(8), [1, 5]]) for _ in range(SGL_LAYERS)])  # [L+1, 10]
    truth = {name: {"prompt": routing(rng, p, MIXTRAL), "decode": routing(rng, g, MIXTRAL),
                    "tokens": rng.integers(0, 32000, p + g)}
             for name, p, g in (("A", 5, 3), ("B", 3, 2), ("C", 6, 2), ("D", 3, 1))}
    start = {"A": 0, "B": 0, "C": 0, "D": 4}

    def rows(name, part, lo, hi):
        offset = 0 if part == "prompt" else len(truth[name]["prompt"])
        return [(name, part, i, start[name] + offset + i, truth[name]["tokens"][offset + i]) for i in range(lo, hi)]

    passes = [  # (forward_mode, segments of (name, part, index, position, token id), extend_seq_lens)
        (1, [rows("A", "prompt", 0, 5), rows("B", "prompt", 0, 3)]),
        (2, [rows("A", "decode", 0, 1), rows("B", "decode", 0, 1)]),
        (2, [rows("A", "decode", 1, 2), rows("B", "decode", 1, 2)]),
        (3, [rows("C", "prompt", 0, 4), rows("A", "decode", 2, 3)]),
        (1, [rows("C", "prompt", 4, 6)]),
        (4, []),
        (1, [rows("D", "prompt", 0, 3)]),
        (2, [rows("C", "decode", 0, 1), rows("D", "decode", 0, 1)]),
        (2, [rows("C", "decode", 1, 2)]),
    ]
    records = []
    for pass_id, (mode, segments) in enumerate(passes):
        tokens = [t for seg in segments for t in seg]
        topk = np.full((SGL_LAYERS, len(tokens), 8), -1, np.int32)
        for j, (name, part, i, _, _) in enumerate(tokens):
            logical = truth[name][part][i]                               # [L, k]
            for layer in range(MIXTRAL.num_layers):
                for rank, expert in enumerate(logical[layer]):
                    replicas = np.flatnonzero(mapping[layer] == expert)
                    topk[layer, j, rank] = rng.choice(replicas)
        records.append({"forward_pass_id": 100 + pass_id, "rank": 0, "gatherer_key": "primary",
                        "input_ids": [int(t[4]) for t in tokens], "positions": [t[3] for t in tokens],
                        "extend_seq_lens": None if mode in (2, 4) else [len(s) for s in segments],
                        "forward_mode": mode, "topk_ids_of_layer": torch.from_numpy(topk), "misc_objects": [],
                        "global_physical_count": torch.zeros((SGL_LAYERS, 10), dtype=torch.int32)})
    dump = {"records": records, "last_physical_to_logical_map": torch.from_numpy(mapping)}
    return dump, truth


def test_sglang_per_token_dump(tmp_path, capsys):
    import torch

    dump, truth = sglang_dump(np.random.default_rng(4))
    path = tmp_path / "expert_distribution_recorder_1754000000.0_0.pt"
    torch.save(dump, path)
    trace = import_sglang(path)
    assert trace.model == "mixtral-8x7b" and trace.num_requests == 4
    assert trace.prompt_lengths.tolist() == [5, 3, 6, 3]
    assert trace.meta["dense_layers_dropped"] == [MIXTRAL.num_layers] and trace.meta["cached_prefix_tokens"] == [0, 0, 0, 4]
    for r, name in enumerate("ABCD"):
        rows = trace.expert_ids[trace.request_slice(r)]
        assert np.array_equal(rows, np.concatenate([truth[name]["prompt"], truth[name]["decode"]])), name
        assert np.array_equal(trace.token_ids[trace.request_slice(r)], truth[name]["tokens"])
    out = tmp_path / "sglang.npz"
    assert main(["import", "sglang", str(path), "--out", str(out)]) == 0
    capsys.readouterr()
    replays(out, tmp_path, capsys)


class NotPlainData:  # anything torch.load(weights_only=True) must refuse
    def __reduce__(self):
        return (print, ("this would run on unpickling",))


def test_sglang_refuses_anything_but_plain_tensors(tmp_path, capsys):
    import torch

    dump, _ = sglang_dump(np.random.default_rng(5))
    dump["records"][0]["misc_objects"] = [NotPlainData()]
    torch.save(dump, tmp_path / "evil.pt")
    with pytest.raises(TraceFormatError, match=r"refused: torch.load\(weights_only=True\)"):
        import_sglang(tmp_path / "evil.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(NotPlainData()))
    with pytest.raises(TraceFormatError, match="refused"):
        import_sglang(tmp_path / "raw.pt")
    assert "would run" not in capsys.readouterr().out


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["records"][1].update(forward_mode=5), r"forward_pass_id 101\): forward_mode 5 is not EXTEND"),
    (lambda d: d["records"][0]["topk_ids_of_layer"].__setitem__((0, 0, 0), 10),
     r"topk_ids_of_layer\[0, 0, 0\]=10 is not a physical expert id \[0, 10\)"),
    (lambda d: d["records"][0]["topk_ids_of_layer"].__setitem__((3, 2, 5), 4),
     r"topk_ids_of_layer\[3, 2, 5\] is 4: more than top-2 experts"),
    (lambda d: d["records"][0].update(extend_seq_lens=[5, 2]), r"extend_seq_lens \[5, 2\] must be positive and sum"),
    (lambda d: d["records"].pop(0), r"the decode token at position 5 continues no request"),
    (lambda d: d.pop("last_physical_to_logical_map"), r"missing 'last_physical_to_logical_map'"),
])
def test_sglang_bad_input_names_the_field(tmp_path, mutate, message):
    import torch

    dump, _ = sglang_dump(np.random.default_rng(6))
    mutate(dump)
    torch.save(dump, tmp_path / "bad.pt")
    with pytest.raises(TraceFormatError, match=message):
        import_sglang(tmp_path / "bad.pt", model="mixtral")


# -- the plain table ------------------------------------------------------------------------------------

def test_table_csv(tmp_path, capsys):
    rng = np.random.default_rng(7)
    truth = {"chat-1": (routing(rng, 4, MIXTRAL), routing(rng, 3, MIXTRAL)),
             "chat-2": (routing(rng, 0, MIXTRAL), routing(rng, 5, MIXTRAL))}  # chat-2: decode only
    weights = {}
    lines = ["request,token,is_prompt,layer,rank,expert,weight"]
    for name, (prompt, decode) in truth.items():
        ids = np.concatenate([prompt, decode])
        weights[name] = rng.random(ids.shape)
        for t, layer, rank in np.ndindex(ids.shape):
            lines.append(f"{name},{t},{'true' if t < len(prompt) else 'false'},{layer},{rank},{ids[t, layer, rank]},"
                         f"{weights[name][t, layer, rank]:.6f}")
    body = lines[1:]
    rng.shuffle(body)  # row order does not matter
    path = tmp_path / "routing.csv"
    path.write_text("\n".join([lines[0], *body]) + "\n")
    trace = import_table(path)
    assert trace.model == "mixtral-8x7b" and trace.prompt_lengths.tolist() == [4, 0]
    for r, name in enumerate(truth):
        assert np.array_equal(trace.expert_ids[trace.request_slice(r)], np.concatenate(truth[name]))
        assert np.allclose(trace.gate_weights[trace.request_slice(r)], weights[name], atol=1e-6)
    assert trace.meta["missing"] == ["spec_scores", "token_ids"]
    out = tmp_path / "table.npz"
    assert main(["import", "table", str(path), "--out", str(out)]) == 0
    capsys.readouterr()
    replays(out, tmp_path, capsys)


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[:-1], r"request '0' token 1 has 63 rows; every token needs one per layer and rank"),
    (lambda rows: rows + [rows[-1]], r"request '0' token 1 layer 31 rank 1 appears twice"),
    (lambda rows: [("0,0,1,0,1,9" if i == 1 else r) for i, r in enumerate(rows)],
     r"request '0' column 'expert' \[token, layer, rank\]\[0, 0, 1\]=9 out of range \[0, 8\)"),
    (lambda rows: [("0,0,maybe,1,1,5" if i == 3 else r) for i, r in enumerate(rows)],
     r"column 'is_prompt' row 4: 'maybe'"),
])
def test_table_bad_input_names_the_field(tmp_path, edit, message):
    rows = [f"0,{t},{int(t == 0)},{layer},{rank},{(5 if rank else 2) if t == 0 else rank},"
            for t in range(2) for layer in range(32) for rank in range(2)]
    rows = [r.rstrip(",") for r in rows]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(["request,token,is_prompt,layer,rank,expert", *edit(rows)]) + "\n")
    with pytest.raises(TraceFormatError, match=message):
        import_table(path, model="mixtral")


# -- moe-cache-eval ---------------------------------------------------------------------------------------

def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_collection(root, rng, *, decode: bool, lengths=(6, 4, 5), shard_size=2):
    """A route collection as scripts/collect_routes.py / collect_decode_routes.py write it."""
    from safetensors.numpy import save_file

    L, E, k = OLMOE.num_layers, OLMOE.num_experts, OLMOE.top_k
    root.mkdir()
    truth, shards = [], []
    for index, start in enumerate(range(0, len(lengths), shard_size)):
        group = lengths[start:start + shard_size]
        T = max(group)
        S = len(group)
        topk = np.full((S, L, T, k), -1, np.int16)
        weights = np.zeros((S, L, T, k), np.float16)
        input_ids = np.zeros((S, T), np.int32)
        for s, n in enumerate(group):
            ids = routing(rng, n, OLMOE)
            w = rng.random((n, L, k)).astype(np.float16)
            topk[s, :, :n] = ids.transpose(1, 0, 2)
            weights[s, :, :n] = w.transpose(1, 0, 2)
            input_ids[s, :n] = rng.integers(0, 50000, n)
            truth.append((ids, w, input_ids[s, :n].copy()))
        tensors = {"sample_indices": np.arange(start, start + S, dtype=np.int64),
                   "sequence_lengths": np.asarray(group, np.int32), "input_ids": input_ids,
                   "attention_mask": input_ids != 0, "router_logits": np.zeros((S, L, T, E), np.float16),
                   "topk_indices": topk, "topk_probabilities": weights, "topk_weights": weights,
                   "router_entropy": np.zeros((S, L, T), np.float16),
                   "router_normalized_entropy": np.zeros((S, L, T), np.float16),
                   "router_margin": np.zeros((S, L, T), np.float16)}
        if decode:
            tensors["emitted_ids"] = input_ids
        tensor_file, metadata_file = f"routes-{index:05d}.safetensors", f"samples-{index:05d}.jsonl"
        save_file(tensors, str(root / tensor_file))
        (root / metadata_file).write_text("".join(json.dumps(
            {"collection_index": start + s, "id": f"s{start + s}", "source_line": start + s + 1,
             "source_index": start + s, "original_token_length": n, "stored_token_length": n, "truncated": False,
             "metadata": {"workload_archetype": ["code", "chat"][(start + s) % 2], "split": "discovery",
                          **({"prompt_stored_token_length": 40 + s} if decode else {})}}) + "\n"
            for s, n in enumerate(group)))
        shards.append({"index": index, "start_sample": start, "end_sample_exclusive": start + S, "num_samples": S,
                       "max_sequence_length": T, "tensor_file": tensor_file, "tensor_sha256": sha256(root / tensor_file),
                       "metadata_file": metadata_file, "metadata_sha256": sha256(root / metadata_file)})
    manifest = {"schema_version": 1, "status": "complete", "completed_samples": len(lengths),
                "model": {"alias": "olmoe", "id": "allenai/OLMoE-1B-7B-0125", "revision": "main", "commit": "abc123",
                          "model_type": "olmoe", "num_layers": L, "num_experts": E, "top_k": k},
                "input": {"category_field": "workload_archetype", "split": "discovery"},
                "collection": {"kind": "autoregressive_decode", "generation": "greedy"} if decode else
                              {"max_length": 512, "batch_size": 1, "storage_dtype": "float16"},
                "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return truth


@pytest.mark.parametrize("decode", [False, True])
def test_moe_cache_eval_route_collection(tmp_path, capsys, decode):
    root = tmp_path / ("decode-routes" if decode else "routes")
    truth = write_collection(root, np.random.default_rng(8), decode=decode)
    trace = import_moe_cache_eval(root)
    assert trace.model == "olmoe-1b-7b" and trace.num_requests == 3
    assert trace.prompt_lengths.tolist() == ([0, 0, 0] if decode else [6, 4, 5])
    assert trace.domains == ["code", "chat", "code"]
    for r, (ids, weights, tokens) in enumerate(truth):
        assert np.array_equal(trace.expert_ids[trace.request_slice(r)], ids)
        assert np.array_equal(trace.gate_weights[trace.request_slice(r)], weights.astype(np.float32))
        assert np.array_equal(trace.token_ids[trace.request_slice(r)], tokens)
    assert trace.meta["untraced_prompt_tokens"] == ([40, 41, 40] if decode else [0, 0, 0])
    assert trace.meta["missing"] == ["spec_scores"]
    out = tmp_path / "mce.npz"
    assert main(["import", "moe-cache-eval", str(root / "manifest.json"), "--out", str(out)]) == 0
    capsys.readouterr()
    row = replays(out, tmp_path, capsys)
    if decode:  # decode only: no prefill pass, so TTFT is the first decode step, far below a prefill's
        assert 0 < row["mean_ttft_seconds"] <= row["total_seconds"]


def test_moe_cache_eval_bad_input(tmp_path):
    root = tmp_path / "routes"
    write_collection(root, np.random.default_rng(9), decode=False)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "samples-00001.jsonl").write_text((root / "samples-00001.jsonl").read_text().replace("s2", "x2"))
    with pytest.raises(TraceFormatError, match=r"samples-00001.jsonl: sha256 differs from manifest.json shards\[1\]"):
        import_moe_cache_eval(root)
    assert import_moe_cache_eval(root, verify_checksums=False).num_requests == 3
    manifest["model"]["num_experts"] = 32
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TraceFormatError, match="cannot infer the model from 16 layers, top-8, 32 experts"):
        import_moe_cache_eval(root)
    manifest["model"]["num_experts"], manifest["status"] = 64, "in_progress"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TraceFormatError, match="status 'in_progress'"):
        import_moe_cache_eval(root)
    with pytest.raises(TraceFormatError, match="no manifest.json"):
        import_moe_cache_eval(tmp_path)


def test_unknown_format_is_a_clear_error():
    from specmd_env.importers import importer

    with pytest.raises(SpecMDError, match="unknown import format 'hf'; known: vllm, sglang"):
        importer("hf")
