"""``POST /publish`` of the standalone hub: who may publish, the body, the answer.

Everything here takes the request as an argument (a Werkzeug ``Request``)
instead of Flask's ``request`` global, so the same code serves the Flask
route and :class:`flask_sse_hub.server.FastPath`, which answers
``POST /publish`` before Flask's dispatch.

Three bodies are accepted (docs/protocol.md#publish):

* a JSON object (one event) -> 202 ``{"id": ...}``;
* a JSON array (a batch, all or nothing) -> 202 ``{"ids": [...]}``;
* ``application/x-ndjson``: one event per line, each published as it
  arrives, the answer streaming one result line per event line
  (``{"id": ...}`` or ``{"error": ..., "status": ...}``) -- a long-lived
  publisher gets batch rates on one connection.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Response
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request

from .auth import Grants, is_local_request, is_loopback, request_token
from .blueprint import error_response
from .broker import Idempotency
from .config import ServerConfig
from .errors import Forbidden, HubError, RequestRefused, Unauthorized
from .sockets import end_of_requests, gevent_patched, stream_socket
from .wire import Event, events_from_items

if TYPE_CHECKING:
    from .blueprint import Hub

log = logging.getLogger("flask_sse_hub")

NDJSON = "application/x-ndjson"


def publish_answer(hub: Hub, server: ServerConfig, req: Request) -> Response:
    """Check, read, publish; the 202 answer (or raise a ``HubError``)."""
    answer = published(hub, server, req)
    return answer if isinstance(answer, Response) else accepted(answer)


def published(hub: Hub, server: ServerConfig, req: Request) -> bytes | Response:
    """Check, read, publish: the body of the 202 answer, or a streaming publish's answer.

    The body alone, so that the standalone hub's lean path can send it without
    building a Werkzeug response (a sixth of a single publish's time).
    """
    hub.check_server(req.environ)
    # Credentials first: nobody without them gets the hub to read a body.
    grants = check_publisher(hub, server.publish_token, req)
    if grants is not None and not grants.publish:
        raise Forbidden("token grants no publishing")
    key = idempotency_key(req)
    if req.mimetype == NDJSON:
        if key is not None:
            raise RequestRefused(400, "Idempotency-Key is for one request's events, not a stream")
        return _streaming(hub, server, req, grants)
    events, batch = parse_publish_body(hub, server, req)
    if grants is not None:
        grants.check_publish({event.channel for event in events})
    idempotency = None
    if key is not None:
        # The same key with the same body is the same publish, on any worker.
        fingerprint = hashlib.sha256(req.get_data(cache=True)).hexdigest()
        idempotency = Idempotency(key, fingerprint, server.idempotency_seconds)
    ids = hub.publish_events(events, idempotency)
    return json.dumps({"ids": ids} if batch else {"id": ids[0]}).encode()


def accepted(body: bytes) -> Response:
    """The 202 answer of a publish."""
    return Response(body, status=202, mimetype="application/json")


def refusal(hub: Hub, exc: HubError, req: Request, what: str) -> Response:
    """The answer to a refused request; credential and timing refusals are logged (folded)."""
    if exc.status in (401, 403, 408):
        hub.warnings.warn(
            f"refused {what} {exc.status}", "refused %s from %s: %s", what, req.remote_addr, exc,
        )
    return error_response(exc)


# -- who is publishing ------------------------------------------------------------------


def check_publisher(hub: Hub, secret: str | None, req: Request) -> Grants | None:
    """Who is publishing: ``None`` may publish anywhere, else the channels its token grants.

    ``SSE_PUBLISH_TOKEN`` (compared in constant time) grants every channel; a
    JWT (``SSE_JWT_*``) the channels of its ``sse.publish`` claim. With neither
    set, only loopback clients may publish.
    """
    if secret is not None or hub.verifier is not None:
        token = request_token(req)
        if token is not None and secret is not None and hmac.compare_digest(
            token.encode(), secret.encode()
        ):
            return None
        if hub.verifier is None:
            raise Unauthorized(
                "wrong bearer token" if token else "missing bearer token",
                token_given=token is not None,
            )
        return hub.verifier.grants(token)
    if not is_local_request(req):
        raise RequestRefused(
            403, "anonymous publish is only allowed from loopback; set SSE_PUBLISH_TOKEN"
        )
    if not is_loopback_host(req.host):
        # A page on a DNS name that rebinds to 127.0.0.1 reaches us from loopback
        # too, but its requests name its own host.
        raise RequestRefused(
            403, f"anonymous publish needs a loopback Host (localhost, 127.x.y.z, [::1]), "
            f"not {req.host!r}; set SSE_PUBLISH_TOKEN",
        )
    return None


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``[::1]``, with any port."""
    name = host.rsplit("]", 1)[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower() == "localhost":
        return True
    return is_loopback(name.strip("[]")) and (name.startswith("[") or name.count(".") == 3)


def idempotency_key(req: Request) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 visible ASCII characters, or absent."""
    key = req.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= 255 or not all("!" <= char <= "~" for char in key):
        raise RequestRefused(
            400, "Idempotency-Key must be 1-255 visible ASCII characters (e.g. a UUID)"
        )
    return key


# -- the body ---------------------------------------------------------------------------


def parse_publish_body(hub: Hub, server: ServerConfig, req: Request) -> tuple[list[Event], bool]:
    """The events of a ``POST /publish`` body, all validated, and whether it was a batch."""
    if not req.is_json:
        raise RequestRefused(415, "send the event as JSON (Content-Type: application/json)")
    payload = read_json(req, server.max_publish_bytes, server.publish_body_seconds)
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise RequestRefused(400, "empty batch")
    if len(items) > server.max_batch:
        raise RequestRefused(
            413, f"a batch of {len(items)} events, at most {server.max_batch} (SSE_MAX_BATCH)"
        )
    batch = isinstance(payload, list)
    try:
        events = events_from_items(items, max_bytes=hub.config.max_event_bytes, numbered=batch)
    except TypeError as exc:  # JSON data always encodes; kept for the type's sake
        raise RequestRefused(400, str(exc)) from None
    return events, batch


def read_json(req: Request, limit: int, seconds: float) -> Any:
    """The body as JSON: at most ``limit`` bytes (413), within ``seconds`` (408)."""
    # One byte over the limit is read so that a chunked body (no Content-Length),
    # which Werkzeug cuts at the limit without a word, is seen to be too large.
    req.max_content_length = limit + 1
    try:
        raw = read_body(req, seconds)
    except RequestEntityTooLarge:
        raw = None
    if raw is None or len(raw) > limit:
        raise RequestRefused(413, f"body over {limit} bytes (SSE_MAX_PUBLISH_BYTES)")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise RequestRefused(400, f"body is not valid JSON: {exc}") from None


def read_body(req: Request, seconds: float) -> bytes:
    """The request body, which must arrive within ``seconds`` in all (408 otherwise).

    Under gevent a timeout bounds the whole read, however slowly the bytes
    trickle in; elsewhere the socket's timeout bounds each wait for more.
    A body cut short leaves the connection unusable: it is closed after the answer.
    """
    return _within(req, seconds, lambda: req.get_data(cache=True))


class _Late(Exception):
    """The body's time ran out (gevent); not a TimeoutError, which gunicorn's reader catches."""


def _within(req: Request, seconds: float, read: Callable[[], bytes]) -> bytes:
    sock = stream_socket(req.environ)
    try:
        if gevent_patched():
            import gevent

            with gevent.Timeout(seconds, _Late):
                return read()
        if sock is not None:
            sock.settimeout(seconds)
        return read()
    except (TimeoutError, _Late):
        end_of_requests(sock)
        raise RequestRefused(
            408, f"the body did not arrive within {seconds:g} s (SSE_PUBLISH_BODY_SECONDS)"
        ) from None
    finally:
        if sock is not None and not gevent_patched():
            sock.settimeout(None)


# -- a streaming publish ----------------------------------------------------------------


def _streaming(hub: Hub, server: ServerConfig, req: Request, grants: Grants | None) -> Response:
    """One event per line as the lines arrive; one result line per event line."""
    response = Response(
        _published_lines(hub, server, req, grants), status=200, mimetype=NDJSON,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    response.direct_passthrough = True
    return response


def _published_lines(
    hub: Hub, server: ServerConfig, req: Request, grants: Grants | None,
) -> Iterator[bytes]:
    # A reader (greenlet under gevent, else a thread) reads lines ahead while
    # this loop publishes: the lines that arrived while the last group was
    # being published go out as one group, one backend call (one Redis round
    # trip) and one chunk of results, instead of a call and a send per line.
    # A line that arrives alone is published alone, at once.
    #
    # Paced by this worker's broadcaster: with a shared backend (Redis) one
    # connection publishes faster than the worker that serves it reads the
    # events back (the same CPU does both), and events more than the history
    # behind would reach its streams only as a gap. So at most half the
    # history is published and not yet read back here.
    reader = _LineReader(req, server)
    limit = min(_GROUP, server.max_batch, hub.config.history_size)
    ahead: collections.deque[tuple[str, int]] = collections.deque()  # (last id, events)
    budget, unread = max(hub.config.history_size // 2, 1), 0
    try:
        while True:
            lines, end = reader.group(limit)
            if lines:
                results = _publish_group(hub, lines, grants)
                yield b"".join(map(_result_line, results))
                ids = [result["id"] for result in results if "id" in result]
                if ids:
                    ahead.append((ids[-1], len(ids)))
                    unread += len(ids)
                while ahead and unread > budget:
                    last, count = ahead.popleft()
                    unread -= count
                    hub.broker.wait_broadcast(last, timeout=_PACING_SECONDS)
            if end is not None:
                if isinstance(end, RequestRefused):
                    yield _result_line({"error": str(end), "status": end.status})
                return
    finally:
        reader.stop()


#: At most this many lines are published as one group (one backend call).
_GROUP = 100
#: Lines read ahead and not yet published: the reader waits (back-pressure).
_READ_AHEAD = 2 * _GROUP
#: How long a streaming publish waits for its worker's broadcaster to catch up
#: (a broadcaster cut off from Redis): it then goes on, and streams get gaps.
_PACING_SECONDS = 3.0


class _EndOfBody:
    """The body ended (its last chunk) without a refusal."""


class _LineReader:
    """Reads a streaming publish's lines ahead of the loop that publishes them."""

    def __init__(self, req: Request, server: ServerConfig) -> None:
        self._req = req
        self._limit = server.max_publish_bytes
        self._seconds = server.publish_body_seconds
        self._lines: queue.Queue[bytes | RequestRefused | _EndOfBody] = queue.Queue(_READ_AHEAD)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="sse-publish-lines", daemon=True)
        self._thread.start()

    def group(self, limit: int) -> tuple[list[bytes], RequestRefused | _EndOfBody | None]:
        """The next line (waiting for it) and those already read after it, up to ``limit``.

        Also how the body ended, if it did: the reader has then stopped reading.
        """
        lines: list[bytes] = []
        item = self._lines.get()
        while True:
            if not isinstance(item, bytes):
                self._thread.join()  # it no longer reads the socket: the server may
                return lines, item
            lines.append(item)
            if len(lines) == limit:
                return lines, None
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                return lines, None

    def stop(self) -> None:
        self._stopping.set()

    def _read(self) -> None:
        stream = self._req.stream
        limit = self._limit
        end: RequestRefused | _EndOfBody = _EndOfBody()
        while not self._stopping.is_set():
            try:
                # Each line must arrive within the body time of the one before.
                line = _within(self._req, self._seconds, lambda: stream.readline(limit + 1))
            except RequestRefused as exc:  # 408
                end = exc
                break
            except Exception as exc:  # the server could not read it: a malformed chunk
                end_of_requests(stream_socket(self._req.environ))  # no next request on it
                end = RequestRefused(400, f"the body could not be read: {exc}")
                break
            if not line:
                break
            if len(line) > limit:  # the rest of the body is not read: no next request
                end_of_requests(stream_socket(self._req.environ))
                end = RequestRefused(413, f"a line over {limit} bytes (SSE_MAX_PUBLISH_BYTES)")
                break
            if line.strip() and not self._put(line):
                return
        self._put(end)

    def _put(self, item: bytes | RequestRefused | _EndOfBody) -> bool:
        """Queue ``item``, waiting while the queue is full; False once stopped."""
        while not self._stopping.is_set():
            try:
                self._lines.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False


def _publish_group(hub: Hub, lines: list[bytes], grants: Grants | None) -> list[dict[str, Any]]:
    """One result per line, in order; the valid lines' events published together, in order.

    A group is one batch for the backend, so all of its events share the
    outcome (a batch is all or nothing): each line gets its id, or each the
    same refusal (503 ...). A group is at most ``SSE_HISTORY_SIZE`` lines, so
    the history always retains it whole (Redis: no ``BatchTooLarge``).
    """
    results: list[dict[str, Any]] = []
    events: list[Event] = []
    slots: list[int] = []  # the result index of each event
    for line in lines:
        result = _line_event(hub, line, grants)
        if isinstance(result, Event):
            slots.append(len(results))
            events.append(result)
            results.append({})
        else:
            results.append(result)
    if not events:
        return results
    try:
        outcomes: list[dict[str, Any]] = [{"id": i} for i in hub.publish_events(events)]
    except HubError as exc:
        outcomes = [{"error": str(exc), "status": exc.status}] * len(events)
    for slot, outcome in zip(slots, outcomes, strict=True):
        results[slot] = outcome
    return results


def _line_event(hub: Hub, line: bytes, grants: Grants | None) -> Event | dict[str, Any]:
    """The line's event, validated and granted; else its refusal (a result)."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return {"error": f"not valid JSON: {exc}", "status": 400}
    try:
        (event,) = events_from_items([item], max_bytes=hub.config.max_event_bytes,
                                     numbered=False)
        if grants is not None:
            grants.check_publish({event.channel})
        return event
    except HubError as exc:
        return {"error": str(exc), "status": exc.status}
    except TypeError as exc:  # JSON data always encodes; kept for the type's sake
        return {"error": str(exc), "status": 400}


def _result_line(result: dict[str, Any]) -> bytes:
    return json.dumps(result).encode() + b"\n"
