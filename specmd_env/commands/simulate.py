"""``specmd simulate TRACE``: replay one trace with one configuration and print its metrics."""

from __future__ import annotations

import json

from specmd_env.catalog import get_trace
from specmd_env.eviction import POLICIES
from specmd_env.hardware import list_profiles, use_hardware_files
from specmd_env.prefetch import PREFETCHERS
from specmd_env.reward import RewardWeights
from specmd_env.simulate import simulate


def configure(parser) -> None:
    parser.add_argument("trace", help="a catalog name (e.g. olmoe-synthetic) or a trace file path")
    parser.add_argument("--model", default=None, help="model spec (default: the trace's)")
    parser.add_argument("--hardware", default="paper-a100-5gbps", help=f"one of {', '.join(list_profiles())}")
    parser.add_argument("--hardware-file", action="append", default=[], metavar="PATH",
                        help="a TOML file of extra hardware profiles, tables as in specmd_env/data/hardware.toml "
                             "(repeatable; also $SPECMD_HARDWARE and ~/.config/specmd/hardware.toml)")
    parser.add_argument("--capacity", default="0.05",
                        help="fraction of routed-expert bytes (0.05 or 5%%), a size (0.6GiB, 600MB, 600000000B), "
                             "or slots (51slots); a bare integer is bytes")
    parser.add_argument("--eviction", default="lru", help=f"one of {', '.join(POLICIES)}")
    parser.add_argument("--prefetch", default="none", help=f"one of {', '.join(PREFETCHERS)} or top<N>")
    parser.add_argument("--lookahead", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--scope", default="global", choices=["global", "per-layer"])
    parser.add_argument("--mode", default="event", choices=["event", "per-access"])
    parser.add_argument("--miss", default="fetch", choices=["fetch", "drop"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args) -> int:
    use_hardware_files(args.hardware_file)
    trace = get_trace(args.trace)
    result = simulate(trace, model=args.model, hardware=args.hardware, capacity=args.capacity,
                      eviction=args.eviction, prefetch=args.prefetch, lookahead=args.lookahead,
                      batch_size=args.batch_size, scope=args.scope, mode=args.mode, miss=args.miss, seed=args.seed)
    row = result.as_dict()
    row["reward"] = RewardWeights().score(result)
    if args.json:
        print(json.dumps(row, indent=2, default=float))
        return 0
    print(f"{trace!r}")
    width = max(map(len, row))
    for key, value in row.items():
        shown = f"{value:.6g}" if isinstance(value, float) else value
        print(f"  {key:<{width}}  {shown}")
    return 0
