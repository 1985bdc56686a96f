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

from specmd_env.trace import Trace

_CHUNK = 1 << 15
OLMOE_SHAPE = (16, 64, 8)


def _anchors(num_layers: int) -> tuple[int, ...]:
    if num_layers >= 16:
        return (0, 7, 15)
    return tuple(sorted({0, num_layers // 2, num_layers - 1}))


def _pairs(num_layers: int) -> list[tuple[int, int]]:
    pairs = [(l, l + 1) for l in range(num_layers - 1)]
    if num_layers >= 16:
        pairs += [(0, 7), (7, 15)]
    return pairs


class _Accumulator:
    """Counts gathered in one pass over the trace, per domain."""

    def __init__(self, trace: Trace):
        self.L, self.E, self.k = trace.num_layers, trace.num_experts, trace.top_k
        self.domain_names = list(dict.fromkeys(trace.domains))
        D = len(self.domain_names)
        self.pairs = _pairs(self.L)
        self.tokens = np.zeros(D, np.int64)
        self.load = np.zeros((D, self.L, self.E), np.int64)
        self.trans = np.zeros((D, len(self.pairs), self.E * self.E), np.int64)
        self.overlap_sum = np.zeros((D, self.L))
        self.overlap_n = np.zeros(D, np.int64)
        self.spec_sum = np.zeros((D, max(self.L - 1, 0)))
        self.has_spec = trace.spec_scores is not None

    def add(self, trace: Trace, dom_tok: np.ndarray, pair_ok: np.ndarray, start: int, stop: int) -> None:
        """Count tokens [start, stop) and the consecutive pairs (t, t+1) with t in [start, stop)."""
        ext = np.asarray(trace.expert_ids[start:min(stop + 1, trace.num_tokens)]).astype(np.int64)
        ids = ext[:stop - start]
        dom = dom_tok[start:stop]
        D, L, E, k = len(self.domain_names), self.L, self.E, self.k
        self.tokens += np.bincount(dom, minlength=D)
        flat = (dom[:, None, None] * L + np.arange(L)[None, :, None]) * E + ids
        self.load += np.bincount(flat.ravel(), minlength=D * L * E).reshape(D, L, E)
        top1 = ids[:, :, 0]
        for p, (a, b) in enumerate(self.pairs):
            key = dom * (E * E) + top1[:, a] * E + top1[:, b]
            self.trans[:, p] += np.bincount(key, minlength=D * E * E).reshape(D, E * E)
        ok = pair_ok[start:stop]  # pair_ok[t]: t and t+1 are prompt tokens of one request
        if ok.any():
            a, b = ext[:len(ok)][ok], ext[1:len(ok) + 1][ok]
            shared = (a[:, :, :, None] == b[:, :, None, :]).sum(axis=(2, 3))  # [n, L]
            d = dom[:len(ok)][ok]
            self.overlap_n += np.bincount(d, minlength=D)
            for layer in range(L):
                self.overlap_sum[:, layer] += np.bincount(d, weights=shared[:, layer], minlength=D)
        if self.has_spec and L > 1:
            scores = np.asarray(trace.spec_scores[start:stop])
            pred = np.argpartition(scores, E - k, axis=2)[:, :, -k:]          # [n, L-1, k]
            hit = (pred[:, :, :, None] == ids[:, 1:, None, :]).sum(axis=(2, 3)) / k   # [n, L-1]
            for layer in range(L - 1):
                self.spec_sum[:, layer] += np.bincount(dom, weights=hit[:, layer], minlength=D)


def _collect(trace: Trace) -> _Accumulator:
    acc = _Accumulator(trace)
    index = {name: i for i, name in enumerate(acc.domain_names)}
    T = trace.num_tokens
    offsets = np.asarray(trace.request_offsets)
    lengths = np.diff(offsets)
    dom_tok = np.repeat(np.array([index[d] for d in trace.domains], np.int64), lengths)
    # pair_ok[t]: tokens t and t+1 are both prompt tokens of the same request
    prompt_end = np.repeat(offsets[:-1] + np.asarray(trace.prompt_lengths), lengths)
    pair_ok = (np.arange(T - 1) + 1) < prompt_end[:-1] if T > 1 else np.zeros(0, bool)
    for start in range(0, T, _CHUNK):
        acc.add(trace, dom_tok, pair_ok, start, min(start + _CHUNK, T))
    return acc


def _figures(load: np.ndarray, tokens: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer load CV and hottest share from a [L, E] load matrix."""
    mean = load.mean(axis=1)
    cv = np.where(mean > 0, load.std(axis=1) / np.maximum(mean, 1e-300), np.nan)
    hottest = load.max(axis=1) / tokens if tokens else np.full(load.shape[0], np.nan)
    return cv, hottest


def _predictability(counts: np.ndarray, E: int) -> float:
    m = counts.reshape(E, E)
    total = m.sum()
    return float(m.max(axis=1).sum() / total) if total else float("nan")


def trace_statistics(trace: Trace | str | Path) -> dict:
    """Statistics of a trace as a dict of pandas DataFrames.

    * ``"layers"``: one row per layer over all tokens -- load_cv, hottest_share, overlap (prompt tokens),
      overlap_random (k*k/E), transition_next (top-1 predictability l -> l+1), spec_accuracy (predicting
      this layer from the previous one; NaN at layer 0 or without spec scores).
    * ``"domains"``: one row per domain (and ``"all"``) with the calibration-style figures
      ``load_cv_L{l}``, ``hottest_share_L{l}`` (l in 0, 7, 15, or 0, L/2, L-1 for shallow models),
      ``transition_L0_L7``, ``transition_L7_L15`` (>= 16 layers), ``overlap_L0``, ``spec_accuracy``.
    * ``"comparison"`` and ``"summary"`` (OLMoE-shaped traces only, 16 layers x 64 experts, top-8): each
      domain's figures beside AllenAI's real ones (:mod:`specmd_env.calibration`; unmatched domains are
      compared with the mean over AllenAI's five domains), the absolute relative error of each, and per
      domain the mean absolute relative error (MARE); the summary's ``"all"`` row is the mean over domains.
    """
    import pandas as pd

    if not isinstance(trace, Trace):
        from specmd_env.catalog import get_trace

        trace = get_trace(trace)
    acc = _collect(trace)
    L, E, k = acc.L, acc.E, acc.k
    total_tokens = int(acc.tokens.sum())
    load_all = acc.load.sum(axis=0)
    cv, hottest = _figures(load_all, total_tokens, k)
    n_pairs = acc.overlap_n.sum()
    overlap = acc.overlap_sum.sum(axis=0) / n_pairs if n_pairs else np.full(L, np.nan)
    trans_all = acc.trans.sum(axis=0)
    next_pred = np.full(L, np.nan)
    for p, (a, b) in enumerate(acc.pairs):
        if b == a + 1:
            next_pred[a] = _predictability(trans_all[p], E)
    spec = np.full(L, np.nan)
    if acc.has_spec and L > 1:
        spec[1:] = acc.spec_sum.sum(axis=0) / total_tokens
    layers = pd.DataFrame({"load_cv": cv, "hottest_share": hottest, "overlap": overlap,
                           "overlap_random": np.full(L, k * k / E), "transition_next": next_pred,
                           "spec_accuracy": spec}, index=pd.RangeIndex(L, name="layer"))

    rows = {}
    groups = [(name, [i]) for i, name in enumerate(acc.domain_names)] + [("all", list(range(len(acc.domain_names))))]
    for name, members in groups:
        tokens = int(acc.tokens[members].sum())
        dcv, dhot = _figures(acc.load[members].sum(axis=0), tokens, k)
        row = {"tokens": tokens}
        for layer in _anchors(L):
            row[f"load_cv_L{layer}"] = float(dcv[layer])
            row[f"hottest_share_L{layer}"] = float(dhot[layer])
        for p, (a, b) in enumerate(acc.pairs):
            if (a, b) in ((0, 7), (7, 15)):
                row[f"transition_L{a}_L{b}"] = _predictability(acc.trans[members, p].sum(axis=0), E)
        n = acc.overlap_n[members].sum()
        row["overlap_L0"] = float(acc.overlap_sum[members, 0].sum() / n) if n else float("nan")
        if acc.has_spec and L > 1:
            row["spec_accuracy"] = float(acc.spec_sum[members].sum() / (tokens * (L - 1))) if tokens else float("nan")
        rows[name] = row
    domains = pd.DataFrame.from_dict(rows, orient="index")
    domains.index.name = "domain"
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


def run(args) -> int:
    from specmd_env.catalog import get_trace

    trace = get_trace(args.trace)
    text = report(trace, title=f"Trace statistics: {args.trace}")
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        command = f"specmd trace-stats {args.trace} --markdown {args.markdown}"
        Path(args.markdown).write_text(f"<!-- generated by: {command} -->\n\n{text}")
    return 0
