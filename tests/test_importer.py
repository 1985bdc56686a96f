import json

import numpy as np
import pytest

from specmd_env.cli import main
from specmd_env.errors import TraceFormatError
from specmd_env.importers import import_allenai
from specmd_env.trace import load_trace

T, K, L, E = 64, 8, 16, 64


def record(seed, tokens=T, k=K, layers=L):
    rng = np.random.default_rng(seed)
    exp = np.stack([np.stack([rng.permutation(E)[:k] for _ in range(layers)], axis=1) for _ in range(tokens)])
    return {"input_ids": rng.integers(0, 50000, tokens).tolist(),
            "predicted_token_ids": rng.integers(0, 50000, tokens).tolist(), "exp_ids": exp.tolist()}  # [T][k][L]


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_schema_true_file(tmp_path):
    recs = [record(0), record(1), record(2)]
    trace = import_allenai(write(tmp_path / "arxiv.jsonl", recs), decode_tail=8)
    assert trace.model == "olmoe-1b-7b" and trace.kind == "imported" and trace.num_requests == 3
    assert trace.meta["missing"] == ["gate_weights", "spec_scores"] and "ODC-BY" in trace.meta["licence"]
    assert "allenai/analysis_olmoe" in trace.meta["source"] and trace.domains == ["arxiv"] * 3
    assert trace.prompt_lengths.tolist() == [T - 8] * 3 and trace.gate_weights is None
    # exp_ids[t][r][l] -> expert_ids[t, l, r]
    exp = np.asarray(recs[1]["exp_ids"])
    assert np.array_equal(trace.expert_ids[T + 5, 3], exp[5, :, 3])
    assert np.array_equal(trace.token_ids[:T], recs[0]["input_ids"])
    assert import_allenai(tmp_path / "arxiv.jsonl", max_records=2, domain="x").num_requests == 2


def test_mixtral_inferred_and_cli(tmp_path):
    rng = np.random.default_rng(0)
    rec = {"input_ids": list(range(32)),
           "exp_ids": [[rng.permutation(8)[:2].tolist() for _ in range(32)] for _ in range(1)][0]}
    rec["exp_ids"] = np.stack([np.stack([rng.permutation(8)[:2] for _ in range(32)], 1) for _ in range(32)]).tolist()
    src = write(tmp_path / "m.jsonl", [rec])
    out = tmp_path / "m.npz"
    assert main(["import-allenai", str(src), "--out", str(out), "--domain", "c4"]) == 0
    trace = load_trace(out)
    assert trace.model == "mixtral-8x7b" and trace.top_k == 2 and trace.domains == ["c4"]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: "{not json", "line 2: not valid JSON"),
    (lambda r: {k: v for k, v in r.items() if k != "exp_ids"}, "line 2: missing key 'exp_ids'"),
    (lambda r: {**r, "exp_ids": r["exp_ids"][:-1]}, "line 2: field 'exp_ids' has 63 tokens"),
    (lambda r: {**r, "predicted_token_ids": [1, 2]}, "line 2: field 'predicted_token_ids'"),
    (lambda r: {**r, "exp_ids": (np.asarray(r["exp_ids"]) + 64).tolist()}, "line 2: field 'exp_ids'.*out of range"),
    (lambda r: {**r, "exp_ids": np.repeat(np.asarray(r["exp_ids"])[:, :1], 8, axis=1).tolist()},
     "line 2: field 'exp_ids'.*repeats"),
    (lambda r: {**r, "exp_ids": np.asarray(r["exp_ids"])[:, :, :8].tolist()}, "line 2: field 'exp_ids' has shape"),
])
def test_bad_lines_name_line_and_field(tmp_path, mutate, message):
    path = write(tmp_path / "bad.jsonl", [record(0), mutate(record(1))])
    with pytest.raises(TraceFormatError, match=message):
        import_allenai(path, model="olmoe")


def test_empty_and_uninferable(tmp_path):
    with pytest.raises(TraceFormatError, match="no records"):
        import_allenai(write(tmp_path / "e.jsonl", []))
    with pytest.raises(TraceFormatError, match="cannot infer the model"):
        import_allenai(write(tmp_path / "u.jsonl", [record(0, layers=4)]))


def test_imported_trace_replays_and_score_prefetch_refuses(tmp_path, capsys):
    """A user with AllenAI's file replays real routing with one command; prefetchers that need speculative
    scores refuse clearly (the oracle prefetcher, which reads the true routing, still runs)."""
    from specmd_env import SpecMDError, simulate

    src = write(tmp_path / "wiki.jsonl", [record(3), record(4)])
    out = tmp_path / "wiki.npz"
    assert main(["import-allenai", str(src), "--out", str(out), "--decode-tail", "16"]) == 0
    assert main(["simulate", str(out), "--eviction", "least-stale", "--capacity", "0.05"]) == 0
    assert "collision_misses" in capsys.readouterr().out
    trace = load_trace(out)
    result = simulate(trace, eviction="lru", prefetch="oracle", capacity=0.05)
    assert result.accesses > 0 and result.prefetches_issued > 0 and result.output_tokens == 2 * 16
    with pytest.raises(SpecMDError, match="needs speculative scores.*spec_scores"):
        simulate(trace, prefetch="score")
    assert main(["simulate", str(out), "--prefetch", "topk"]) == 2  # the CLI's clear error, not a traceback
