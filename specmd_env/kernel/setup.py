"""The start of a replay, compiled: link the kernel's slot orders (when kept) and tell the policies."""

from __future__ import annotations

from numba import njit

from specmd_env.kernel.hooks import deliver_events, policy_event
from specmd_env.kernel.layout import C_ORDERS, EV_INIT
from specmd_env.kernel.slots import init_orders
from specmd_env.kernel.state import unpack


@njit(cache=True)
def _start(tab):
    k = unpack(tab)
    if k.cfg_i[C_ORDERS] != 0:
        init_orders(k.cfg_i, k.slot_i, k.lists, k.scope)
    policy_event(k.cfg_i, k.ist, k.log, tab, EV_INIT, -1, 0)
    deliver_events(k.cfg_i, k.ist, tab)


def start_replay(table) -> None:
    """Initialise the replay whose argument table is ``table`` (after its first chunk is bound)."""
    _start(table.ctypes.data)
