"""Leaderboard integrity: a resume recomputes what changed (hardware or model numbers, trace contents, the
simulation code), a SIGKILLed sweep leaves no worker behind, a second writer on one folder is refused,
and bad options (repeated seeds, clashing trace names, an unusable --out) are refused before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from specmd_env import hardware, models
from specmd_env.cli import main as specmd
from specmd_env.generator import generate_trace
from specmd_env.leaderboard import command as leaderboard
from specmd_env.leaderboard import sweep
from specmd_env.leaderboard.sweep import load_rows
from specmd_env.trace import save_trace

ROOT = Path(__file__).resolve().parent.parent


def tiny_trace(seed: int = 0):
    return generate_trace("olmoe-1b-7b", domains=("github", "arxiv"), requests_per_domain=3, prompt_len=(6, 14),
                          decode_len=(3, 6), seed=seed, with_spec_scores=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_trace(tiny_trace(), tmp_path_factory.mktemp("trace") / "tiny.npz")


def argv(trace, out, *extra) -> list[str]:
    return ["--traces", str(trace), "--capacities", "0.05", "--hardware", "paper-a100-5gbps", "--seeds", "0-1",
            "--evictions", "lru", "random", "belady", "--prefetches", "none", "--presets", "--out", str(out),
            "--workers", "1", "--quiet", "--no-learned", "--no-plots", *extra]


def rows(out: Path) -> dict:
    return load_rows(out / "runs.csv")


def stalls(out: Path) -> dict:
    return {(r["eviction"], r["seed"]): r["stall_seconds"] for r in rows(out).values()}


# -- a resume recomputes what changed ------------------------------------------------------------

def _edited_table(loader, name: str, field: str, factor: float):
    table = {k: dict(v) for k, v in loader().items()}
    table[name][field] = type(table[name][field])(table[name][field] * factor)
    return lambda: table


@pytest.mark.parametrize("module, name, field, factor", [
    (hardware, "paper-a100-5gbps", "h2d_bandwidth_gbps", 0.1),     # the README invites editing hardware.toml
    (models, "olmoe-1b-7b", "expert_intermediate_size", 2),        # bigger experts: slower transfers
])
def test_a_resume_after_a_data_file_edit_recomputes(tiny, tmp_path, monkeypatch, module, name, field, factor):
    loader = module._package_table if module is hardware else module._model_table
    assert leaderboard.main(argv(tiny, tmp_path / "a")) == 0
    before = rows(tmp_path / "a")
    monkeypatch.setattr(module, loader.__name__, _edited_table(loader, name, field, factor))
    assert leaderboard.main(argv(tiny, tmp_path / "a")) == 0            # resume after the edit
    after = rows(tmp_path / "a")
    assert len(after) == len(before) == 6 and not set(after) & set(before)   # every run redone, old rows dropped
    assert all(stalls(tmp_path / "a")[k] > v for k, v in
               {(r["eviction"], r["seed"]): r["stall_seconds"] for r in before.values()}.items())
    assert leaderboard.main(argv(tiny, tmp_path / "fresh")) == 0         # = a fresh sweep with the edited file
    assert (tmp_path / "a" / "runs.csv").read_bytes() == (tmp_path / "fresh" / "runs.csv").read_bytes()


def test_a_resume_after_the_trace_changed_recomputes(tmp_path):
    path = save_trace(tiny_trace(seed=0), tmp_path / "t.npz")
    assert leaderboard.main(argv(path, tmp_path / "out")) == 0
    first = rows(tmp_path / "out")
    assert leaderboard.main(argv(path, tmp_path / "out")) == 0
    assert rows(tmp_path / "out") == first                               # unchanged: nothing redone
    save_trace(tiny_trace(seed=1), path)                                 # same name, other routing
    assert leaderboard.main(argv(path, tmp_path / "out")) == 0
    assert not set(rows(tmp_path / "out")) & set(first)


def test_an_edit_of_the_simulation_code_changes_every_run_id(tiny, tmp_path, monkeypatch):
    """The kernel's version is its source as read at run time (no version string to forget to bump)."""
    source = tmp_path / "kernel.py"
    source.write_text("X = 1\n")
    monkeypatch.setattr(sweep, "_source_files", lambda entries: [source])
    grid = lambda: sweep.build_grid([str(tiny)], [0.05], ["paper-a100-5gbps"], ["lru"], ["none"], [0])  # noqa: E731
    first = grid()
    assert [s.run_id for s in grid()] == [s.run_id for s in first]
    source.write_text("X = 2\n")
    assert {s.run_id for s in grid()}.isdisjoint(s.run_id for s in first)


