"""Redis as the backplane: any worker on any host publishes, every worker delivers.

One Redis stream per hub holds everything: ``XADD ... MAXLEN ~ SSE_HISTORY_SIZE``
assigns the ids (``<ms>-<seq>``, CORS-safelisted), orders all events, and keeps
the history. Each worker process runs ONE broadcaster thread that blocks on
``XREAD`` after the last id it delivered and hands new entries to the local
fan-out; replay reads history with ``XRANGE``. Connections per worker are
constant: the broadcaster's own, plus a small blocking pool shared by
publishes, replays and health checks, whatever the number of subscribers.

An outage does not end open streams (they keep their heartbeats). Publishing
raises :class:`BackendUnavailable`. The broadcaster reconnects with backoff and
resumes after the last id it delivered, so whatever Redis retained is not
lost; if that id is gone when Redis is back (restarted empty, or trimmed
meanwhile), every local subscriber gets an ``sse-hub-gap`` event instead of
silence.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..broker import Backend, Published, Replay, Sink
from ..errors import BackendUnavailable
from ..wire import Event, frame

log = logging.getLogger("flask_sse_hub")

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
#: How long one XREAD blocks, so that stop() is noticed and the connection checked.
_BLOCK_MS = 2000
#: Pool connections for publishes, replays and health checks (per worker).
POOL_SIZE = 4


def _is_stream_id(value: str) -> bool:
    return _STREAM_ID.fullmatch(value) is not None


def _stream_key(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq)


def _decode(entries: Any, channels: frozenset[str] | None = None) -> list[Published]:
    """Stream entries ``[(id, {b"c": channel, b"b": body}), ...]`` as events, by channel."""
    events = []
    for raw_id, fields in entries:
        channel = fields.get(b"c", b"").decode()
        if channels is None or channel in channels:
            event_id = raw_id.decode()
            events.append(Published(event_id, channel, frame(event_id, fields.get(b"b", b""))))
    return events


class RedisBackend(Backend):
    """Events in one Redis stream; ids, order and history are Redis's."""

    name = "redis"

    def __init__(self, url: str, *, history_size: int, key: str = "flask-sse-hub:sse") -> None:
        self.url = url
        self.key = key
        self.history_size = history_size
        # Short timeouts: a publish during an outage must fail fast (503), not hang.
        self._pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=5,
            socket_connect_timeout=2, socket_timeout=5,
        )
        # One retry on a fresh connection: after a Redis restart the pooled
        # connections are dead, and the first command on each would fail.
        self._client = redis.Redis(
            connection_pool=self._pool, retry=Retry(ExponentialBackoff(cap=0.2), 1),
        )
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._healthy = True
        self.published = 0
        self.reconnects = 0
        #: The newest id this process published (is_ahead only knows its own).
        self._last_published = "0-0"

    # -- publishing ---------------------------------------------------------

    def publish(self, events: Sequence[Event]) -> list[str]:
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for event in events:
                    fields: dict[str | bytes, str | bytes] = {"c": event.channel, "b": event.body}
                    pipe.xadd(
                        self.key, cast(Any, fields),
                        maxlen=self.history_size, approximate=True,
                    )
                ids = pipe.execute()
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis unavailable, nothing published: {exc}") from None
        self.published += len(ids)
        decoded = [cast(bytes, event_id).decode() for event_id in ids]
        if decoded and _stream_key(decoded[-1]) > _stream_key(self._last_published):
            self._last_published = decoded[-1]
        return decoded

    # -- the broadcaster ----------------------------------------------------

    def start(self, sink: Sink) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._broadcast, args=(sink,), name="sse-redis-broadcaster", daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_BLOCK_MS / 1000 + 3)
        self._pool.disconnect()

    def _connect(self) -> redis.Redis:
        # The broadcaster's own connection: a blocking XREAD would otherwise
        # hold one of the pool's for seconds at a time.
        return redis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=_BLOCK_MS / 1000 + 5,
        )

    def _broadcast(self, sink: Sink) -> None:
        last_id: str | None = None
        backoff = 0.1
        conn: redis.Redis | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                    last_id = self._resume_point(conn, last_id, sink)
                    if not self._healthy:
                        log.info("Redis backplane back; resuming after %s", last_id)
                    backoff = 0.1
                    self._healthy = True
                streams: Any = {self.key: last_id}
                reply: Any = conn.xread(streams, count=1000, block=_BLOCK_MS)
            except redis.RedisError as exc:
                if self._healthy:
                    log.warning("Redis backplane lost (%s); reconnecting with backoff", exc)
                    self.reconnects += 1
                self._healthy = False
                if conn is not None:
                    conn.close()
                    conn = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not reply:
                continue
            batch = _decode(reply[0][1])
            last_id = batch[-1].id
            try:
                sink.fan_out(batch)
            except Exception:  # a bug in fan-out must not kill the broadcaster
                log.exception("fan-out of %d events failed", len(batch))
        if conn is not None:
            conn.close()

    def _resume_point(self, conn: redis.Redis, last_id: str | None, sink: Sink) -> str:
        """Where XREAD goes on from: the last delivered id, or the stream's end at start.

        When the last delivered id is no longer in the stream, what came between
        it and the oldest retained entry is lost to this worker: tell every
        subscriber with a gap event, then carry on after that id.
        """
        if last_id is None:
            newest: Any = conn.xrevrange(self.key, count=1)
            position = newest[0][0].decode() if newest else "0-0"
            sink.set_position(position)
            self._ready.set()
            return position
        if not self._is_position(conn, last_id):
            log.warning("Redis lost the events after %s (restarted or trimmed)", last_id)
            sink.broadcast_gap(last_id)
        return last_id

    def _is_position(self, conn: redis.Redis, event_id: str) -> bool:
        """True when resuming after ``event_id`` misses nothing: it is still in the stream.

        ``0-0`` (before the first event) qualifies while nothing was ever trimmed.
        """
        if event_id == "0-0":
            try:
                info: Any = conn.xinfo_stream(self.key)
            except redis.ResponseError:  # no such key: nothing was ever trimmed
                return True
            return info.get("max-deleted-entry-id", b"0-0") in (b"0-0", "0-0")
        return _is_stream_id(event_id) and bool(conn.xrange(self.key, event_id, event_id))

    def is_ahead(self, event_id: str, position: str | None) -> bool:
        # No Redis round trip here (called under the broker's lock): an id
        # beyond the position that Redis does not know is caught by replay().
        return (
            position is not None and _is_stream_id(event_id)
            and _stream_key(event_id) > _stream_key(position)
            and _stream_key(event_id) <= _stream_key(self._last_published)
        )

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # -- replay ---------------------------------------------------------------

    def replay(self, channels: frozenset[str], last_id: str, upto: str | None) -> Replay:
        if upto is None:  # the broadcaster has not reached Redis yet
            raise BackendUnavailable("Redis unavailable, cannot replay yet")
        try:
            entries: Any
            if self._is_position(self._client, last_id):
                entries = (
                    self._client.xrange(self.key, "(" + last_id, upto)
                    if _stream_key(upto) > _stream_key(last_id) else []
                )
                return Replay(_decode(entries, channels))
            # Unknown, garbage, or trimmed: tell the client, then give it what is retained.
            entries = self._client.xrange(self.key, "-", upto)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis unavailable, cannot replay: {exc}") from None
        events = _decode(entries, channels)
        return Replay(events, gap=True, gap_position=None if events else upto)

    # -- health ---------------------------------------------------------------

    def healthy(self) -> bool:
        """A live PING, so /healthz tells the truth even between broadcaster reconnects."""
        try:
            self._client.ping()
        except redis.RedisError:
            return False
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "events_published": self.published,
            "redis_reconnects": self.reconnects,
            "redis_connected": self._healthy,
        }
