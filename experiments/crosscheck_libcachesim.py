"""Cross-check specmd-env's per-access replay against libCacheSim (PyPI ``libcachesim``).

A trace is flattened into the replay's own request stream: one request per layer-event access, object
id ``layer * E + expert``, in the order the schedule's events list them (``Chunk.ev_obj``: passes in
replay order, layers in order, each layer event's experts in order of first appearance). That stream is
written as a libCacheSim *oracleGeneral* binary trace -- a packed little-endian struct per request::

    uint32 clock_time; uint64 obj_id; uint32 obj_size; int64 next_access_vtime   (24 bytes)

with ``obj_size = 1`` (so a cache of N bytes holds N objects) and ``next_access_vtime`` = the index of
the object's next request (-1 if none; libCacheSim maps -1 to "never"). Belady needs that field: with it
left at -1 every object looks never reused and Belady degrades (below LRU on some traces).

Findings (tests/test_libcachesim.py asserts them): in ``mode="per-access"`` with no prefetch, LRU,
FIFO and LFU miss counts equal libCacheSim's exactly; libCacheSim's ``Belady`` always admits the missed
object (it evicts the resident with the farthest next use, then inserts), i.e. our ``belady``, and their
miss counts are equal; ``belady-bypass`` (which may decline to cache) misses at most as often.

Run: ``python experiments/crosscheck_libcachesim.py`` prints a comparison table on a generated trace.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from specmd_env.hardware import get_profile
from specmd_env.models import get_model
from specmd_env.schedule import build_chunk, plan_passes

ORACLE_GENERAL = np.dtype([("clock_time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"),
                           ("next_access_vtime", "<i8")])
assert ORACLE_GENERAL.itemsize == 24  # packed, as libCacheSim reads it

#: our policy name -> libcachesim class name
POLICIES = {"lru": "LRU", "fifo": "FIFO", "lfu": "LFU", "belady": "Belady"}


def access_stream(trace, *, model=None, batch_size: int = 1, requests=None) -> np.ndarray:
    """The replay's demand access stream (object ids ``layer * E + expert``, int64), chunk by chunk
    through the very schedule code the replay uses."""
    spec = get_model(model if model is not None else trace.model)
    hardware = get_profile("paper-a100-5gbps")  # timing is irrelevant to the stream
    plan = plan_passes(trace, batch_size, requests)
    parts = [build_chunk(trace, plan, p0, p1, spec, hardware, with_spec=False, with_next_use=False).ev_obj
             for p0, p1 in plan.chunks()]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def next_access(objects: np.ndarray) -> np.ndarray:
    """Index of each request's object's next request (-1 if never requested again)."""
    objects = np.asarray(objects)
    n = len(objects)
    order = np.argsort(objects, kind="stable")
    nxt = np.full(n, -1, np.int64)
    same = objects[order[1:]] == objects[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def write_oracle_general(path, objects: np.ndarray, *, with_next_access: bool = True) -> Path:
    """Write ``objects`` as an oracleGeneral binary trace (clock = request index, size 1)."""
    objects = np.asarray(objects)
    records = np.empty(len(objects), ORACLE_GENERAL)
    records["clock_time"] = np.arange(len(objects), dtype=np.uint32)
    records["obj_id"] = objects
    records["obj_size"] = 1
    records["next_access_vtime"] = next_access(objects) if with_next_access else -1
    path = Path(path)
    records.tofile(path)
    return path


def read_oracle_general(path) -> np.ndarray:
    return np.fromfile(path, ORACLE_GENERAL)


def libcachesim_misses(path, policy: str, slots: int) -> tuple[int, int]:
    """(requests, misses) of libCacheSim's ``policy`` (our name or theirs) with ``slots`` objects."""
    import libcachesim as lcs

    cls = getattr(lcs, POLICIES.get(policy, policy))
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE,
                             lcs.ReaderInitParam(ignore_obj_size=False))
    cache = cls(int(slots))
    miss_ratio, _ = cache.process_trace(reader)
    n = os.path.getsize(path) // ORACLE_GENERAL.itemsize
    return n, int(round(miss_ratio * n))


def compare(trace, slot_counts, policies=("lru", "fifo", "lfu", "belady"), *, model=None, batch_size=1):
    """Rows (slots, policy, ours, theirs, belady-bypass misses) for each capacity and policy."""
    from specmd_env import simulate

    spec = get_model(model if model is not None else trace.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_oracle_general(Path(tmp) / "stream.oracleGeneral.bin",
                                    access_stream(trace, model=spec, batch_size=batch_size))
        for n in slot_counts:
            for policy in policies:
                ours = simulate(trace, model=spec, capacity=n * spec.expert_bytes, eviction=policy,
                                prefetch="none", mode="per-access", batch_size=batch_size)
                _, theirs = libcachesim_misses(path, policy, n)
                rows.append((n, policy, ours.accesses, ours.misses, theirs))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mixtral-8x7b")
    parser.add_argument("--slots", default="48,96,160,224")
    args = parser.parse_args(argv)
    from specmd_env.generator import generate_trace

    trace = generate_trace(args.model, requests_per_domain=2, prompt_len=(4, 24), decode_len=(8, 40), seed=1,
                           with_spec_scores=False)
    print(f"trace: {trace!r} (synthetic)")
    print(f"{'slots':>6} {'policy':>8} {'accesses':>9} {'ours':>8} {'libcachesim':>11}  equal")
    for n, policy, accesses, ours, theirs in compare(trace, [int(s) for s in args.slots.split(",")]):
        print(f"{n:>6} {policy:>8} {accesses:>9} {ours:>8} {theirs:>11}  {ours == theirs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
