"""The standalone hub: ``create_app()`` behind ``gunicorn wsgi:app``.

Routes: ``GET /stream`` (subscribe), ``POST /publish``, ``GET /`` (demo page),
``GET /healthz``, ``GET /stats`` (docs/protocol.md#http-api). Settings come
from ``SSE_*`` environment variables, overridden by the ``config`` mapping
given to :func:`create_app`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from .api import sse
from .auth import Grants, check_operator, is_local_request, is_loopback, request_token
from .blueprint import Hub, error_response
from .broker import Idempotency
from .config import ServerConfig, from_environ, set_defaults
from .errors import Forbidden, HubError, RequestRefused, Unauthorized
from .metrics import Metrics
from .sockets import end_of_requests, gevent_patched, stream_socket
from .wire import Event, events_from_items

log = logging.getLogger("flask_sse_hub")



def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The standalone hub as a Flask app.

    >>> app = create_app({"SSE_HEARTBEAT_SECONDS": 5})
    """
    app = Flask("flask_sse_hub")
    app.config.update(from_environ())
    if config:
        app.config.update(config)
    _use_gunicorn_logging()
    app.register_blueprint(sse, url_prefix="/stream")
    hub = sse.hub(app)
    set_defaults(app.config, "standalone")
    server = ServerConfig.from_mapping(app.config)
    log.info("standalone hub: %s", server.summary())
    if server.proxy_hops:
        # Behind that many reverse proxies: the client's address (per-IP
        # limit, logs), scheme, host and path prefix come from X-Forwarded-*.
        hops = server.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops,
        )

    @app.errorhandler(HubError)
    def hub_error(exc: HubError) -> Response:
        if exc.status in (401, 403, 408):
            what = "publish" if request.endpoint == "hub.publish" else request.path
            hub.warnings.warn(
                f"refused {what} {exc.status}", "refused %s from %s: %s",
                what, request.remote_addr, exc,
            )
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = jsonify(error=exc.description)
        response.status_code = exc.code or 500
        Metrics.get().refuse(response.status_code)
        # Keep what the status requires, e.g. Allow on 405.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    if hub.cors is not None:
        # Every answer, 404 and 405 included; the stream's get the same
        # headers from the blueprint too (applying a policy twice changes nothing).
        app.after_request(functools.partial(_with_cors, hub))
    app.register_blueprint(_routes(hub, server))
    return app


def _routes(hub: Hub, server: ServerConfig) -> Blueprint:
    """The standalone hub's own routes (the stream is the ``sse`` blueprint's)."""
    routes = Blueprint("hub", __name__)

    @routes.post("/publish")
    def publish() -> tuple[Response, int]:
        hub.check_server(request.environ)
        # Credentials first: nobody without them gets the hub to read a body.
        grants = _check_publisher(hub, server.publish_token)
        if grants is not None and not grants.publish:
            raise Forbidden("token grants no publishing")
        idempotency_key = _idempotency_key()
        events, batch = _parse_publish_body(hub, server)
        if grants is not None:
            grants.check_publish({event.channel for event in events})
        idempotency = None
        if idempotency_key is not None:
            # The same key with the same body is the same publish, on any worker.
            fingerprint = hashlib.sha256(request.get_data(cache=True)).hexdigest()
            idempotency = Idempotency(idempotency_key, fingerprint, server.idempotency_seconds)
        ids = hub.publish_events(events, idempotency)
        # json.dumps straight into a Response: jsonify's provider machinery
        # was a fifth of this view's time in a profile of single publishes.
        answer = json.dumps({"ids": ids} if batch else {"id": ids[0]})
        return Response(answer, mimetype="application/json"), 202

    @routes.get("/")
    def demo() -> str:
        return render_template(
            "index.html",
            token_required=server.publish_token is not None or hub.verifier is not None,
        )

    @routes.get("/healthz")
    def healthz() -> tuple[Response, int]:
        healthy = hub.broker.backend.healthy()
        return jsonify(
            status="ok" if healthy else "unavailable",
            backend=hub.broker.backend.name,
            subscribers=hub.broker.connections,
        ), 200 if healthy else 503

    @routes.get("/stats")
    def stats() -> Response:
        check_operator(hub.config.stats_token)
        return jsonify(hub.broker.stats())

    routes.add_url_rule("/metrics", "metrics", sse.metrics_view)
    routes.add_url_rule("/presence", "presence", sse.presence_view)

    @routes.post("/disconnect")
    def disconnect() -> tuple[Response, int]:
        hub.check_server(request.environ)
        grants = _check_publisher(hub, server.publish_token)
        channel, subject = _parse_disconnect_body(server)
        if grants is not None:
            # A token may end the streams of channels it may publish to;
            # a subject's streams anywhere need the grant of every channel.
            grants.check_publish({channel if channel is not None else "*"})
        hub.disconnect(channel=channel, subject=subject)
        return jsonify(channel=channel, subject=subject), 202

    return routes


