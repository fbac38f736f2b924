"""``SSEBlueprint``: the subscribe endpoint, ``publish()``, ``@authorize`` and the CLI."""

from __future__ import annotations

import functools
import json
import logging
import random
import resource
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    has_request_context,
    jsonify,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Request

from . import ticker
from .auth import CorsPolicy, TokenVerifier, check_operator, request_token
from .backends import make_backend
from .broker import Broker, Idempotency
from .cli import add_commands
from .config import HubConfig, set_defaults, warn_unknown_keys
from .errors import (
    AtCapacity,
    Forbidden,
    HubError,
    InvalidChannel,
    InvalidData,
    TooManyChannels,
    WrongServer,
)
from .metrics import Metrics, exposition
from .presence import Presence
from .sockets import (
    ClosedPeerWatcher,
    cut,
    end_of_requests,
    gevent_patched,
    give_up_on_silence,
    send_at_once,
    stream_socket,
)
from .stream import Stream
from .wire import (
    HEARTBEAT,
    Event,
    control_event,
    encode_ping,
    encode_preamble,
    events_from_items,
    make_event,
    validate_channel,
    validate_subject,
)

log = logging.getLogger("flask_sse_hub")

#: The package's static files (the demo page's, and sse-hub.js).
STATIC_DIR = Path(__file__).resolve().parent / "static"

EXTENSION_KEY = "sse_hub"
STREAM_HEADERS = {
    "Cache-Control": "no-store",
    # nginx: pass each chunk on at once instead of buffering the response.
    "X-Accel-Buffering": "no",
}


