"""Many ``text/event-stream`` responses at once from one test process, without threads.

:class:`~tests.support.sse_client.SSEClient` blocks on one socket; a storm of
thousands of resuming clients needs thousands of sockets read side by side.
:class:`ManyStreams` drives them all from one ``selectors`` loop: non-blocking
``connect``, the ``GET`` request (with any headers, e.g. ``Last-Event-ID``),
the HTTP/1.1 response head, the body framing (chunked, ``Content-Length`` or
close-delimited) and one :class:`~tests.support.sse_parser.EventStreamParser`
per stream. Standard library only.

Typical use::

    with ManyStreams("127.0.0.1", port) as many:
        streams = [many.open(f"/stream?channel=c{n}") for n in range(2000)]
        assert many.run_until(lambda: all(s.events for s in streams), timeout=30)
        assert {s.status for s in streams} == {200}

Connections start in waves: at most ``wave`` new ``connect`` calls per turn
of the loop, and at most ``max_pending`` connections at a time that have not
received a response head yet. A connection whose head has not arrived may sit
in the server's accept queue; keeping fewer of them than the server's listen
backlog (gunicorn's default is 2048) means no SYN is dropped and no connection
waits for a retransmission. A connection refused or reset before its first
response byte is tried again, a few times, with a short back-off.

The process's open-file soft limit is raised (up to the hard limit) when the
streams need more descriptors than it allows.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import resource
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from .sse_client import HTTPProtocolError, _ChunkedDecoder
from .sse_parser import Event, EventStreamParser

__all__ = ["ManyStreams", "StreamHandle"]

_RECV_SIZE = 65536
_MAX_HEAD = 64 * 1024
#: Reads per readable socket per turn of the loop: no stream starves the others.
_READS_PER_TURN = 4
#: Descriptors kept free beyond the streams (the test's own files, sockets, pipes).
_FD_RESERVE = 256

# Connection states.
_QUEUED, _CONNECTING, _SENDING, _HEAD, _BODY, _DONE = range(6)
#: Failures of a connection attempt that are worth another attempt.
_RETRYABLE = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EAGAIN}


class StreamHandle:
    """One stream of a :class:`ManyStreams`: the request, and what came back so far.

    Attributes: ``path``, ``request_headers``; ``status``, ``reason``,
    ``headers`` (lower-cased names, repeats joined with ``", "``) once the head
    arrived; ``events`` (every parsed event, in order) with ``arrivals`` (the
    monotonic time each was received); ``parser`` (its ``comments`` and
    ``retry``); ``body_bytes`` (payload after de-chunking).

    ``closed``: the stream is over (its body ended by its framing, the server
    closed or reset the connection, it failed, or :meth:`close` was called).
    ``complete``: the body ended by its framing. ``error``: why it failed
    (refused after the retries, protocol error, reset), else ``None``.

    Timestamps (``time.monotonic()``, ``None`` until then): ``opened_at``
    (first connect attempt), ``sent_at`` (request fully sent),
    ``headers_at`` (response head complete), ``closed_at``.
    ``attempts``: connect attempts made.
    """

    def __init__(self, owner: ManyStreams, path: str, headers: dict[str, str]) -> None:
        self.path = path
        self.request_headers = headers
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.events: list[Event] = []
        self.arrivals: list[float] = []
        self.parser = EventStreamParser()
        self.body_bytes = 0
        self.closed = False
        self.complete = False
        self.reset = False
        self.error: str | None = None
        self.attempts = 0
        self.opened_at: float | None = None
        self.sent_at: float | None = None
        self.headers_at: float | None = None
        self.closed_at: float | None = None

        self._owner = owner
        self._state = _QUEUED
        self._sock: socket.socket | None = None
        self._out = b""
        self._head = bytearray()
        self._got_bytes = False  # any response byte on the current attempt
        self._chunked: _ChunkedDecoder | None = None
        self._length_left: int | None = None

    @property
    def sent(self) -> bool:
        """The request has been sent completely (on some attempt)."""
        return self.sent_at is not None

    def close(self) -> None:
        """Close this stream's connection (idempotent)."""
        self._owner._finish(self, complete=self.complete)

    def __repr__(self) -> str:
        return (
            f"<StreamHandle {self.path} status={self.status} events={len(self.events)} "
            f"closed={self.closed} error={self.error!r}>"
        )


