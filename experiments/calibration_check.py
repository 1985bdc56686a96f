"""How close traces come to the real model's published figures, one line per group of figures.

``specmd trace-stats`` prints every figure; this script condenses its comparison into the mean absolute
relative error (MARE) of each group -- the Mixtral paper's repetition table per layer, AllenAI's per-domain
counts, Liang et al.'s model-level figures -- so that two traces (say a generator version before and
after a change) can be put side by side:

    git show c94cd45:specmd_env/data/traces/mixtral-synthetic.npz > /tmp/mixtral-v1.npz
    python experiments/calibration_check.py /tmp/mixtral-v1.npz mixtral-synthetic
"""

from __future__ import annotations

import argparse

from specmd_env.catalog import get_trace
from specmd_env.trace_stats import trace_statistics


def groups(stats: dict) -> dict[str, float]:
    """Group name -> MARE (groups the trace has published figures for)."""
    out = {}
    comparison = stats.get("comparison")
    if comparison is not None and len(comparison):
        repeat = comparison[comparison.figure.str.startswith("repeat_")]
        for layer in sorted({f.rsplit("_L", 1)[1] for f in repeat.figure}, key=int):
            out[f"repetition L{layer}"] = repeat[repeat.figure.str.endswith(f"_L{layer}")].abs_rel_error.mean()
        if len(repeat):
            out["repetition, all"] = repeat.abs_rel_error.mean()
        other = comparison[~comparison.figure.str.startswith("repeat_")]
        if len(other):
            out["AllenAI counts (+ OLMoE overlap)"] = other.abs_rel_error.mean()
        out["per-domain, all"] = comparison.abs_rel_error.mean()
    locality = stats["locality"]
    compared = locality[locality.compared == "yes"]
    for name, row in compared.iterrows():
        out[f"{name} ({row.trace:.3f} vs {row.published:.3f})"] = row.abs_rel_error
    if len(compared):
        out["model-level, compared"] = compared.abs_rel_error.mean()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+", help="trace files or catalog names")
    args = parser.parse_args(argv)
    for name in args.traces:
        trace = get_trace(name)
        print(f"{name}: {trace!r}, {trace.meta.get('source', '?').split(',')[0]}")
        for group, mare in groups(trace_statistics(trace)).items():
            print(f"  {group:<45} MARE {mare:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
