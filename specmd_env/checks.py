"""Strict checks of user-given numbers, and short renderings of long values for error messages.

Strict means an index or an id must *be* an integer: ``2.7``, ``"3"``, ``True`` or ``[0.7]`` are refused
with a :class:`SpecMDError` naming the field, never truncated to one silently (``int(2.7) == 2`` and
``np.asarray([0.7], np.int64)`` is ``[0]``: both would pick something the caller did not ask for).
"""

from __future__ import annotations

import numpy as np

from specmd_env.errors import SpecMDError

SHOWN = 8  # items of a list an error message shows before "... (N more)"


def shorten(values, limit: int = SHOWN) -> str:
    """``[0, 1, 2, ... (997 more)]``: a list (or array, set, tuple) for an error message, at most ``limit`` items."""
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    elif isinstance(values, (set, frozenset)):
        values = sorted(values, key=repr)
    else:
        values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f", ... ({len(values) - limit} more)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def is_integer(value) -> bool:
    """A Python or numpy integer (or a 0-d integer array); never a bool, float or string."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iu"
    return isinstance(value, (int, np.integer))


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int, refused unless it is an integer in [minimum, maximum) (either bound optional)."""
    if not is_integer(value):
        raise SpecMDError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number >= maximum):
        bounds = (f"in [{minimum}, {maximum})" if minimum is not None and maximum is not None
                  else f">= {minimum}" if minimum is not None else f"< {maximum}")
        raise SpecMDError(f"{name} must be an integer {bounds}, got {number}")
    return number


def count(name: str, value, minimum: int = 0) -> int:
    """A count from a settings file or the command line: an integer, or a float with no fractional part
    (YAML reads ``1e5`` as a float), at least ``minimum``. ``2.5``, ``"3"`` and ``True`` are refused."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return integer(name, value, minimum=minimum)


def no_repeats(name: str, values) -> None:
    """Each value once: a repeated seed, capacity or policy would be run once but counted twice."""
    seen, repeated = set(), []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    if repeated:
        raise SpecMDError(f"{name} repeats {shorten(repeated)}; give each value once")


def integer_array(name: str, values, minimum: int, maximum: int) -> np.ndarray:
    """A flat int64 array of ``values`` (a list or 1-d array of integers in [minimum, maximum)); a float,
    bool, string or nested element anywhere is refused, not cast."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise SpecMDError(f"{name} must be a flat list of integers, got a {values.ndim}-d array of {values.dtype}")
        array = values.astype(np.int64, copy=False) if values.size else np.zeros(0, np.int64)
        if array.size and (values.min() < minimum or values.max() >= maximum):
            raise SpecMDError(f"{name} must be integers in [{minimum}, {maximum}), got {shorten(values)}")
        return array
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise SpecMDError(f"{name} must be a list of integers, got {values!r:.120}")
    items = list(values)
    bad = next((i for i, v in enumerate(items) if not is_integer(v)), None)
    if bad is not None:
        raise SpecMDError(f"{name} must hold integers only; item {bad} is {items[bad]!r} ({type(items[bad]).__name__})")
    items = [int(v) for v in items]
    if items and (min(items) < minimum or max(items) >= maximum):
        raise SpecMDError(f"{name} must be integers in [{minimum}, {maximum}), got {shorten(items)}")
    return np.asarray(items, np.int64)
