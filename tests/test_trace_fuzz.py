"""Trace-file fuzzing: random corruptions of a valid trace file always end in a TraceFormatError (a
SpecMDError) with a clear message, quickly, without ever unpickling, and never with a partial object."""

import io
import json
import pickle
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_trace, random_spec_scores, tiny_model
from specmd_env import SpecMDError, Trace, TraceFormatError, load_trace, save_trace
from specmd_env.trace import validate

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
TIME_LIMIT = 2.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A valid trace (gate weights and spec scores included) saved stored and deflated."""
    model = tiny_model(3, 6, 2)
    rng = np.random.default_rng(0)
    T = 40
    ids = np.array([[rng.choice(6, 2, replace=False) for _ in range(3)] for _ in range(T)])
    gates = rng.random((T, 3, 2)).astype(np.float32)
    trace = make_trace(ids, model, request_lengths=[10, 30], prompt_lengths=[4, 5], gate_weights=gates,
                       spec_scores=random_spec_scores(rng, T, model))
    trace.token_ids = None
    d = tmp_path_factory.mktemp("fuzz")
    return {"stored": save_trace(trace, d / "stored.npz").read_bytes(),
            "deflated": save_trace(trace, d / "deflated.npz", compress=True).read_bytes()}


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle must never be used to load a trace")
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    real_load = np.load

    def np_load(*args, **kwargs):
        assert not kwargs.get("allow_pickle"), "allow_pickle must never be set"
        return real_load(*args, **kwargs)
    monkeypatch.setattr(np, "load", np_load)


def load_or_error(path):
    """Load ``path``: a full, valid Trace or a SpecMDError with a message -- nothing else, within the bound."""
    started = time.perf_counter()
    try:
        trace = load_trace(path)
    except SpecMDError as exc:
        assert isinstance(exc, TraceFormatError)
        assert str(exc) and str(path) in str(exc) or "trace" in str(exc)
        result = exc
    else:
        assert isinstance(trace, Trace)
        validate(trace)  # never a partial object: whatever loads is complete and valid
        np.asarray(trace.expert_ids).sum()
        result = trace
    assert time.perf_counter() - started < TIME_LIMIT
    return result


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@FUZZ
@given(kind=st.sampled_from(["stored", "deflated"]), fraction=st.floats(0.0, 0.9999))
def test_truncation(files, tmp_path, kind, fraction):
    data = files[kind]
    cut = int(len(data) * fraction)
    result = load_or_error(_write(tmp_path, "cut.npz", data[:cut]))
    assert isinstance(result, TraceFormatError)


@FUZZ
@given(kind=st.sampled_from(["stored", "deflated"]), flips=st.lists(
    st.tuples(st.floats(0.0, 0.9999), st.integers(1, 255)), min_size=1, max_size=4))
def test_flipped_bytes(files, tmp_path, kind, flips):
    data = bytearray(files[kind])
    for where, mask in flips:
        data[int(len(data) * where)] ^= mask
    load_or_error(_write(tmp_path, "flip.npz", bytes(data)))


def _members(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _zip(tmp_path, members: dict, name="edit.npz"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, payload in members.items():
            zf.writestr(member, payload)
    return path


def _npy(array=None, *, header: dict | None = None, payload: bytes | None = None) -> bytes:
    out = io.BytesIO()
    if header is None:
        np.lib.format.write_array(out, array, allow_pickle=False)
        return out.getvalue()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + (payload or b"")


MEMBERS = ["meta_json", "request_offsets", "prompt_lengths", "expert_ids", "gate_weights", "spec_scores"]


WRONG_DTYPES = ["<i4", "<f8", "|u1", ">i8"]


@pytest.mark.parametrize(("member", "dtype"), [(m, d) for m in MEMBERS for d in WRONG_DTYPES
                                               if np.dtype(d) != np.dtype({"meta_json": "|u1"}.get(m, "V1"))])
def test_wrong_dtype_member(files, tmp_path, member, dtype):
    members = _members(files["stored"])
    original = np.lib.format.read_array(io.BytesIO(members[member + ".npy"]), allow_pickle=False)
    assert original.dtype != np.dtype(dtype)
    members[member + ".npy"] = _npy(original.astype(dtype))
    err = load_or_error(_zip(tmp_path, members))
    assert isinstance(err, TraceFormatError) and member in str(err) and "dtype" in str(err)


@pytest.mark.parametrize("member", ["meta_json", "request_offsets", "prompt_lengths", "expert_ids"])
def test_missing_required_member(files, tmp_path, member):
    members = _members(files["stored"])
    del members[member + ".npy"]
    err = load_or_error(_zip(tmp_path, members))
    assert isinstance(err, TraceFormatError) and member in str(err) and "missing" in str(err)


def test_missing_optional_member_loads(files, tmp_path):
    members = _members(files["stored"])
    del members["spec_scores.npy"]
    trace = load_or_error(_zip(tmp_path, members))
    assert isinstance(trace, Trace) and trace.spec_scores is None


@pytest.mark.parametrize("extra", ["evil.npy", "expert_ids.npy.bak", "README"])
def test_extra_member(files, tmp_path, extra):
    members = _members(files["stored"])
    members[extra] = _npy(np.zeros(3, np.int64))
    err = load_or_error(_zip(tmp_path, members))
    assert isinstance(err, TraceFormatError) and extra in str(err) and "unexpected" in str(err)


@pytest.mark.parametrize("shape", [(10**12, 3, 2), (2**62, 2**62), (-5, 3, 2), (40, 3, 2, 10**9), ()])
def test_absurd_declared_shape(files, tmp_path, shape):
    members = _members(files["stored"])
    payload = members["expert_ids.npy"][128:]  # keep the real data, lie about its shape
    members["expert_ids.npy"] = _npy(header={"descr": "<i2", "fortran_order": False, "shape": shape},
                                     payload=payload)
    started = time.perf_counter()
    err = load_or_error(_zip(tmp_path, members))
    assert isinstance(err, TraceFormatError) and "expert_ids" in str(err)
    assert time.perf_counter() - started < TIME_LIMIT


def test_absurd_header_length(files, tmp_path):
    members = _members(files["stored"])
    huge = b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b"{" * 64
    members["expert_ids.npy"] = huge
    err = load_or_error(_zip(tmp_path, members))
    assert isinstance(err, TraceFormatError)


@pytest.mark.parametrize("member", ["expert_ids", "meta_json", "gate_weights"])
def test_object_dtype_member_never_unpickled(files, tmp_path, member):
    """A member holding a pickle (object dtype) is refused from its header; pickle is never called."""
    members = _members(files["stored"])
    payload = pickle.dumps([1, 2, 3])  # (the real pickle.dumps; only loading is forbidden)
    members[member + ".npy"] = _npy(header={"descr": "|O", "fortran_order": False, "shape": (3,)},
                                    payload=payload)
    err = load_or_error(_zip(tmp_path, members))
    assert isinstance(err, TraceFormatError) and member in str(err) and "object" in str(err)


@pytest.mark.parametrize("meta", [b"not json", b"[1, 2]", b"\xff\xfe", json.dumps({"format": "x"}).encode()])
def test_bad_metadata(files, tmp_path, meta):
    members = _members(files["stored"])
    members["meta_json.npy"] = _npy(np.frombuffer(meta, np.uint8))
    err = load_or_error(_zip(tmp_path, members))
    assert isinstance(err, TraceFormatError) and "meta" in str(err).lower()


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04", b"\x93NUMPY" + b"\x00" * 100, b"hello world" * 10])
def test_foreign_files(tmp_path, data):
    err = load_or_error(_write(tmp_path, "foreign.npz", data))
    assert isinstance(err, TraceFormatError)


def test_directory_and_missing_path(tmp_path):
    with pytest.raises(TraceFormatError, match="does not exist"):
        load_trace(tmp_path / "nope.npz")
    with pytest.raises(TraceFormatError, match="does not exist"):
        load_trace(tmp_path)


@pytest.mark.parametrize("member", ["expert_ids", "meta_json", "spec_scores"])
def test_corrupt_deflate_stream(files, tmp_path, member):
    """Bytes flipped inside a deflated member's compressed data: zlib fails mid-read (zlib.error, which
    load_trace once let escape) -- it must be a TraceFormatError."""
    data = bytearray(files["deflated"])
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(member + ".npy")
    name_len, extra_len = np.frombuffer(bytes(data[info.header_offset + 26:info.header_offset + 30]), "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    errors = 0
    for k in range(0, min(info.compress_size, 64)):
        corrupt = bytearray(data)
        corrupt[start + k] ^= 0xFF
        result = load_or_error(_write(tmp_path, "z.npz", bytes(corrupt)))
        errors += isinstance(result, TraceFormatError)
    assert errors > 0
