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

import functools
import hashlib
import hmac
import json
import logging
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
    limit = server.max_publish_bytes
    stream = req.stream
    while True:
        try:
            # Each line must arrive within the body time of the one before.
            line = _within(req, server.publish_body_seconds, lambda: stream.readline(limit + 1))
        except RequestRefused as exc:
            yield _result_line({"error": str(exc), "status": exc.status})
            return
        if not line:
            return
        if len(line) > limit:
            yield _result_line({"error": f"a line over {limit} bytes (SSE_MAX_PUBLISH_BYTES)",
                                "status": 413})
            return
        if line.strip():
            yield _result_line(_publish_line(hub, line, grants))


def _publish_line(hub: Hub, line: bytes, grants: Grants | None) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return {"error": f"not valid JSON: {exc}", "status": 400}
    try:
        (event,) = events_from_items([item], max_bytes=hub.config.max_event_bytes,
                                     numbered=False)
        if grants is not None:
            grants.check_publish({event.channel})
        return {"id": hub.publish_events([event])[0]}
    except HubError as exc:
        return {"error": str(exc), "status": exc.status}
    except TypeError as exc:  # JSON data always encodes; kept for the type's sake
        return {"error": str(exc), "status": 400}


def _result_line(result: dict[str, Any]) -> bytes:
    return json.dumps(result).encode() + b"\n"