def _idempotency_key() -> str | None:
    """The ``Idempotency-Key`` header: 1-255 visible ASCII characters, or absent."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= 255 or not all("!" <= char <= "~" for char in key):
        raise RequestRefused(
            400, "Idempotency-Key must be 1-255 visible ASCII characters (e.g. a UUID)"
        )
    return key


def _parse_disconnect_body(server: ServerConfig) -> tuple[str | None, str | None]:
    """``{"channel": ..., "subject": ...}``: at least one of them."""
    if not request.is_json:
        raise RequestRefused(415, "send JSON (Content-Type: application/json)")
    request.max_content_length = 65536
    try:
        body = json.loads(_read_body(server.publish_body_seconds))
    except RequestEntityTooLarge:
        raise RequestRefused(413, "a disconnect body is at most 64 KiB") from None
    except (ValueError, RecursionError) as exc:
        raise RequestRefused(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) - {"channel", "subject"}:
        raise RequestRefused(400, 'send {"channel": ..., "subject": ...} (one or both)')
    channel, subject = body.get("channel"), body.get("subject")
    if channel is None and subject is None:
        raise RequestRefused(400, "name a channel, a subject or both: nothing would end")
    return channel, subject


def _with_cors(hub: Hub, response: Response) -> Response:
    assert hub.cors is not None
    return hub.cors.apply(request, response)


def _check_publisher(hub: Hub, secret: str | None) -> Grants | None:
    """Who is publishing: ``None`` may publish anywhere, else the channels its token grants.

    ``SSE_PUBLISH_TOKEN`` (compared in constant time) grants every channel; a
    JWT (``SSE_JWT_*``) the channels of its ``sse.publish`` claim. With neither
    set, only loopback clients may publish.
    """
    if secret is not None or hub.verifier is not None:
        token = request_token(request)
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
    if not is_local_request():
        raise RequestRefused(
            403, "anonymous publish is only allowed from loopback; set SSE_PUBLISH_TOKEN"
        )
    if not _is_loopback_host(request.host):
        # A page on a DNS name that rebinds to 127.0.0.1 reaches us from loopback
        # too, but its requests name its own host.
        raise RequestRefused(
            403, f"anonymous publish needs a loopback Host (localhost, 127.x.y.z, [::1]), "
            f"not {request.host!r}; set SSE_PUBLISH_TOKEN",
        )
    return None


@functools.lru_cache(maxsize=256)
def _is_loopback_host(host: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``[::1]``, with any port."""
    name = host.rsplit("]", 1)[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower() == "localhost":
        return True
    return is_loopback(name.strip("[]")) and (name.startswith("[") or name.count(".") == 3)


def _parse_publish_body(hub: Hub, server: ServerConfig) -> tuple[list[Event], bool]:
    """The events of a ``POST /publish`` body, all validated, and whether it was a batch."""
    if not request.is_json:
        raise RequestRefused(415, "send the event as JSON (Content-Type: application/json)")
    limit = server.max_publish_bytes
    too_large = RequestRefused(413, f"body over {limit} bytes (SSE_MAX_PUBLISH_BYTES)")
    # One byte over the limit is read so that a chunked body (no Content-Length),
    # which Werkzeug cuts at the limit without a word, is seen to be too large.
    request.max_content_length = limit + 1
    try:
        raw = _read_body(server.publish_body_seconds)
    except RequestEntityTooLarge:
        raise too_large from None
    if len(raw) > limit:
        raise too_large
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise RequestRefused(400, f"body is not valid JSON: {exc}") from None
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


def _read_body(seconds: float) -> bytes:
    """The request body, which must arrive within ``seconds`` in all (408 otherwise).

    Under gevent a timeout bounds the whole read, however slowly the bytes
    trickle in; elsewhere the socket's timeout bounds each wait for more.
    A body cut short leaves the connection unusable: it is closed after the answer.
    """
    late = RequestRefused(408, f"the body did not arrive within {seconds:g} s "
                               "(SSE_PUBLISH_BODY_SECONDS)")
    sock = stream_socket(request.environ)
    try:
        if gevent_patched():
            import gevent

            with gevent.Timeout(seconds, late):
                return request.get_data(cache=True)
        if sock is not None:
            sock.settimeout(seconds)
        return request.get_data(cache=True)
    except (TimeoutError, RequestRefused):
        end_of_requests(sock)
        raise late from None
    finally:
        if sock is not None and not gevent_patched():
            sock.settimeout(None)


def _use_gunicorn_logging() -> None:
    """Log through gunicorn's error log when running under it, else to stderr."""
    ours = logging.getLogger("flask_sse_hub")
    if ours.handlers:
        return
    gunicorn_log = logging.getLogger("gunicorn.error")
    if gunicorn_log.handlers:
        ours.handlers = list(gunicorn_log.handlers)
        ours.setLevel(gunicorn_log.level)
        ours.propagate = False
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        ours.setLevel(logging.INFO)
