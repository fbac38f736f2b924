"""Raw-socket HTTP/1.1 ``text/event-stream`` client for integration tests.

Standard library only. It speaks just enough HTTP/1.1 to observe exactly what
a server puts on the wire: the status line, every header, and the body framing
(``Transfer-Encoding: chunked``, ``Content-Length`` or close-delimited), with
chunked bodies decoded incrementally whatever the TCP segmentation. Body bytes
are fed to :class:`~tests.support.sse_parser.EventStreamParser`.

It never busy-waits: every read blocks in the kernel with a socket timeout
derived from an absolute deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import time
from collections import deque
from types import TracebackType

from .sse_parser import Event, EventStreamParser

__all__ = ["HTTPProtocolError", "SSEClient", "http_request"]

_RECV_SIZE = 65536
_MAX_HEAD = 64 * 1024
_MAX_CHUNK_LINE = 4096

# Chunked decoder states.
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class HTTPProtocolError(Exception):
    """The server sent something that is not valid HTTP/1.1 framing."""


class _ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` decoder (RFC 9112 section 7.1)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _SIZE
        self._remaining = 0
        self.trailers: list[tuple[str, str]] = []

    @property
    def done(self) -> bool:
        """True once the last (zero-length) chunk and the trailer section were read."""
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        """Consume raw bytes; return the decoded payload bytes they complete."""
        if self._state == _DONE:
            return b""  # bytes after the message belong to the next response
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            if self._state == _SIZE:
                idx = buf.find(b"\r\n")
                if idx < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise HTTPProtocolError(f"chunk-size line too long: {bytes(buf[:80])!r}")
                    break
                line = bytes(buf[:idx])
                del buf[: idx + 2]
                size_text = line.split(b";", 1)[0].strip()
                try:
                    if not size_text or size_text.lstrip(b"0123456789abcdefABCDEF"):
                        raise ValueError(size_text)
                    size = int(size_text, 16)
                except ValueError:
                    raise HTTPProtocolError(f"bad chunk-size line: {line!r}") from None
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size
                    self._state = _DATA
            elif self._state == _DATA:
                if not buf:
                    break
                take = min(self._remaining, len(buf))
                out.append(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif self._state == _DATA_END:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise HTTPProtocolError(f"chunk data not followed by CRLF: {bytes(buf[:20])!r}")
                del buf[:2]
                self._state = _SIZE
            elif self._state == _TRAILER:
                idx = buf.find(b"\r\n")
                if idx < 0:
                    if len(buf) > _MAX_HEAD:
                        raise HTTPProtocolError("trailer section too long")
                    break
                line = bytes(buf[:idx])
                del buf[: idx + 2]
                if not line:
                    self._state = _DONE
                    buf.clear()
                    break
                name, _, value = line.decode("latin-1").partition(":")
                self.trailers.append((name.strip(), value.strip()))
            else:  # pragma: no cover - _DONE handled above
                break
        return b"".join(out)


class SSEClient:
    """One ``GET`` request whose response body is read as an event stream.

    Typical use::

        with SSEClient("127.0.0.1", port, "/stream?channel=a") as c:
            assert c.status == 200
            ev = c.next_event(timeout=5)

    Attributes set by :meth:`connect`: ``status``, ``reason``, ``headers``
    (lower-cased names; repeated headers joined with ``", "``), ``raw_headers``
    (names as sent, in order), ``connected_at`` (monotonic time the request was
    sent), ``headers_at`` (when the header block was complete).

    Updated while reading: ``first_chunk_time`` (monotonic time the first body
    payload bytes arrived, ``None`` before), ``stream_ended`` (the terminating
    zero-length chunk, the full ``Content-Length``, or EOF was seen),
    ``complete`` (the body ended by its framing, not by a premature EOF or
    reset), ``eof`` (the server closed the connection), ``reset`` (the
    connection was reset), ``last_received_at`` (monotonic time of the read
    that delivered the last event returned by :meth:`next_event`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        path_and_query: str,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        *,
        keep_body: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path_and_query
        self.request_headers: dict[str, str] = dict(headers or {})
        self.timeout = timeout
        self.keep_body = keep_body

        self.parser = EventStreamParser()
        self.status = 0
        self.reason = ""
        self.http_version = ""
        self.headers: dict[str, str] = {}
        self.raw_headers: list[tuple[str, str]] = []
        self.connected_at: float | None = None
        self.headers_at: float | None = None
        self.first_chunk_time: float | None = None
        self.last_received_at: float | None = None
        self.stream_ended = False
        self.complete = False
        self.eof = False
        self.reset = False
        self.body_bytes = 0  # payload bytes received (after de-chunking)

        self._sock: socket.socket | None = None
        self._closed = False
        self._chunked: _ChunkedDecoder | None = None
        self._length_left: int | None = None
        self._body = bytearray()
        self._events: deque[tuple[Event, float]] = deque()
        self._comment_cursor = 0

    # ------------------------------------------------------------------ setup

    def connect(self) -> SSEClient:
        """Open the connection, send the request and read the response head.

        Returns ``self``. Raises ``TimeoutError`` if the head does not arrive
        within ``timeout`` seconds, ``HTTPProtocolError`` if it is malformed.
        """
        if self._sock is not None or self._closed:
            raise RuntimeError("SSEClient.connect() may only be called once")
        deadline = time.monotonic() + self.timeout
        self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        send_headers: dict[str, str] = {
            "Host": f"{self.host}:{self.port}",
            "Accept": "text/event-stream",
        }
        lowered = {k.lower(): k for k in send_headers}
        for name, value in self.request_headers.items():
            existing = lowered.get(name.lower())
            if existing is not None:
                del send_headers[existing]
            send_headers[name] = value
        lines = [f"GET {self.path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in send_headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._sock.sendall(request)
        self.connected_at = time.monotonic()

        head = bytearray()
        while True:
            idx = head.find(b"\r\n\r\n")
            if idx >= 0:
                rest = bytes(head[idx + 4 :])
                if self._parse_head(bytes(head[:idx])):
                    break
                head = bytearray(rest)  # an interim 1xx response: read the next head
                continue
            if len(head) > _MAX_HEAD:
                raise HTTPProtocolError("response head too long")
            data = self._recv(deadline, "the response status line and headers")
            if not data:
                raise HTTPProtocolError(
                    f"connection closed before the response head was complete: {bytes(head)!r}"
                )
            head += data
        self.headers_at = time.monotonic()
        self._setup_framing()
        if rest and not self.stream_ended:
            self._on_bytes(rest, self.headers_at)
        return self

    def _parse_head(self, head: bytes) -> bool:
        """Parse a status line + header block; False for an interim 1xx response."""
        text = head.decode("latin-1")
        status_line, *header_lines = text.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HTTPProtocolError(f"bad status line: {status_line!r}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return False
        self.http_version = parts[0]
        self.status = status
        self.reason = parts[2] if len(parts) > 2 else ""
        for line in header_lines:
            if not line:
                continue
            if line[0] in " \t":
                raise HTTPProtocolError(f"obsolete header line folding: {line!r}")
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise HTTPProtocolError(f"bad header line: {line!r}")
            value = value.strip(" \t")
            self.raw_headers.append((name, value))
            key = name.lower()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        return True

    def _setup_framing(self) -> None:
        """Choose how the body ends (RFC 9112 section 6.3)."""
        if self.status in (204, 304):
            self._finish(complete=True)
            return
        te = self.headers.get("transfer-encoding")
        if te is not None:
            codings = [c.strip().lower() for c in te.split(",")]
            if codings[-1] != "chunked":
                self._length_left = None  # close-delimited
                return
            self._chunked = _ChunkedDecoder()
            return
        cl = self.headers.get("content-length")
        if cl is not None:
            values = {v.strip() for v in cl.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise HTTPProtocolError(f"bad Content-Length: {cl!r}")
            self._length_left = int(values.pop())
            if self._length_left == 0:
                self._finish(complete=True)

    # ---------------------------------------------------------------- reading

    @property
    def framing(self) -> str:
        """``"chunked"``, ``"content-length"`` or ``"close"``."""
        if self._chunked is not None:
            return "chunked"
        if "content-length" in self.headers and "transfer-encoding" not in self.headers:
            return "content-length"
        return "close"

    def _recv(self, deadline: float, waiting_for: str) -> bytes:
        """Block until some bytes arrive (b"" on EOF) or the deadline passes."""
        sock = self._sock
        if sock is None:
            raise RuntimeError("SSEClient is not connected (call connect())")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(self._timeout_message(waiting_for))
        sock.settimeout(remaining)
        try:
            return sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise TimeoutError(self._timeout_message(waiting_for)) from None
        except ConnectionResetError:
            self.reset = True
            return b""

    def _timeout_message(self, waiting_for: str) -> str:
        return (
            f"timed out waiting for {waiting_for} from http://{self.host}:{self.port}{self.path} "
            f"(status {self.status or 'not yet received'}; {self.body_bytes} body bytes, "
            f"{len(self._events)} unread events, {len(self.parser.comments)} comments so far; "
            f"stream_ended={self.stream_ended})"
        )

    def _read_more(self, deadline: float, waiting_for: str) -> None:
        """Read once from the socket and process what arrived."""
        data = self._recv(deadline, waiting_for)
        now = time.monotonic()
        if not data:
            self._on_eof()
            return
        self._on_bytes(data, now)

    def _on_eof(self) -> None:
        """The server closed (or reset) the connection."""
        self.eof = True
        if not self.stream_ended:
            # Only a close-delimited body may end at EOF; otherwise it is premature.
            framed = self._chunked is not None or self._length_left is not None
            self._finish(complete=not framed and not self.reset)

    def _on_bytes(self, data: bytes, now: float) -> None:
        """Handle raw body bytes (still framed) received at ``now``."""
        if self.stream_ended:
            return
        if self._chunked is not None:
            payload = self._chunked.feed(data)
            if self._chunked.done:
                self._deliver(payload, now)
                self._finish(complete=True)
                return
        elif self._length_left is not None:
            payload = data[: self._length_left]
            self._length_left -= len(payload)
            if self._length_left == 0:
                self._deliver(payload, now)
                self._finish(complete=True)
                return
        else:
            payload = data
        self._deliver(payload, now)

    def _deliver(self, payload: bytes, now: float) -> None:
        """Feed de-framed body bytes to the event-stream parser."""
        if not payload:
            return
        if self.first_chunk_time is None:
            self.first_chunk_time = now
        self.body_bytes += len(payload)
        if self.keep_body:
            self._body += payload
        for event in self.parser.feed(payload):
            self._events.append((event, now))

    def _finish(self, *, complete: bool) -> None:
        self.stream_ended = True
        self.complete = complete

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    # ------------------------------------------------------------- public API

    @property
    def retry(self) -> int | None:
        """The last valid ``retry:`` value seen (milliseconds), or ``None``."""
        return self.parser.retry

    @property
    def comments(self) -> list[str]:
        """All comment lines seen so far (see ``EventStreamParser.comments``)."""
        return self.parser.comments

    @property
    def pending_events(self) -> int:
        """How many parsed events have not been returned yet."""
        return len(self._events)

    def next_event(self, timeout: float | None = None) -> Event:
        """Return the next event, reading from the socket as needed.

        Raises ``TimeoutError`` if none arrives within ``timeout`` seconds
        (default: the client's timeout), ``EOFError`` if the stream ended.
        """
        deadline = self._deadline(timeout)
        while not self._events:
            if self.stream_ended:
                raise EOFError(
                    f"event stream http://{self.host}:{self.port}{self.path} ended "
                    f"(complete={self.complete}, reset={self.reset}) with no further event"
                )
            self._read_more(deadline, "the next SSE event")
        event, received_at = self._events.popleft()
        self.last_received_at = received_at
        return event

    def events(self, n: int, timeout: float | None = None) -> list[Event]:
        """Return the next ``n`` events; ``timeout`` bounds the whole wait."""
        deadline = self._deadline(timeout)
        got: list[Event] = []
        while len(got) < n:
            try:
                got.append(self.next_event(max(deadline - time.monotonic(), 0.0)))
            except TimeoutError as exc:
                raise TimeoutError(f"got only {len(got)} of {n} events: {exc}") from None
            except EOFError as exc:
                raise EOFError(f"got only {len(got)} of {n} events: {exc}") from None
        return got

    def drain(self) -> None:
        """Process whatever bytes are already readable, without waiting."""
        sock = self._sock
        if sock is None or self.stream_ended:
            return
        while not self.stream_ended:
            sock.settimeout(0.0)
            try:
                data = sock.recv(_RECV_SIZE)
            except (BlockingIOError, TimeoutError):
                return
            except ConnectionResetError:
                self.reset = True
                data = b""
            if not data:
                self._on_eof()
                return
            self._on_bytes(data, time.monotonic())

    def wait_comment(self, timeout: float | None = None, *, new_only: bool = False) -> str:
        """Return the next comment line not yet returned by this method.

        Comments are consumed in order, like events (events that arrive
        meanwhile stay queued for :meth:`next_event`). With ``new_only=True``,
        every comment already received (including bytes already readable on
        the socket) is skipped first, so only a comment sent after the call
        counts. Raises ``TimeoutError`` / ``EOFError`` like :meth:`next_event`.
        """
        deadline = self._deadline(timeout)
        if new_only:
            self.drain()
            self._comment_cursor = len(self.parser.comments)
        while self._comment_cursor >= len(self.parser.comments):
            if self.stream_ended:
                raise EOFError(
                    f"event stream http://{self.host}:{self.port}{self.path} ended "
                    "with no further comment"
                )
            self._read_more(deadline, "a comment line")
        comment = self.parser.comments[self._comment_cursor]
        self._comment_cursor += 1
        return comment

    def read_until_closed(self, timeout: float | None = None) -> list[Event]:
        """Read until the body ends; return all events not yet returned.

        Raises ``TimeoutError`` if the server has not ended the stream
        (terminating chunk or connection close) within ``timeout`` seconds.
        """
        deadline = self._deadline(timeout)
        while not self.stream_ended:
            self._read_more(deadline, "the server to end the stream")
        remaining = [event for event, _ in self._events]
        if self._events:
            self.last_received_at = self._events[-1][1]
        self._events.clear()
        return remaining

    def read_body(self, timeout: float | None = None) -> bytes:
        """Read until the body ends and return all body bytes (de-chunked).

        Meant for non-stream responses (400, 403, ...). Events parsed from the
        body stay available through :meth:`next_event`.
        """
        deadline = self._deadline(timeout)
        while not self.stream_ended:
            self._read_more(deadline, "the end of the response body")
        return bytes(self._body)

    @property
    def body(self) -> bytes:
        """All body bytes received so far (if ``keep_body``)."""
        return bytes(self._body)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def __enter__(self) -> SSEClient:
        if self._sock is None and not self._closed:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<SSEClient {self.host}:{self.port}{self.path} status={self.status} "
            f"ended={self.stream_ended}>"
        )


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Make one plain (non-streaming) request; return (status, headers, body).

    Header names are lower-cased; repeated headers are joined with ``", "``.
    With ``tls``, over TLS with that context.
    """
    conn = (
        http.client.HTTPConnection(host, port, timeout=timeout) if tls is None
        else http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    )
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        out: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            out[key] = f"{out[key]}, {value}" if key in out else value
        return resp.status, out, data
    finally:
        conn.close()
