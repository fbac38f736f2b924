"""``SSEBlueprint``: the subscribe endpoint, ``publish()``, ``@authorize`` and the CLI."""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import select
import socket
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from .auth import CorsPolicy, TokenVerifier, request_token
from .backends import make_backend
from .broker import Broker, Replay, ReplayInterrupted, Subscription, join_chunks
from .cli import add_commands
from .config import HubConfig, set_defaults
from .errors import Forbidden, HubError, TooManyChannels
from .wire import (
    HEARTBEAT,
    encode_gap,
    encode_ping,
    encode_position,
    encode_preamble,
    make_event,
    validate_channel,
)

log = logging.getLogger("flask_sse_hub")

try:  # the C poll, even under gevent's patching: a zero timeout never blocks
    from gevent.monkey import get_original

    _poll: Callable[[], Any] = get_original("select", "poll")
except ImportError:  # pragma: no cover - gevent is a dependency, but be lenient
    _poll = select.poll

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
        self.broker = Broker(make_backend(config, name), queue_size=config.queue_size)
        self.preamble = encode_preamble(config.retry_ms)
        self.heartbeat = encode_ping(config.ping_event) if config.ping_event else HEARTBEAT
        #: Checks subscribe/publish tokens when ``SSE_JWT_*`` is set, else None.
        self.verifier = TokenVerifier.from_config(config)
        #: Answers other origins when ``SSE_CORS_ORIGINS`` is set, else None.
        self.cors = CorsPolicy(config.cors_origins) if config.cors_origins else None

    def publish(
        self, data: Any, *, channel: str = "default", event: str | None = None,
        retry: int | None = None,
    ) -> str:
        """Validate, encode once, publish; return the id the hub assigned."""
        encoded = make_event(
            data, channel=channel, event=event, retry=retry,
            max_bytes=self.config.max_event_bytes,
        )
        return self.broker.publish([encoded])[0]


def error_response(exc: HubError) -> Response:
    """The one mapping from hub errors to HTTP answers: status, headers and a JSON reason."""
    response = jsonify(error=str(exc))
    response.status_code = exc.status
    response.headers.update(exc.headers)
    return response


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
        super().__init__(name, import_name, url_prefix=url_prefix, **kwargs)
        self._authorizers: list[Callable[[str], bool]] = []
        self.add_url_rule("", "stream", self._stream_view, methods=["GET"])
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
        set_defaults(app.config)
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

    # -- the stream ---------------------------------------------------------

    def _requested_channels(self, max_channels: int) -> list[str]:
        names = request.args.getlist("channel") or ["default"]
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
        hub = self.hub()
        config = hub.config
        channels = self._requested_channels(config.max_channels)
        expires_at = None
        if hub.verifier is not None:
            # Checked before any replay: a resume gets only channels its token grants.
            grants = hub.verifier.grants(request_token(request, config.jwt_cookie, query=True))
            grants.check_subscribe(channels)
            expires_at = grants.expires_at
        for channel in channels:
            for allowed in self._authorizers:
                if not allowed(channel):
                    raise Forbidden(f"not allowed to subscribe to {channel!r}")
        # SPEC §3: the header (sent by the browser on reconnect) wins over the query.
        last_id = (
            request.headers.get("Last-Event-ID")
            or request.args.get("lastEventId")
            or request.args.get("last_event_id")
            or None
        )
        if request.method == "HEAD":
            return Response(mimetype="text/event-stream", headers=STREAM_HEADERS)
        sub, replay = hub.broker.subscribe(
            channels, last_id, client=request.remote_addr,
            max_per_client=config.max_connections_per_ip,
        )
        sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
        if isinstance(sock, socket.socket):
            sub.abort = _aborter(sock)
        response = Response(
            _StreamBody(_stream(hub, sub, replay, last_id, sock, expires_at), hub.broker, sub),
            mimetype="text/event-stream", headers=STREAM_HEADERS,
        )
        # The server iterates the body itself, not through Werkzeug's encoding
        # and closing wrappers: two layers less for every chunk of every stream.
        response.direct_passthrough = True
        return response


