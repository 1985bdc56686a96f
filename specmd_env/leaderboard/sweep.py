"""The leaderboard's grid of runs, how one run executes, and the append-only, resumable results file.

A *run* is one ``simulate()`` call: (trace, capacity, hardware, eviction, prefetch, seed). Its id is a
hash of everything its numbers depend on: the settings, the reward weights, the trace's contents, the
model's and the hardware profile's numbers (not only their names: ``data/hardware.toml`` is meant to be
edited), the source of the simulation code (read at run time: :func:`code_version`) and, for a learned
agent, its files. So a restarted sweep skips exactly the runs already in the file that are still valid,
and recomputes any run whose inputs changed; :meth:`RunLog.finalise` drops the rows they supersede.

Seeds. A seed picks the replayed requests: ``sample_frac`` of the trace's requests drawn without
replacement (kept in trace order) by ``numpy.random.default_rng([seed, n_requests])``, and it seeds the
Random policy. The same seed gives the same requests for every policy of a cell, so policies are
compared on the same workload; different seeds are different request samples, so confidence
intervals over seeds cover both policy randomness and request sampling. ``sample_frac = 1`` replays
every request in order (seeds then matter only for Random).

The file (``runs.csv``). Each finished run is appended as one line and flushed + fsynced before the
next is recorded; a kill loses at most the line being written. On start, :func:`load_rows` keeps the
complete, well-formed rows (a torn last line is dropped, so that run is redone) and the file is
rewritten without the torn tail. At the end, :func:`finalise` rewrites it sorted by run settings
(atomic rename), so the same sweep always leaves a byte-identical file whatever the completion order.
Floats are written with ``repr`` (shortest round-trip form): no precision is lost. One sweep at a
time writes a folder: :func:`folder_lock` refuses a second one (an advisory ``flock``, released by the
kernel even when the holder is killed).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from specmd_env.reward import RewardWeights

SCHEMA = 3  # bump when a run's meaning changes (invalidates every stored run id)
LOCK_NAME = ".leaderboard.lock"

# The source files a run's numbers come from (relative to the specmd_env package). Learned-agent runs
# also go through the environment and the agent interface.
SIMULATION_CODE = ("kernel", "policy.py", "replay.py", "schedule.py", "simulate.py", "result.py", "reward.py",
                   "hardware.py", "models.py", "eviction", "prefetch")
AGENT_CODE = ("envs", "agents")

SETTING_COLUMNS = ("run_id", "trace", "model", "hardware", "capacity", "eviction", "prefetch", "preset", "seed",
                   "sample_frac", "agent", "oracle")
METRIC_COLUMNS = ("reward", "hit_rate", "token_hit_rate", "collision_misses", "stall_seconds",
                  "mean_ttft_seconds", "mean_tpot_seconds", "capacity_slots", "requests", "accesses", "hits",
                  "misses", "compulsory_misses", "capacity_misses", "late_prefetch_misses", "prefetches_issued",
                  "prefetches_used", "prefetches_wasted", "prefetches_skipped", "transfers", "bypassed",
                  "dropped_experts", "evictions", "token_accesses", "total_seconds", "prompt_tokens",
                  "output_tokens", "prefetch_covered_rate", "degraded_mass_fraction", "p50_ttft_seconds",
                  "p99_ttft_seconds", "p50_tpot_seconds", "p99_tpot_seconds")
COLUMNS = SETTING_COLUMNS + METRIC_COLUMNS
INT_COLUMNS = frozenset({"seed", "capacity_slots", "requests", "accesses", "hits", "misses", "compulsory_misses",
                         "capacity_misses", "collision_misses", "late_prefetch_misses", "prefetches_issued",
                         "prefetches_used", "prefetches_wasted", "prefetches_skipped", "transfers", "bypassed",
                         "dropped_experts", "evictions", "token_accesses", "prompt_tokens", "output_tokens",
                         "oracle"})
FLOAT_COLUMNS = frozenset({"capacity", "sample_frac", "reward", "hit_rate", "token_hit_rate", "stall_seconds",
                           "mean_ttft_seconds", "mean_tpot_seconds", "total_seconds", "prefetch_covered_rate",
                           "degraded_mass_fraction", "p50_ttft_seconds", "p99_ttft_seconds", "p50_tpot_seconds",
                           "p99_tpot_seconds"})


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; picklable, so it travels to process-pool and Ray workers."""

    trace: str              # label in the table (catalog name, or the file's stem)
    trace_ref: str          # what the worker loads: a catalog name or an absolute path
    trace_fingerprint: str
    model: str
    hardware: str
    inputs: str             # fingerprint of the model's and the hardware profile's numbers and of the code
    capacity: float
    eviction: str           # a policy spec (name:key=value or file.py:NAME), or the preset's eviction
    prefetch: str
    seed: int
    sample_frac: float
    requests: tuple[int, ...] | None   # trace request indices, or None for all
    weights: tuple[float, float, float]  # RewardWeights (collision, latency, miss)
    agent: str = ""         # learned agent name ("" for handcrafted policies); what it decides is labelled "learned:<name>"
    agent_path: str = ""
    agent_fingerprint: str = ""  # the agent's files (a retrained agent is a new run)
    delay: float = 0.0      # test hook: seconds to sleep before the run (never part of the id)
    preset: str = ""        # a named system (specmd_env/data/presets.toml): its settings fill the rest

    @property
    def oracle(self) -> bool:
        from specmd_env.leaderboard.rows import is_oracle
        return is_oracle(self.eviction, self.prefetch)

    @property
    def run_id(self) -> str:
        key = asdict(self)
        for name in ("trace_ref", "agent_path", "delay"):  # where a file lies or how fast: not what it measures
            key.pop(name)
        if not self.preset:  # runs without a preset keep the ids they had before presets were rows
            key.pop("preset")
        key["schema"] = SCHEMA
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def sort_key(self) -> tuple:
        return (self.trace, self.capacity, self.hardware, self.preset, self.eviction, self.prefetch, self.seed,
                self.run_id)

    @property
    def settings(self) -> tuple:
        """What the row of this run is about (its table cell), whatever numbers produced it."""
        return settings_of(asdict(self))