def test_the_real_code_list_names_existing_files():
    files = sweep._source_files(sweep.SIMULATION_CODE + sweep.AGENT_CODE)
    names = {f.name for f in files}
    assert {"loop.py", "policy.py", "replay.py", "schedule.py", "lru.py", "_core.py"} <= names
    assert all(f.is_file() for f in files)
    assert sweep.code_version() != sweep.code_version(learned=True)


# -- workers die with the sweep ------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to list the workers")
def test_sigkill_of_the_sweep_leaves_no_worker(tiny, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "specmd_env.cli", "leaderboard", *argv(tiny, out, "--run-delay", "0.3"),
           "--workers", "2", "--seeds", "0-4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # running: both workers started, at least one run recorded
            workers = _children(proc.pid)
            csv = out / "runs.csv"
            if len(workers) >= 2 and csv.exists() and len(csv.read_text().splitlines()) >= 2:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        assert len(workers) >= 2, "the pool did not start"
        os.kill(proc.pid, signal.SIGKILL)  # the sweep only: no cleanup runs, nothing else is signalled
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(map(_alive, workers)):
            time.sleep(0.05)
        survivors = [w for w in workers if _alive(w)]
    finally:
        for pid in [proc.pid, *workers]:  # clean up what this test started, whatever happened
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not survivors, f"workers {survivors} outlived the SIGKILLed sweep"


# -- one writer per folder -------------------------------------------------------------------------

def test_a_second_writer_is_refused_and_the_first_finishes(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "specmd_env.cli", "leaderboard", *argv(tiny, out, "--run-delay", "0.3")]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / "runs.csv").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read().decode()
            time.sleep(0.05)
        assert specmd(["leaderboard", *argv(tiny, out, "--seeds", "2")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"specmd leaderboard: error: --out {str(out)!r} is in use by another specmd leaderboard "
                       f"(pid {first.pid}); wait for it to finish or choose another --out")
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert len(rows(out)) == 6
    assert specmd(["leaderboard", *argv(tiny, out, "--seeds", "2")]) == 0       # free again: both sweeps' rows
    assert len(rows(out)) == 9


def test_a_killed_writer_does_not_lock_the_folder(tiny, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "specmd_env.cli", "leaderboard", *argv(tiny, out, "--run-delay", "0.3")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "runs.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert specmd(["leaderboard", *argv(tiny, out)]) == 0
    assert len(rows(out)) == 6


# -- refused before any work -------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--seeds", "0,0"], "--seeds repeats [0]; give each value once"),
    (["--seeds", "0-2,1"], "--seeds repeats [1]"),
    (["--capacities", "0.05", "0.05"], "--capacities repeats [0.05]"),
    (["--evictions", "lru", "lru"], "--evictions repeats ['lru']"),
    (["--seeds", "-1"], "--seeds must be >= 0"),
    (["--learned-hardware", "h100-pcie5"], "--learned-hardware h100-pcie5 is not in --hardware"),
])
def test_bad_options_are_refused_before_any_work(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    started = time.monotonic()
    assert specmd(["leaderboard", *argv(tiny, out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("specmd leaderboard: error: ") and message in err and "\n" not in err
    assert not (out / "runs.csv").exists() and time.monotonic() - started < 10


def test_traces_with_one_name_are_refused(tiny, tmp_path, capsys):
    other = save_trace(tiny_trace(seed=1), tmp_path / "elsewhere" / "tiny.npz")
    assert specmd(["leaderboard", *argv(tiny, tmp_path / "out"), "--traces", str(tiny), str(other)]) == 2
    assert "have the same name 'tiny' in the table; rename one file" in capsys.readouterr().err
    assert specmd(["leaderboard", *argv(tiny, tmp_path / "out"), "--traces", str(tiny), str(tiny)]) == 2
    assert "is given twice" in capsys.readouterr().err


def test_an_unusable_out_is_refused_before_any_work(tiny, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out, why in ((blocker, "is a file, not a folder"), (blocker / "sub", f"{str(blocker)!r} is a file")):
        assert specmd(["leaderboard", *argv(tiny, out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"specmd leaderboard: error: --out {str(out)!r}: {why}" + (", not a folder" if "sub" in str(out)
                                                                                  else "")


def test_profile_table_loader_is_what_get_profile_reads():
    """The edit tests above patch these loaders: they must be where the data files are read."""
    table = tomllib.loads((ROOT / "specmd_env" / "data" / "hardware.toml").read_text())
    assert hardware._package_table() == table
    assert set(models._model_table()) == set(tomllib.loads((ROOT / "specmd_env" / "data" / "models.toml").read_text()))
