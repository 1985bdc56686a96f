"""Policies from outside the package: ``path/to/file.py:NAME`` references and ``name:key=value`` specs.

A user's file is imported as a module of its own (named after its path, so numba can cache its compiled
hooks beside it) and ``NAME`` is looked up in it; nothing else is executed or unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from specmd_env.errors import SpecMDError


def load_object(reference: str, *, what: str):
    """The object ``NAME`` of ``path/to/file.py:NAME``."""
    path_text, _, name = reference.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise SpecMDError(f"{what} file {path_text!r} does not exist (expected path/to/file.py:NAME)")
    if not name.isidentifier():
        raise SpecMDError(f"{what} reference {reference!r}: {name!r} is not a Python name")
    resolved = path.resolve()
    module_name = f"specmd_user_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:12]}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, resolved)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise SpecMDError(f"{what} file {path_text!r} failed to import: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise SpecMDError(f"{what} file {path_text!r} has no {name!r}; it defines: {', '.join(public[:20])}")
    return getattr(module, name)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_params(spec: str) -> tuple[str, dict]:
    """``"name:k=v,k2=v2"`` -> ("name", {"k": v, "k2": v2}); numbers become int or float."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SpecMDError(f"policy parameters must look like name:key=value,key=value, got {spec!r}")
        params[key.strip()] = _value(value.strip())
    return name.strip(), params
