"""Import a plain routing table: the form any other tool can export to.

One row per (request, token, layer, rank), as CSV (or Parquet, read by pandas, which needs ``pyarrow``)::

    request,token,is_prompt,layer,rank,expert,weight
    0,0,1,0,0,17,0.31
    0,0,1,0,1,3,0.22
    ...

=========  =====================================================================================
column     meaning
=========  =====================================================================================
request    any label (number or text); requests are replayed in order of first appearance
token      the token's index in its request, 0, 1, ... without gaps
is_prompt  1 / true for prompt tokens (prefilled), 0 / false for generated ones (one decode step
           each); a request's prompt tokens come first. A request with no prompt rows is decode only
layer      MoE layer, 0 .. L-1
rank       0 .. k-1, 0 = the highest gate weight
expert     0 .. E-1
weight     optional gate weight (finite, >= 0); leave the column out when unknown
=========  =====================================================================================

Every (request, token) needs exactly one row per (layer, rank). Row order does not matter. The model is
``--model`` or the one registered model with the table's layer count and top-k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from specmd_env.errors import SpecMDError, TraceFormatError
from specmd_env.importers.base import (RequestRouting, add_common_arguments, build_trace, check_routing,
                                       check_weights, default_domain, resolve_model, write_trace)
from specmd_env.trace import Trace

COLUMNS = ("request", "token", "is_prompt", "layer", "rank", "expert")
_TRUE, _FALSE = {"1", "true", "t", "yes", "y"}, {"0", "false", "f", "no", "n"}


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as exc:
            raise SpecMDError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow): {exc}") from None
    try:
        return pd.read_csv(path, dtype={"request": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{path}: not a readable CSV table ({exc})") from None


def _integers(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise TraceFormatError(f"{path}: column {column!r} row {row + 1}: {df[column].iloc[row]!r} is not an integer")
    return values.to_numpy(np.int64)


def _flags(df: pd.DataFrame, path: Path) -> np.ndarray:
    text = df["is_prompt"].astype(str).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise TraceFormatError(f"{path}: column 'is_prompt' row {row + 1}: {df['is_prompt'].iloc[row]!r} is not "
                               "1/0 or true/false")
    return text.isin(_TRUE).to_numpy()


def import_table(path, *, model: str | None = None, domain: str | None = None) -> Trace:
    """Read a routing table (see the module docstring) into a trace."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"{path}: no such file")
    df = _read(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TraceFormatError(f"{path}: missing column(s) {missing}; a routing table has {', '.join(COLUMNS)} "
                               "and optionally weight")
    if df.empty:
        raise TraceFormatError(f"{path}: no rows")
    request = pd.factorize(df["request"].astype(str), sort=False)[0]
    token, layer, rank, expert = (_integers(df, c, path) for c in ("token", "layer", "rank", "expert"))
    prompt = _flags(df, path)
    for column, values in (("token", token), ("layer", layer), ("rank", rank)):
        if values.min() < 0:
            row = int(np.argmin(values))
            raise TraceFormatError(f"{path}: column {column!r} row {row + 1}: {values[row]} is negative")
    spec = resolve_model(model, num_layers=int(layer.max()) + 1, top_k=int(rank.max()) + 1, where=str(path))
    L, k = spec.num_layers, spec.top_k
    weights = None
    if "weight" in df.columns:
        weights = pd.to_numeric(df["weight"], errors="coerce").to_numpy(np.float64)
        if np.isnan(weights).any():
            row = int(np.flatnonzero(np.isnan(weights))[0])
            raise TraceFormatError(f"{path}: column 'weight' row {row + 1}: {df['weight'].iloc[row]!r} is not a number")

    order = np.lexsort((rank, layer, token, request))
    key = np.stack([request, token, layer, rank], axis=1)[order]
    repeated = np.flatnonzero((np.diff(key, axis=0) == 0).all(axis=1))
    if len(repeated):
        r, t, l_, k_ = key[repeated[0]]
        raise TraceFormatError(f"{path}: request {df['request'].iloc[order[repeated[0]]]!r} token {t} layer {l_} "
                               f"rank {k_} appears twice")
    name = default_domain(path, domain)
    requests = []
    for r in range(int(request.max()) + 1):
        rows = order[request[order] == r]
        label = df["request"].iloc[rows[0]]
        n_tok = int(token[rows].max()) + 1
        if len(rows) != n_tok * L * k:
            counts = np.bincount(token[rows], minlength=n_tok)
            t = int(np.flatnonzero(counts != L * k)[0])
            raise TraceFormatError(f"{path}: request {label!r} token {t} has {counts[t]} rows; every token needs one "
                                   f"per layer and rank ({L} x {k} = {L * k}, model {spec.name})")
        ids = expert[rows].reshape(n_tok, L, k)
        flags = prompt[rows].reshape(n_tok, L * k)
        if not (flags == flags[:, :1]).all():
            t = int(np.flatnonzero(~(flags == flags[:, :1]).all(axis=1))[0])
            raise TraceFormatError(f"{path}: request {label!r} token {t}: is_prompt differs between its rows")
        is_prompt = flags[:, 0]
        n_prompt = int(is_prompt.sum())
        if is_prompt[n_prompt:].any():
            raise TraceFormatError(f"{path}: request {label!r}: prompt tokens must come before generated ones "
                                   f"(token {int(np.flatnonzero(is_prompt)[-1])} is a prompt token after a generated one)")
        field = f"request {label!r} column 'expert' [token, layer, rank]"
        ids = check_routing(ids, field, spec)
        gates = None if weights is None else check_weights(weights[rows].reshape(n_tok, L, k),
                                                           f"{path}: request {label!r} column 'weight'", (n_tok, L, k))
        requests.append(RequestRouting(prompt=ids[:n_prompt], decode=ids[n_prompt:], domain=name,
                                       prompt_weights=None if gates is None else gates[:n_prompt],
                                       decode_weights=None if gates is None else gates[n_prompt:]))
    return build_trace(requests, spec, source=f"routing table {path.name}, {len(requests)} requests",
                       description=f"{spec.display_name} routing imported from a routing table (request, token, "
                                   "is_prompt, layer, rank, expert, weight); no next-layer scores.")


def configure(parser) -> None:
    add_common_arguments(parser, file_help="routing table (.csv, or .parquet with pyarrow): request, token, "
                                           "is_prompt, layer, rank, expert[, weight]")


def run(args) -> int:
    return write_trace(import_table(args.file, model=args.model, domain=args.domain), args)