def settings_of(row: dict) -> tuple:
    return tuple(row[c] for c in ("trace", "model", "hardware", "capacity", "eviction", "prefetch", "preset", "seed",
                                  "sample_frac", "agent"))


# -- what a run depends on, besides its settings ------------------------------------------------------
def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _source_files(entries) -> list[Path]:
    root = Path(__file__).resolve().parent.parent
    files = []
    for entry in entries:
        path = root / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def code_version(*, learned: bool = False) -> str:
    """A hash of the simulation code's source as it is on disk now (SIMULATION_CODE, plus AGENT_CODE for
    learned agents): editing the kernel or a policy changes every run id, so a resume recomputes."""
    entries = SIMULATION_CODE + (AGENT_CODE if learned else ())
    return _digest(*(f"{p.name}\0".encode() + p.read_bytes() for p in _source_files(entries)))


def inputs_fingerprint(model: str, hardware: str, code: str) -> str:
    """The numbers of a model spec and of a hardware profile (as the data files say now), and the code."""
    from specmd_env.hardware import get_profile
    from specmd_env.models import get_model
    return _digest(asdict(get_model(model)), asdict(get_profile(hardware)), code)


def file_fingerprint(*paths: Path) -> str:
    """The bytes of some files (a learned agent's zip and metadata), read in pieces."""
    h = hashlib.sha256()
    for path in paths:
        if Path(path).is_file():
            with open(path, "rb") as fh:
                for piece in iter(lambda: fh.read(1 << 20), b""):
                    h.update(piece)
    return h.hexdigest()[:16]


