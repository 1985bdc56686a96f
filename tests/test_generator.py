import numpy as np
import pytest

from specmd_env.errors import SpecMDError
from specmd_env.generator import generate_trace, iter_generate, write_trace
from specmd_env.trace import load_trace, save_trace
from specmd_env.trace_stats import trace_statistics

SMALL = dict(model="olmoe-1b-7b", requests_per_domain=3, prompt_len=48, decode_len=8)


@pytest.fixture(scope="module")
def olmoe():
    return generate_trace(seed=3, **SMALL)


def test_deterministic_and_seed_dependent(olmoe):
    again = generate_trace(seed=3, **SMALL)
    assert np.array_equal(olmoe.expert_ids, again.expert_ids)
    assert np.array_equal(olmoe.gate_weights, again.gate_weights)
    assert np.array_equal(olmoe.spec_scores, again.spec_scores)
    other = generate_trace(seed=4, **SMALL)
    assert not np.array_equal(olmoe.expert_ids, other.expert_ids)


def test_shape_metadata_and_round_trip(olmoe, tmp_path):
    assert olmoe.expert_ids.shape == (15 * 56, 16, 8)
    assert olmoe.spec_scores.shape == (15 * 56, 15, 64) and olmoe.spec_scores.dtype == np.float16
    assert olmoe.kind == "synthetic" and "synthetic" in olmoe.meta["description"].lower()
    assert "AllenAI" in olmoe.meta["description"] and olmoe.meta["source"].startswith("specmd_env.generator")
    assert olmoe.domains[:5] == ["arxiv", "book", "c4", "github", "wikipedia"]
    sums = olmoe.spec_scores.astype(np.float32).sum(axis=2)
    assert np.allclose(sums, 1.0, atol=0.02)
    # gate weights: softmax over all experts, top-k, ranked, not renormalised
    g = olmoe.gate_weights
    assert np.all(np.diff(g, axis=2) <= 1e-6) and np.all(g.sum(axis=2) < 1.0 + 1e-5)
    path = save_trace(olmoe, tmp_path / "t.npz")
    back = load_trace(path)
    assert np.array_equal(back.expert_ids, olmoe.expert_ids) and back.meta == olmoe.meta


@pytest.mark.parametrize("target", [0.6, 0.9])
def test_spec_accuracy_hits_target(target):
    trace = generate_trace(seed=1, spec_accuracy=target, **SMALL)
    acc = trace_statistics(trace)["layers"]["spec_accuracy"].iloc[1:]
    assert np.all(np.abs(acc - target) <= 0.03), acc.tolist()


def test_domain_differences_grow_with_depth():
    # persistence given: the fitted Qwen3 one (about 0.93) leaves 256 tokens per domain too few for this
    # load comparison; the depth structure under test is the parametric popularity's, not persistence's
    trace = generate_trace(seed=2, model="qwen3", domains=("a", "b"), requests_per_domain=4, prompt_len=64,
                           decode_len=0, with_spec_scores=False, persistence=0.6)
    L, E = trace.num_layers, trace.num_experts
    dom = np.repeat([0 if d == "a" else 1 for d in trace.domains], np.diff(trace.request_offsets))
    def tv(layer):
        f = [np.bincount(trace.expert_ids[dom == d, layer].ravel(), minlength=E) for d in (0, 1)]
        f = [x / x.sum() for x in f]
        return 0.5 * np.abs(f[0] - f[1]).sum()
    shallow = np.mean([tv(l) for l in range(4)])
    deep = np.mean([tv(l) for l in range(L - 4, L)])
    assert deep > shallow + 0.05, (shallow, deep)


def test_consecutive_overlap_above_random(olmoe):
    layers = trace_statistics(olmoe)["layers"]
    assert layers["overlap"].iloc[0] > 2.0 * layers["overlap_random"].iloc[0]
    assert 2.0 < layers["overlap"].iloc[0] < 3.2  # calibrated to the published 2.55 of 8


def test_other_models_chunks_and_writer(tmp_path):
    kwargs = dict(model="mixtral", requests_per_domain=2, prompt_len=16, decode_len=4, with_spec_scores=False)
    whole = generate_trace(seed=5, **kwargs)
    chunks = list(iter_generate(seed=5, chunk_tokens=40, **kwargs))
    assert len(chunks) > 1
    assert np.array_equal(np.concatenate([c.expert_ids for c in chunks]), whole.expert_ids)
    path = write_trace(tmp_path / "m.npz", seed=5, chunk_tokens=40, **kwargs)
    back = load_trace(path)
    assert np.array_equal(np.asarray(back.expert_ids), whole.expert_ids) and back.spec_scores is None
    assert back.domains == whole.domains


def test_bad_arguments():
    with pytest.raises(SpecMDError):
        generate_trace(spec_accuracy=1.5, **SMALL)
    with pytest.raises(SpecMDError):
        generate_trace(model="no-such-model")
