"""The socket under a stream: finding it, cutting it, and noticing that its client is gone.

WSGI hides the connection, but gunicorn (``gunicorn.socket``) and Werkzeug's
dev server (``werkzeug.socket``) expose it, and a stream needs it for three
things no WSGI call does:

* **cutting** it, so that a write blocked on a client that stopped reading
  returns at once (slow-consumer drops, shutdown);
* **noticing a closed client while idle**: a stream blocked on its queue
  writes nothing, so a client that sent FIN or RST would keep its slot (and
  descriptor) until the next heartbeat. One :class:`ClosedPeerWatcher` per
  hub polls every stream's socket for hang-up (``POLLRDHUP``, which needs no
  read and so also works under TLS);
* **noticing a vanished client** (no FIN ever comes): TCP keep-alive and
  ``TCP_USER_TIMEOUT`` make the kernel give up on it within
  ``SSE_DEAD_CLIENT_SECONDS``, which the watcher then sees as an error.

The promises: docs/protocol.md#disconnects, docs/protocol.md#shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("flask_sse_hub")

try:  # the C pollers, even under gevent's patching: a zero timeout never blocks
    from gevent.monkey import get_original

    _poll: Callable[[], Any] = get_original("select", "poll")
    # epoll (Linux): a sweep costs what is ready, not what is watched (poll's
    # was 5 % of a worker's CPU at 10 000 streams, every half second).
    # (gevent's patching removes it from ``select``: asked of the original module.)
    try:
        _epoll: Callable[[], Any] | None = get_original("select", "epoll")
    except AttributeError:  # not Linux
        _epoll = None
except ImportError:  # pragma: no cover - gevent is a dependency, but be lenient
    _poll = select.poll
    _epoll = getattr(select, "epoll", None)

#: Linux reports a peer's FIN as POLLRDHUP without anything being read.
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
_GONE = _POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


def gevent_patched() -> bool:
    """True when gevent made sockets cooperative (its gunicorn worker does): waits yield."""
    try:
        from gevent.monkey import is_module_patched
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(is_module_patched("socket"))


def stream_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The client connection of this request, when the server exposes it."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    return sock if isinstance(sock, socket.socket) else None


def send_at_once(sock: socket.socket | None) -> None:
    """Let ``sock.sendall`` of a gevent socket skip its kernel query before every send.

    gevent's ``sendall`` asks for ``SO_SNDBUF`` on every call (chunking large
    writes for PyPy's sake): a second system call for each chunk a stream
    writes, a twelfth of a worker's CPU in a connect storm. A stream's chunks
    are small, and one ``send`` (gevent's, which waits for the socket to take
    data) mostly takes all of one; what it leaves goes through gevent's own
    ``sendall``. Done by giving the socket a subclass of its class (no other
    way reaches the ``sendall`` gunicorn calls); other sockets are left alone.
    """
    if sock is None:
        return
    cls = type(sock)
    quick = _QUICK.get(cls)
    if quick is None:
        if cls.__module__ != "gevent._socket3" or cls.__name__ != "socket":
            return  # not gevent's plain socket (TLS, the standard library's): as it is
        quick = _QUICK[cls] = _sending_at_once(cls)
    sock.__class__ = quick


def _sending_at_once(cls: type[socket.socket]) -> type:
    sendall = cls.sendall

    def send_then_all(self: socket.socket, data: bytes, flags: int = 0) -> None:
        sent = self.send(data, flags) if data else 0
        if sent < len(data):
            sendall(self, memoryview(data)[sent:], flags)

    return type("StreamSocket", (cls,), {"__slots__": (), "sendall": send_then_all})


#: gevent's socket class -> its subclass with the quicker ``sendall``.
_QUICK: dict[type, type] = {}


def cut(sock: socket.socket | None) -> None:
    """Shut both directions: a write blocked on this socket returns at once."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def forget_error(sock: socket.socket | None) -> None:
    """Clear a connection's pending error (a peer the kernel gave up on) and shut it.

    The server's last write to it then fails quietly (EPIPE) instead of
    raising the timeout that killed it, which gunicorn logs with a traceback:
    one per vanished client.
    """
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        cut(sock)


def end_of_requests(sock: socket.socket | None) -> None:
    """Shut the read side: the server's wait for a next request on it sees EOF at once.

    The hub ends a stream (age, shutdown, slow): the client's reconnect then
    opens a new connection, to another worker maybe, instead of a kept-alive one.
    """
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


def give_up_on_silence(sock: socket.socket | None, seconds: float, heartbeat: float) -> None:
    """Let the kernel drop the connection when its peer has vanished for ``seconds``.

    A heartbeat left unacknowledged for ``TCP_USER_TIMEOUT`` resets the
    connection; keep-alive probes do the same for a connection with nothing
    in flight. The first unacknowledged heartbeat can be written up to one
    heartbeat after the peer vanished, so the timeout is what remains of
    ``seconds`` after it.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    # Less a second: the watcher notices the reset at its next sweep.
    budget = max(seconds - heartbeat - 1.0, seconds / 2, 1.0)
    with contextlib.suppress(OSError, AttributeError):  # not Linux: keep-alive at least
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(budget / 3)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(budget / 6)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(budget * 1000))


def _new_poller() -> Any:
    """An epoll, or a poll: where there is no epoll, or no descriptor left for one."""
    if _epoll is not None:
        with contextlib.suppress(OSError):
            return _epoll()
    return _poll()


class ClosedPeerWatcher:
    """One poller over the sockets of every stream: ``on_gone`` runs for a closed client.

    A non-blocking ``epoll_wait`` (``poll`` where there is no epoll) of all
    registered descriptors every ``interval`` seconds, in one thread (a
    greenlet under gevent): one system call per interval, whose work is the
    clients that left, instead of a timer and a probe per stream.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._poller: Any = None
        self._watched: dict[int, Callable[[], None]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket | None, on_gone: Callable[[], None]) -> int | None:
        """Call ``on_gone`` (once) when the client of ``sock`` hangs up; returns the key."""
        if sock is None:
            return None
        try:
            fd = sock.fileno()
        except OSError:
            return None
        with self._lock:
            if self._poller is None:
                self._poller = _new_poller()
            try:
                self._poller.register(fd, _GONE)
            except FileExistsError:  # epoll: still registered (a descriptor not forgotten)
                self._poller.modify(fd, _GONE)
            self._watched[fd] = on_gone
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sse-closed-peers", daemon=True,
                )
                self._thread.start()
        return fd

    def forget(self, fd: int | None) -> None:
        """Stop watching (before the server closes the descriptor, which may be reused)."""
        if fd is None:
            return
        with self._lock:
            if self._watched.pop(fd, None) is not None:
                with contextlib.suppress(KeyError, OSError, ValueError):
                    self._poller.unregister(fd)

    def __len__(self) -> int:
        return len(self._watched)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self._sweep()
            except Exception:  # never let one bad descriptor stop the watching
                log.exception("the closed-client watcher failed a sweep")

    def _sweep(self) -> None:
        with self._lock:
            if not self._watched:
                return
            ready = self._poller.poll(0)
            gone = []
            for fd, mask in ready:
                if mask & _GONE:
                    callback = self._watched.pop(fd, None)
                    with contextlib.suppress(KeyError, OSError, ValueError):
                        self._poller.unregister(fd)
                    if callback is not None:
                        gone.append(callback)
        for callback in gone:  # outside the lock: they take the broker's
            callback()
