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
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from ..broker import Backend, Published, Replay, Sink
from ..errors import BackendUnavailable
from ..wire import Event, frame

log = logging.getLogger("flask_sse_hub")

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_U64_MAX = 2**64 - 1
#: How long one XREAD blocks, so that stop() is noticed and the connection checked.
_BLOCK_MS = 2000
#: A broadcaster reaching Redis this long after start reads from the start time.
_STARTUP_GRACE = 1.0
#: Seconds of clock skew between this host and Redis tolerated by that reading.
_CLOCK_MARGIN = 5.0
#: Pool connections for publishes, replays and health checks (per worker).
POOL_SIZE = 4


def _is_stream_id(value: str) -> bool:
    """True for ``<ms>-<seq>`` with both parts in Redis's 64-bit range."""
    return _STREAM_ID.fullmatch(value) is not None and max(_stream_key(value)) <= _U64_MAX


def _stream_key(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq)


def _previous_id(value: str) -> str:
    """The greatest id below ``value``: no entry can lie between the two."""
    ms, seq = _stream_key(value)
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{_U64_MAX}" if ms else "0-0"


# Publishing is idempotent per call: the ids of a batch are stored under a
# token for a while, so a retry after a lost reply returns them instead of
# adding the events twice (a 503 answer then never hides a stored event).
_PUBLISH_SCRIPT = """
local done = redis.call('GET', KEYS[2])
if done then return cjson.decode(done) end
local ids = {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                             'c', ARGV[i], 'b', ARGV[i + 1])
end
redis.call('SET', KEYS[2], cjson.encode(ids), 'EX', 30)
return ids
"""
#: Attempts of one publish when the connection fails (the same token each time).
_PUBLISH_ATTEMPTS = 3


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
        # No retries inside redis-py: publish retries itself, idempotently.
        self._client = redis.Redis(connection_pool=self._pool)
        self._publish_script = self._client.register_script(_PUBLISH_SCRIPT)
        self._stop = threading.Event()
        self._started_at = time.time()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._healthy = True
        self.published = 0
        self.reconnects = 0


    # -- publishing ---------------------------------------------------------

    def publish(self, events: Sequence[Event]) -> list[str]:
        args: list[str | bytes | int] = [self.history_size]
        for event in events:
            args += [event.channel, event.body]
        token = f"{self.key}:published:{secrets.token_hex(12)}"
        sent = False  # whether any attempt got as far as sending the script
        for attempt in range(_PUBLISH_ATTEMPTS):
            try:
                ids = self._publish_script(keys=[self.key, token], args=args)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # redis-py says "connecting to" when nothing was sent at all.
                sent = sent or "connecting to" not in str(exc)
                if attempt + 1 == _PUBLISH_ATTEMPTS:
                    outcome = (
                        "the event(s) may have been published; do not retry blindly"
                        if sent else "nothing was published"
                    )
                    raise BackendUnavailable(f"Redis unavailable ({exc}): {outcome}") from None
                time.sleep(0.1 * (attempt + 1))
            except redis.RedisError as exc:  # e.g. OOM: Redis refused the script
                raise BackendUnavailable(f"Redis refused the publish: {exc}") from None
        decoded = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        self.published += len(decoded)
        return decoded

    # -- the broadcaster ----------------------------------------------------

    def start(self, sink: Sink) -> None:
        self._stop.clear()
        self._started_at = time.time()
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
            if time.time() - self._started_at > _STARTUP_GRACE:
                # Redis was down when this worker started: streams opened
                # meanwhile expect what was published since, which the end of
                # the stream would skip. Start at the worker's start instead
                # (Redis ids are Redis-clock milliseconds; a margin absorbs
                # clock skew): at worst a few seconds of older events.
                since = f"{int((self._started_at - _CLOCK_MARGIN) * 1000)}-0"
                if _stream_key(since) < _stream_key(position):
                    position = self._position_at(conn, since)
            sink.set_position(position)
            self._ready.set()
            return position
        if not self._locate(conn, last_id)[0]:
            log.warning("Redis lost the events after %s (restarted or trimmed)", last_id)
            sink.broadcast_gap(last_id)
        return last_id

    def _position_at(self, conn: redis.Redis, moment: str) -> str:
        """The last position at or before the id ``moment``, as one ``_locate`` knows.

        A moment between entries is no stream position: a client given it as
        its start (``sse-hub-position``) would resume with a gap. The newest
        entry at or before it is one, else the id just before the oldest entry.
        """
        older: Any = conn.xrevrange(self.key, max=moment, count=1)
        if older:
            return str(older[0][0].decode())
        oldest: Any = conn.xrange(self.key, count=1)
        return _previous_id(oldest[0][0].decode()) if oldest else "0-0"

    def _locate(self, conn: redis.Redis, event_id: str) -> tuple[bool, str]:
        """Whether resuming after ``event_id`` misses nothing, and the gap position.

        A known position is an id still in the stream, the id just before the
        oldest retained entry (what a gap event carries: nothing can lie
        between the two), or ``0-0`` while nothing was ever trimmed. The gap
        position is that id just before the oldest entry (``0-0`` when empty).
        One round trip.
        """
        valid = _is_stream_id(event_id)
        with conn.pipeline(transaction=False) as pipe:
            if valid:
                pipe.xrange(self.key, event_id, event_id)
            pipe.xinfo_stream(self.key)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        info = replies[-1]
        if isinstance(info, redis.ResponseError):  # no such key: an empty stream
            return event_id == "0-0", "0-0"
        if isinstance(info, Exception):
            raise info
        first_entry = info.get("first-entry")
        first = first_entry[0].decode() if first_entry else None
        position = _previous_id(first) if first else "0-0"
        untrimmed = info.get("entries-added") == info.get("length")
        known = valid and (
            bool(replies[0]) or event_id == position or (event_id == "0-0" and untrimmed)
        )
        return known, position

    def is_beyond(self, event_id: str, position: str | None) -> bool:
        return _is_stream_id(event_id) and (
            position is None or _stream_key(event_id) > _stream_key(position)
        )

    def is_ahead(self, event_id: str, position: str | None) -> bool:
        if not self.is_beyond(event_id, position):
            return False
        # Published (by any worker) but not read by this one's broadcaster yet?
        try:
            return bool(self._client.xrange(self.key, event_id, event_id))
        except redis.RedisError:
            return False

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # -- replay ---------------------------------------------------------------

    def replay(self, channels: frozenset[str], last_id: str, upto: str | None) -> Replay:
        # During an outage the stream still opens (an EventSource gives up for
        # good on a 503): it starts with a gap without id, so the client keeps
        # its own id for a later resume, then gets live events once Redis is back.
        if upto is None:  # the broadcaster has not reached Redis yet
            return Replay(gap=True)
        try:
            known, position = self._locate(self._client, last_id)
            entries: Any
            # Still beyond ``upto`` (the broker waited for it in vain): history
            # and live events would overlap, so this too is reported as a gap.
            if known and not self.is_beyond(last_id, upto):
                entries = (
                    self._client.xrange(self.key, "(" + last_id, upto)
                    if _stream_key(upto) > _stream_key(last_id) else []
                )
                return Replay(_decode(entries, channels))
            entries = self._client.xrange(self.key, "-", upto)
        except redis.RedisError as exc:
            log.warning("cannot replay after %s while Redis is unavailable (%s)", last_id, exc)
            return Replay(gap=True)
        return Replay(_decode(entries, channels), gap=True, gap_position=position)

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
