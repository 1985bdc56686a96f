"""A memory-mapped trace file that changes under a reader: truncated or rewritten in place, it is refused
with a TraceFormatError (once it killed the replay with SIGBUS); replaced by rename, the replay goes on
with the contents it started with. Cases that would SIGBUS run in a child process."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_trace, slots, tiny_model
from specmd_env import Replay, TraceFormatError, load_trace, save_trace

MODEL = tiny_model(2, 4, 2)
TESTS = Path(__file__).resolve().parent


def long_trace(seed: int = 0):
    """40 requests of 1000 tokens (10 prompt, 990 decode): several schedule chunks."""
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((40_000, 2, 4)), axis=2)[:, :, :2]
    return make_trace(ids, MODEL, request_lengths=[1000] * 40, prompt_lengths=[10] * 40)


@pytest.fixture
def stored(tmp_path) -> Path:
    return save_trace(long_trace(), tmp_path / "long.npz")


CHILD = """
import os, sys, time
sys.path.insert(0, {tests!r})
from conftest import slots, tiny_model
from specmd_env import Replay, TraceFormatError, load_trace
path, how = sys.argv[1], sys.argv[2]
model = tiny_model(2, 4, 2)
replay = Replay(load_trace(path), model=model, capacity=slots(model, 3))   # the first chunk is read here
assert replay.plan.num_passes > 10_000
time.sleep(0.05)  # a later clock tick, so an in-place rewrite changes the modification time
if how == "truncate":
    os.truncate(path, os.path.getsize(path) // 2)
else:
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) - 4096)
        fh.write(bytes(4096))
try:
    replay.run()
except TraceFormatError as exc:
    print("refused:", exc)
else:
    print("finished")
"""


@pytest.mark.parametrize("how", ["truncate", "rewrite"])
def test_a_file_changed_under_a_replay_is_refused_not_sigbus(stored, how):
    proc = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(TESTS)), str(stored), how],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the replay died (rc {proc.returncode}, -7 is SIGBUS):\n{proc.stderr[-2000:]}"
    assert proc.stdout.startswith("refused:") and "changed on disk while in use" in proc.stdout, proc.stdout


def test_a_file_replaced_by_rename_keeps_the_old_contents(stored):
    """save_trace writes a new file and renames it over the old one: the mapping keeps the old inode, so
    a replay that started on it finishes on it, with the same result as an undisturbed replay."""
    capacity = slots(MODEL, 3)
    expected = Replay(load_trace(stored), model=MODEL, capacity=capacity).run().as_dict()
    replay = Replay(load_trace(stored), model=MODEL, capacity=capacity)
    save_trace(long_trace(seed=1), stored)
    assert replay.run().as_dict() == expected
    assert Replay(load_trace(stored), model=MODEL, capacity=capacity).run().as_dict() != expected  # new contents


def test_check_file_and_in_memory_traces(stored):
    trace = load_trace(stored)
    trace.check_file()                                    # unchanged: nothing to say
    assert load_trace(stored, mmap=False).mapped_file is None
    assert trace.select_requests([0, 1]).mapped_file is None
    copied = copy.deepcopy(trace)                          # (a pickled trace too: its arrays are in memory)
    assert copied.mapped_file is None and np.array_equal(copied.expert_ids, trace.expert_ids)
    time.sleep(0.05)
    with open(stored, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(TraceFormatError, match=r"size \d+ -> \d+ bytes"):
        trace.check_file()
