"""Routing statistics of a trace, and (for OLMoE-shaped traces) how close they are to AllenAI's real figures.

Figures (definitions match :mod:`specmd_env.calibration`):

* ``load_cv``: coefficient of variation (population std / mean) of per-expert top-k load at a layer.
* ``hottest_share``: fraction of tokens whose top-k contains the layer's most chosen expert.
* ``overlap``: consecutive-token overlap -- mean number of experts (of k) shared by prompt tokens t and
  t+1 of the same request (random choice would give k*k/E).
* ``transition La_Lb``: top-1 transition predictability -- the fraction of tokens whose layer-b top-1
  equals the most frequent layer-b successor of their layer-a top-1 (over all tokens).
* ``spec_accuracy``: for layer l+1, mean ``|topk(spec_scores[t, l]) & topk_true(t, l+1)| / k``.

Load, hottest share and transitions use every token (the AllenAI counts are teacher-forced, i.e. all
tokens are prefill); overlap uses prompt tokens only. Large traces are read in chunks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from specmd_env.checks import integer
from specmd_env.errors import SpecMDError
from specmd_env.trace import Trace

OLMOE_SHAPE = (16, 64, 8)
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


def _shared(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a & b| along the last axis, for rows of distinct ids: equal neighbours after sorting both together
    (memory of a and b, where comparing every pair would take k times more)."""
    both = np.sort(np.concatenate([a, b], axis=-1), axis=-1)
    return (both[..., 1:] == both[..., :-1]).sum(axis=-1)


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

    def __init__(self, trace: Trace, max_domains: int):
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
            shared = _shared(ext[:m][ok], ext[1:m + 1][ok])  # [pairs, L]
            r = row[:m][ok]
            self.overlap_sum += shared.sum(axis=0)
            self.overlap_n += len(r)
            self.domain_overlap_sum += np.bincount(r, weights=shared[:, 0], minlength=D)
            self.domain_overlap_n += np.bincount(r, minlength=D)
        if self.has_spec:
            scores = np.asarray(trace.spec_scores[start:stop])
            predicted = np.argpartition(scores, E - k, axis=2)[:, :, -k:]    # [n, L-1, k]
            hit = _shared(predicted, ids[:, 1:, :]) / k                       # [n, L-1]
            self.spec_sum += hit.sum(axis=0)
            self.domain_spec_sum += np.bincount(row, weights=hit.sum(axis=1), minlength=D)


def _collect(trace: Trace, max_domains: int) -> _Accumulator:
    acc = _Accumulator(trace, max_domains)
    T = trace.num_tokens
    for start in range(0, T, acc.chunk_tokens):
        trace.check_file()
        acc.add(trace, start, min(start + acc.chunk_tokens, T))
    return acc


