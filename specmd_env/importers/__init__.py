"""Routing traces from other tools, one module per source format, each producing a :class:`Trace` with
honest metadata (``kind: imported``, the source, ``missing``) and errors that name the source's field.

``specmd import FORMAT FILE --out TRACE.npz``; what each format is and the engine command that makes it:
``traces/README.md``. Shared checks and assembly: :mod:`specmd_env.importers.base`.
"""

from __future__ import annotations

import importlib

#: format -> (module, function, one line for --help)
FORMATS: dict[str, tuple[str, str, str]] = {
    "vllm": ("specmd_env.importers.vllm", "import_vllm",
             "vLLM routed experts (enable_return_routed_experts), saved as .npz / .json / .jsonl"),
    "sglang": ("specmd_env.importers.sglang", "import_sglang",
               "SGLang expert distribution recorder dump, per_token mode (.pt, read with weights_only=True)"),
    "table": ("specmd_env.importers.table", "import_table",
              "a routing table (CSV or Parquet): request, token, is_prompt, layer, rank, expert, weight"),
    "allenai": ("specmd_env.importers.allenai", "import_allenai",
                "AllenAI analysis_olmoe / analysis_mixtral jsonl"),
    "moe-cache-eval": ("specmd_env.importers.moe_cache_eval", "import_moe_cache_eval",
                       "a moe-cache-eval (arXiv:2608.07911) route collection directory"),
}


def importer(name: str):
    """The module of a format (its ``import_*`` function, ``configure`` and ``run``)."""
    from specmd_env.errors import SpecMDError

    if name not in FORMATS:
        raise SpecMDError(f"unknown import format {name!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name][0])


def import_trace(name: str, path, **options):
    """``import_<format>(path, **options)`` of the named format."""
    module = importer(name)
    return getattr(module, FORMATS[name][1])(path, **options)


def __getattr__(attr: str):  # the per-format functions, imported on first use (sglang pulls in torch)
    for module, function, _ in FORMATS.values():
        if attr == function:
            return getattr(importlib.import_module(module), function)
    raise AttributeError(f"module 'specmd_env.importers' has no attribute {attr!r}")


__all__ = ["FORMATS", "import_trace", "importer"] + [f for _, f, _ in FORMATS.values()]