class ManyStreams:
    """Thousands of SSE streams to ``host:port`` pumped by one selector loop.

    :meth:`open` only queues a stream; :meth:`run_until` connects, sends,
    reads and parses, for all of them, until a predicate holds. Nothing runs
    between calls of :meth:`run_until` (the server's writes then wait in the
    socket buffers).
    """

    def __init__(
        self, host: str, port: int, *, wave: int = 200, max_pending: int = 1024,
        connect_retries: int = 3, retry_delay: float = 0.05,
    ) -> None:
        self.host = host
        self.port = port
        self.wave = wave
        self.max_pending = max_pending
        self.connect_retries = connect_retries
        self.retry_delay = retry_delay
        self.handles: list[StreamHandle] = []
        #: Events parsed so far over all streams (a cheap first test for predicates).
        self.events_received = 0
        #: Streams whose request has been sent completely.
        self.requests_sent = 0
        #: Connect attempts that were refused or reset and tried again.
        self.retried = 0
        self._selector = selectors.DefaultSelector()
        self._queue: deque[StreamHandle] = deque()
        self._retries: list[tuple[float, int, StreamHandle]] = []  # heap by due time
        self._pending = 0  # connections started that have no response head yet
        self._live = 0  # handles that hold a socket

    # ----------------------------------------------------------------- public

    def open(self, path: str, headers: dict[str, str] | None = None) -> StreamHandle:
        """Queue ``GET path`` (with ``headers``); it connects during :meth:`run_until`."""
        handle = StreamHandle(self, path, dict(headers or {}))
        self.handles.append(handle)
        self._queue.append(handle)
        _ensure_descriptors(len(self.handles) + _FD_RESERVE)
        return handle

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Pump every socket until ``predicate()`` holds; False if it still fails at the timeout.

        ``predicate`` is checked after each turn of the loop (and at least
        every 0.1 s), so it may also watch things other threads change.
        """
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            self._start_connections(now)
            if predicate():
                return True
            if now >= deadline:
                return False
            wait = min(deadline - now, 0.1)
            if self._retries:
                wait = min(wait, max(self._retries[0][0] - now, 0.0))
            if self._queue and self._pending < self.max_pending:
                wait = 0.0
            for key, mask in self._selector.select(wait):
                handle = key.data
                assert isinstance(handle, StreamHandle)
                self._on_ready(handle, mask)

    @property
    def pending(self) -> int:
        """Connections started whose response head has not arrived yet."""
        return self._pending

    @property
    def queued(self) -> int:
        """Streams not connected yet (waiting for their wave, or for a retry)."""
        return len(self._queue) + len(self._retries)

    def close(self) -> None:
        """Close every connection (idempotent)."""
        for handle in self.handles:
            self._finish(handle, complete=handle.complete)
        self._queue.clear()
        self._retries.clear()
        self._selector.close()

    def __enter__(self) -> ManyStreams:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ connecting

    def _start_connections(self, now: float) -> None:
        started = 0
        while self._retries and self._retries[0][0] <= now:
            self._queue.appendleft(heapq.heappop(self._retries)[2])
        while self._queue and started < self.wave and self._pending < self.max_pending:
            handle = self._queue.popleft()
            if handle.closed:
                continue
            self._connect(handle, now)
            started += 1

    def _connect(self, handle: StreamHandle, now: float) -> None:
        handle.attempts += 1
        if handle.opened_at is None:
            handle.opened_at = now
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handle._sock = sock
        handle._got_bytes = False
        handle._head.clear()
        self._live += 1
        self._pending += 1
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            self._attempt_failed(handle, code, "connect")
            return
        handle._state = _CONNECTING
        handle._out = self._request(handle)
        self._selector.register(sock, selectors.EVENT_WRITE, handle)

    def _request(self, handle: StreamHandle) -> bytes:
        headers = {"Host": f"{self.host}:{self.port}", "Accept": "text/event-stream"}
        lowered = {name.lower(): name for name in headers}
        for name, value in handle.request_headers.items():
            existing = lowered.get(name.lower())
            if existing is not None:
                del headers[existing]
            headers[name] = value
        lines = [f"GET {handle.path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _attempt_failed(self, handle: StreamHandle, code: int, during: str) -> None:
        """A connect refused or reset before any response byte: again, or give up."""
        self._drop_socket(handle)
        reason = f"{during}: {errno.errorcode.get(code, code)} ({os.strerror(code)})"
        if code in _RETRYABLE and handle.attempts <= self.connect_retries:
            self.retried += 1
            handle._state = _QUEUED
            due = time.monotonic() + self.retry_delay * 2 ** (handle.attempts - 1)
            heapq.heappush(self._retries, (due, id(handle), handle))
            return
        handle.error = f"{reason} after {handle.attempts} attempt(s)"
        self._finish(handle, complete=False)

    # --------------------------------------------------------------- pumping

    def _on_ready(self, handle: StreamHandle, mask: int) -> None:
        sock = handle._sock
        if sock is None:
            return
        if handle._state == _CONNECTING and mask & selectors.EVENT_WRITE:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._attempt_failed(handle, code, "connect")
                return
            handle._state = _SENDING
        if handle._state == _SENDING:
            self._send(handle, sock)
        elif handle._state in (_HEAD, _BODY) and mask & selectors.EVENT_READ:
            self._read(handle, sock)

    def _send(self, handle: StreamHandle, sock: socket.socket) -> None:
        try:
            sent = sock.send(handle._out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._attempt_failed(handle, exc.errno or errno.ECONNRESET, "send")
            return
        handle._out = handle._out[sent:]
        if handle._out:
            return
        handle._state = _HEAD
        if handle.sent_at is None:
            handle.sent_at = time.monotonic()
            self.requests_sent += 1
        self._selector.modify(sock, selectors.EVENT_READ, handle)

    def _read(self, handle: StreamHandle, sock: socket.socket) -> None:
        for _ in range(_READS_PER_TURN):
            try:
                data = sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if not handle._got_bytes:
                    self._attempt_failed(handle, exc.errno or errno.ECONNRESET, "read")
                    return
                handle.reset = True
                data = b""
            if not data:
                self._on_eof(handle)
                return
            handle._got_bytes = True
            try:
                if handle._state == _HEAD:
                    self._on_head_bytes(handle, data)
                else:
                    self._on_body_bytes(handle, data)
            except HTTPProtocolError as exc:
                handle.error = f"protocol error: {exc}"
                self._finish(handle, complete=False)
            if handle.closed:
                return

    def _on_eof(self, handle: StreamHandle) -> None:
        if not handle._got_bytes:
            # Closed before any answer (an accept queue overflow, a worker restart).
            self._attempt_failed(handle, errno.ECONNRESET, "read")
            return
        if handle._state == _HEAD:
            handle.error = f"connection closed inside the response head: {bytes(handle._head)!r}"
            self._finish(handle, complete=False)
            return
        framed = handle._chunked is not None or handle._length_left is not None
        if handle.reset:
            handle.error = "connection reset during the body"
        elif framed:
            handle.error = "connection closed before the end of the body"
        self._finish(handle, complete=not framed and not handle.reset)

    def _on_head_bytes(self, handle: StreamHandle, data: bytes) -> None:
        head = handle._head
        head += data
        while True:
            idx = head.find(b"\r\n\r\n")
            if idx < 0:
                if len(head) > _MAX_HEAD:
                    raise HTTPProtocolError("response head too long")
                return
            block, rest = bytes(head[:idx]), bytes(head[idx + 4 :])
            head.clear()
            if not _parse_head(handle, block):
                head += rest  # an interim 1xx response: the real head follows
                continue
            break
        handle.headers_at = time.monotonic()
        handle._state = _BODY
        self._pending -= 1
        self._setup_framing(handle)
        if rest and not handle.closed:
            self._on_body_bytes(handle, rest)

    def _setup_framing(self, handle: StreamHandle) -> None:
        if handle.status in (204, 304):
            self._finish(handle, complete=True)
            return
        te = handle.headers.get("transfer-encoding")
        if te is not None:
            if te.split(",")[-1].strip().lower() == "chunked":
                handle._chunked = _ChunkedDecoder()
            return  # otherwise close-delimited
        cl = handle.headers.get("content-length")
        if cl is not None:
            values = {v.strip() for v in cl.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise HTTPProtocolError(f"bad Content-Length: {cl!r}")
            handle._length_left = int(values.pop())
            if handle._length_left == 0:
                self._finish(handle, complete=True)

    def _on_body_bytes(self, handle: StreamHandle, data: bytes) -> None:
        ended = False
        if handle._chunked is not None:
            payload = handle._chunked.feed(data)
            ended = handle._chunked.done
        elif handle._length_left is not None:
            payload = data[: handle._length_left]
            handle._length_left -= len(payload)
            ended = handle._length_left == 0
        else:
            payload = data
        if payload:
            handle.body_bytes += len(payload)
            events = handle.parser.feed(payload)
            if events:
                now = time.monotonic()
                handle.events += events
                handle.arrivals += [now] * len(events)
                self.events_received += len(events)
        if ended:
            self._finish(handle, complete=True)

    # --------------------------------------------------------------- closing

    def _drop_socket(self, handle: StreamHandle) -> None:
        sock, handle._sock = handle._sock, None
        if sock is None:
            return
        if handle._state != _BODY and handle._state != _DONE:
            self._pending -= 1
        self._live -= 1
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()

    def _finish(self, handle: StreamHandle, *, complete: bool) -> None:
        if handle.closed:
            return
        self._drop_socket(handle)
        handle._state = _DONE
        handle.closed = True
        handle.complete = complete
        handle.closed_at = time.monotonic()


def _parse_head(handle: StreamHandle, head: bytes) -> bool:
    """Parse a status line and header block into ``handle``; False for an interim 1xx."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HTTPProtocolError(f"bad status line: {status_line!r}")
    status = int(parts[1])
    if 100 <= status < 200 and status != 101:
        return False
    handle.status = status
    handle.reason = parts[2] if len(parts) > 2 else ""
    for line in header_lines:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HTTPProtocolError(f"bad header line: {line!r}")
        key, value = name.lower(), value.strip(" \t")
        handle.headers[key] = f"{handle.headers[key]}, {value}" if key in handle.headers else value
    return True


def _ensure_descriptors(wanted: int) -> None:
    """Raise the open-file soft limit, to the hard limit, when it is below ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise OSError(
            errno.EMFILE, f"{wanted} descriptors wanted, but the open-file hard limit is {hard}"
        )
    # Once, to the hard limit (an unlimited one: generously), not once per stream.
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(wanted * 2, 65536) if hard == resource.RLIM_INFINITY
                                 else hard, hard),
    )
