"""Throughput: our demand-only LRU (per-access mode) vs libCacheSim's LRU on the same >= 10M-access stream.

What is timed on each side:

* ours: ``load_trace`` (memory-mapped) + ``Replay(...)`` (pass planning) + ``run()`` (schedule building,
  chunk by chunk, and the compiled kernel, which also keeps its clocks). numba compilation is excluded
  (a warm-up replay of one request runs first; the on-disk cache usually makes it a load).
* libCacheSim: opening the oracleGeneral binary trace (``TraceReader``) + ``LRU(...).process_trace``.
  Writing that file (flattening our trace into it) is not timed.

Then: our accesses/s with the full timing model and score-based prefetch (Least-Stale, event mode) on a
trace with speculative scores.

    python experiments/bench_replay.py [--tokens-per-request 1000] [--capacity 0.25]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from experiments.crosscheck_libcachesim import access_stream, libcachesim_misses, write_oracle_general
from specmd_env import Replay, load_trace, simulate
from specmd_env.generator import write_trace
from specmd_env.models import get_model


def ours(path, capacity, **kw):
    started = time.perf_counter()
    trace = load_trace(path)
    result = Replay(trace, capacity=capacity, **kw).run()
    return result, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-domain", type=int, default=16)
    parser.add_argument("--decode-len", type=int, default=1000)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--capacity", type=float, default=0.25, help="fraction of all routed experts")
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
        print(f"capacity {args.capacity} = {slots} slots; accesses (requests): {stream.stat().st_size // 24:,}")

        simulate(trace, requests=[0], mode="per-access")  # warm the compiled kernel
        result, ours_s = ours(path, slots * model.expert_bytes, eviction="lru", prefetch="none", mode="per-access")
        t = time.perf_counter()
        n, lcs_misses = libcachesim_misses(stream, "lru", slots)
        lcs_s = time.perf_counter() - t
        assert n == result.accesses and lcs_misses == result.misses, (n, result.accesses, lcs_misses, result.misses)
        print(f"ours (load + plan + schedule + kernel), per-access LRU: {result.accesses / ours_s / 1e6:6.1f} M accesses/s "
              f"({ours_s:.2f} s, miss ratio {result.misses / result.accesses:.4f})")
        print(f"libCacheSim LRU (open + process_trace):                {n / lcs_s / 1e6:6.1f} M requests/s "
              f"({lcs_s:.2f} s, miss ratio {lcs_misses / n:.4f}, equal miss counts)")
        print(f"ratio ours / libCacheSim: {lcs_s / ours_s:.2f}")

        spec_path = write_trace(tmp / "olmoe-spec.npz", model="olmoe-1b-7b", requests_per_domain=max(1, args.spec_tokens // 5 // (args.prompt_len + 200)),
                                prompt_len=args.prompt_len, decode_len=200, seed=1, with_spec_scores=True)
        simulate(load_trace(spec_path), requests=[0], eviction="least-stale", prefetch="score")  # warm
        full, full_s = ours(spec_path, args.capacity, eviction="least-stale", prefetch="score", mode="event")
        print(f"ours, full timing model, Least-Stale + score prefetch (event mode), {load_trace(spec_path).num_tokens:,} "
              f"tokens with spec scores: {full.accesses / full_s / 1e6:6.1f} M accesses/s ({full_s:.2f} s, "
              f"{full.prefetches_issued:,} prefetches)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
