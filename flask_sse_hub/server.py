"""The standalone hub: ``create_app()`` behind ``gunicorn wsgi:app``.

Routes: ``GET /stream`` (subscribe), ``POST /publish``, ``GET /`` (demo page),
``GET /healthz``, ``GET /stats`` (docs/protocol.md#http-api). Settings come
from ``SSE_*`` environment variables, overridden by the ``config`` mapping
given to :func:`create_app`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request

from .api import sse
from .auth import check_operator
from .blueprint import Hub
from .config import ServerConfig, from_environ, set_defaults
from .errors import HubError, RequestRefused
from .metrics import Metrics
from .publishing import (
    accepted,
    check_publisher,
    publish_answer,
    published,
    read_json,
    refusal,
)
from .sockets import send_at_once, stream_socket
from .wire import validate_channel, validate_subject

log = logging.getLogger("flask_sse_hub")

#: Where the standalone hub serves its streams.
STREAM_PREFIX = "/stream"
#: The demo page's URLs, relative to it (it is the hub's root): it works behind a prefix.
DEMO_URLS = {
    "static": "static/", "stream": STREAM_PREFIX.lstrip("/"), "publish": "publish",
    "stats": "stats", "presence": "presence", "disconnect": "disconnect",
}



def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The standalone hub as a Flask app.

    >>> app = create_app({"SSE_HEARTBEAT_SECONDS": 5})
    """
    app = Flask("flask_sse_hub")
    app.config.update(from_environ())
    if config:
        app.config.update(config)
    _use_gunicorn_logging()
    app.register_blueprint(sse, url_prefix=STREAM_PREFIX)
    hub = sse.hub(app)
    set_defaults(app.config, "standalone")
    server = ServerConfig.from_mapping(app.config)
    log.info("standalone hub: %s", server.summary())

    @app.errorhandler(HubError)
    def hub_error(exc: HubError) -> Response:
        what = "publish" if request.endpoint == "hub.publish" else request.path
        return refusal(hub, exc, request, what)

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
    # Inside ProxyFix, so that it sees the client's address as the routes do.
    app.wsgi_app = FastPath(app.wsgi_app, hub, server)  # type: ignore[method-assign]
    if server.proxy_hops:
        # Behind that many reverse proxies: the client's address (per-IP
        # limit, logs), scheme, host and path prefix come from X-Forwarded-*.
        hops = server.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops,
        )
    return app


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastPath:
    """WSGI middleware: ``POST /publish`` and ``GET /stream`` without Flask's dispatch.

    Flask's request context, URL matching, hooks and response finalisation
    were about half of a single publish's time and a quarter of a new
    stream's in profiles of the worker (py-spy, under load). These two
    requests run the very code of their routes (``publish_answer``,
    ``SSEBlueprint.open_stream``), which takes the request as an argument,
    with the same CORS headers and refusals; everything else, and a stream
    when the blueprint has ``@authorize`` or ``@identify`` functions (they
    expect Flask's request context), goes on to Flask.
    """

    def __init__(self, app: WSGIApp, hub: Hub, server: ServerConfig) -> None:
        self.app = app
        self.hub = hub
        self.server = server

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
        if path == "/publish" and method == "POST":
            what = "publish"
            send_at_once(stream_socket(environ))
        elif path == STREAM_PREFIX and method in ("GET", "HEAD") and sse.plain:
            what = STREAM_PREFIX
        else:
            return self.app(environ, start_response)
        # Not kept in the environ (populate_request): a stream holds that for its life.
        req = Request(environ, populate_request=False)
        try:
            if what == "publish":
                answer = published(self.hub, self.server, req)
                if isinstance(answer, bytes):
                    if self.hub.cors is None:
                        start_response("202 ACCEPTED", [
                            ("Content-Type", "application/json"),
                            ("Content-Length", str(len(answer))),
                        ])
                        return [answer]
                    answer = accepted(answer)
                response = answer
            else:
                response = sse.open_stream(self.hub, req)
        except HubError as exc:
            response = refusal(self.hub, exc, req, what)
        if self.hub.cors is not None:
            self.hub.cors.apply(req, response)
        return response(environ, start_response)


def _routes(hub: Hub, server: ServerConfig) -> Blueprint:
    """The standalone hub's own routes (the stream is the ``sse`` blueprint's)."""
    routes = Blueprint("hub", __name__)

    @routes.post("/publish")
    def publish() -> Response:
        return publish_answer(hub, server, request)

    @routes.get("/")
    def demo() -> str:
        return render_template(
            "sse-hub-demo.html", urls=DEMO_URLS,
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
        grants = check_publisher(hub, server.publish_token, request)
        channel, subject = _parse_disconnect_body(server)
        if grants is not None:
            # A token may end the streams of channels it may publish to;
            # a subject's streams anywhere need the grant of every channel.
            grants.check_publish({channel if channel is not None else "*"})
        hub.disconnect(channel=channel, subject=subject)
        return jsonify(channel=channel, subject=subject), 202

    return routes


def _parse_disconnect_body(server: ServerConfig) -> tuple[str | None, str | None]:
    """``{"channel": ..., "subject": ...}``: at least one of them."""
    if not request.is_json:
        raise RequestRefused(415, "send JSON (Content-Type: application/json)")
    body = read_json(request, 65536, server.publish_body_seconds)
    if not isinstance(body, dict) or set(body) - {"channel", "subject"}:
        raise RequestRefused(400, 'send {"channel": ..., "subject": ...} (one or both)')
    channel, subject = body.get("channel"), body.get("subject")
    if channel is None and subject is None:
        raise RequestRefused(400, "name a channel, a subject or both: nothing would end")
    # Checked here, before the token's grants are matched against them.
    return (None if channel is None else validate_channel(channel),
            None if subject is None else validate_subject(subject))


def _with_cors(hub: Hub, response: Response) -> Response:
    assert hub.cors is not None
    return hub.cors.apply(request, response)


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
