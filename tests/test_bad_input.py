"""Bad input ends in a SpecMDError (a ValueError) whose message names the field and the value."""

import numpy as np
import pytest

from conftest import make_trace, slots, tiny_model
from specmd_env import HardwareProfile, SpecMDError, Trace, TraceFormatError, load_trace, save_trace, simulate
from specmd_env.catalog import get_trace
from specmd_env.models import get_model

MODEL = tiny_model(2, 4, 2)
GOOD = [[[0, 1], [2, 3]], [[1, 2], [0, 3]], [[3, 0], [1, 2]]]


@pytest.fixture
def trace():
    return make_trace(GOOD, MODEL, request_lengths=[1, 2], prompt_lengths=[1, 1])


# -- trace contents --------------------------------------------------------------------------------

def test_out_of_range_expert_id():
    ids = np.array(GOOD)
    ids[2, 1, 0] = 4
    with pytest.raises(TraceFormatError, match=r"expert_ids\[2, 1, 0\]=4 out of range \[0, 4\)"):
        make_trace(ids, MODEL)
    ids[2, 1, 0] = -1
    with pytest.raises(TraceFormatError, match=r"expert_ids\[2, 1, 0\]=-1 out of range"):
        make_trace(ids, MODEL)


def test_repeated_id_in_one_top_k():
    ids = np.array(GOOD)
    ids[1, 0] = [2, 2]
    with pytest.raises(TraceFormatError, match=r"expert_ids\[1, 0\] repeats an expert id within one top-k: \[2, 2\]"):
        make_trace(ids, MODEL)


@pytest.mark.parametrize("bad,shown", [(np.nan, "nan"), (-0.5, "-0.5"), (np.inf, "inf")])
def test_bad_gate_weights(bad, shown):
    gates = np.full((3, 2, 2), 0.3, np.float32)
    gates[0, 1, 1] = bad
    with pytest.raises(TraceFormatError, match=rf"gate_weights\[0, 1, 1\]={shown} must be finite and >= 0"):
        make_trace(GOOD, MODEL, gate_weights=gates)


def test_bad_spec_scores():
    scores = np.full((3, 1, 4), 0.25, np.float16)
    scores[2, 0, 3] = np.nan
    with pytest.raises(TraceFormatError, match=r"spec_scores\[2, 0, 3\]=nan must be a probability"):
        make_trace(GOOD, MODEL, spec_scores=scores)


def test_shapes_that_disagree():
    with pytest.raises(TraceFormatError, match=r"gate_weights has shape \(3, 2, 3\), expected \(3, 2, 2\)"):
        make_trace(GOOD, MODEL, gate_weights=np.zeros((3, 2, 3), np.float32))
    with pytest.raises(TraceFormatError, match=r"spec_scores has shape \(3, 2, 4\), expected \(3, 1, 4\)"):
        make_trace(GOOD, MODEL, spec_scores=np.zeros((3, 2, 4), np.float16))
    with pytest.raises(TraceFormatError, match=r"expert_ids has shape \(3, 2, 2\), expected \(tokens, 3, 2\)"):
        make_trace(GOOD, MODEL, meta={"num_layers": 3})
    with pytest.raises(TraceFormatError, match="request_offsets must end at the token count 3, got 2"):
        make_trace(GOOD, MODEL, request_lengths=[1, 1], prompt_lengths=[1, 1])
    with pytest.raises(TraceFormatError, match=r"prompt_lengths\[1\]=3 outside \[0, 2\]"):
        make_trace(GOOD, MODEL, request_lengths=[1, 2], prompt_lengths=[1, 3])
    with pytest.raises(TraceFormatError, match=r"expert_ids holds 40000, which does not fit int16"):
        Trace(expert_ids=np.full((3, 2, 2), 40000, np.int64), request_offsets=np.array([0, 3]),
              prompt_lengths=np.array([1]), meta=dict(make_trace(GOOD, MODEL).meta))
    with pytest.raises(TraceFormatError, match=r"expert_ids has dtype float64, expected integers"):
        Trace(expert_ids=np.array(GOOD, np.float64), request_offsets=np.array([0, 3]), prompt_lengths=np.array([1]),
              meta=dict(make_trace(GOOD, MODEL).meta))


