"""Replay speed with continuous batching (compiled scheduler, step by step) against static batching on the
same trace, in layer-event accesses per second of CPU time.

Three replays of one synthetic OLMoE trace (LRU, 25% cache, event mode):
* static batching, batch size 1 (passes planned ahead, replayed chunk by chunk);
* continuous batching with ``max_num_seqs=1``: the same passes, but each step composed by the compiled
  scheduler as the replay runs -- the like-for-like ratio the issue asks for;
* continuous batching under Poisson load (``--rate`` requests/s): steps of many sequences.

    python experiments/bench_serving.py [--requests-per-domain 8] [--rate 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from specmd_env import load_trace, simulate
from specmd_env.generator import write_trace


def timed(trace, repeats: int, **kw):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.process_time()
        result = simulate(trace, **kw)
        best = min(best, time.process_time() - started)
    return result, best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-domain", type=int, default=8)
    parser.add_argument("--decode-len", type=int, default=500)
    parser.add_argument("--rate", type=float, default=4.0, help="Poisson arrivals, requests per second")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_trace(Path(tmp) / "olmoe.npz", model="olmoe-1b-7b", requests_per_domain=args.requests_per_domain,
                           prompt_len=64, decode_len=args.decode_len, seed=0, with_spec_scores=False)
        trace = load_trace(path)
        common = dict(capacity=0.25, eviction="lru", hardware="a100-pcie4")
        simulate(trace, requests=[0], **common)                                   # warm the compiled code
        simulate(trace, requests=[0], scheduler="continuous", **common)
        print(f"trace: {trace!r}")
        static, t_static = timed(trace, args.repeats, **common)
        same, t_same = timed(trace, args.repeats, scheduler="continuous", max_num_seqs=1, **common)
        load, t_load = timed(trace, args.repeats, scheduler="continuous", arrival_rate=args.rate, **common)
        assert same.accesses == static.accesses and same.hits == static.hits
        for name, r, t in (("static batching, batch size 1", static, t_static),
                           ("continuous batching, max_num_seqs=1 (same passes)", same, t_same),
                           (f"continuous batching, Poisson {args.rate:g} req/s", load, t_load)):
            print(f"{name:52s} {r.accesses / t / 1e6:6.2f} M accesses/s ({r.accesses:,} accesses, {t:.2f} s CPU)")
        print(f"ratio continuous / static on the same passes: {t_static / t_same:.2f} (target >= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