# -- traces ------------------------------------------------------------------------------------------
def file_stamp(path) -> tuple | None:
    """(inode, size, modification time) of a file, or None: part of cache keys, so a process that runs
    several sweeps never reuses what it read from a file that has changed since."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _trace_file(trace_ref: str):
    from specmd_env.catalog import TRACES, trace_path
    return trace_path(trace_ref) if trace_ref in TRACES else trace_ref


def load(trace_ref: str):
    """A trace by catalog name or path, cached per process (workers load each trace once)."""
    return _load(trace_ref, file_stamp(_trace_file(trace_ref)))


@lru_cache(maxsize=16)
def _load(trace_ref: str, stamp):
    from specmd_env.catalog import get_trace
    return get_trace(trace_ref)


def trace_label_and_ref(trace: str) -> tuple[str, str]:
    from specmd_env.catalog import TRACES
    if trace in TRACES:
        return trace, trace
    path = Path(trace).resolve()
    return path.stem, str(path)


def fingerprint(trace_ref: str) -> str:
    """A content hash of the routing (experts, request layout, spec scores, gate weights) and the model
    name: the trace's identity in run ids. Hashed in pieces, so a memory-mapped trace is never copied whole."""
    return _fingerprint(trace_ref, file_stamp(_trace_file(trace_ref)))


