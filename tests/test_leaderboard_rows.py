"""The leaderboard's rows: every eviction with none/score/oracle, the literature's prefetchers with the
reference evictions, presets as rows of their own, a user's policy file, and what cannot run is said."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from specmd_env.cli import main as specmd
from specmd_env.eviction import get_eviction
from specmd_env.generator import generate_trace
from specmd_env.leaderboard import command as leaderboard
from specmd_env.leaderboard import rows, stats
from specmd_env.leaderboard.sweep import build_grid, load_rows
from specmd_env.presets import list_presets
from specmd_env.trace import save_trace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "layer_distance.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    trace = generate_trace("olmoe-1b-7b", domains=("github", "arxiv"), requests_per_domain=2, prompt_len=(6, 10),
                           decode_len=(3, 5), seed=0)
    return save_trace(trace, tmp_path_factory.mktemp("trace") / "tiny.npz")


def test_default_rows_cover_every_policy_without_the_full_product():
    grid = rows.grid_rows(rows.EVICTIONS, rows.PREFETCHES, rows.presets())
    assert len(grid) == len(set(grid))
    plain = [(e, p) for e, p, preset in grid if not preset]
    for ev in rows.EVICTIONS:   # every eviction, every named variant, with the crossed prefetchers
        assert all((ev, pf) in plain for pf in rows.CROSSED_PREFETCHES), ev
    literature = [p for p in rows.PREFETCHES if p not in rows.CROSSED_PREFETCHES]
    assert {(e, p) for e, p in plain if p in literature} == {(e, p) for e in rows.REFERENCE_EVICTIONS for p in literature}
    assert sorted(preset for *_, preset in grid if preset) == list_presets()
    assert len(grid) == len(rows.EVICTIONS) * 3 + 2 * len(literature) + len(list_presets())
    for variant in ("lru:prefetch_at=mru-end", "least-stale:order=insert", "lfu:count=history", "hobbit:weights=tuned",
                    rows.BEST_CAUSAL):
        assert variant in rows.EVICTIONS
    assert rows.BEST_CAUSAL.startswith("expected-next-use:bypass=yes") and not get_eviction(rows.BEST_CAUSAL).is_oracle


def test_cross_all_and_required_prefetchers():
    grid = rows.grid_rows(["lru", "moe-infinity"], ["none", "topk"], (), cross_all=True)
    assert grid == [("lru", "none", ""), ("lru", "topk", ""), ("moe-infinity", "moe-infinity", "")]
    assert rows.grid_rows(["fifo"], ["none", "topk"]) == [("fifo", "none", "")]   # topk goes with lru / best causal only


def test_oracle_labels():
    assert rows.is_oracle("lfu", "pregated") and rows.is_oracle("belady", "none") and not rows.is_oracle("lru", "score")
    assert rows.row_label("lfu", "pregated", "pregated", True) == "preset:pregated (oracle)"
    assert not rows.is_oracle("learned:agent", "score")


def test_user_policy_file_and_presets_in_a_sweep(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    user = f"{EXAMPLE}:LAYER_DISTANCE"
    argv = ["--traces", str(tiny), "--capacities", "0.01", "0.05", "--hardware", "paper-a100-5gbps", "--seeds", "0-1",
            "--evictions", "lru", user, "--prefetches", "none", "score",
            "--presets", "specmd", "mixtral-offloading", "pregated", "--out", str(out), "--workers", "1",
            "--no-learned", "--no-plots", "--quiet"]
    assert leaderboard.main(argv) == 0
    df = pd.DataFrame.from_records(list(load_rows(out / "runs.csv").values()))
    scored = stats.add_normalised(df)
    policies = set(scored["policy"])
    assert {f"{user} + none", f"{user} + score", "preset:specmd", "preset:pregated (oracle)"} <= policies
    # the anchors run although --evictions leaves them out, and only without prefetching
    assert {"random + none", "belady + none (oracle)"} <= policies and "random + score" not in policies
    assert scored.loc[scored["eviction"] == user, "normalised"].notna().all()
    # mixtral-offloading's per-layer caches need a slot per layer: 1% of OLMoE (10 slots) has fewer than 16
    offload = df[df["preset"] == "mixtral-offloading"]
    assert set(offload["capacity"]) == {0.05}
    md = (out / "leaderboard.md").read_text()
    assert "preset:mixtral-offloading left out on tiny at capacity 0.01: scope='per-layer'" in md and "| cells |" in md
    # the user's rows equal the built-in layer distance (the example is that policy)
    mine = df[df["eviction"] == user].set_index(["capacity", "prefetch", "seed"]).sort_index()
    built_in = build_grid([str(tiny)], [0.01, 0.05], ["paper-a100-5gbps"], ["layer-distance"], ["none", "score"], [0, 1],
                          presets=())
    from specmd_env.leaderboard.sweep import execute
    ref = pd.DataFrame([execute(s) for s in built_in]).set_index(["capacity", "prefetch", "seed"]).sort_index()
    assert (mine["reward"] == ref["reward"]).all() and (mine["collision_misses"] == ref["collision_misses"]).all()


def test_a_user_file_that_changes_reruns_its_rows(tiny, tmp_path):
    policy = tmp_path / "mine.py"
    policy.write_text(EXAMPLE.read_text())
    grid = lambda: build_grid([str(tiny)], [0.05], ["paper-a100-5gbps"], [f"{policy}:LAYER_DISTANCE"], ["none"], [0])  # noqa: E731
    before = grid()[0].run_id
    policy.write_text(EXAMPLE.read_text() + "\n# edited\n")
    assert grid()[0].run_id != before


@pytest.mark.parametrize("extra, message", [
    (["--evictions", "lru", "no-such-policy"], "--evictions: unknown eviction policy 'no-such-policy'"),
    (["--evictions", "lru", "missing.py:X"], "--evictions: eviction policy file 'missing.py' does not exist"),
    (["--evictions", "lru:prefetch_at=sideways"], "--evictions: policy 'lru': prefetch_at must be one of"),
    (["--prefetches", "sometimes"], "--prefetches: unknown prefetcher 'sometimes'"),
    (["--presets", "vllm"], "--presets: unknown preset 'vllm'"),
])
def test_bad_rows_are_refused_before_any_work(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["leaderboard", "--traces", str(tiny), "--capacities", "0.05", "--seeds", "0", "--out", str(out),
            "--workers", "1", "--quiet", "--no-learned", "--no-plots", *extra]
    assert specmd(argv) == 2
    assert message in capsys.readouterr().err
    assert not (out / "runs.csv").exists()


@pytest.mark.parametrize("trace", ["olmoe-synthetic", "mixtral-synthetic"])
def test_every_default_row_runs_on_the_default_traces(trace):
    """One request of each default row at 1% (where presets that cannot run are left out, with a reason):
    a policy and a prefetcher sharing the event log (expected-next-use with moe-infinity) once corrupted
    memory here."""
    from specmd_env.leaderboard.sweep import execute
    notes: list[str] = []
    specs = build_grid([trace], [0.01], ["a100-pcie4"], rows.EVICTIONS, rows.PREFETCHES, [0], sample_frac=0.1,
                       presets=rows.presets(), skipped=notes)
    ran = {(s.eviction, s.prefetch, s.preset) for s in specs}
    assert len(ran) + len(notes) == len(rows.grid_rows(rows.EVICTIONS, rows.PREFETCHES, rows.presets()))
    for spec in specs:
        row = execute(spec)
        assert row["accesses"] > 0 and row["reward"] <= 0, spec
