"""Hostile input: crafted files (decompression bombs, lying shapes and metadata, deep and huge JSON, many
members, many domains) given to ``specmd trace-stats``, ``specmd simulate`` and ``specmd import-allenai``.

Every case runs in a child process under a memory cap, so an overrun fails the test instead of taking
the machine down. The cap is RLIMIT_AS (address space) = what a clean child needs for the same commands
on a valid trace (numba and LLVM reserve address space they never touch, so a fixed number would be
wrong on another machine) + 1 GiB. Address space is not resident memory, so the test also asserts the
child's peak resident set stays under 1 GiB (``VmHWM`` of the child's own image, read by the child: the
``ru_maxrss`` of ``wait4`` also counts the forked copy of the test process before ``exec``, which is as
large as the test process), and its wall time under 10 s.
The reader never turns MemoryError into a format error, so a case that needs the cap fails loudly.

The files are built here, byte by byte (tests/hostile_files.py); none is committed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from hostile_files import (DEFLATED, Member, bzip2_zeros, deflate_then_garbage, deflate_zeros, header_for,
                           meta_bytes, npy, plain, trace_members, write_zip)

GIB = 1 << 30
MAX_RSS = GIB
MAX_SECONDS = 10.0

CHILD = r"""
import contextlib, json, os, sys, time
from specmd_env.cli import main
setup, argvs = json.loads(sys.argv[1])
exec(setup)
results = []
with open(os.devnull, "w") as devnull:
    for argv in argvs:
        started = time.perf_counter()
        with contextlib.redirect_stdout(devnull):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code
        results.append({"argv": argv, "rc": rc, "seconds": time.perf_counter() - started})
status = open("/proc/self/status").read()
def field(name):
    return int(next(l for l in status.splitlines() if l.startswith(name)).split()[1]) * 1024
print(json.dumps({"results": results, "vm_peak": field("VmPeak"), "vm_hwm": field("VmHWM")}))
"""


def run_child(argvs, *, address_space: int | None = None, setup: str = "", timeout: float = 60.0) -> dict:
    """Run ``specmd`` argument lists in one child (under RLIMIT_AS when given); return its results, its
    stderr, its peak resident set (bytes, the child's VmHWM) and its address-space peak."""
    def limit():
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps([setup, argvs])], stdout=out, stderr=err,
                                preexec_fn=limit, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                pytest.fail(f"{argvs} ran longer than {timeout} s")
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert proc.returncode == 0, f"child died (rc {proc.returncode}):\n{stderr[-3000:]}"
    report = json.loads(stdout.strip().splitlines()[-1])
    report.update(stderr=stderr, peak_rss=report["vm_hwm"])
    return report


@pytest.fixture(scope="module")
def cap(tmp_path_factory) -> int:
    """Address space of a child running the same commands on a small valid trace, + 1 GiB."""
    path = write_zip(tmp_path_factory.mktemp("valid") / "valid.npz", trace_members(3))
    baseline = run_child([["trace-stats", str(path)], ["simulate", "olmoe-synthetic"]])
    assert all(r["rc"] == 0 for r in baseline["results"]), baseline["stderr"]
    return baseline["vm_peak"] + GIB


def check(cap, argvs, expected: list[str | None], setup: str = "") -> dict:
    """Run ``argvs`` under the cap; each must end as expected (None: success; a string: a one-line
    ``specmd <command>: error:`` containing it, rc 2), in under 10 s, the child under 1 GiB resident."""
    report = run_child(argvs, address_space=cap, setup=setup)
    assert "Traceback" not in report["stderr"], report["stderr"][-3000:]
    errors = [line for line in report["stderr"].splitlines() if ": error: " in line]
    for result, want in zip(report["results"], expected):
        assert result["seconds"] < MAX_SECONDS, result
        if want is None:
            assert result["rc"] == 0, (result, report["stderr"][-2000:])
        else:
            assert result["rc"] == 2, (result, report["stderr"][-2000:])
            line = errors.pop(0)
            assert line.startswith(f"specmd {result['argv'][0]}: error: ") and want in line, (line, want)
    assert report["peak_rss"] < MAX_RSS, f"peak resident memory {report['peak_rss'] / 2**20:.0f} MiB"
    return report


