"""``specmd simulate TRACE``: replay one trace with one configuration and print its metrics.

Every keyword of :func:`specmd_env.simulate` is an option, built from one table, :data:`OPTIONS` (name,
parser, help, choices); defaults come from ``simulate``'s own signature, so they cannot drift. A new
keyword of ``simulate`` needs one row here (``tests/test_cli.py`` fails until it has one). Values are
parsed after argparse, so a bad one is a one-line :class:`SpecMDError` naming the option.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Callable

from specmd_env.errors import SpecMDError
from specmd_env.hardware import use_hardware_files
from specmd_env.presets import list_presets
from specmd_env.simulate import simulate


def _int(text: str) -> int:
    return int(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError("must be in (0, 1]")
    return value


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else _positive_int(text)


def _scope(text: str):
    if text in ("global", "per-layer", "adapmoe"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError("give global, per-layer, adapmoe or per-layer sizes 4,3,3,...") from None


def _pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError("give two numbers, T1,T2")
    return float(parts[0]), float(parts[1])


def _budget(text: str) -> str | int:
    return "engine" if text == "engine" else _int(text)


def parse_requests(text: str) -> list[int]:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9] (trace request indices, in the order given)."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{part!r} is not an index or a range a-b")
        if dash and int(last) < int(first):
            raise ValueError(f"range {part!r} runs backwards")
        out.extend(range(int(first), int(last) + 1) if dash else [int(first)])
    return out


@dataclass(frozen=True)
class Option:
    """One keyword of ``simulate`` on the command line: ``--name-with-dashes VALUE``."""

    name: str
    parse: Callable[[str], object]
    help: str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _names(module: str, attr: str) -> tuple[str, ...]:
    import importlib

    return tuple(getattr(importlib.import_module(module), attr))


#: every keyword of specmd_env.simulate, in its order
OPTIONS: tuple[Option, ...] = (
    Option("model", str, "model spec (default: the trace's own)", metavar="MODEL"),
    Option("hardware", str, "hardware profile name (specmd_env.list_profiles())", metavar="PROFILE"),
    Option("capacity", str, "cache size: a fraction of routed-expert bytes (0.05 or 5%%), a size (0.6GiB, 600MB, "
                            "600000000B), or slots (51slots); a bare integer is bytes", metavar="SIZE"),
    Option("eviction", str, f"eviction policy: {', '.join(_names('specmd_env.eviction', 'POLICIES'))}, with "
                            "parameters (lru:prefetch_at=mru-end), or path/to/file.py:NAME", metavar="POLICY"),
    Option("prefetch", str, "prefetcher: none, topk, top<N>, score, oracle", metavar="PREFETCHER"),
    Option("lookahead", _positive_int, "prefetch for layer l + lookahead", metavar="N"),
    Option("batch_size", _positive_int, "requests decoding together (static batching)", metavar="N"),
    Option("scope", _scope, "one cache (global), a share per layer (per-layer), AdapMoE's per-layer sizes "
                            "(adapmoe), or sizes 4,3,3,...", metavar="SCOPE"),
    Option("gating", str, "adaptive: AdapMoE's dropping of a decode token's second expert (Mixtral-8x7B)",
           choices=("none", "adaptive")),
    Option("preset", str, "a named system: its settings fill every option left at its default",
           choices=tuple(list_presets())),
    Option("mode", str, "event: a layer's experts are pinned while it computes; per-access: generic cache replay",
           choices=("event", "per-access")),
    Option("miss", str, "on a miss: fetch (stall), drop, low-precision, cascade, substitute or cpu (see "
                        "simulate(); the gate mass it degrades is reported)", choices=_names("specmd_env.replay",
                                                                                           "MISS_HANDLING")),
    Option("prefetch_mass", _fraction, "score prefetcher: the share of the score mass to cover", metavar="FRAC"),
    Option("prefetch_max", _optional_int, "score prefetcher: at most this many experts per layer ('none': no cap)",
           metavar="N|none"),
    Option("prefetch_budget", _budget, "prefetches per layer: 'engine' (what the copy engine can start before the "
                                       "target layer) or a fixed count", metavar="engine|N"),
    Option("copy_engine", str, "order of the copy engine: fifo, demand-first (demand loads overtake queued "
                               "prefetches), preempt (and preempt one in flight), separate (prefetches on a channel "
                               "of their own: unphysical)", choices=("fifo", "demand-first", "preempt", "separate")),
    Option("copy_engines", _optional_int, "copy engines at once, sharing the link ('none': the profile's)",
           metavar="N|none"),
    Option("preempt_chunks", _positive_int, "preempt: chunks per expert transfer (ProMoE: 3)", metavar="N"),
    Option("evict_at", str, "when a victim is chosen: at the copy's issue or its start", choices=("issue", "start")),
    Option("low_bits", _int, "bits per weight of a low-precision copy (low-precision, cascade)", metavar="BITS"),
    Option("cascade", _pair, "cascade: gate-mass thresholds T1,T2 (full precision within T1, low within T2)",
           metavar="T1,T2"),
    Option("seed", _int, "seed of the random policy", metavar="N"),
    Option("requests", parse_requests, "trace request indices to replay, e.g. 0,3,5-9 (default: all, in order)",
           metavar="LIST"),
)


def configure(parser) -> None:
    defaults = inspect.signature(simulate).parameters
    parser.add_argument("trace", help="a catalog name (e.g. olmoe-synthetic) or a trace file path")
    for option in OPTIONS:
        default = defaults[option.name].default
        parser.add_argument(option.flag, dest=option.name, default=None, choices=option.choices,
                            metavar=option.metavar, help=f"{option.help} (default: {default})")
    parser.add_argument("--hardware-file", action="append", default=[], metavar="PATH",
                        help="a TOML file of extra hardware profiles, tables as in specmd_env/data/hardware.toml "
                             "(repeatable; also $SPECMD_HARDWARE and ~/.config/specmd/hardware.toml)")
    parser.add_argument("--json", action="store_true", help="print the settings and metrics as one JSON object")


def parse_options(args) -> dict:
    """The keywords to pass to ``simulate``: only the options given, each parsed by its table row."""
    kwargs = {}
    for option in OPTIONS:
        text = getattr(args, option.name)
        if text is None:
            continue
        try:
            kwargs[option.name] = option.parse(text)
        except ValueError as exc:
            raise SpecMDError(f"{option.flag} {text!r}: {exc}") from None
    return kwargs


def run(args) -> int:
    from specmd_env.catalog import get_trace
    from specmd_env.reward import RewardWeights

    use_hardware_files(args.hardware_file)
    kwargs = parse_options(args)
    trace = get_trace(args.trace)
    result = simulate(trace, **kwargs)
    row = result.as_dict()
    row["reward"] = RewardWeights().score(result)
    if args.json:
        settings = {name: value.default for name, value in inspect.signature(simulate).parameters.items()
                    if name != "trace"}
        settings.update(kwargs, trace=args.trace)
        print(json.dumps({**row, "settings": settings}, indent=2, default=float))
        return 0
    print(f"{trace!r}")
    width = max(map(len, row))
    for key, value in row.items():
        shown = f"{value:.6g}" if isinstance(value, float) else value
        print(f"  {key:<{width}}  {shown}")
    return 0
