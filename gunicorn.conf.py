"""gunicorn settings for the standalone hub (``gunicorn wsgi:app`` reads this file).

Environment: ``SSE_BIND`` (default 127.0.0.1:8000), ``WEB_CONCURRENCY``
(default 1), ``SSE_GRACEFUL_TIMEOUT`` (default 10 s), ``SSE_WORKER_CONNECTIONS``
(default 20000), and the hub's own ``SSE_*`` settings.
"""

import errno
import logging
import os
import resource
import signal
import sys
from typing import Any

bind = os.environ.get("SSE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "gevent"
# Each open stream is one greenlet and one connection: as many as the
# descriptors allow, less a reserve for Redis, logs and the listening socket,
# so that accepting never fails with EMFILE (the hard limit is what
# on_starting raises the soft one to).
_FD_RESERVE = 64
_hard_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
worker_connections = int(os.environ.get("SSE_WORKER_CONNECTIONS", "20000"))
if _hard_fds != resource.RLIM_INFINITY:
    worker_connections = max(16, min(worker_connections, _hard_fds - _FD_RESERVE))
graceful_timeout = int(os.environ.get("SSE_GRACEFUL_TIMEOUT", "10"))
# The worker heartbeat to the master; streams themselves never time out here.
timeout = 30
keepalive = 5
accesslog = os.environ.get("SSE_ACCESS_LOG") or None
# gunicorn's default format, but the path without its query string: a
# subscriber's ?token= must not end up in a log file.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(f)s" "%(a)s"'
errorlog = "-"
# gunicorn >= 25's control socket lives at one path in $HOME: two hubs on one
# machine would fight over it, and the hub needs none.
control_socket_disable = True
loglevel = os.environ.get("SSE_LOG_LEVEL", "info")

if workers > 1 and not (os.environ.get("SSE_REDIS_URL") or os.environ.get("SSE_REDIS_SENTINELS")):
    sys.exit(
        f"flask-sse-hub: refusing WEB_CONCURRENCY={workers} with the memory backend: events "
        "published in one worker would never reach the streams of another. Set SSE_REDIS_URL "
        "to use Redis as the backplane, or run one worker (it holds thousands of streams)."
    )


def on_starting(server: Any) -> None:
    # Thousands of streams need thousands of file descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        server.log.info("raised the open-file limit from %s to %s", soft, hard)


def post_worker_init(worker: Any) -> None:
    """On SIGTERM, end the open streams at once so clients reconnect elsewhere.

    gunicorn's worker only stops accepting on SIGTERM and then waits up to the
    graceful timeout for responses to finish, which a stream never does.
    """
    import gevent

    from flask_sse_hub import hubs, shutdown
    from flask_sse_hub.blueprint import default_capacity

    # SSE_MAX_STREAMS defaults to 90 % of the connections this worker may hold.
    for hub in hubs(worker.wsgi).values():
        if hub.config.max_streams is None:
            hub.broker.max_streams = default_capacity(worker.cfg.worker_connections)

    stop_worker = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        if callable(stop_worker):
            stop_worker(signum, frame)
        # In a greenlet of its own: a signal handler runs in the event loop,
        # where nothing may block (and it may interrupt a lock holder).
        gevent.spawn(shutdown, worker.wsgi)

    signal.signal(signal.SIGTERM, on_sigterm)
    _fold_accept_errors(gevent.get_hub())
    worker.log.error_log.addFilter(_ClientGone())


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


def _fold_accept_errors(hub: Any) -> None:
    """Accept errors (out of descriptors or memory) as one rate-limited line, not a traceback.

    gevent's server retries accepting with backoff and reports each failure
    through the hub's error handler, which prints a full traceback: a flood of
    connections would fill the log.
    """
    from flask_sse_hub.logs import RateLimitedLog

    warnings = RateLimitedLog(logging.getLogger("flask_sse_hub"))
    handle_error = hub.handle_error
    exhausted = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

    def fold(context: Any, kind: Any, value: Any, tb: Any) -> None:
        if isinstance(value, OSError) and value.errno in exhausted:
            warnings.warn("accept", "cannot accept connections: %s; retrying", value)
            return
        handle_error(context, kind, value, tb)

    hub.handle_error = fold
