"""Routing statistics of a trace, and how close they are to the real model's published figures.

Figures (definitions match :mod:`specmd_env.calibration` and :mod:`specmd_env.locality`):

* ``load_cv``: coefficient of variation (population std / mean) of per-expert top-k load at a layer.
* ``hottest_share``: fraction of tokens whose top-k contains the layer's most chosen expert.
* ``overlap``: consecutive-token overlap -- mean number of experts (of k) shared by prompt tokens t and
  t+1 of the same request (random choice would give k*k/E).
* ``transition La_Lb``: top-1 transition predictability -- the fraction of tokens whose layer-b top-1
  equals the most frequent layer-b successor of their layer-a top-1 (over all tokens).
* ``repeat_first`` / ``repeat_any``: consecutive prompt tokens keep their top-1 expert / share at least
  one of their top-k experts (the Mixtral paper's "first choice" / "first or second choice").
* ``spec_accuracy``: for layer l+1, mean ``|topk(spec_scores[t, l]) & topk_true(t, l+1)| / k``.
* model level: ``activation_freq_sd`` (standard deviation over all layers' experts of the percentage of
  tokens choosing each), ``srp_m16`` and ``sch_m{4,16,64}`` (segment routing best performance and
  segment cache best hit rate of Liang et al., cache twice the active experts).

Load, hottest share and transitions use every token (the AllenAI counts are teacher-forced, i.e. all
tokens are prefill); overlap and repetition use prompt tokens only; SRP and SCH use whole requests.
Memory follows checked numbers, never what a header claims: the counting pass reads chunks of at most
:data:`_CHUNK_ELEMENTS` (token, layer, expert) cells into tables with one row per domain (at most
``max_domains`` + 1 rows) that turn sparse when large; the locality pass
(:func:`specmd_env.locality.segment_figures`) reads one request at a time within a budget of cells.

Published figures to compare with: AllenAI's counts (OLMoE-1B-7B, Mixtral-8x7B; per domain), the
Mixtral paper's repetition table (per domain) and Liang et al.'s figures (model level), see
:mod:`specmd_env.published`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from specmd_env import calibration, published
from specmd_env.checks import integer
from specmd_env.errors import SpecMDError
from specmd_env.locality import first_choice_same, segment_figures, shared_experts
from specmd_env.models import get_model
from specmd_env.trace import Trace

#: Liang et al.'s SCH at look-ahead m >= 16 is shown but left out of the error: their implementation
#: departs from the cache it defines there (data/calibration/published/SOURCES.md).
_COMPARED_LOCALITY = ("activation_freq_sd", "srp_m16", "sch_m4")
MAX_DOMAIN_ROWS = 64        # domains shown one per row; the rest (fewest tokens) are pooled into one row
_CHUNK_ELEMENTS = 1 << 21   # (token, layer, expert) cells per chunk: memory stays flat whatever the trace's shape
_DENSE_KEYS = 1 << 22       # a count table of at most this many keys is a dense array, beyond that a sparse one


def _anchors(num_layers: int) -> tuple[int, ...]:
    if num_layers >= 16:
        return (0, 7, 15)
    return tuple(sorted({0, num_layers // 2, num_layers - 1}))


def _pairs(num_layers: int) -> list[tuple[int, int]]:
    pairs = [(l, l + 1) for l in range(num_layers - 1)]
    if num_layers >= 16:
        pairs += [(0, 7), (7, 15)]
    return pairs


class _Counter:
    """Exact counts of integer keys in [0, space). A dense array while the key space is small; beyond
    :data:`_DENSE_KEYS` sorted (key, count) pairs, merged as they grow -- so memory follows the keys a
    trace actually holds, never a product of what its header claims (domains x experts^2 ...)."""

    def __init__(self, space: int):
        self._space = space
        self._dense = np.zeros(space, np.int64) if space <= _DENSE_KEYS else None
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending = self._merged = 0

    def add(self, keys: np.ndarray) -> None:
        if self._dense is not None:
            self._dense += np.bincount(keys, minlength=self._space)
            return
        self._parts.append(np.unique(keys, return_counts=True))
        self._pending += len(self._parts[-1][0])
        if self._pending > max(_DENSE_KEYS, 2 * self._merged):
            self._merge()

    def _merge(self) -> None:
        keys = np.concatenate([k for k, _ in self._parts] or [np.zeros(0, np.int64)])
        counts = np.concatenate([c for _, c in self._parts] or [np.zeros(0, np.int64)])
        unique, inverse = np.unique(keys, return_inverse=True)
        self._parts = [(unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64))]
        self._pending = self._merged = len(unique)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, counts) of every key counted at least once, keys ascending."""
        if self._dense is not None:
            keys = np.flatnonzero(self._dense)
            return keys, self._dense[keys]
        self._merge()
        return self._parts[0]


