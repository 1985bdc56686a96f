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
Large traces are read in chunks.

Published figures to compare with: AllenAI's counts (OLMoE-1B-7B, Mixtral-8x7B; per domain), the
Mixtral paper's repetition table (per domain) and Liang et al.'s figures (model level), see
:mod:`specmd_env.published`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from specmd_env import calibration, published
from specmd_env.locality import first_choice_same, segment_figures, shared_experts
from specmd_env.models import get_model
from specmd_env.trace import Trace

_CHUNK = 1 << 15
#: Liang et al.'s SCH at look-ahead m >= 16 is shown but left out of the error: their implementation
#: departs from the cache it defines there (data/calibration/published/SOURCES.md).
_COMPARED_LOCALITY = ("activation_freq_sd", "srp_m16", "sch_m4")


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
        self.repeat_first = np.zeros((D, self.L))
        self.repeat_any = np.zeros((D, self.L))
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
            shared = shared_experts(a, b)  # [n, L]
            first = first_choice_same(a, b)
            d = dom[:len(ok)][ok]
            self.overlap_n += np.bincount(d, minlength=D)
            for layer in range(L):
                self.overlap_sum[:, layer] += np.bincount(d, weights=shared[:, layer], minlength=D)
                self.repeat_first[:, layer] += np.bincount(d, weights=first[:, layer], minlength=D)
                self.repeat_any[:, layer] += np.bincount(d, weights=shared[:, layer] >= 1, minlength=D)
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


def _model_of(trace: Trace) -> str | None:
    """The trace's model name if its shape is that model's (a trace of another shape gets no comparison)."""
    spec = get_model(trace.model)
    shape = (spec.num_layers, spec.num_experts, spec.top_k)
    return spec.name if shape == (trace.num_layers, trace.num_experts, trace.top_k) else None


def trace_statistics(trace: Trace | str | Path) -> dict:
    """Statistics of a trace as a dict of pandas DataFrames.

    * ``"layers"``: one row per layer over all tokens -- load_cv, hottest_share, overlap (prompt tokens),
      overlap_random (k*k/E), repeat_first, repeat_any, transition_next (top-1 predictability l -> l+1),
      spec_accuracy (predicting this layer from the previous one; NaN at layer 0 or without spec scores).
    * ``"domains"``: one row per domain (and ``"all"``) with the calibration-style figures
      ``load_cv_L{l}``, ``hottest_share_L{l}`` (l in 0, 7, 15, or 0, L/2, L-1 for shallow models),
      ``transition_L0_L7``, ``transition_L7_L15`` (>= 16 layers), ``overlap_L0``, ``spec_accuracy``, and
      ``repeat_first_L{l}`` / ``repeat_any_L{l}`` at the layers of a published repetition table.
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
    model = _model_of(trace)
    table = published.repetition(model) if model else None
    acc = _collect(trace)
    L, E, k = acc.L, acc.E, acc.k
    total_tokens = int(acc.tokens.sum())
    load_all = acc.load.sum(axis=0)
    cv, hottest = _figures(load_all, total_tokens, k)
    n_pairs = acc.overlap_n.sum()

    def per_pair(sums: np.ndarray) -> np.ndarray:
        return sums.sum(axis=0) / n_pairs if n_pairs else np.full(L, np.nan)

    trans_all = acc.trans.sum(axis=0)
    next_pred = np.full(L, np.nan)
    for p, (a, b) in enumerate(acc.pairs):
        if b == a + 1:
            next_pred[a] = _predictability(trans_all[p], E)
    spec = np.full(L, np.nan)
    if acc.has_spec and L > 1:
        spec[1:] = acc.spec_sum.sum(axis=0) / total_tokens
    layers = pd.DataFrame({"load_cv": cv, "hottest_share": hottest, "overlap": per_pair(acc.overlap_sum),
                           "overlap_random": np.full(L, k * k / E), "repeat_first": per_pair(acc.repeat_first),
                           "repeat_any": per_pair(acc.repeat_any), "transition_next": next_pred,
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
        for layer in table.layers if table else ():
            for kind, sums in (("first", acc.repeat_first), ("any", acc.repeat_any)):
                row[f"repeat_{kind}_L{layer}"] = float(sums[members, layer].sum() / n) if n else float("nan")
        if acc.has_spec and L > 1:
            row["spec_accuracy"] = float(acc.spec_sum[members].sum() / (tokens * (L - 1))) if tokens else float("nan")
        rows[name] = row
    domains = pd.DataFrame.from_dict(rows, orient="index")
    domains.index.name = "domain"
    freq = 100.0 * load_all / total_tokens if total_tokens else np.full((L, E), np.nan)
    out = {"layers": layers, "domains": domains,
           "locality": _locality(model, {"activation_freq_sd": float(freq.std()), **segment_figures(trace)})}
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
        if trace.meta.get(label):
            parts += [f"{label}:", ""] + [f"- {item}" for item in trace.meta[label]] + [""]
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
