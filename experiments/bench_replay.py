"""Throughput of the replay: built-in LRU, a user's policy, libCacheSim's LRU, and the Python slow path.

    python -m experiments.bench_replay [--requests-per-domain 16] [--decode-len 1000] [--capacity 0.25]

On the same >= 10M-access OLMoE stream, demand only (``mode="per-access"``, ``prefetch="none"``), each
timed as load_trace (memory-mapped) + ``Replay(...)`` (pass planning) + ``run()`` (schedule building,
chunk by chunk, and the compiled kernel, which also keeps its clocks); numba compilation is excluded (a
warm-up replay of one request runs first; the on-disk cache usually makes it a load). Best of
``--repeats`` runs each (the machine is shared):

* built-in LRU (the kernel's own recency order, O(1) per eviction);
* the user policy of docs/examples/layer_distance.py, loaded from the file as a user would
  (``eviction="docs/examples/layer_distance.py:NAME"``): ``LAYER_DISTANCE`` (per-layer lists fed by events)
  and ``LAYER_DISTANCE_BY_KEY`` (a key per slot, one scan per eviction);
* libCacheSim's LRU: opening the oracleGeneral binary trace (``TraceReader``) + ``LRU(...).process_trace``
  (writing that file is not timed); its miss count must equal ours.

Targets (issue 11): user / built-in LRU >= 2/3 and ours / libCacheSim >= 1.0; printed whether met or not.

Then the Python slow path: a plain object with ``victim(view)`` reproducing LRU (its misses must equal the
built-in's), in decisions per second, on the first ``--slow-requests`` requests; and the full timing model
with score prefetch (Least-Stale, event mode) in accesses/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.crosscheck_libcachesim import access_stream, libcachesim_misses, write_oracle_general
from specmd_env import Replay, load_trace, simulate
from specmd_env.generator import write_trace
from specmd_env.models import get_model

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "layer_distance.py"
TARGET_USER, TARGET_LIBCACHESIM = 2 / 3, 1.0


class PythonLRU:
    """LRU on the slow path: the candidate whose last use is oldest (docs/POLICIES.md)."""

    name = "python-lru"

    def victim(self, view):
        candidates = view.candidates()
        return int(candidates[np.argmin(view.last_use[candidates])])


def timed(path, repeats: int, **kw):
    """(result, best seconds) of load + plan + run."""
    best, result = np.inf, None
    for _ in range(repeats):
        started = time.perf_counter()
        result = Replay(load_trace(path), **kw).run()
        best = min(best, time.perf_counter() - started)
    return result, best


def _verdict(ratio: float, target: float) -> str:
    return f"target >= {target:.2f}: {'met' if ratio >= target else 'NOT met'}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-domain", type=int, default=16)
    parser.add_argument("--decode-len", type=int, default=1000)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--capacity", type=float, default=0.25, help="fraction of all routed experts")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (best is reported)")
    parser.add_argument("--slow-requests", type=int, default=2, help="requests replayed on the Python slow path")
    parser.add_argument("--spec-tokens", type=int, default=40_000, help="tokens of the spec-score trace")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        path = write_trace(tmp / "olmoe.npz", model="olmoe-1b-7b", requests_per_domain=args.requests_per_domain,
                           prompt_len=args.prompt_len, decode_len=args.decode_len, seed=0, with_spec_scores=False)
        trace = load_trace(path)
        model = get_model(trace.model)
        print(f"trace: {trace!r} (synthetic OLMoE, no spec scores), generated in {time.perf_counter() - t:.1f} s")
        stream = write_oracle_general(tmp / "olmoe.oracleGeneral.bin", access_stream(trace))
        slots = Replay(trace, capacity=args.capacity).capacity
        n_access = stream.stat().st_size // 24
        print(f"capacity {args.capacity} = {slots} slots; accesses (requests): {n_access:,}; "
              f"demand only, mode='per-access'; best of {args.repeats}")
        common = dict(capacity=slots * model.expert_bytes, prefetch="none", mode="per-access")

        rates = {}
        policies = [("built-in LRU", "lru")] + [
            (f"user {name} (docs/examples)", f"{EXAMPLE}:{name}") for name in ("LAYER_DISTANCE", "LAYER_DISTANCE_BY_KEY")]
        for label, eviction in policies:
            simulate(trace, requests=[0], eviction=eviction, mode="per-access")  # compile or load the hooks
            result, seconds = timed(path, args.repeats, eviction=eviction, **common)
            rates[label] = result.accesses / seconds
            print(f"{label:44s} {rates[label] / 1e6:6.1f} M accesses/s ({seconds:.2f} s, miss ratio "
                  f"{result.misses / result.accesses:.4f})")
            if eviction == "lru":
                lru_misses, lru_accesses = result.misses, result.accesses

        best = np.inf
        for _ in range(args.repeats):
            t = time.perf_counter()
            n, lcs_misses = libcachesim_misses(stream, "lru", slots)
            best = min(best, time.perf_counter() - t)
        assert n == lru_accesses and lcs_misses == lru_misses, (n, lru_accesses, lcs_misses, lru_misses)
        rates["libCacheSim LRU"] = n / best
        print(f"{'libCacheSim LRU (open + process_trace)':44s} {n / best / 1e6:6.1f} M requests/s ({best:.2f} s, "
              f"equal miss counts)")

        lru = rates["built-in LRU"]
        for name in ("LAYER_DISTANCE", "LAYER_DISTANCE_BY_KEY"):
            ratio = rates[f"user {name} (docs/examples)"] / lru
            print(f"ratio user {name} / built-in LRU: {ratio:.2f} ({_verdict(ratio, TARGET_USER)})")
        ratio = lru / rates["libCacheSim LRU"]
        print(f"ratio built-in LRU / libCacheSim LRU: {ratio:.2f} ({_verdict(ratio, TARGET_LIBCACHESIM)})")

        requests = list(range(min(args.slow_requests, trace.num_requests)))
        reference = simulate(trace, requests=requests, eviction="lru", **common)
        started = time.perf_counter()
        slow = simulate(trace, requests=requests, eviction=PythonLRU(), **common)
        seconds = time.perf_counter() - started
        assert slow.misses == reference.misses and slow.hits == reference.hits, (slow.misses, reference.misses)
        print(f"Python slow path (victim(view) reproducing LRU, equal misses): {slow.decisions / seconds:,.0f} "
              f"decisions/s ({slow.decisions:,} decisions, {slow.accesses / seconds / 1e3:,.0f} k accesses/s, "
              f"{seconds:.1f} s)")

        spec_path = write_trace(tmp / "olmoe-spec.npz", model="olmoe-1b-7b",
                                requests_per_domain=max(1, args.spec_tokens // 5 // (args.prompt_len + 200)),
                                prompt_len=args.prompt_len, decode_len=200, seed=1, with_spec_scores=True)
        simulate(load_trace(spec_path), requests=[0], eviction="least-stale", prefetch="score")  # warm
        full, full_s = timed(spec_path, 1, capacity=args.capacity, eviction="least-stale", prefetch="score",
                             mode="event")
        print(f"ours, full timing model, Least-Stale + score prefetch (event mode), {load_trace(spec_path).num_tokens:,} "
              f"tokens with spec scores: {full.accesses / full_s / 1e6:6.1f} M accesses/s ({full_s:.2f} s, "
              f"{full.prefetches_issued:,} prefetches)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
