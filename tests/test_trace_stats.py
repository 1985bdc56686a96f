import numpy as np
import pytest

from specmd_env import calibration
from specmd_env.trace import Trace
from specmd_env.trace_stats import report, trace_statistics


def tiny(domains=("x",)):
    # 2 layers, 4 experts, top-2; one request of 4 tokens (3 prompt) per domain
    ids = np.array([[[0, 1], [2, 3]],
                    [[0, 2], [2, 3]],
                    [[0, 1], [2, 0]],
                    [[3, 1], [1, 0]]], np.int16)
    spec = np.zeros((4, 1, 4), np.float16)
    spec[:, 0, [2, 3]] = 0.5           # predicts {2, 3}: true layer-1 sets {2,3},{2,3},{2,0},{1,0}
    n = len(domains)
    meta = {"model": "tiny", "num_layers": 2, "num_experts": 4, "top_k": 2, "kind": "synthetic",
            "domains": list(domains)}
    return Trace(expert_ids=np.concatenate([ids] * n), request_offsets=np.arange(n + 1, dtype=np.int64) * 4,
                 prompt_lengths=np.full(n, 3, np.int64), meta=meta, spec_scores=np.concatenate([spec] * n))


def test_known_answers():
    stats = trace_statistics(tiny())
    layers = stats["layers"]
    # layer 0 loads: e0=3, e1=3, e2=1, e3=1 -> mean 2, std 1 -> cv 0.5; hottest share 3/4
    assert layers.loc[0, "load_cv"] == pytest.approx(0.5)
    assert layers.loc[0, "hottest_share"] == pytest.approx(0.75)
    # prompt pairs (0,1), (1,2): layer 0 shares 1 and 1 -> 1.0; layer 1 shares 2 and 1 -> 1.5
    assert layers.loc[0, "overlap"] == pytest.approx(1.0)
    assert layers.loc[1, "overlap"] == pytest.approx(1.5)
    assert layers.loc[0, "overlap_random"] == pytest.approx(1.0)
    # top-1 pairs (0->2), (0->2), (0->2), (3->1): predictable 4/4
    assert layers.loc[0, "transition_next"] == pytest.approx(1.0)
    # spec accuracy at layer 1: 2/2, 2/2, 1/2, 0/2 -> 0.625
    assert layers.loc[1, "spec_accuracy"] == pytest.approx(0.625)
    assert np.isnan(layers.loc[0, "spec_accuracy"])
    # consecutive prompt pairs keep their top-1 (0->0->0 at layer 0, 2->2->2 at layer 1)
    assert layers["repeat_first"].tolist() == [1.0, 1.0] and layers["repeat_any"].tolist() == [1.0, 1.0]
    locality = stats["locality"]["trace"]
    # percent of tokens per expert: layer 0 75 75 25 25, layer 1 50 25 75 50 -> SD over all 8 = sqrt(468.75)
    assert locality["activation_freq_sd"] == pytest.approx(468.75 ** 0.5)
    assert locality["sch_m4"] == pytest.approx(1.0)     # a cache of 2 x 2 x 2 slots holds all 8 experts
    assert np.isnan(locality["srp_m16"])                # no window of 16 tokens in a 4-token request
    assert "comparison" not in stats  # not OLMoE-shaped


def test_domains_counted_separately_and_pairs_not_across_requests():
    stats = trace_statistics(tiny(("a", "b")))
    d = stats["domains"]
    assert list(d.index) == ["a", "b", "all"]
    assert d.loc["a", "overlap_L0"] == pytest.approx(1.0) and d.loc["all", "tokens"] == 8
    assert stats["layers"].loc[0, "overlap"] == pytest.approx(1.0)  # no pair across the request boundary


def test_olmoe_comparison_and_mare():
    from specmd_env.generator import generate_trace

    trace = generate_trace(requests_per_domain=1, prompt_len=40, decode_len=0, domains=("c4", "chat"),
                           with_spec_scores=False)
    stats = trace_statistics(trace)
    summary = stats["summary"]
    assert summary.loc["c4", "compared_with"] == "c4" and summary.loc["chat", "compared_with"] == "mean"
    comp = stats["comparison"]
    real = calibration.reference_figures("olmoe", "c4")
    row = comp[(comp.domain == "c4") & (comp.figure == "load_cv_L0")].iloc[0]
    assert row.real == pytest.approx(real["load_cv_L0"])
    assert row.abs_rel_error == pytest.approx(abs(row.trace - row.real) / row.real)
    assert summary.loc["all", "mean_abs_rel_error"] == pytest.approx(comp.abs_rel_error.mean())
    assert "MARE" in report(trace, stats)


def test_calibration_reference_figures():
    c4 = calibration.reference_figures("olmoe", "c4")
    assert c4["load_cv_L0"] == pytest.approx(0.32, abs=0.01)       # SOURCE.md: about 0.32 / 0.40 / 0.51
    assert c4["load_cv_L15"] == pytest.approx(0.51, abs=0.01)
    assert 0.31 <= c4["hottest_share_L0"] <= 0.38
    assert 0 < c4["transition_L0_L7"] < 1 and c4["overlap_L0"] == 2.55
    assert calibration.reference_figures("mistral", "c4")["load_cv_L0"] <= 0.25


def test_sparse_counting_equals_dense(monkeypatch):
    """Large key spaces are counted sparsely (so memory follows the trace, not E^2 x layers x domains):
    forcing the sparse path everywhere gives the same figures."""
    import pandas as pd

    from specmd_env import trace_stats
    from specmd_env.catalog import get_trace

    trace = get_trace("olmoe-synthetic")
    dense = trace_statistics(trace)
    monkeypatch.setattr(trace_stats, "_DENSE_KEYS", 0)
    monkeypatch.setattr(trace_stats, "_CHUNK_ELEMENTS", 1 << 14)  # many chunks: merges of sparse counts
    sparse = trace_statistics(trace)
    for name in ("layers", "domains", "summary"):
        pd.testing.assert_frame_equal(sparse[name], dense[name], rtol=1e-12)


def test_domains_beyond_the_limit_share_a_row():
    stats = trace_statistics(tiny(("a", "b", "c")), max_domains=2)
    d = stats["domains"]
    assert list(d.index) == ["a", "b", "(other 1 domains)", "all"]
    assert d.loc["(other 1 domains)", "tokens"] == 4 and d.loc["all", "tokens"] == 12
    assert d.loc["(other 1 domains)", "load_cv_L0"] == pytest.approx(d.loc["a", "load_cv_L0"])