class Hub:
    """What one :class:`SSEBlueprint` owns in one app: its settings and its broker."""

    def __init__(self, config: HubConfig, name: str = "sse") -> None:
        self.config = config
        self.name = name
        self.broker = Broker(
            make_backend(config, name), queue_size=config.queue_size,
            max_streams=config.max_streams or default_capacity(),
        )
        # Who is on which channel, here and (with Redis) on every worker.
        self._presence = Presence(
            self.broker, grace=config.presence_grace_seconds,
            lease=2 * config.heartbeat_seconds,
        )
        self._ticking = False
        self._next_heartbeat = 0.0
        self.preamble = encode_preamble(config.retry_ms)
        self.heartbeat = encode_ping(config.ping_event) if config.ping_event else HEARTBEAT
        #: Checks subscribe/publish tokens when ``SSE_JWT_*`` is set, else None.
        self.verifier = TokenVerifier.from_config(config)
        #: Answers other origins when ``SSE_CORS_ORIGINS`` is set, else None.
        self.cors = CorsPolicy(config.cors_origins) if config.cors_origins else None
        #: Notices the streams whose clients closed while idle.
        self.watcher = ClosedPeerWatcher()
        #: Repeated warnings (refused requests, full worker), at most one a key per 10 s.
        self.warnings = self.broker.warnings
        #: The threads of a threaded server (gunicorn gthread), when known: each stream holds one.
        self.threads: int | None = None
        self._warned_threads = False

    def check_server(self, environ: Mapping[str, Any], *, streaming: bool = False) -> None:
        """Refuse (500, ``WrongServer``) a server this hub cannot work on, saying what to change."""
        if environ.get("wsgi.multiprocess") and self.broker.backend.name == "memory":
            raise WrongServer(
                "this server runs several worker processes, but the hub uses the memory backend: "
                "an event published in one would never reach the streams of another. Set "
                "SSE_REDIS_URL (Redis as the backplane), or serve one process"
            )
        if not streaming or gevent_patched():
            return
        real_server = stream_socket(environ) is not None or "SERVER_SOFTWARE" in environ
        if real_server and not environ.get("wsgi.multithread"):
            raise WrongServer(
                "this server runs one request per process at a time (gunicorn's sync worker?): "
                "one stream would block it. Serve the app with gunicorn's gevent worker: "
                "gunicorn -c python:flask_sse_hub.gunicorn_config (or -k gevent)"
            )
        if self.threads and not self._warned_threads and \
                self.broker.connections + 1 >= 0.9 * self.threads:
            self._warned_threads = True
            log.warning(
                "streams hold %d of this worker's %d threads: each stream holds a thread here, "
                "and requests wait once all are taken. Use gunicorn's gevent worker "
                "(-k gevent, or -c python:flask_sse_hub.gunicorn_config) for many streams",
                self.broker.connections + 1, self.threads,
            )

    def start(self) -> None:
        """Begin the periodic work (metrics, presence) in this process; idempotent.

        Called by the first subscribe, publish or query, so that a worker
        forked from a preloaded app does it itself.
        """
        if self._ticking:
            return
        self._ticking = True
        Metrics.get().follow(self)
        ticker.every_tick(self._tick)

    def _tick(self) -> None:
        if self.broker.stopped:  # shut down (SIGTERM): leave everyone's presence now
            ticker.stop(self._tick)
            self._withdraw()
            return
        now = time.monotonic()
        beat = now >= self._next_heartbeat
        if beat:
            self._next_heartbeat = now + self.config.heartbeat_seconds
        self.broker.sweep(self.heartbeat if beat else None)
        self._presence.tick()

    def _withdraw(self) -> None:
        try:
            self._presence.leave()
        except HubError as exc:
            log.warning("could not withdraw this worker's presence: %s", exc)

    def stop(self) -> None:
        """End every stream here and stop the broadcaster (tests, shutdown)."""
        ticker.stop(self._tick)
        if self._ticking and not self.broker.stopped:
            self._withdraw()
        self.broker.stop()

    def publish(
        self, data: Any, *, channel: str = "default", event: str | None = None,
        retry: int | None = None,
    ) -> str:
        """Validate, encode once, publish; return the id the hub assigned."""
        if has_request_context():
            self.check_server(request.environ)
        encoded = make_event(
            data, channel=channel, event=event, retry=retry,
            max_bytes=self.config.max_event_bytes,
        )
        return self.publish_events([encoded])[0]

    def publish_events(
        self, events: list[Event], idempotency: Idempotency | None = None,
    ) -> list[str]:
        """Publish validated events (``make_event``) in order; return their ids."""
        self.start()
        return self.broker.publish(events, idempotency) if events else []

    # -- presence and ending streams ----------------------------------------

    def occupancy(self, channel: str) -> int:
        """How many streams are subscribed to ``channel``, on every worker (with Redis)."""
        return self.presence_counts(channel)[0]

    def presence(self, channel: str) -> list[str]:
        """The subjects (JWT ``sub`` or ``@sse.identify``) of ``channel``'s streams, sorted."""
        return self.presence_counts(channel)[1]

    def presence_counts(self, channel: str) -> tuple[int, list[str]]:
        """Both at once (one round trip): occupancy and subjects of ``channel``."""
        self.start()
        return self._presence.of(validate_channel(channel))

    def disconnect(self, channel: str | None = None, subject: str | None = None) -> None:
        """End the streams of ``channel`` and/or ``subject`` on every worker (None: any).

        Each ends with an ``sse-hub-disconnect`` event (no id: a client let
        back in resumes where it was). Travels with the events (Redis: the
        stream), so an event published before it reaches the stream first.
        """
        if channel is not None:
            validate_channel(channel)
        if subject is not None:
            validate_subject(subject)
        self.publish_events([control_event(disconnect={"channel": channel, "subject": subject})])

    def publish_many(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish a batch, in order, as one call; return the ids.

        Each item has the fields of ``POST /publish``: ``data`` (required),
        ``channel``, ``event``, ``retry``. Every event is validated before any
        is published: one bad item publishes nothing (``InvalidData`` naming
        it, or the error its field gives). With Redis a batch larger
        than the history is refused whole (``BatchTooLarge``).
        """
        if has_request_context():
            self.check_server(request.environ)
        events = events_from_items(items, max_bytes=self.config.max_event_bytes)
        return self.publish_events(events)


def _client_script() -> Response:
    """``<prefix>/sse-hub.js``: the browser client that shares one stream between tabs."""
    return send_from_directory(STATIC_DIR, "sse-hub.js", max_age=3600)


def default_capacity(connection_limit: int | None = None) -> int:
    """90 % of what this process can hold: its descriptors, or the server's connection limit.

    The rest stays in reserve, so publishing, ``/healthz`` and ``/stats``
    still answer when streams fill a worker.
    """
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    if connection_limit is not None:
        limit = min(limit, connection_limit)
    return max(1, int(limit * 0.9))


def capacity_response(exc: AtCapacity, retry_ms: int) -> Response:
    """A full worker's answer to a subscriber: 200, a long jittered ``retry:``, the end.

    An ``EventSource`` gives up for good on a 5xx; on an ended 200 it waits
    ``retry`` and comes back, by then maybe to another worker. The jitter
    keeps the refused from coming back all at once.
    """
    wait = int(max(retry_ms, 1000) * random.uniform(2.0, 6.0))
    body = f"retry: {wait}\n: {exc}; come back later\n\n".encode()
    response = Response(body, mimetype="text/event-stream", headers=STREAM_HEADERS)
    return response


def error_response(exc: HubError) -> Response:
    """The one mapping from hub errors to HTTP answers: status, headers and a JSON reason."""
    Metrics.get().refuse(exc.status)
    # Built by hand, not with jsonify: it answers outside an app context too
    # (the standalone hub's publish fast path).
    return Response(
        json.dumps({"error": str(exc)}), status=exc.status, mimetype="application/json",
        headers=exc.headers,
    )


class SSEBlueprint(Blueprint):
    """A blueprint serving an SSE subscribe endpoint at its URL prefix.

    Registering it on an app creates that app's hub for it (kept in
    ``app.extensions["sse_hub"][name]``) with the app's ``SSE_*`` settings::

        sse = SSEBlueprint("sse", __name__)
        app.register_blueprint(sse, url_prefix="/stream")
        sse.publish({"order": 42}, channel="orders", event="order-created")

    Clients subscribe with ``GET /stream?channel=orders&channel=other``.
    """

    def __init__(
        self, name: str = "sse", import_name: str = __name__, *,
        url_prefix: str | None = "/stream", **kwargs: Any,
    ) -> None:
        # The demo page's files (and sse-hub.js) at <prefix>/static/, for demo_view.
        kwargs.setdefault("static_folder", str(STATIC_DIR))
        kwargs.setdefault("static_url_path", "/static")
        kwargs.setdefault("template_folder", str(STATIC_DIR.parent / "templates"))
        super().__init__(name, import_name, url_prefix=url_prefix, **kwargs)
        self._authorizers: list[Callable[[str], bool]] = []
        self._identify: Callable[[], str | None] | None = None
        self.add_url_rule("", "stream", self._stream_view, methods=["GET"])
        self.add_url_rule("/sse-hub.js", "client_script", _client_script, methods=["GET"])
        self.record(self._create_hub)
        self.register_error_handler(HubError, error_response)
        self.after_request(self._add_cors_headers)
        add_commands(self)

    # -- registration -------------------------------------------------------

    def register(self, app: Flask | Any, options: dict[str, Any]) -> None:
        # The endpoint's rule is the prefix itself; an empty prefix means "/".
        if options.get("url_prefix", self.url_prefix) in ("", None):
            options = {**options, "url_prefix": "/"}
        super().register(app, options)

    def _create_hub(self, state: BlueprintSetupState) -> None:
        app = state.app
        hubs = app.extensions.setdefault(EXTENSION_KEY, {})
        if self.name in hubs:  # registered again under another prefix: same hub
            return
        # The app's own views call publish(): a WrongServer there answers JSON too.
        app.register_error_handler(WrongServer, error_response)
        set_defaults(app.config)
        warn_unknown_keys(app.config)
        config = HubConfig.from_mapping(app.config)
        hubs[self.name] = Hub(config, self.name)
        log.info("hub %r ready: %s", self.name, config.summary())

    def hub(self, app: Flask | None = None) -> Hub:
        """This blueprint's hub in ``app`` (default: the current app)."""
        app = current_app if app is None else app
        try:
            hub: Hub = app.extensions[EXTENSION_KEY][self.name]
        except KeyError:
            raise RuntimeError(
                f"SSE blueprint {self.name!r} is not registered on app {app.name!r}"
            ) from None
        return hub

    # -- public API ---------------------------------------------------------

    def authorize(self, fn: Callable[[str], bool]) -> Callable[[str], bool]:
        """Register ``fn(channel) -> bool``, asked in the request context for every channel.

        Any ``False`` refuses the stream with 403 before it starts::

            @sse.authorize
            def may_read(channel):
                return channel == "public" or current_user.is_admin
        """
        self._authorizers.append(fn)
        return fn

    def identify(self, fn: Callable[[], str | None]) -> Callable[[], str | None]:
        """Register ``fn() -> subject``, asked in the request context of every subscribe.

        The subject names the stream in ``hub.presence()`` and for
        ``hub.disconnect(subject=...)``; without it a verified token's ``sub``
        does (None: an anonymous stream, counted but not named)::

            @sse.identify
            def who():
                return current_user.get_id()
        """
        self._identify = fn
        return fn

    def metrics_view(self) -> Response:
        """``GET`` view of the Prometheus metrics, to mount in a library app.

        ``app.add_url_rule("/metrics", view_func=sse.metrics_view)``; answers
        loopback clients, or others with ``Authorization: Bearer <SSE_STATS_TOKEN>``.
        """
        hub = self.hub()
        check_operator(hub.config.stats_token)
        hub.start()
        body, content_type = exposition()
        return Response(body, content_type=content_type)

    def demo_view(self) -> str:
        """The demo page, to mount in a library app: its streams, presence, events live.

        ``app.add_url_rule("/sse-demo", view_func=sse.demo_view)``. It
        subscribes to this blueprint's stream and, when mounted, polls
        :meth:`presence_view`; publishing, the counters and ending streams
        are the standalone hub's and are left out (the app publishes itself).
        """
        hub = self.hub()
        static = url_for(f"{self.name}.static", filename="x")[:-1]
        presence = next(
            (url_for(endpoint) for endpoint, view in current_app.view_functions.items()
             if view == self.presence_view), None,
        )
        urls = {"static": static, "stream": url_for(f"{self.name}.stream"), "publish": None,
                "stats": None, "presence": presence, "disconnect": None}
        return render_template(
            "sse-hub-demo.html", urls=urls, token_required=hub.verifier is not None,
        )

    def presence_view(self) -> Response:
        """``GET ?channel=X`` view of a channel's presence, to mount in a library app.

        Answers ``{"channel", "occupancy", "subjects"}``; access as :meth:`metrics_view`.
        """
        hub = self.hub()
        check_operator(hub.config.stats_token)
        channel = request.args.get("channel")
        if channel is None:
            raise InvalidChannel("name the channel: ?channel=<name>")
        count, subjects = hub.presence_counts(channel)
        return jsonify(channel=channel, occupancy=count, subjects=subjects)

    def publish(
        self, data: Any, *, channel: str = "default", event: str | None = None,
        retry: int | None = None,
    ) -> str:
        """Publish ``data`` to ``channel``; return the id the hub assigned.

        ``str`` data is sent as text, anything else as compact JSON. Needs an
        app context. Raises ``ValueError`` subclasses for bad names or sizes,
        ``TypeError`` for data JSON cannot encode, and ``BackendUnavailable``.
        """
        return self.hub().publish(data, channel=channel, event=event, retry=retry)

    def publish_many(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish a batch in order, all or nothing (see :meth:`Hub.publish_many`)::

            ids = sse.publish_many([{"data": 1, "channel": "a"}, {"data": 2, "channel": "b"}])
        """
        return self.hub().publish_many(items)

    # -- the stream ---------------------------------------------------------

    def _requested_channels(self, req: Request, max_channels: int) -> list[str]:
        names = req.args.getlist("channel") or ["default"]
        channels = list(dict.fromkeys(validate_channel(name) for name in names))
        if len(channels) > max_channels:
            raise TooManyChannels(
                f"{len(channels)} channels requested, at most {max_channels} (SSE_MAX_CHANNELS)"
            )
        return channels

    def _add_cors_headers(self, response: Response) -> Response:
        cors = self.hub().cors
        return response if cors is None else cors.apply(request, response)

    def _stream_view(self) -> Response:
        return self.open_stream(self.hub(), request)

    def _identified(self) -> str | None:
        """What ``@identify`` names this request's stream; a wrong answer is the app's bug (500)."""
        assert self._identify is not None
        subject = self._identify()
        if subject is not None:
            try:
                validate_subject(subject)
            except InvalidData as exc:
                name = self._identify.__qualname__
                raise TypeError(f"@{self.name}.identify ({name}): {exc}") from None
        return subject

    @property
    def plain(self) -> bool:
        """No ``@authorize`` and no ``@identify``: a stream needs no Flask request context.

        Then the standalone hub may open streams without Flask's dispatch
        (:class:`flask_sse_hub.server.FastPath`).
        """
        return not self._authorizers and self._identify is None

    def open_stream(self, hub: Hub, req: Request) -> Response:
        """The answer to a subscribe request: the stream, or raise a ``HubError``."""
        config = hub.config
        channels = self._requested_channels(req, config.max_channels)
        expires_at = subject = None
        if hub.verifier is not None:
            # Checked before any replay: a resume gets only channels its token grants.
            grants = hub.verifier.grants(request_token(req, config.jwt_cookie, query=True))
            grants.check_subscribe(channels)
            expires_at, subject = grants.expires_at, grants.subject
        for channel in channels:
            for allowed in self._authorizers:
                if not allowed(channel):
                    raise Forbidden(f"not allowed to subscribe to {channel!r}")
        # The header (sent by the browser on reconnect) wins over the query
        # (docs/protocol.md#resume-ids).
        # Stripped: not every server drops a header value's surrounding
        # whitespace (gunicorn 22 keeps it), and no id has any.
        last_id = (
            req.headers.get("Last-Event-ID", "").strip(" \t")
            or req.args.get("lastEventId")
            or req.args.get("last_event_id")
            or None
        )
        if req.method == "HEAD":
            return Response(mimetype="text/event-stream", headers=STREAM_HEADERS)
        hub.check_server(req.environ, streaming=True)
        if self._identify is not None:
            subject = self._identified()
        hub.start()
        try:
            sub, replay = hub.broker.subscribe(
                channels, last_id, client=req.remote_addr,
                max_per_client=config.max_connections_per_ip, subject=subject,
                tagged=req.args.get("relay") == "1",
            )
        except AtCapacity as exc:
            hub.warnings.warn("capacity", "refusing a subscriber: %s", exc)
            end_of_requests(stream_socket(req.environ))
            return capacity_response(exc, config.retry_ms)
        sock = stream_socket(req.environ)
        if sock is not None:
            send_at_once(sock)
            sub.abort = functools.partial(cut, sock)
            give_up_on_silence(sock, config.dead_client_seconds, config.heartbeat_seconds)
        response = Response(
            Stream(hub, sub, replay, last_id, sock, expires_at),
            mimetype="text/event-stream", headers=STREAM_HEADERS,
        )
        # The server iterates the body itself, not through Werkzeug's encoding
        # and closing wrappers: two layers less for every chunk of every stream.
        response.direct_passthrough = True
        return response
