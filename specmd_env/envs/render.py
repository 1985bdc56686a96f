"""Pictures of the cache: text (``render_mode="ansi"``) and an RGB array (``"rgb_array"``, plain numpy).

Text: one line per layer listing its resident experts, marked ``*`` current (touched this forward
pass), ``~`` in flight, ``!`` candidate for the pending eviction; then the clocks.
Image: a grid of L rows x E columns (a cell per expert; black = not resident, grey = stale, green =
current, orange = in flight, a red frame = the layer computing), above a timeline strip with the
compute clock (blue) and the copy engine's backlog (orange) over the next 16 transfer times.
"""

from __future__ import annotations

import numpy as np

from specmd_env import kernel as K

CELL = 8
COLORS = {"empty": (20, 20, 20), "stale": (110, 110, 110), "current": (60, 180, 75), "flight": (245, 130, 48),
          "frame": (230, 25, 75), "compute": (0, 130, 200), "bg": (255, 255, 255)}


def _state(env):
    r = env.replay
    E, L = env.num_experts, env.num_layers
    objs = r.slot_i[K.SL_OBJ]
    pend = int(r.ist[K.I_PENDING])
    now = r.fst[K.S_DECISION] if pend in (K.DEMAND, K.PREFETCH) else r.fst[K.S_ROUTER]
    current = r.slot_i[K.SL_TOUCH] > r.ist[K.I_PASS_TICK]
    flight = r.slot_f[K.SL_READY] > now
    layer = int(r.ist[K.I_EVENT]) % L if not env._done else L - 1
    return r, E, L, objs, now, current, flight, layer


def render_ansi(env) -> str:
    if env.replay is None:
        return "(not reset)"
    r, E, L, objs, now, current, flight, layer = _state(env)
    mask = env._mask
    lines = [f"SpecMD cache: {env.capacity} slots, {int((objs >= 0).sum())} occupied; layer {layer}/{L}; "
             f"pending {env.pending}; compute {r.fst[K.S_COMPUTE] * 1e3:.3f} ms, copy engine free at "
             f"{r.fst[K.S_COPY_FREE] * 1e3:.3f} ms"]
    for ly in range(L):
        slots = np.flatnonzero((objs >= 0) & (objs // E == ly))
        cells = []
        for s in slots[np.argsort(objs[slots] % E)]:
            mark = ("*" if current[s] else "") + ("~" if flight[s] else "") + \
                   ("!" if env.pending in ("demand", "prefetch") and mask[s] else "")
            cells.append(f"{objs[s] % E}{mark}")
        lines.append(f"{'>' if ly == layer else ' '}L{ly:02d} [{len(slots):2d}] " + " ".join(cells))
    lines.append("legend: * current, ~ in flight, ! may be evicted now, > layer computing")
    return "\n".join(lines) + "\n"


def render_rgb(env) -> np.ndarray:
    L, E = env.num_layers, env.num_experts
    strip = 3 * CELL
    img = np.empty((L * CELL + strip + 2, E * CELL, 3), np.uint8)
    img[:] = COLORS["bg"]
    if env.replay is None:
        return img
    r, E, L, objs, now, current, flight, layer = _state(env)
    grid = np.empty((L, E, 3), np.uint8)
    grid[:] = COLORS["empty"]
    occ = np.flatnonzero(objs >= 0)
    for s in occ:
        color = COLORS["flight"] if flight[s] else COLORS["current"] if current[s] else COLORS["stale"]
        grid[objs[s] // E, objs[s] % E] = color
    big = np.repeat(np.repeat(grid, CELL, axis=0), CELL, axis=1)
    big[:, ::CELL] = COLORS["bg"]  # thin gaps between cells
    big[::CELL, :] = COLORS["bg"]
    img[:L * CELL] = big
    top, bottom = layer * CELL, (layer + 1) * CELL - 1
    img[top, :] = img[bottom, :] = COLORS["frame"]
    img[top:bottom + 1, 0] = img[top:bottom + 1, -1] = COLORS["frame"]
    # timeline: compute progress inside the pass (blue) and copy-engine backlog (orange)
    y0 = L * CELL + 2
    width = img.shape[1]
    xfer = r.cfg_f[K.F_XFER]
    backlog = min(max((r.fst[K.S_COPY_FREE] - now) / xfer, 0.0), 16.0) / 16.0
    img[y0:y0 + CELL, :max(1, int(round((layer + 1) / L * width)))] = COLORS["compute"]
    img[y0 + CELL + 2:y0 + 2 * CELL + 2, :int(round(backlog * width))] = COLORS["flight"]
    return img