def members_for(tokens: int, *, layers=2, top_k=2, experts=4, model="tiny", **meta):
    """A valid trace's members for a model shape (one request, expert ids 0..k-1 in every row)."""
    ids = np.broadcast_to(np.arange(top_k, dtype=np.int16), (tokens, layers, top_k))
    m = meta_bytes(model=model, num_layers=layers, num_experts=experts, top_k=top_k, **meta)
    return {"meta_json.npy": npy(np.frombuffer(m, np.uint8)),
            "request_offsets.npy": npy(np.array([0, tokens], np.int64)),
            "prompt_lengths.npy": npy(np.array([1], np.int64)),
            "expert_ids.npy": npy(ids)}


def both(path) -> list[list[str]]:
    return [["trace-stats", str(path)], ["simulate", str(path), "--model", "olmoe"]]


# -- decompression bombs ---------------------------------------------------------------------------

@pytest.mark.parametrize("compress, nbytes, largest_file, message", [
    (deflate_zeros, GIB, 2 << 20, "would inflate to"),           # 1 GiB in 1 MB: the old reader inflated it all
    (bzip2_zeros, 64 << 20, 8 << 10, "compression method 12"),   # bzip2: 64 MiB in a few hundred bytes
])
def test_decompression_bombs_are_refused_from_the_zip_directory(cap, tmp_path, compress, nbytes, largest_file,
                                                                  message):
    """expert_ids of zeros with a consistent shape, compressed a thousandfold or more."""
    tokens = nbytes // 8
    members = members_for(1)
    members["request_offsets.npy"] = npy(np.array([0, tokens], np.int64))
    members["expert_ids.npy"] = compress(npy(header=header_for(np.int16, (tokens, 2, 2))), tokens * 8)
    path = write_zip(tmp_path / "bomb.npz", members)
    assert path.stat().st_size < largest_file
    check(cap, both(path), [message, message])


