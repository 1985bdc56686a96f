"""``specmd_env.simulate``: the one entry point for replaying a trace against an expert cache."""

from __future__ import annotations

import inspect

from specmd_env.presets import apply_preset
from specmd_env.replay import Replay
from specmd_env.result import Result


def simulate(trace, *, model=None, hardware="paper-a100-5gbps", capacity=0.05, eviction="lru", prefetch="none",
             lookahead=1, batch_size=1, scope="global", mode="event", miss="fetch", prefetch_mass=0.8,
             prefetch_max=None, prefetch_budget="engine", copy_engine="demand-first", copy_engines=None,
             preempt_chunks=3, evict_at="issue", low_bits=4, cascade=(0.6, 0.9), gating="none", preset=None, seed=0,
             requests=None) -> Result:
    """Replay ``trace`` and return its :class:`Result`.

    trace: a :class:`Trace`, a path, or a catalog name. model: defaults to the trace's.
    hardware: a profile name (``specmd_env.list_profiles()``) or :class:`HardwareProfile`.
    capacity: a fraction (0, 1] of all routed-expert bytes, or a byte count (int > 1).
    eviction: a policy name with optional parameters (``specmd_env.eviction.POLICIES``; e.g.
    ``"lru:prefetch_at=mru-end"``), ``"path/to/file.py:NAME"``, an EvictionPolicy, or a Python object with
    ``victim(view) -> slot`` (the slow path; docs/POLICIES.md). prefetch: none, topk / top<N>, score, oracle.
    lookahead: prefetch for layer l + lookahead. batch_size: requests decoding together.
    scope: 'global' (one cache, as SpecMD) or 'per-layer' (a fixed share per layer).
    mode: 'event' (a layer's experts are pinned while it computes; default) or 'per-access' (generic
    cache-simulator replay). miss: what a missing expert costs -- 'fetch' (load it, stall), 'drop' (skip
    it), 'low-precision' (load a ``low_bits`` copy), 'cascade' (HOBBIT's loader: by the gate mass ranked
    above it, within ``cascade`` = (T1, T2) full precision / low precision / skip), 'substitute' (compute
    the resident expert of its layer with the best predicted score instead), 'cpu' (compute it on the
    host CPU when that is faster than fetching it, as Fiddler). Dropped, substituted and low-precision
    gate mass is reported (``Result.degraded_mass_fraction``): no handler drops work for free.
    copy_engine: 'fifo', 'demand-first' (default: demand loads overtake queued prefetches, as
    MoE-Infinity's runtime), 'preempt' (and preempt a prefetch in flight every 1/``preempt_chunks`` of
    a transfer, as ProMoE) or 'separate' (prefetches on a channel of their own at full bandwidth:
    UNPHYSICAL for one link, a what-if). copy_engines: engines copying at once, sharing the link (default: the
    profile's, 1). evict_at: 'issue' (a victim leaves when its replacement's copy is issued) or 'start'
    (chosen when the copy starts, among the candidates then). gating: 'none' or 'adaptive' (AdapMoE's
    dropping of a decode token's second expert; the dropped gate mass is reported). scope also takes
    'adapmoe' (per-layer sizes from AdapMoE's DP) or a list of per-layer sizes.
    preset: a named system (``specmd_env.presets.list_presets()``: mixtral-offloading, adapmoe,
    moe-infinity, hobbit, pregated, specmd) whose settings fill every keyword left at its default.
    prefetch_mass / prefetch_max: the score prefetcher's coverage and cap. prefetch_budget: 'engine'
    (what the copy engine can start before the target layer) or a fixed count per layer.
    seed: for the random policy. requests: trace request indices to replay (default all, in order).
    """
    if not hasattr(trace, "expert_ids"):
        from specmd_env.catalog import get_trace
        trace = get_trace(trace)
    settings = dict(model=model, hardware=hardware, capacity=capacity, eviction=eviction, prefetch=prefetch,
                    lookahead=lookahead, batch_size=batch_size, scope=scope, mode=mode, miss=miss,
                    prefetch_mass=prefetch_mass, prefetch_max=prefetch_max, prefetch_budget=prefetch_budget,
                    copy_engine=copy_engine, copy_engines=copy_engines, preempt_chunks=preempt_chunks,
                    evict_at=evict_at, low_bits=low_bits, cascade=cascade, gating=gating, seed=seed,
                    requests=requests)
    settings = apply_preset(preset, settings, DEFAULTS)
    return Replay(trace, **settings).run()


DEFAULTS = {name: p.default for name, p in inspect.signature(simulate).parameters.items()
            if p.default is not inspect.Parameter.empty}
