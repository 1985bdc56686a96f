"""Where the runs of a sweep execute: in this process, a local process pool, or a Ray cluster.

Every backend calls the same :func:`specmd_env.leaderboard.sweep.execute` on the same :class:`RunSpec`, so the
same specs give the same rows on every backend; only the completion order differs, and the results file
is put in canonical order at the end. ``iter_results(specs)`` yields each row as soon as it is done.

* ``local`` (default): ``concurrent.futures.ProcessPoolExecutor`` with ``workers`` processes
  (``workers=1`` runs in this process, no pool). Workers die with the sweep, even when it is killed
  with SIGKILL (which runs no cleanup): see :func:`die_with_parent`.
* ``ray``: ``ray.init(address=...)`` (an existing cluster) or a local Ray with ``workers`` CPUs; one
  task per run. Ray is the optional extra ``ray`` (``pip install -e ".[ray]"``). Traces given as paths
  must be readable at the same path on every Ray node; catalog traces ship with the package.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Iterable, Iterator

from specmd_env.errors import SpecMDError

from specmd_env.leaderboard.sweep import RunSpec, execute

BACKENDS = ("local", "ray")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: end this worker when the process that started it dies. A SIGKILLed sweep
    runs no cleanup, and its workers would otherwise wait on their task queue forever. Linux: the kernel
    sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); elsewhere a thread polls the parent id."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:  # pragma: no cover - not Linux
        def watch():
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)
        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)


def iter_serial(specs: Iterable[RunSpec]) -> Iterator[dict]:
    for spec in specs:
        yield execute(spec)


def iter_process_pool(specs: list[RunSpec], workers: int) -> Iterator[dict]:
    if workers <= 1 or len(specs) <= 1:
        yield from iter_serial(specs)
        return
    # Keep at most a few tasks per worker in flight: a kill loses little queued work, and memory stays flat.
    window = 4 * workers
    pending = iter(specs)
    with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        running = set()
        for spec in pending:
            running.add(pool.submit(execute, spec))
            if len(running) >= window:
                break
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                spec = next(pending, None)
                if spec is not None:
                    running.add(pool.submit(execute, spec))


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def iter_ray(specs: list[RunSpec], workers: int, address: str | None = None) -> Iterator[dict]:
    try:
        import ray
    except ImportError as exc:
        raise SpecMDError('--backend ray needs Ray: pip install -e ".[ray]"  (or: pip install "ray[default]>=2.9")') \
            from exc
    started_here = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:  # a local Ray; its workers import specmd_env from the installed package
            ray.init(num_cpus=workers, **kwargs)
        started_here = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(execute)
        window = max(8, 4 * int(ray.cluster_resources().get("CPU", workers)))
        pending = iter(specs)
        running = []
        for spec in pending:
            running.append(remote.remote(spec))
            if len(running) >= window:
                break
        while running:
            done, running = ray.wait(running, num_returns=1)
            for ref in done:
                yield ray.get(ref)
                spec = next(pending, None)
                if spec is not None:
                    running.append(remote.remote(spec))
    finally:
        if started_here:
            ray.shutdown()


def iter_results(specs: list[RunSpec], backend: str = "local", workers: int = 1,
                 address: str | None = None) -> Iterator[dict]:
    """Rows of ``specs`` as they complete, on ``backend``."""
    if backend == "local":
        return iter_process_pool(specs, workers)
    if backend == "ray":
        return iter_ray(specs, workers, address)
    raise SpecMDError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
