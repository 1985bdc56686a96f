"""The built-in routing traces (shipped in ``specmd_env/data/traces/``) and name -> trace lookup.

Adding a trace is one entry in :data:`TRACES` (plus its file). ``default: True`` marks the trace a model
uses when none is named (one per model). How each trace was made: ``traces/README.md``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from specmd_env.errors import SpecMDError
from specmd_env.models import get_model
from specmd_env.trace import Trace, load_trace

TRACES: dict[str, dict] = {
    "olmoe-synthetic": {
        "file": "olmoe-synthetic.npz", "model": "olmoe-1b-7b", "kind": "synthetic", "default": True,
        "description": "Synthetic OLMoE-1B-7B routing over AllenAI's five domains, calibrated to AllenAI's "
                       "published OLMoE routing counts; with gate weights and spec scores (accuracy 0.9).",
    },
    "olmoe-recorded": {
        "file": "olmoe-recorded.npz", "model": "olmoe-1b-7b", "kind": "recorded", "default": False,
        "description": "Recorded routing of a 16x64 top-8 OLMoE-architecture model trained by this project "
                       "(6.9M parameters, 7.0M tokens; not OLMoE-1B-7B): code, dictionary, docs-en/de/fr, "
                       "quotes x 3 requests, prompt 64-79 + 32 greedy tokens; gate weights and spec scores "
                       "(top-8 accuracy 0.85). Not the OLMoE default: further from AllenAI's real figures "
                       "than olmoe-synthetic (traces/recorded/olmoe_recorded_stats.md).",
    },
    "mixtral-synthetic": {
        "file": "mixtral-synthetic.npz", "model": "mixtral-8x7b", "kind": "synthetic", "default": True,
        "description": "Synthetic Mixtral-8x7B routing over AllenAI's five domains; per-expert popularity "
                       "calibrated to AllenAI's published Mixtral counts (layers 16-31: spread to Liang et al. "
                       "2025), persistence per domain and layer to the Mixtral paper's consecutive-token "
                       "repetition (Table 5); with spec scores (accuracy 0.9).",
    },
    "qwen3-synthetic": {
        "file": "qwen3-synthetic.npz", "model": "qwen3-30b-a3b", "kind": "synthetic", "default": True,
        "description": "Synthetic Qwen3-30B-A3B routing: persistence and the spread of expert load calibrated "
                       "to Liang et al. 2025 (SRP(m=16), activation-frequency SD); which experts are popular is "
                       "parametric (no per-expert data published); with spec scores (accuracy 0.9).",
    },
}


def list_traces() -> list[str]:
    return sorted(TRACES)


def _entry(name: str) -> dict:
    if name not in TRACES:
        raise SpecMDError(f"unknown trace {name!r}; known traces: {', '.join(list_traces())} "
                          "(or pass a path to a .npz trace file)")
    return TRACES[name]


def trace_path(name: str) -> Path:
    """Where a catalog trace's file is (inside the installed package)."""
    entry = _entry(name)
    return Path(str(resources.files("specmd_env").joinpath("data", "traces", entry["file"])))


def get_trace(trace: "str | os.PathLike | Trace") -> Trace:
    """A catalog name, a path to a trace file, or a :class:`Trace` (returned as is)."""
    if isinstance(trace, Trace):
        return trace
    if isinstance(trace, str) and trace in TRACES:
        path = trace_path(trace)
        if not path.is_file():
            raise SpecMDError(f"catalog trace {trace!r} is listed but its file {path} is missing "
                              "(regenerate it with: python traces/make_defaults.py)")
        return load_trace(path)
    if isinstance(trace, (str, os.PathLike)):
        path = Path(trace)
        if path.is_file() or path.suffix == ".npz" or os.sep in str(trace):
            return load_trace(path)
        raise SpecMDError(f"unknown trace {str(trace)!r}: neither a catalog name ({', '.join(list_traces())}) "
                          "nor an existing file")
    raise SpecMDError(f"expected a trace name, path or Trace, got {type(trace).__name__}")


def default_trace_name(model) -> str:
    """The default catalog trace of a model (name, alias or ModelSpec)."""
    spec = get_model(model)
    for name, entry in TRACES.items():
        if entry["model"] == spec.name and entry.get("default"):
            return name
    raise SpecMDError(f"no default trace for model {spec.name!r}; models with one: "
                      f"{sorted({e['model'] for e in TRACES.values() if e.get('default')})}")


def trace_info(name: str) -> dict:
    """The catalog entry plus what the file says: path, tokens, requests, domains, source, licence."""
    entry = dict(_entry(name))
    path = trace_path(name)
    entry.update(name=name, path=str(path), exists=path.is_file())
    if path.is_file():
        trace = load_trace(path)
        entry.update(tokens=trace.num_tokens, requests=trace.num_requests, domains=sorted(set(trace.domains)),
                     has_spec_scores=trace.spec_scores is not None, has_gate_weights=trace.gate_weights is not None,
                     source=trace.meta.get("source"), licence=trace.meta.get("licence"),
                     size_bytes=path.stat().st_size)
    return entry
