"""JSON from untrusted files (a trace's metadata, an importer's records), with bounded cost.

``json.loads`` on hostile text fails in ways that are not format errors: nesting a few thousand deep
raises RecursionError, an integer of more than 4300 digits raises a bare ValueError, and the memory it
takes grows with the input. :func:`load_json` bounds the input's size first, turns those failures into
a :class:`TraceFormatError` naming what was read, and (for small documents such as metadata) checks
the parsed value's nesting depth and number sizes, so nothing downstream (``json.dumps``, ``repr``,
arithmetic) meets a value it cannot handle.
"""

from __future__ import annotations

import json
from typing import Any

from specmd_env.errors import SpecMDError, TraceFormatError

MAX_DEPTH = 32         # nesting of arrays and objects (trace metadata needs 3)
MAX_INT_BITS = 256     # about 77 decimal digits: no count, id or setting comes close


def load_json(data: bytes | str, what: str, *, max_bytes: int, max_depth: int | None = MAX_DEPTH,
              error: type[SpecMDError] = TraceFormatError) -> Any:
    """Parse UTF-8 JSON ``data`` after checking its size. ``max_depth`` (None: skip, for large records whose
    structure the caller checks itself) also bounds the value's nesting and the size of its integers.
    Every defect is an ``error`` (TraceFormatError by default) whose message starts with ``what``."""
    if len(data) > max_bytes:
        raise error(f"{what}: {len(data)} bytes, over the limit of {max_bytes}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{what}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") \
            from None
    except RecursionError:
        raise error(f"{what}: arrays/objects nested too deeply for the JSON parser") from None
    except ValueError as exc:  # an integer of more than 4300 digits, or NaN / Infinity
        raise error(f"{what}: not acceptable JSON ({str(exc)[:100]})") from None
    if max_depth is not None:
        _check_value(value, what, max_depth, error)
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _check_value(value: Any, what: str, max_depth: int, error: type[SpecMDError]) -> None:
    """Walk ``value`` without recursion: nesting at most ``max_depth``, integers at most MAX_INT_BITS."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > max_depth:
                raise error(f"{what}: arrays/objects nested more than {max_depth} deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > MAX_INT_BITS:
            raise error(f"{what}: an integer of {len(str(abs(item)))} digits "
                                   f"(limit {MAX_INT_BITS} bits)")
