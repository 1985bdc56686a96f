"""Does prefetching help? Stall with and without score prefetch under each compute engine (issue 12).

The answer turns on how long a layer computes while the next layer's experts are in flight: the
uncorrected roofline (0.088 ms per OLMoE decode layer on an A100), the calibrated optimised engine
(about 0.21 ms) or eager Hugging Face (about 1.9 ms). Same trace, hardware and capacity; only the
profile's engine changes.

    python -m experiments.compute_engine_effect [--trace olmoe-synthetic] [--hardware a100-pcie4] [--capacity 0.25]
"""

from __future__ import annotations

import argparse
import dataclasses

from specmd_env.catalog import get_trace
from specmd_env.hardware import get_profile, list_engines
from specmd_env.simulate import simulate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="olmoe-synthetic")
    parser.add_argument("--hardware", default="a100-pcie4")
    parser.add_argument("--capacity", default="25%")
    parser.add_argument("--eviction", default="lru")
    args = parser.parse_args(argv)
    trace = get_trace(args.trace)
    print(f"{trace!r} on {args.hardware}, capacity {args.capacity}, eviction {args.eviction}")
    print(f"{'engine':9s} {'stall, no prefetch':>19s} {'stall, score':>13s} {'TPOT, no prefetch':>18s} "
          f"{'TPOT, score':>12s}")
    for engine in list_engines():
        hardware = dataclasses.replace(get_profile(args.hardware), engine=engine)
        none, score = (simulate(trace, hardware=hardware, capacity=args.capacity, eviction=args.eviction,
                                prefetch=prefetch, seed=0) for prefetch in ("none", "score"))
        print(f"{engine:9s} {none.stall_seconds:17.1f} s {score.stall_seconds:11.1f} s "
              f"{none.mean_tpot_seconds * 1e3:15.2f} ms {score.mean_tpot_seconds * 1e3:9.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