class _StreamBody:
    """The WSGI body of a stream: the generator, and a ``close`` that always unsubscribes.

    A generator that was never started runs no ``finally`` when closed, so
    ``close`` unsubscribes itself as well (unsubscribe is idempotent).
    """

    __slots__ = ("_broker", "_chunks", "_sub")

    def __init__(
        self, chunks: Generator[bytes, None, None], broker: Broker, sub: Subscription
    ) -> None:
        self._chunks = chunks
        self._broker = broker
        self._sub = sub

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._chunks.close()
        self._broker.unsubscribe(self._sub)


def _aborter(sock: socket.socket) -> Callable[[], None]:
    def abort() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    return abort


def _peer_closed(sock: Any) -> bool:
    """True when the client has closed its end (readable, and a peek reads EOF).

    Lets an idle stream notice a vanished client at its next heartbeat instead
    of at the write after it (the first write to a closed peer still succeeds).
    ``poll``, not ``select``: a busy worker's descriptors go past select's 1024.
    """
    if not isinstance(sock, socket.socket):
        return False
    try:
        poller = _poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0)) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _stream(
    hub: Hub, sub: Subscription, replay: Replay, last_id: str | None, sock: Any,
    expires_at: float | None = None,
) -> Generator[bytes, None, None]:
    """The response body: preamble, replay, then live events and heartbeats.

    Holds no request context: a stream keeps only its subscription, so an
    idle stream costs little memory. It ends at ``SSE_MAX_CONNECTION_SECONDS``
    and at ``expires_at`` (Unix time; its token's expiry).
    """
    broker = hub.broker
    config = hub.config
    q = sub.queue
    heartbeat = hub.heartbeat
    interval = config.heartbeat_seconds
    deadline = None
    if config.max_connection_seconds is not None:
        # Jitter spreads the reconnects of streams opened together.
        deadline = time.monotonic() + config.max_connection_seconds * random.uniform(0.9, 1.0)
    if expires_at is not None:
        expiry = time.monotonic() + (expires_at - time.time())
        deadline = expiry if deadline is None else min(deadline, expiry)
    try:
        first = hub.preamble
        if replay.gap:
            assert last_id is not None
            first += encode_gap(last_id, replay.gap_position)
        elif replay.start is not None:
            first += encode_position(replay.start)
        yield first
        try:
            for chunk, count in join_chunks(event.frame for event in replay.events):
                yield chunk
                sub.delivered += count
        except ReplayInterrupted as exc:
            # Its client resumes from the last event it got: nothing is lost.
            log.warning("ending a stream during its replay: %s", exc)
            sub.closed = "replay"
        while sub.closed is None:
            timeout = interval
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                timeout = min(timeout, interval)
            try:
                item = q.get(timeout=timeout)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if _peer_closed(sock):
                    break
                yield heartbeat
                continue
            if item is None or sub.closed is not None:
                break
            chunk, count = item
            # Coalesce what queued up while we were writing into one write.
            if sub.enqueued - sub.dequeued > count:
                parts = [chunk]
                while True:
                    try:
                        more = q.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        sub.closed = sub.closed or "closed"
                        break
                    parts.append(more[0])
                    count += more[1]
                chunk = b"".join(parts)
            sub.dequeued += count
            yield chunk
            sub.delivered += count
        # The hub ends this stream (age, shutdown, slow): make the server close
        # the connection after the last chunk instead of keeping it alive, so
        # the client's reconnect opens a new one — to another worker, maybe.
        _end_of_requests(sock)
    finally:
        broker.unsubscribe(sub)


def _end_of_requests(sock: Any) -> None:
    """Shut the read side: the server's wait for a next request on it sees EOF at once."""
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