def test_a_member_with_a_lying_shape_is_refused_from_its_header(cap, tmp_path):
    """expert_ids declaring more tokens than request_offsets: refused from its header. Its compressed data
    past the header is garbage, so a reader that inflated before checking would fail differently (zlib)."""
    members = members_for(3)
    n = 8 << 20
    members["expert_ids.npy"] = deflate_then_garbage(npy(header=header_for(np.int16, (n // 8, 2, 2))), n)
    path = write_zip(tmp_path / "lying.npz", members)
    check(cap, [["trace-stats", str(path)]], ["declares shape (1048576, 2, 2), expected (3, 2, 2)"])


def test_stored_member_claiming_more_than_the_file(cap, tmp_path):
    members = members_for(3)
    members["expert_ids.npy"] = Member(npy(header=header_for(np.int16, (1 << 28, 2, 2))), 0, 0,
                                       (1 << 28) * 8 + 128)
    members["request_offsets.npy"] = npy(np.array([0, 1 << 28], np.int64))
    path = write_zip(tmp_path / "claims.npz", members)
    check(cap, both(path), ["more than the file holds"] * 2)


# -- lying metadata --------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ({"num_layers": 10**12}, "num_layers must be an integer in [1, 1024], got 1000000000000"),
    ({"num_experts": 2**40}, "num_experts must be an integer in [1, 4096]"),
    ({"num_layers": True}, "num_layers must be an integer"),
    ({"model": "olmoe-1b-7b"}, "model 'olmoe-1b-7b' is registered with 16 x 64, top-8"),
    ({"domains": [{"a": 1}]}, "domains[0] must be a string"),
])
def test_zero_token_trace_with_absurd_metadata(cap, tmp_path, override, message):
    """The 1 KB file that once passed load_trace and made trace-stats allocate until the machine ran out."""
    members = members_for(0)
    members["meta_json.npy"] = npy(np.frombuffer(meta_bytes(**override), np.uint8))
    members["request_offsets.npy"] = npy(np.array([0], np.int64))
    members["prompt_lengths.npy"] = npy(np.zeros(0, np.int64))
    members["expert_ids.npy"] = npy(header=header_for(np.int16, (0, 10**12, 2)))
    path = write_zip(tmp_path / "absurd.npz", members)
    assert path.stat().st_size < 2048
    check(cap, both(path), [message, message])


def _meta_member(raw: bytes, method=0):
    return plain(npy(np.frombuffer(raw, np.uint8)), method)


@pytest.mark.parametrize("raw, message", [
    (meta_bytes()[:-1] + b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (meta_bytes()[:-1] + b', "deep": ' + b"[" * 500 + b"]" * 500 + b"}", "nested more than 32 deep"),
    (meta_bytes()[:-1] + b', "big": ' + b"7" * 5000 + b"}", "not acceptable JSON"),
    (meta_bytes()[:-1] + b', "big": ' + b"7" * 4000 + b"}", "an integer of 4000 digits"),
    (meta_bytes()[:-1] + b', "x": NaN}', "NaN is not a JSON number"),
    (b"\xff\xfe{}", "not valid UTF-8"),
])
def test_hostile_json_metadata(cap, tmp_path, raw, message):
    members = members_for(3)
    members["meta_json.npy"] = _meta_member(raw, DEFLATED)
    path = write_zip(tmp_path / "meta.npz", members)
    check(cap, both(path), [message, message])


def test_whitespace_bomb_in_metadata(cap, tmp_path):
    """1 GiB of spaces after the metadata, deflated to about 1 MB (the old reader parsed it at 2.2 GB)."""
    meta = meta_bytes()
    members = members_for(3)
    members["meta_json.npy"] = deflate_zeros(npy(header=header_for(np.uint8, (len(meta) + GIB,))) + meta, GIB,
                                             fill=b" ")
    path = write_zip(tmp_path / "spaces.npz", members)
    check(cap, both(path), ["would inflate to"] * 2)


def test_oversize_metadata_stored(cap, tmp_path):
    members = members_for(3)
    members["meta_json.npy"] = npy(np.frombuffer(meta_bytes() + b" " * (5 << 20), np.uint8))
    path = write_zip(tmp_path / "bigmeta.npz", members)
    check(cap, both(path), ["over the limit of 4194304"] * 2)


# -- many members, many domains, many requests, the largest shapes ------------------------------------

def test_many_members(cap, tmp_path):
    members = members_for(3)
    members.update({f"junk{i}.npy": b"" for i in range(60_000)})
    path = write_zip(tmp_path / "many.npz", members)
    assert path.stat().st_size < 10 << 20
    check(cap, both(path), ["unexpected members ['junk0.npy', 'junk1.npy',"] * 2)


def test_duplicate_member_names(cap, tmp_path):
    members = list(members_for(3).items())
    path = write_zip(tmp_path / "dup.npz", members + [members[-1]])
    check(cap, [["trace-stats", str(path)]], ["member 'expert_ids.npy' appears twice"])


def test_thousands_of_domains(cap, tmp_path):
    """An OLMoE-shaped trace of 6000 one-token requests, each its own domain (the old trace-stats used
    3.6 GB for this 0.8 MB file): domains beyond --max-domains share a row; it replays too."""
    R = 6000
    rng = np.random.default_rng(0)
    ids = np.argsort(rng.random((R, 16, 64)), axis=2)[:, :, :8].astype(np.int16)
    meta = meta_bytes(model="olmoe-1b-7b", num_layers=16, num_experts=64, top_k=8,
                      domains=[f"d{i}" for i in range(R)])
    members = {"meta_json.npy": _meta_member(meta, DEFLATED),
               "request_offsets.npy": plain(npy(np.arange(R + 1, dtype=np.int64)), DEFLATED),
               "prompt_lengths.npy": plain(npy(np.ones(R, np.int64)), DEFLATED),
               "expert_ids.npy": plain(npy(ids), DEFLATED)}
    path = write_zip(tmp_path / "domains.npz", members)
    assert path.stat().st_size < 10 << 20
    check(cap, [["trace-stats", str(path)], ["simulate", str(path)]], [None, None])


def test_hundreds_of_thousands_of_requests(cap, tmp_path):
    """A 9.6 MB stored trace of one-token requests: every per-request table sized from checked numbers."""
    R = 400_000
    members = members_for(R)
    members["request_offsets.npy"] = npy(np.arange(R + 1, dtype=np.int64))
    members["prompt_lengths.npy"] = npy(np.ones(R, np.int64))
    path = write_zip(tmp_path / "requests.npz", members)
    assert path.stat().st_size < 10 << 20
    check(cap, [["trace-stats", str(path)]], [None])


def test_largest_allowed_shape(cap, tmp_path):
    """1024 layers x 4096 experts, top-64, with speculative scores: the shape limits themselves stay
    within the bounds (trace-stats counts transitions sparsely: 1024 x 4096^2 dense counts would be 137 GB)."""
    L, E, k, T = 1024, 4096, 64, 1
    members = members_for(T, layers=L, experts=E, top_k=k)
    members["expert_ids.npy"] = plain(members["expert_ids.npy"], DEFLATED)
    members["spec_scores.npy"] = deflate_zeros(npy(header=header_for(np.float16, (T, L - 1, E))), T * (L - 1) * E * 2)
    path = write_zip(tmp_path / "shape.npz", members)
    assert path.stat().st_size < 10 << 20
    check(cap, [["trace-stats", str(path)]], [None])


def rotating_members(tokens: int, *, layers: int, experts: int, top_k: int, prompt: int = 1) -> dict:
    """One request whose every token chooses the top_k experts after the previous token's (mod E): nothing
    repeats for E / top_k tokens, so the segment cache of the locality pass evicts at every token."""
    start = (np.arange(tokens, dtype=np.int64) * top_k)[:, None, None]
    ids = ((start + np.arange(top_k)) % experts).astype(np.int16)
    ids = np.broadcast_to(ids, (tokens, layers, top_k))
    m = meta_bytes(model="tiny", num_layers=layers, num_experts=experts, top_k=top_k)
    return {"meta_json.npy": npy(np.frombuffer(m, np.uint8)),
            "request_offsets.npy": npy(np.array([0, tokens], np.int64)),
            "prompt_lengths.npy": npy(np.array([prompt], np.int64)),
            "expert_ids.npy": plain(npy(ids), DEFLATED)}


@pytest.mark.parametrize("tokens, layers, experts, top_k", [
    (1_000_000, 2, 64, 2),   # a million-token request: measured on its first 2^16 tokens
    (128, 1024, 4096, 64),   # the largest shape: the token budget shrinks to 16 (2^26 cells)
])
def test_one_long_request_whose_cache_evicts(cap, tmp_path, tokens, layers, experts, top_k):
    """The locality pass (SRP, SCH) reads one request at a time within a budget of tokens and cells, so a
    single long request, whose segment cache evicts at every token, stays within time and memory."""
    path = write_zip(tmp_path / "long.npz", rotating_members(tokens, layers=layers, experts=experts, top_k=top_k))
    assert path.stat().st_size < 10 << 20
    check(cap, [["trace-stats", str(path)]], [None])


# -- the importer ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    (b'{"input_ids": [1], "exp_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"input_ids": [' + b"7" * 5000 + b'], "exp_ids": [[[1]]]}', "not acceptable JSON"),
    (b'{"input_ids": [99999999999999999999999], "exp_ids": [[[1]]]}', "field 'input_ids' must hold integers"),
    (b'{"input_ids": [1], "exp_ids": [[[1]]], "pad": "' + b"x" * (2 << 20) + b'"}', "longer than 1048576 bytes"),
])
def test_hostile_importer_lines(cap, tmp_path, line, message):
    src = tmp_path / "hostile.jsonl"
    src.write_bytes(line + b"\n")
    setup = "import specmd_env.importers.allenai as m; m.MAX_RECORD_BYTES = 1 << 20"  # a small cap, so the test file is small
    check(cap, [["import-allenai", str(src), "--out", str(tmp_path / "out.npz")]], [message], setup=setup)