def _segments(groups: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    return np.flatnonzero(np.concatenate([[True], groups[1:] != groups[:-1]])) if len(groups) else groups


def _load_figures(counter: _Counter, num_groups: int, E: int, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group g of a counter keyed g * E + expert: the coefficient of variation (population std / mean)
    of the E experts' loads, and the share of the group's tokens that chose its most chosen expert."""
    keys, counts = counter.items()
    group, load = keys // E, counts.astype(np.float64)
    total = np.bincount(group, weights=load, minlength=num_groups)
    squares = np.bincount(group, weights=load * load, minlength=num_groups)
    hottest = np.zeros(num_groups)
    starts = _segments(group)
    if len(starts):
        hottest[group[starts]] = np.maximum.reduceat(load, starts)
    mean = total / E
    std = np.sqrt(np.maximum(squares / E - mean * mean, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(mean > 0, std / mean, np.nan)
        share = np.where(tokens > 0, hottest / tokens, np.nan)
    return cv, share


def _predictability(counter: _Counter, num_groups: int, E: int) -> np.ndarray:
    """Per group g of a counter keyed (g * E + a) * E + b (a top-1 followed by b): the fraction of tokens
    whose b is the most frequent successor of their a."""
    keys, counts = counter.items()
    source = keys // E
    starts = _segments(source)
    best = np.maximum.reduceat(counts, starts) if len(starts) else np.zeros(0, np.int64)
    hits = np.bincount(source[starts] // E, weights=best, minlength=num_groups)
    total = np.bincount(keys // (E * E), weights=counts, minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hits / total, np.nan)


def _domain_rows(trace: Trace, max_domains: int) -> tuple[list[str], np.ndarray]:
    """Row names and each request's row: one row per domain (first-appearance order); beyond
    ``max_domains``, the domains with the fewest tokens share one row."""
    names = list(dict.fromkeys(trace.domains))
    index = {name: i for i, name in enumerate(names)}
    row_of_request = np.array([index[d] for d in trace.domains], np.int64)
    if len(names) <= max_domains:
        return names, row_of_request
    tokens = np.bincount(row_of_request, weights=np.diff(np.asarray(trace.request_offsets)), minlength=len(names))
    kept = np.sort(np.argsort(-tokens, kind="stable")[:max_domains])
    remap = np.full(len(names), len(kept), np.int64)
    remap[kept] = np.arange(len(kept))
    pooled = f"(other {len(names) - len(kept)} domains)"
    return [names[i] for i in kept] + [pooled], remap[row_of_request]


class _Accumulator:
    """Counts gathered in one pass over the trace, per row of the domain table and over all tokens."""

    def __init__(self, trace: Trace, max_domains: int, repeat_layers: tuple[int, ...] = ()):
        self.L, self.E, self.k = L, E, k = trace.num_layers, trace.num_experts, trace.top_k
        self.domain_names, self.row_of_request = _domain_rows(trace, max_domains)
        D = len(self.domain_names)
        self.anchors = _anchors(L)
        self.pairs = _pairs(L)
        self.domain_pairs = [p for p, pair in enumerate(self.pairs) if pair in ((0, 7), (7, 15))]
        self.has_spec = trace.spec_scores is not None and L > 1
        self.tokens = np.zeros(D, np.int64)
        self.load = _Counter(L * E)                                     # layer, expert
        self.domain_load = _Counter(D * len(self.anchors) * E)          # row, anchor layer, expert
        self.trans = _Counter(len(self.pairs) * E * E)                  # pair, top-1 at a, top-1 at b
        self.domain_trans = _Counter(D * len(self.domain_pairs) * E * E)
        self.overlap_sum, self.overlap_n = np.zeros(L), 0
        self.domain_overlap_sum, self.domain_overlap_n = np.zeros(D), np.zeros(D, np.int64)
        self.repeat_first_sum, self.repeat_any_sum = np.zeros(L), np.zeros(L)
        self.repeat_layers = repeat_layers                              # per domain: the published table's layers
        self.domain_repeat_first = np.zeros((D, len(repeat_layers)))
        self.domain_repeat_any = np.zeros((D, len(repeat_layers)))
        self.spec_sum, self.domain_spec_sum = np.zeros(max(L - 1, 0)), np.zeros(D)
        width = max(2 * k, E if self.has_spec else 0)
        self.chunk_tokens = max(1, _CHUNK_ELEMENTS // (L * width))

    def add(self, trace: Trace, start: int, stop: int) -> None:
        """Count tokens [start, stop) and the consecutive prompt pairs (t, t+1) with t in [start, stop)."""
        L, E, k = self.L, self.E, self.k
        offsets = np.asarray(trace.request_offsets)
        T = trace.num_tokens
        ext = np.asarray(trace.expert_ids[start:min(stop + 1, T)]).astype(np.int64)
        ids = ext[:stop - start]
        request = np.searchsorted(offsets, np.arange(start, stop), side="right") - 1
        row = self.row_of_request[request]
        D = len(self.domain_names)
        self.tokens += np.bincount(row, minlength=D)
        self.load.add((np.arange(L)[None, :, None] * E + ids).ravel())
        A = len(self.anchors)
        self.domain_load.add(((row[:, None, None] * A + np.arange(A)[None, :, None]) * E
                              + ids[:, list(self.anchors), :]).ravel())
        if self.pairs:
            top1 = ids[:, :, 0]
            a, b = zip(*self.pairs)
            self.trans.add(((np.arange(len(self.pairs))[None, :] * E + top1[:, list(a)]) * E + top1[:, list(b)]).ravel())
            if self.domain_pairs:
                P = len(self.domain_pairs)
                a, b = zip(*(self.pairs[p] for p in self.domain_pairs))
                self.domain_trans.add((((row[:, None] * P + np.arange(P)[None, :]) * E + top1[:, list(a)]) * E
                                       + top1[:, list(b)]).ravel())
        # prompt pairs: t and t+1 both prompt tokens of one request (t + 1 before the request's prompt end)
        m = len(ext) - 1
        prompt_end = offsets[request[:m]] + np.asarray(trace.prompt_lengths)[request[:m]]
        ok = np.arange(start + 1, start + m + 1) < prompt_end
        if ok.any():
            a, b = ext[:m][ok], ext[1:m + 1][ok]
            shared = shared_experts(a, b)  # [pairs, L]
            first, any_ = first_choice_same(a, b), shared >= 1
            r = row[:m][ok]
            self.overlap_sum += shared.sum(axis=0)
            self.overlap_n += len(r)
            self.domain_overlap_sum += np.bincount(r, weights=shared[:, 0], minlength=D)
            self.domain_overlap_n += np.bincount(r, minlength=D)
            self.repeat_first_sum += first.sum(axis=0)
            self.repeat_any_sum += any_.sum(axis=0)
            for j, layer in enumerate(self.repeat_layers):
                self.domain_repeat_first[:, j] += np.bincount(r, weights=first[:, layer], minlength=D)
                self.domain_repeat_any[:, j] += np.bincount(r, weights=any_[:, layer], minlength=D)
        if self.has_spec:
            scores = np.asarray(trace.spec_scores[start:stop])
            predicted = np.argpartition(scores, E - k, axis=2)[:, :, -k:]    # [n, L-1, k]
            hit = shared_experts(predicted, ids[:, 1:, :]) / k                      # [n, L-1]
            self.spec_sum += hit.sum(axis=0)
            self.domain_spec_sum += np.bincount(row, weights=hit.sum(axis=1), minlength=D)


def _collect(trace: Trace, max_domains: int, repeat_layers: tuple[int, ...]) -> _Accumulator:
    acc = _Accumulator(trace, max_domains, repeat_layers)
    T = trace.num_tokens
    for start in range(0, T, acc.chunk_tokens):
        trace.check_file()
        acc.add(trace, start, min(start + acc.chunk_tokens, T))
    return acc


def _model_of(trace: Trace) -> str | None:
    """The trace's registered model name if its shape is that model's; None for a model outside the
    registry or another shape (such a trace gets no comparison)."""
    try:
        spec = get_model(trace.model)
    except SpecMDError:
        return None
    shape = (spec.num_layers, spec.num_experts, spec.top_k)
    return spec.name if shape == (trace.num_layers, trace.num_experts, trace.top_k) else None


def _spread(counter: _Counter, size: int, scale: float) -> float:
    """Population standard deviation of ``scale`` x count over all ``size`` keys (unseen keys count 0)."""
    _, counts = counter.items()
    values = scale * counts.astype(np.float64)
    mean = values.sum() / size
    return float(np.sqrt((((values - mean) ** 2).sum() + (size - len(values)) * mean * mean) / size))


def trace_statistics(trace: Trace | str | Path, *, max_domains: int = MAX_DOMAIN_ROWS) -> dict:
    """Statistics of a trace as a dict of pandas DataFrames.

    * ``"layers"``: one row per layer over all tokens -- load_cv, hottest_share, overlap (prompt tokens),
      overlap_random (k*k/E), repeat_first, repeat_any, transition_next (top-1 predictability l -> l+1),
      spec_accuracy (predicting this layer from the previous one; NaN at layer 0 or without spec scores).
    * ``"domains"``: one row per domain (and ``"all"``) with the calibration-style figures
      ``load_cv_L{l}``, ``hottest_share_L{l}`` (l in 0, 7, 15, or 0, L/2, L-1 for shallow models),
      ``transition_L0_L7``, ``transition_L7_L15`` (>= 16 layers), ``overlap_L0``, ``spec_accuracy``, and
      ``repeat_first_L{l}`` / ``repeat_any_L{l}`` at the layers of a published repetition table.
      Beyond ``max_domains`` domains, those with the fewest tokens share one row, ``"(other N domains)"``.
    * ``"locality"``: model-level figures (activation_freq_sd, srp_m16, sch_m4/16/64) beside Liang et
      al.'s where the model is theirs, with the absolute relative error of the compared ones.
    * ``"comparison"``, ``"summary"``, ``"side_by_side"`` (models with published per-domain figures:
      OLMoE-1B-7B, Mixtral-8x7B): each domain's figures beside the real ones (unmatched domains are
      compared with the mean over the published domains), the absolute relative error of each, and per
      domain the mean absolute relative error (MARE); the summary's ``"all"`` row is the mean over figures.
    """
    import pandas as pd

    if not isinstance(trace, Trace):
        from specmd_env.catalog import get_trace

        trace = get_trace(trace)
    max_domains = integer("max_domains", max_domains, minimum=1)
    if trace.num_tokens == 0:
        raise SpecMDError(f"{trace!r} has no tokens: there is nothing to measure")
    model = _model_of(trace)
    table = published.repetition(model) if model else None
    acc = _collect(trace, max_domains, tuple(table.layers) if table else ())
    L, E, k = acc.L, acc.E, acc.k
    D, A = len(acc.domain_names), len(acc.anchors)
    total_tokens = int(acc.tokens.sum())
    cv, hottest = _load_figures(acc.load, L, E, np.full(L, total_tokens))

    def per_pair(sums: np.ndarray) -> np.ndarray:
        return sums / acc.overlap_n if acc.overlap_n else np.full(L, np.nan)

    transitions = _predictability(acc.trans, len(acc.pairs), E)
    next_pred = np.full(L, np.nan)
    for p, (a, b) in enumerate(acc.pairs):
        if b == a + 1:
            next_pred[a] = transitions[p]
    spec = np.full(L, np.nan)
    if acc.has_spec:
        spec[1:] = acc.spec_sum / total_tokens
    overlap = per_pair(acc.overlap_sum)
    layers = pd.DataFrame({"load_cv": cv, "hottest_share": hottest, "overlap": overlap,
                           "overlap_random": np.full(L, k * k / E), "repeat_first": per_pair(acc.repeat_first_sum),
                           "repeat_any": per_pair(acc.repeat_any_sum), "transition_next": next_pred,
                           "spec_accuracy": spec}, index=pd.RangeIndex(L, name="layer"))

    # per domain row, then "all" (the same figures over every token)
    tokens = np.append(acc.tokens, total_tokens)
    domain_cv, domain_hot = (f.reshape(D, A) for f in
                             _load_figures(acc.domain_load, D * A, E, np.repeat(acc.tokens, A)))
    columns: dict[str, np.ndarray] = {"tokens": tokens}
    for i, layer in enumerate(acc.anchors):
        columns[f"load_cv_L{layer}"] = np.append(domain_cv[:, i], cv[layer])
        columns[f"hottest_share_L{layer}"] = np.append(domain_hot[:, i], hottest[layer])
    if acc.domain_pairs:
        domain_trans = _predictability(acc.domain_trans, D * len(acc.domain_pairs), E).reshape(D, -1)
        for j, p in enumerate(acc.domain_pairs):
            a, b = acc.pairs[p]
            columns[f"transition_L{a}_L{b}"] = np.append(domain_trans[:, j], transitions[p])
    pairs = np.append(acc.domain_overlap_n, acc.overlap_n)
    with np.errstate(invalid="ignore", divide="ignore"):
        def per_domain_pair(sums: np.ndarray, total: float) -> np.ndarray:
            return np.where(pairs > 0, np.append(sums, total) / np.maximum(pairs, 1), np.nan)

        columns["overlap_L0"] = per_domain_pair(acc.domain_overlap_sum, acc.overlap_sum[0])
        for j, layer in enumerate(acc.repeat_layers):
            columns[f"repeat_first_L{layer}"] = per_domain_pair(acc.domain_repeat_first[:, j], acc.repeat_first_sum[layer])
            columns[f"repeat_any_L{layer}"] = per_domain_pair(acc.domain_repeat_any[:, j], acc.repeat_any_sum[layer])
        if acc.has_spec:
            columns["spec_accuracy"] = np.append(acc.domain_spec_sum, acc.spec_sum.sum()) / (tokens * (L - 1))
    domains = pd.DataFrame(columns, index=pd.Index(acc.domain_names + ["all"], name="domain"))
    figures = {"activation_freq_sd": _spread(acc.load, L * E, 100.0 / total_tokens), **segment_figures(trace)}
    out = {"layers": layers, "domains": domains, "locality": _locality(model, figures)}
    reference = _reference(model, acc.domain_names) if model else None
    if reference is not None:
        out.update(compare_with_reference(domains.drop(index="all"), *reference))
    return out


def _reference(model: str, domain_names):
    """(per-domain real figures [domains x figures], the published domain each is compared with), or None."""
    import pandas as pd

    key = calibration.MODEL_KEYS.get(model)
    table = published.repetition(model)
    if key is None and table is None:
        return None
    allenai = calibration.reference_table(key) if key else None
    rows, matched = {}, {}
    for domain in domain_names:
        row, names = {}, []
        if allenai is not None:
            name = domain if domain in allenai.index and domain != "mean" else "mean"
            row.update(allenai.loc[name].to_dict())
            names.append(name)
        if table is not None:
            name, figures = table.for_domain(domain)
            row.update(figures)
            names.append(name)
        rows[domain], matched[domain] = row, " / ".join(names)
    return pd.DataFrame.from_dict(rows, orient="index"), matched


def _locality(model: str | None, figures: dict):
    """The model-level figures beside Liang et al.'s (NaN where the paper did not measure the model)."""
    import pandas as pd

    paper = published.locality(model) if model else None
    rows = {}
    for name, value in figures.items():
        real = paper.figures.get(name, float("nan")) if paper else float("nan")
        low, high = paper.intervals.get(name, (float("nan"),) * 2) if paper else (float("nan"),) * 2
        compared = name in _COMPARED_LOCALITY and not math.isnan(real)
        rows[name] = {"trace": value, "published": real, "ci_low": low, "ci_high": high,
                      "abs_rel_error": abs(value - real) / abs(real) if real else float("nan"),
                      "compared": "yes" if compared else "no"}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "figure"
    return frame


def compare_with_reference(domain_figures, reference, matched: dict) -> dict:
    """Side-by-side with per-domain real figures: ``{"comparison": long frame, "summary": per-domain MARE,
    "side_by_side": "trace / real" per figure}``. ``matched[domain]``: what each domain is compared with."""
    import pandas as pd

    records, summary = [], {}
    for domain, row in domain_figures.iterrows():
        errors, names = [], []
        for figure, real in reference.loc[domain].items():
            if figure not in domain_figures.columns or pd.isna(real):
                continue
            value = float(row[figure])
            err = abs(value - real) / abs(real) if real else float("nan")
            errors.append(err)
            names.append(figure)
            records.append({"domain": domain, "compared_with": matched[domain], "figure": figure, "trace": value,
                            "real": float(real), "abs_rel_error": err})
        finite = [e for e in errors if not math.isnan(e)]
        summary[domain] = {"compared_with": matched[domain],
                           "mean_abs_rel_error": float(np.mean(finite)) if finite else float("nan"),
                           "worst_figure": names[int(np.nanargmax(errors))] if finite else "",
                           "worst_abs_rel_error": float(np.nanmax(errors)) if finite else float("nan")}
    comparison = pd.DataFrame.from_records(records)
    summary_frame = pd.DataFrame.from_dict(summary, orient="index")
    summary_frame.index.name = "domain"
    if len(summary_frame):
        summary_frame.loc["all"] = {"compared_with": "-",
                                    "mean_abs_rel_error": float(comparison["abs_rel_error"].mean()),
                                    "worst_figure": "", "worst_abs_rel_error": float(comparison["abs_rel_error"].max())}
    # a wide view: one row per domain, "trace / real" per figure, and the MARE
    wide = {}
    for domain, group in comparison.groupby("domain", sort=False):
        entry = {f: f"{t:.3f} / {r:.3f}" for f, t, r in zip(group["figure"], group["trace"], group["real"])}
        entry["MARE"] = f"{summary[domain]['mean_abs_rel_error']:.3f}"
        wide[domain] = entry
    side = pd.DataFrame.from_dict(wide, orient="index")
    side.index.name = "domain (trace / real)"
    return {"comparison": comparison, "summary": summary_frame, "side_by_side": side}


# -- output ----------------------------------------------------------------------------------------

def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def to_markdown(frame, *, index: bool = True) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    headers = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for key, row in frame.iterrows():
        cells = ([_fmt(key)] if index else []) + [_fmt(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sources(model: str | None) -> str:
    """Where the per-domain real figures of a model come from, for the report."""
    parts = []
    if model in calibration.MODEL_KEYS:
        parts.append(f"load, hottest share and transitions: AllenAI's {get_model(model).display_name} counts "
                     "(specmd_env.calibration)")
    if model == "olmoe-1b-7b":
        parts.append(f"overlap_L0: the published {calibration.OLMOE_CONSECUTIVE_OVERLAP_L0} of 8")
    table = published.repetition(model) if model else None
    if table is not None:
        parts.append(f"repeat_*: {table.source} (specmd_env/data/calibration/published; random choice gives "
                     f"{table.random_first:.3f} / {table.random_any:.3f})")
    return "; ".join(parts)


def report(trace: Trace, stats: dict | None = None, *, title: str | None = None) -> str:
    stats = stats or trace_statistics(trace)
    model = _model_of(trace)
    parts = [f"# {title or 'Trace statistics'}", "",
             f"{trace!r}", "", f"kind: {trace.kind}; source: {trace.meta.get('source', '?')}", ""]
    for label in ("calibrated_to", "parametric"):
        items = trace.meta.get(label)
        if items:  # a list of notes as the generator writes them; anything else a file holds, as one note
            parts += [f"{label}:", ""] + [f"- {item}" for item in (items if isinstance(items, list) else [items])] + [""]
    if "side_by_side" in stats:
        parts += ["## Per domain, beside the real model's published figures (trace / real)", "",
                  f"Real figures: {_sources(model)}. MARE = mean absolute relative error over the figures of a row.",
                  "", to_markdown(stats["side_by_side"]), "", to_markdown(stats["summary"]), ""]
    locality = stats["locality"]
    lengths = np.diff(np.asarray(trace.request_offsets))
    paper = published.locality(model) if model else None
    parts += ["## Model level: load spread and local routing consistency", ""]
    if paper is not None:
        compared = locality[locality["compared"] == "yes"]["abs_rel_error"]
        parts += [(f"Published: {paper.source} ({paper.paper_name}; Table 2 and Table 8, 512-token inputs of 11 "
                   f"domains; SCH with a cache of {paper.cache_ratio:g} x the active experts of all layers). This "
                   f"trace's requests have {lengths.mean():.0f} tokens on average; shorter requests start cold "
                   "more often, which raises SCH. SCH at m >= 16 is not compared: the authors' code departs from "
                   "the cache it defines there (data/calibration/published/SOURCES.md). "
                   f"MARE over the compared figures: {compared.mean():.3f}."), ""]
    parts += [to_markdown(locality), ""]
    parts += ["## Per domain", "", to_markdown(stats["domains"]), "", "## Per layer (all tokens)", "",
              to_markdown(stats["layers"]), ""]
    return "\n".join(parts)


def configure(parser) -> None:
    parser.add_argument("trace", help="trace file (.npz) or catalog name (see specmd_env.catalog.list_traces)")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the tables as markdown to this file")
    parser.add_argument("--max-domains", type=int, default=MAX_DOMAIN_ROWS,
                        help="domains shown one per row; the rest are pooled into one (default %(default)s)")


def run(args) -> int:
    from specmd_env.catalog import get_trace
    from specmd_env.outputs import writable_file

    if args.markdown:
        writable_file(args.markdown, "--markdown")
    trace = get_trace(args.trace)
    text = report(trace, trace_statistics(trace, max_domains=args.max_domains), title=f"Trace statistics: {args.trace}")
    print(text)
    if args.markdown:
        command = f"specmd trace-stats {args.trace} --markdown {args.markdown}"
        Path(args.markdown).write_text(f"<!-- generated by: {command} -->\n\n{text}")
    return 0
