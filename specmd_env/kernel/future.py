"""What only oracles may read: when an expert object is next accessed.

The schedule chunk carries, per object, the sorted positions of its accesses (``occ_ptr`` / ``occ_pos``,
built only for replays whose policy is an oracle); a per-object cursor makes repeated queries at
increasing positions amortised O(1). Reuse beyond the chunk (2^14 tokens) counts as never.
"""

from __future__ import annotations

from numba import njit

from specmd_env.kernel.layout import NEVER, OB_CURSOR


@njit(cache=True, inline="always")
def next_use(obj_i, occ_ptr, occ_pos, obj, position):
    """Position of the next access to ``obj`` after ``position`` (NEVER if none in this chunk)."""
    cursor = obj_i[OB_CURSOR, obj]
    start, end = occ_ptr[obj], occ_ptr[obj + 1]
    if cursor < start:
        cursor = start
    while cursor < end and occ_pos[cursor] <= position:
        cursor += 1
    obj_i[OB_CURSOR, obj] = cursor
    if cursor < end:
        return occ_pos[cursor]
    return NEVER
