import numpy as np
import pytest

from specmd_env import catalog
from specmd_env.errors import SpecMDError


def test_names_load_and_are_labelled_honestly():
    assert {"olmoe-synthetic", "mixtral-synthetic", "qwen3-synthetic", "olmoe-recorded"} <= set(catalog.list_traces())
    for name in catalog.list_traces():
        trace = catalog.get_trace(name)
        assert trace.kind == catalog.TRACES[name]["kind"] and trace.model == catalog.TRACES[name]["model"]
        assert trace.kind in name  # a synthetic trace is never called recorded, nor the reverse
        assert trace.spec_scores is not None and trace.gate_weights is not None
    recorded = catalog.get_trace("olmoe-recorded")
    assert "not OLMoE-1B-7B" in recorded.meta["description"] and "trained by this project" in recorded.meta["description"]
    info = catalog.trace_info("olmoe-synthetic")
    assert info["exists"] and info["tokens"] > 1000 and set(info["domains"]) == {"arxiv", "book", "c4", "github",
                                                                               "wikipedia"}


def test_defaults_and_pass_through(tmp_path):
    assert catalog.default_trace_name("olmoe") == "olmoe-synthetic"
    assert catalog.default_trace_name("mixtral-8x7b") == "mixtral-synthetic"
    trace = catalog.get_trace("olmoe-synthetic")
    assert catalog.get_trace(trace) is trace
    by_path = catalog.get_trace(catalog.trace_path("olmoe-synthetic"))
    assert np.array_equal(np.asarray(by_path.expert_ids), np.asarray(trace.expert_ids))


def test_unknown_names_fail_clearly():
    with pytest.raises(SpecMDError, match="olmoe-synthetic"):
        catalog.get_trace("no-such-trace")
    with pytest.raises(SpecMDError, match="known traces"):
        catalog.trace_info("nope")
    with pytest.raises(SpecMDError):
        catalog.default_trace_name("deepseek-v2-lite")