def test_trace_casts_integers_that_fit_and_fills_a_known_models_shape():
    """int64 ids (what numpy and torch give by default) and int32 offsets are cast, nothing lost; a model the
    registry knows supplies num_experts and must agree with the trace's layers and top-k."""
    olmoe = get_model("olmoe-1b-7b")
    ids = np.random.default_rng(0).permuted(np.tile(np.arange(olmoe.num_experts), (5, olmoe.num_layers, 1)),
                                            axis=2)[:, :, :olmoe.top_k].astype(np.int64)
    trace = Trace(expert_ids=ids, request_offsets=np.array([0, 5], np.int32), prompt_lengths=np.array([2], np.uint8),
                  meta={"model": "olmoe", "kind": "imported"})
    assert trace.expert_ids.dtype == np.int16 and trace.request_offsets.dtype == np.int64
    assert np.array_equal(trace.expert_ids, ids) and trace.num_experts == olmoe.num_experts
    with pytest.raises(TraceFormatError, match=r"num_layers=2 does not match model 'olmoe-1b-7b' \(num_layers=16\)"):
        Trace(expert_ids=ids[:, :2], request_offsets=np.array([0, 5]), prompt_lengths=np.array([2]),
              meta={"model": "olmoe-1b-7b", "kind": "imported"})
    with pytest.raises(TraceFormatError, match="missing 'num_experts'"):  # an unknown model must state its shape
        Trace(expert_ids=ids, request_offsets=np.array([0, 5]), prompt_lengths=np.array([2]),
              meta={"model": "not-registered", "kind": "imported"})


def test_trace_model_mismatch(trace):
    with pytest.raises(SpecMDError, match=r"trace shape 2 layers x 4 experts, top-2 does not match model 'mixtral-8x7b'"):
        simulate(trace, model="mixtral-8x7b")
    with pytest.raises(SpecMDError, match="unknown model 'tiny'"):
        simulate(trace)  # the trace names a model that is not registered


def test_truncated_and_foreign_files(trace, tmp_path):
    path = save_trace(trace, tmp_path / "t.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFormatError, match="cut.npz: not a readable specmd trace"):
        load_trace(tmp_path / "cut.npz")
    (tmp_path / "foreign.npz").write_bytes(b"GIF89a" + b"\x00" * 64)
    with pytest.raises(TraceFormatError, match="foreign.npz: not a readable specmd trace"):
        load_trace(tmp_path / "foreign.npz")
    with pytest.raises(SpecMDError, match="unknown trace 'no-such-trace'"):
        get_trace("no-such-trace")


# -- replay settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity,message", [
    (slots(MODEL, 1), r"capacity 12288 gives 1 expert slots for Tiny, fewer than one layer's top_k=2"),
    (0.1, r"capacity 0.1 gives 0 expert slots for Tiny, fewer than one layer's top_k=2"),
    (-0.5, r"capacity fraction must be in \(0, 1\], got -0.5"),
    (1.5, r"capacity fraction must be in \(0, 1\], got 1.5"),
    (float("nan"), "capacity must be a fraction in \\(0, 1\\] or a byte count, got nan"),
    ("big", "capacity must be a fraction in \\(0, 1\\] or a byte count, got 'big'"),
])
def test_bad_capacity(trace, capacity, message):
    with pytest.raises(SpecMDError, match=message):
        simulate(trace, model=MODEL, capacity=capacity)


@pytest.mark.parametrize("field,value", [("h2d_bandwidth_gbps", 0.0), ("h2d_bandwidth_gbps", -5.0),
                                         ("gpu_mem_bandwidth_gbps", 0), ("bf16_tflops", float("nan"))])
