"""One thread per process for the hub's periodic work (metrics, presence leases).

Jobs are cheap calls made every :data:`INTERVAL` seconds; each decides for
itself whether its time has come. Under gevent the thread is a greenlet that
wakes four times a second: no per-stream timer is involved.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from .logs import RateLimitedLog

log = logging.getLogger("flask_sse_hub")

#: Seconds between two rounds of jobs.
INTERVAL = 0.25

_lock = threading.Lock()
_jobs: list[Callable[[], None]] = []
_started_in: int | None = None  # the pid whose thread runs (a forked child starts its own)


def every_tick(job: Callable[[], None]) -> None:
    """Call ``job()`` on every tick from now on, in this process; starts the thread."""
    global _started_in
    with _lock:
        if _started_in != os.getpid():
            _jobs.clear()  # inherited from the parent over a fork: not ours to run
            _started_in = os.getpid()
            threading.Thread(target=_run, name="sse-hub-ticker", daemon=True).start()
        _jobs.append(job)


def stop(job: Callable[[], None]) -> None:
    """Call ``job`` no more (a hub shutting down)."""
    with _lock:
        if job in _jobs:
            _jobs.remove(job)


def _run() -> None:
    warnings = RateLimitedLog(log)
    while True:
        time.sleep(INTERVAL)
        with _lock:
            jobs = list(_jobs)
        for job in jobs:
            try:
                job()
            except Exception as exc:  # a failing job must not end the others
                name = getattr(job, "__qualname__", repr(job))
                warnings.warn(f"tick {name}", "periodic %s failed: %r", name, exc)
