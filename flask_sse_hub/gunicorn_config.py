"""gunicorn settings for a hub: ``gunicorn -c python:flask_sse_hub.gunicorn_config app:app``.

What a stream needs from its server, in one place, for the standalone hub
(``flask-sse-hub``, ``gunicorn wsgi:app`` in a checkout) and for library apps
alike:

* the **gevent** worker (each stream a greenlet) with many connections, but
  fewer than the descriptors allow, so that accepting never fails (EMFILE);
* the open-file limit raised to its hard limit;
* **SIGTERM ends every stream at once** (gunicorn would otherwise wait the
  graceful timeout for responses that never finish), in gevent and threaded
  workers alike;
* the **one-worker guard**: a hub with the memory backend in several worker
  processes would split its subscribers, so such a worker refuses to boot,
  however the worker count was given (``-w``, ``WEB_CONCURRENCY``, a config);
* **metrics summed over the workers**: ``PROMETHEUS_MULTIPROC_DIR`` set to a
  directory made for the run (or yours, emptied at start), a dead worker's
  gauges dropped, the directory removed at exit;
* a **garbage collector** that never scans the app as loaded and rarely the
  streams (:func:`_tune_gc`);
* an access log whose lines carry the path without its query string (a
  subscriber's ``?token=`` stays out of it), the hub's log lines in
  gunicorn's error log, no control socket (gunicorn >= 25 puts one at a fixed
  path in ``$HOME``, which two hubs on one machine would fight over).

Environment: ``SSE_BIND`` (default ``127.0.0.1:8000``), ``WEB_CONCURRENCY``
(default 1), ``SSE_GRACEFUL_TIMEOUT`` (default 10 s),
``SSE_WORKER_CONNECTIONS`` (default 20000), ``SSE_LOG_LEVEL``,
``SSE_ACCESS_LOG`` (a path, or ``-``), ``SSE_GC_THRESHOLD`` (default
``50000,20,100``). Command-line options given to gunicorn win over these, as
usual.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

#: Descriptors kept back from ``worker_connections``: Redis, logs, the listener.
FD_RESERVE = 64

bind = os.environ.get("SSE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "gevent"
worker_connections = int(os.environ.get("SSE_WORKER_CONNECTIONS", "20000"))
_hard_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
if _hard_fds != resource.RLIM_INFINITY:
    worker_connections = max(16, min(worker_connections, _hard_fds - FD_RESERVE))
graceful_timeout = int(os.environ.get("SSE_GRACEFUL_TIMEOUT", "10"))
# The worker's heartbeat to the master; streams themselves never time out here.
timeout = 30
keepalive = 5
accesslog = os.environ.get("SSE_ACCESS_LOG") or None
# gunicorn's default format, with %(U)s (the path) instead of %(r)s (the
# request line with its query string).
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(f)s" "%(a)s"'
errorlog = "-"
control_socket_disable = True
loglevel = os.environ.get("SSE_LOG_LEVEL", "info")


def on_starting(server: Any) -> None:
    """Raise the open-file limit: thousands of streams need thousands of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        server.log.info("raised the open-file limit from %s to %s", soft, hard)
    _prepare_metrics_dir(server)
    if server.cfg.workers > 1 and not _redis_in_environment():
        server.log.info(
            "%d workers: every hub must use Redis (SSE_REDIS_URL); a worker whose hub uses "
            "the memory backend will refuse to boot", server.cfg.workers,
        )


#: The variable prometheus_client's multiprocess mode reads; the directory we made, if any.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_made_metrics_dir: list[str] = []


def _prepare_metrics_dir(server: Any) -> None:
    """Every worker writes its metrics there; any worker's ``/metrics`` sums them all.

    Set before the workers fork (and before they import prometheus_client,
    which picks its storage at import). A directory given by the operator is
    emptied of an earlier run's files, as prometheus_client requires.
    """
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
        server.log.info("metrics of all workers in %s (%s)", given, METRICS_DIR_ENV)
        return
    made = tempfile.mkdtemp(prefix="flask-sse-hub-metrics-")
    _made_metrics_dir.append(made)
    os.environ[METRICS_DIR_ENV] = made


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended: its open streams leave the summed gauges."""
    if os.environ.get(METRICS_DIR_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """The metrics directory made for this run goes with it."""
    for made in _made_metrics_dir:
        shutil.rmtree(made, ignore_errors=True)


def post_fork(server: Any, worker: Any) -> None:
    """Before the app loads in the worker: its hubs' log lines go to gunicorn's error log."""
    _use_gunicorn_logging(worker)


def post_worker_init(worker: Any) -> None:
    """Fit the app's hubs to this worker; refuse to boot a split memory hub."""
    from .api import hubs

    _tune_gc(worker)
    app = _flask_app(worker.wsgi)
    if app is None:  # not a Flask app: nothing of ours to look after
        return
    found = hubs(app)
    if worker.cfg.workers > 1:
        memory = [name for name, hub in found.items() if hub.broker.backend.name == "memory"]
        if memory:
            worker.log.error(
                "flask-sse-hub: refusing to run %d workers with the memory backend (hub %s): "
                "events published in one worker would never reach the streams of another. "
                "Set SSE_REDIS_URL to use Redis as the backplane, or run one worker "
                "(it holds thousands of streams).", worker.cfg.workers, ", ".join(memory),
            )
            sys.exit(3)  # gunicorn's "worker failed to boot": the master stops too
    _fit_capacity(worker, found)
    _end_streams_on_sigterm(worker, app)
    worker.log.error_log.addFilter(_ClientGone())
    if "gevent" in worker.cfg.worker_class_str:
        import gevent

        _fold_accept_errors(gevent.get_hub())