def test_non_positive_bandwidth(field, value):
    kw = dict(name="bad", description="", h2d_bandwidth_gbps=5.0, transfer_latency_us=0.0,
              gpu_mem_bandwidth_gbps=100.0, bf16_tflops=10.0)
    kw[field] = value
    with pytest.raises(SpecMDError, match=rf"hardware profile 'bad': {field} must be a positive number, got {value!r}"):
        HardwareProfile(**kw)
    with pytest.raises(SpecMDError, match="transfer_latency_us must be >= 0, got -1"):
        HardwareProfile(**dict(kw, **{field: 1.0}, transfer_latency_us=-1))


@pytest.mark.parametrize("kw,message", [
    (dict(hardware="tpu-v9"), "unknown hardware profile 'tpu-v9'; known profiles: .*paper-a100-5gbps"),
    (dict(eviction="mru"), "unknown eviction policy 'mru'; known: lru, fifo"),
    (dict(eviction=None), "unknown eviction policy None"),
    (dict(prefetch="magic"), r"unknown prefetcher 'magic'; known: none, topk, score, oracle"),
    (dict(prefetch="top0"), "unknown prefetcher 'top0'"),
    (dict(prefetch="score"), "prefetch='score' needs speculative scores, but this trace has none"),
    (dict(model="gpt-5"), "unknown model 'gpt-5'; known models: .*olmoe-1b-7b"),
    (dict(lookahead=0), "lookahead must be an integer >= 1, got 0"),
    (dict(lookahead=2), "lookahead must be below the layer count 2, got 2"),
    (dict(lookahead=1.0), "lookahead must be an integer >= 1, got 1.0"),
    (dict(lookahead=True), "lookahead must be an integer >= 1, got True"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(batch_size="2"), "batch_size must be an integer >= 1, got '2'"),
    (dict(scope="per-expert"), r"scope must be one of \('global', 'per-layer', 'adapmoe'\), got 'per-expert'"),
    (dict(mode="batch"), r"mode must be one of \('event', 'per-access'\), got 'batch'"),
    (dict(miss="ignore"), r"miss must be one of \('fetch', 'drop', .*\), got 'ignore'"),
    (dict(seed=-3), "seed must be an integer >= 0, got -3"),
    (dict(prefetch_budget=-1), "prefetch_budget must be an integer >= 0, got -1"),
    (dict(prefetch_budget="all"), "prefetch_budget must be an integer >= 0, got 'all'"),
    (dict(requests=[7]), r"requests must be a list of trace request indices in \[0, 2\), got \[7\]"),
    (dict(requests=[-1]), r"requests must be a list of trace request indices in \[0, 2\), got \[-1\]"),
    (dict(requests=[0.5]), r"requests must be a list of trace request indices in \[0, 2\), got \[0.5\]"),
    (dict(scope="per-layer", capacity=slots(MODEL, 2) + 0), None),  # fine: one slot per layer
])
def test_bad_settings(trace, kw, message):
    kw = dict(kw)
    model = kw.pop("model", MODEL)
    kw.setdefault("capacity", 1.0)
    if message is None:
        assert simulate(trace, model=model, **kw).accesses == 12
        return
    with pytest.raises(SpecMDError, match=message):
        simulate(trace, model=model, **kw)


def test_bad_prefetch_options():
    scores = np.full((3, 1, 4), 0.25, np.float16)
    t = make_trace(GOOD, MODEL, spec_scores=scores)
    with pytest.raises(SpecMDError, match=r"prefetch mass must be in \(0, 1\], got 1.5"):
        simulate(t, model=MODEL, capacity=1.0, prefetch="score", prefetch_mass=1.5)
    with pytest.raises(SpecMDError, match="prefetch max_count must be >= 1, got 0"):
        simulate(t, model=MODEL, capacity=1.0, prefetch="score", prefetch_max=0)


def test_per_layer_needs_a_slot_per_layer():
    model = tiny_model(4, 4, 1)
    t = make_trace([[[0]] * 4], model)
    with pytest.raises(SpecMDError, match="scope='per-layer' needs at least one slot per layer: .* 3 slots for 4 layers"):
        simulate(t, model=model, capacity=slots(model, 3), scope="per-layer")


def test_errors_are_value_errors():
    assert issubclass(TraceFormatError, SpecMDError) and issubclass(SpecMDError, ValueError)
    with pytest.raises(ValueError):
        get_model("nope")