@lru_cache(maxsize=16)
def _fingerprint(trace_ref: str, stamp) -> str:
    t = load(trace_ref)
    h = hashlib.sha256()
    for array in (t.expert_ids, t.request_offsets, t.prompt_lengths, t.spec_scores, t.gate_weights):
        if array is not None:
            h.update(str((array.dtype.str, array.shape)).encode())
            rows = max(1, (16 << 20) // max(1, array[:1].nbytes))
            for start in range(0, len(array), rows):
                t.check_file()
                h.update(np.ascontiguousarray(array[start:start + rows]))
    h.update(str(t.model).encode())
    return h.hexdigest()[:16]


def sample_requests(num_requests: int, seed: int, sample_frac: float) -> tuple[int, ...] | None:
    """The request indices seed ``seed`` replays (None: all, in order). See the module docstring."""
    if not 0 < sample_frac <= 1:
        raise ValueError(f"sample_frac must be in (0, 1], got {sample_frac!r}")
    if sample_frac == 1:
        return None
    m = max(1, int(round(sample_frac * num_requests)))
    rng = np.random.default_rng([seed, num_requests])
    return tuple(int(i) for i in np.sort(rng.choice(num_requests, size=m, replace=False)))


def build_grid(traces, capacities, hardware, evictions, prefetches, seeds, *, sample_frac=0.8,
               weights: RewardWeights = RewardWeights(), models=None, delay: float = 0.0, presets=(),
               cross_all: bool = False, skipped: list | None = None) -> list[RunSpec]:
    """Every run of the rows (:func:`specmd_env.leaderboard.rows.grid_rows`: evictions x prefetchers as
    that module says, plus the presets) x traces x capacities x hardware x seeds, in a fixed order.

    models: optional model name per trace (default: each trace's own model). Rows that cannot run on a
    trace -- a prefetcher that needs speculative scores the trace lacks, a preset impossible there (e.g.
    per-layer caches with fewer slots than layers) -- are left out, and said so in ``skipped``."""
    from specmd_env.leaderboard.rows import grid_rows
    from specmd_env.models import get_model

    rows = grid_rows(evictions, prefetches, presets, cross_all=cross_all)
    specs = []
    w = (float(weights.collision), float(weights.latency), float(weights.miss))
    code = code_version()
    left_out: dict[tuple, list] = {}   # (row, trace, why) -> the (capacity, hardware) cells
    for i, trace in enumerate(traces):
        label, ref = trace_label_and_ref(trace)
        t = load(ref)
        model = get_model(models[i] if models else t.model).name
        fp = fingerprint(ref)
        for capacity in capacities:
            for hw in hardware:
                inputs = inputs_fingerprint(model, hw, code)
                for ev, pf, preset in rows:
                    problem = row_problem(ref, model, hw, float(capacity), ev, pf, preset)
                    if problem:
                        row = f"preset:{preset}" if preset else f"{ev} + {pf}"
                        left_out.setdefault((row, label, problem), []).append((float(capacity), hw))
                        continue
                    row_inputs = _digest(inputs, user_files_fingerprint(ev, pf)) if ".py:" in ev + pf else inputs
                    for seed in seeds:
                        specs.append(RunSpec(label, ref, fp, model, hw, row_inputs, float(capacity), ev, pf,
                                             int(seed), float(sample_frac),
                                             sample_requests(t.num_requests, int(seed), sample_frac), w,
                                             delay=delay, preset=preset))
    if skipped is not None:
        cells = len(capacities) * len(hardware)
        for (row, label, problem), where in left_out.items():
            caps = sorted({c for c, _ in where})
            at = "in every cell" if len(where) == cells else f"at capacity {', '.join(f'{c:g}' for c in caps)}"
            if len(where) not in (cells, len(caps) * len(hardware)):
                at += f" on {', '.join(sorted({h for _, h in where}))}"
            skipped.append(f"{row} left out on {label} {at}: {problem}")
    specs.sort(key=RunSpec.sort_key)
    return specs


def user_files_fingerprint(*specs: str) -> str:
    """The bytes of the user's policy files named by ``file.py:NAME`` specs: editing one reruns its rows."""
    return file_fingerprint(*(Path(spec.rpartition(":")[0]) for spec in specs if ".py:" in spec))


@lru_cache(maxsize=4096)
def row_problem(trace_ref: str, model: str, hardware: str, capacity: float, eviction: str, prefetch: str,
                preset: str) -> str:
    """Why a row cannot run on a trace and cell ("" if it can). Speculative scores are checked for every
    row; a preset's settings by building its replay for one request (the same checks as the run)."""
    from specmd_env.errors import SpecMDError
    from specmd_env.leaderboard.rows import _prefetcher

    t = load(trace_ref)
    if not preset:
        if t.spec_scores is None and _prefetcher(prefetch).needs_spec_scores:
            return f"prefetcher {prefetch!r} needs speculative scores, which the trace has none of"
        return ""
    from specmd_env.presets import apply_preset
    from specmd_env.replay import Replay
    from specmd_env.simulate import DEFAULTS
    given = {**DEFAULTS, "model": model, "hardware": hardware, "capacity": capacity}
    settings = {k: v for k, v in apply_preset(preset, given, DEFAULTS).items() if k != "preset"}
    settings["requests"] = [0]
    try:
        Replay(t, **settings)
    except SpecMDError as exc:
        return str(exc)
    return ""


# -- one run -----------------------------------------------------------------------------------------
def execute(spec: RunSpec) -> dict:
    """Run one spec and return its CSV row (a dict keyed by COLUMNS). Deterministic in the spec."""
    from specmd_env.simulate import simulate

    if spec.delay:
        time.sleep(spec.delay)
    trace = load(spec.trace_ref)
    if spec.agent:
        from specmd_env.leaderboard.learned import run_agent
        try:
            result = run_agent(spec, trace)
        except Exception as exc:  # a learned agent that fails is skipped with a note, never fatal
            return {"run_id": spec.run_id, "error": f"{spec.eviction}: {type(exc).__name__}: {exc}"}
    else:
        result = simulate(trace, model=spec.model, hardware=spec.hardware, capacity=spec.capacity,
                          eviction=spec.eviction, prefetch=spec.prefetch, preset=spec.preset or None, seed=spec.seed,
                          requests=None if spec.requests is None else list(spec.requests))
    weights = RewardWeights(*spec.weights)
    metrics = result.as_dict()
    row = {"run_id": spec.run_id, "trace": spec.trace, "model": spec.model, "hardware": spec.hardware,
           "capacity": spec.capacity, "eviction": spec.eviction, "prefetch": spec.prefetch, "preset": spec.preset,
           "seed": spec.seed,
           "sample_frac": spec.sample_frac, "agent": spec.agent, "oracle": int(spec.oracle),
           "reward": weights.score(result),
           "requests": len(result.ttft_seconds)}
    for name in METRIC_COLUMNS:
        if name not in row:
            row[name] = metrics[name]
    return row


# -- the results file --------------------------------------------------------------------------------
def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def format_row(row: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_format(row[c]) for c in COLUMNS])
    return buf.getvalue()