#: The worker's garbage-collector thresholds (CPython's are 700, 10, 10); see _tune_gc.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc(worker: Any) -> None:
    """A collector that scans what lives long (streams) rarely, and the loaded app never.

    With CPython's thresholds a worker holding 10 000 streams (a few hundred
    thousand objects, none of them in a reference cycle) runs a collection
    every 700 allocations and a full one each time the objects grow by a
    quarter: a connect storm spent about a quarter of its CPU in the collector,
    and each full pass is a pause for every stream. The cyclic garbage a
    request does make (an error's traceback) dies young and still goes at the
    next young collection. ``SSE_GC_THRESHOLD`` (``50000,20,100``) sets other
    thresholds; ``700,10,10`` restores CPython's.
    """
    given = os.environ.get("SSE_GC_THRESHOLD")
    parts = given.split(",") if given else [str(n) for n in GC_THRESHOLDS]
    if len(parts) != 3 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        worker.log.error(
            "SSE_GC_THRESHOLD must be three positive integers (e.g. 50000,20,100), not %r", given,
        )
        sys.exit(3)
    gc.freeze()  # the app as loaded: never scanned again
    gc.set_threshold(*(int(part) for part in parts))


class _ClientGone(logging.Filter):
    """gunicorn logs a traceback for a write that fails, unless it is EPIPE/ECONNRESET/ENOTCONN.

    A stream's client that vanished (the kernel gave up: ETIMEDOUT, unreachable)
    or whose socket the hub cut (slow, shutdown: gevent reports EBADF to the
    blocked write) is the normal end of a stream, not a server error.
    """

    GONE = frozenset({errno.EBADF, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH})

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            record.msg == "Socket error processing request."
            and isinstance(exc, OSError) and exc.errno in self.GONE
        )


def _redis_in_environment() -> bool:
    return bool(os.environ.get("SSE_REDIS_URL") or os.environ.get("SSE_REDIS_SENTINELS"))


def _flask_app(wsgi: Any) -> Any:
    """The Flask app behind ``wsgi`` (itself, or one wrapped by middleware such as ProxyFix)."""
    from flask import Flask

    seen = 0
    while wsgi is not None and seen < 8:
        if isinstance(wsgi, Flask):
            return wsgi
        wsgi = getattr(wsgi, "app", None) or getattr(getattr(wsgi, "__self__", None), "app", None)
        seen += 1
    return None


def _fit_capacity(worker: Any, found: dict[str, Any]) -> None:
    """``SSE_MAX_STREAMS`` defaults to 90 % of what this worker may hold at once."""
    from .blueprint import default_capacity

    threaded = "gthread" in worker.cfg.worker_class_str
    limit = worker.cfg.threads if threaded else worker.cfg.worker_connections
    for hub in found.values():
        if hub.config.max_streams is None:
            hub.broker.max_streams = default_capacity(limit)
        if threaded:
            hub.threads = worker.cfg.threads


def _end_streams_on_sigterm(worker: Any, app: Any) -> None:
    """On SIGTERM, end the open streams at once so clients reconnect elsewhere.

    gunicorn's worker only stops accepting on SIGTERM and then waits up to the
    graceful timeout for responses to finish, which a stream never does.
    """
    from .api import shutdown

    stop_worker = signal.getsignal(signal.SIGTERM)
    gevent_worker = "gevent" in worker.cfg.worker_class_str

    def on_sigterm(signum: int, frame: Any) -> None:
        if callable(stop_worker):
            stop_worker(signum, frame)
        # Not in the handler itself: it runs between two bytecodes of whatever
        # was running (maybe a lock holder), where nothing may block.
        if gevent_worker:
            import gevent

            gevent.spawn(shutdown, app)
        else:
            threading.Thread(target=shutdown, args=(app,), name="sse-shutdown").start()

    signal.signal(signal.SIGTERM, on_sigterm)


def _use_gunicorn_logging(worker: Any) -> None:
    """The hub's log lines (``flask_sse_hub``) in gunicorn's error log."""
    ours = logging.getLogger("flask_sse_hub")
    theirs = worker.log.error_log
    if not ours.handlers and theirs.handlers:
        ours.handlers = list(theirs.handlers)
        ours.setLevel(theirs.level)
        ours.propagate = False


def _fold_accept_errors(hub: Any) -> None:
    """Accept errors (out of descriptors or memory) as one rate-limited line, not a traceback.

    gevent's server retries accepting with backoff and reports each failure
    through the hub's error handler, which prints a full traceback: a flood of
    connections would fill the log.
    """
    from .logs import RateLimitedLog

    warnings = RateLimitedLog(logging.getLogger("flask_sse_hub"))
    handle_error = hub.handle_error
    exhausted = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

    def fold(context: Any, kind: Any, value: Any, tb: Any) -> None:
        if isinstance(value, OSError) and value.errno in exhausted:
            warnings.warn("accept", "cannot accept connections: %s; retrying", value)
            return
        handle_error(context, kind, value, tb)

    hub.handle_error = fold
