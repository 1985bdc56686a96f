"""Regenerate the built-in synthetic traces in specmd_env/data/traces/ (deterministic, fixed seeds).

    python traces/make_defaults.py                       # all three
    python traces/make_defaults.py mixtral-synthetic     # only the named ones

All three are SYNTHETIC (specmd_env.generator): nothing was recorded from a model. See traces/README.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from specmd_env.generator import ALLENAI_DOMAINS, generate_trace
from specmd_env.trace import save_trace

OUT = Path(__file__).resolve().parent.parent / "specmd_env" / "data" / "traces"

DEFAULTS = {
    # name: generate_trace arguments
    "olmoe-synthetic": dict(model="olmoe-1b-7b", domains=ALLENAI_DOMAINS, requests_per_domain=4,
                            prompt_len=(64, 128), decode_len=(24, 48), seed=20240901, spec_accuracy=0.9,
                            spec_quantum=2 ** -8),
    "mixtral-synthetic": dict(model="mixtral-8x7b", domains=ALLENAI_DOMAINS, requests_per_domain=3,
                              prompt_len=(64, 96), decode_len=(24, 32), seed=20240902, spec_accuracy=0.9,
                              spec_quantum=2 ** -8),
    "qwen3-synthetic": dict(model="qwen3-30b-a3b", domains=ALLENAI_DOMAINS, requests_per_domain=1,
                            prompt_len=(48, 64), decode_len=(16, 24), seed=20240903, spec_accuracy=0.9,
                            spec_quantum=2 ** -8),
}


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown default trace(s) {unknown}; known: {sorted(DEFAULTS)}")
    total = 0
    for name, kwargs in DEFAULTS.items():
        if names and name not in names:
            continue
        started = time.perf_counter()
        trace = generate_trace(**kwargs)
        path = save_trace(trace, OUT / f"{name}.npz", compress=True)
        size = path.stat().st_size
        total += size
        print(f"{name}: {trace!r} -> {path} ({size / 1e6:.2f} MB, {time.perf_counter() - started:.1f} s)")
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