def trace_statistics(trace: Trace | str | Path, *, max_domains: int = MAX_DOMAIN_ROWS) -> dict:
    """Statistics of a trace as a dict of pandas DataFrames.

    * ``"layers"``: one row per layer over all tokens -- load_cv, hottest_share, overlap (prompt tokens),
      overlap_random (k*k/E), transition_next (top-1 predictability l -> l+1), spec_accuracy (predicting
      this layer from the previous one; NaN at layer 0 or without spec scores).
    * ``"domains"``: one row per domain (and ``"all"``) with the calibration-style figures
      ``load_cv_L{l}``, ``hottest_share_L{l}`` (l in 0, 7, 15, or 0, L/2, L-1 for shallow models),
      ``transition_L0_L7``, ``transition_L7_L15`` (>= 16 layers), ``overlap_L0``, ``spec_accuracy``.
      Beyond ``max_domains`` domains, those with the fewest tokens share one row, ``"(other N domains)"``.
    * ``"comparison"`` and ``"summary"`` (OLMoE-shaped traces only, 16 layers x 64 experts, top-8): each
      domain's figures beside AllenAI's real ones (:mod:`specmd_env.calibration`; unmatched domains are
      compared with the mean over AllenAI's five domains), the absolute relative error of each, and per
      domain the mean absolute relative error (MARE); the summary's ``"all"`` row is the mean over domains.
    """
    import pandas as pd

    if not isinstance(trace, Trace):
        from specmd_env.catalog import get_trace

        trace = get_trace(trace)
    max_domains = integer("max_domains", max_domains, minimum=1)
    if trace.num_tokens == 0:
        raise SpecMDError(f"{trace!r} has no tokens: there is nothing to measure")
    acc = _collect(trace, max_domains)
    L, E, k = acc.L, acc.E, acc.k
    D, A = len(acc.domain_names), len(acc.anchors)
    total_tokens = int(acc.tokens.sum())
    cv, hottest = _load_figures(acc.load, L, E, np.full(L, total_tokens))
    overlap = acc.overlap_sum / acc.overlap_n if acc.overlap_n else np.full(L, np.nan)
    transitions = _predictability(acc.trans, len(acc.pairs), E)
    next_pred = np.full(L, np.nan)
    for p, (a, b) in enumerate(acc.pairs):
        if b == a + 1:
            next_pred[a] = transitions[p]
    spec = np.full(L, np.nan)
    if acc.has_spec:
        spec[1:] = acc.spec_sum / total_tokens
    layers = pd.DataFrame({"load_cv": cv, "hottest_share": hottest, "overlap": overlap,
                           "overlap_random": np.full(L, k * k / E), "transition_next": next_pred,
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
    with np.errstate(invalid="ignore", divide="ignore"):
        columns["overlap_L0"] = np.append(np.where(acc.domain_overlap_n > 0, acc.domain_overlap_sum
                                                   / np.maximum(acc.domain_overlap_n, 1), np.nan), overlap[0])
        if acc.has_spec:
            columns["spec_accuracy"] = np.append(acc.domain_spec_sum, acc.spec_sum.sum()) / (tokens * (L - 1))
    domains = pd.DataFrame(columns, index=pd.Index(acc.domain_names + ["all"], name="domain"))
    out = {"layers": layers, "domains": domains}
    if (L, E, k) == OLMOE_SHAPE:
        out.update(compare_with_allenai(domains.drop(index="all")))
    return out


def compare_with_allenai(domain_figures) -> dict:
    """Side-by-side with AllenAI's OLMoE figures: ``{"comparison": long frame, "summary": per-domain MARE}``."""
    import pandas as pd

    from specmd_env import calibration

    reference = calibration.reference_table("olmoe")
    figure_names = [c for c in reference.columns if c in domain_figures.columns]
    records, summary = [], {}
    for domain, row in domain_figures.iterrows():
        matched = domain if domain in reference.index and domain != "mean" else "mean"
        errors = []
        for figure in figure_names:
            real = float(reference.loc[matched, figure])
            value = float(row[figure])
            err = abs(value - real) / abs(real) if real else float("nan")
            errors.append(err)
            records.append({"domain": domain, "compared_with": matched, "figure": figure, "trace": value,
                            "real": real, "abs_rel_error": err})
        finite = [e for e in errors if not math.isnan(e)]
        worst = figure_names[int(np.nanargmax(errors))] if finite else ""
        summary[domain] = {"compared_with": matched,
                           "mean_abs_rel_error": float(np.mean(finite)) if finite else float("nan"),
                           "worst_figure": worst, "worst_abs_rel_error": float(np.nanmax(errors)) if finite else float("nan")}
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


def report(trace: Trace, stats: dict | None = None, *, title: str | None = None) -> str:
    stats = stats or trace_statistics(trace)
    parts = [f"# {title or 'Trace statistics'}", "",
             f"{trace!r}", "", f"kind: {trace.kind}; source: {trace.meta.get('source', '?')}", ""]
    if "side_by_side" in stats:
        parts += ["## Beside AllenAI's real OLMoE figures (trace / real)", "",
                  "Real figures: specmd_env.calibration (AllenAI OLMoE-1B-7B counts; overlap_L0 is the published "
                  "2.55 of 8). MARE = mean absolute relative error over the figures of a row.", "",
                  to_markdown(stats["side_by_side"]), "", to_markdown(stats["summary"]), ""]
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