def header() -> str:
    return ",".join(COLUMNS) + "\n"


def _parse(record: list[str]) -> dict | None:
    if len(record) != len(COLUMNS):
        return None
    row = dict(zip(COLUMNS, record))
    try:
        for c in INT_COLUMNS:
            row[c] = int(row[c])
        for c in FLOAT_COLUMNS:
            row[c] = float(row[c])
    except ValueError:
        return None
    if len(row["run_id"]) != 16:
        return None
    return row


def load_rows(path: Path) -> dict[str, dict]:
    """The complete rows of a results file, by run id. A torn last line (no newline: the process was
    killed while writing it) and malformed lines are ignored; a file with another header is an error."""
    path = Path(path)
    if not path.is_file():
        return {}
    text = path.read_text()
    if not text:
        return {}
    lines = text.split("\n")
    # After split, the last element is '' when the file ends with a newline; otherwise it is a torn line.
    complete = lines[:-1]
    if not complete:
        return {}
    if complete[0] + "\n" != header():
        raise ValueError(f"{path} has a different header (another schema?); move it away or pick another --out")
    rows: dict[str, dict] = {}
    for record in csv.reader(complete[1:]):
        row = _parse(record)
        if row is not None:
            rows.setdefault(row["run_id"], row)
    return rows


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)  # never a shared name
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _sort_key(row: dict) -> tuple:
    return (row["trace"], row["capacity"], row["hardware"], row["preset"], row["eviction"], row["prefetch"],
            row["seed"], row["run_id"])


def write_rows(path: Path, rows) -> None:
    """Rewrite the file with ``rows`` in canonical (sorted) order, atomically."""
    ordered = sorted(rows, key=_sort_key)
    _atomic_write(Path(path), header() + "".join(format_row(r) for r in ordered))


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold the output folder for one sweep. A second sweep on the same folder is refused at once with a
    SpecMDError naming the holder (its rewrites of runs.csv would lose the first one's rows); the lock is an
    advisory flock that the kernel releases when the holder exits, even by SIGKILL."""
    from specmd_env.errors import SpecMDError
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise SpecMDError(f"--out {str(folder)!r} is in use by another specmd leaderboard (pid {holder}); "
                              "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class RunLog:
    """The append-only results file of a sweep: ``open`` (keeps finished runs, drops a torn tail),
    ``append`` (one fsynced line per run), ``finalise`` (canonical order)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = load_rows(self.path)
        write_rows(self.path, self.rows.values())   # drops any torn or malformed line before appending
        self._fh = open(self.path, "a")

    def __contains__(self, run_id: str) -> bool:
        return run_id in self.rows

    def append(self, row: dict) -> None:
        if row["run_id"] in self.rows:
            return
        self._fh.write(format_row(row))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows[row["run_id"]] = row

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def finalise(self, specs=()) -> None:
        """Rewrite the file in canonical order, without the rows that ``specs`` supersede: rows for the same
        settings whose inputs (hardware numbers, code, trace contents...) have changed since."""
        self.close()
        current = {s.run_id for s in specs}
        replaced = {s.settings for s in specs}
        self.rows = {rid: row for rid, row in self.rows.items()
                     if rid in current or settings_of(row) not in replaced}
        write_rows(self.path, self.rows.values())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
