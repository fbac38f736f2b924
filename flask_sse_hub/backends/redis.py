"""Redis as the backplane: any worker on any host publishes, every worker delivers.

One Redis stream per hub holds everything: a Lua script adds each event with
``XADD ... MAXLEN ~ <window>`` (Redis assigns the ids, ``<ms>-<seq>``,
CORS-safelisted) and numbers it with a per-stream sequence number (field
``n``). Each worker process runs ONE broadcaster thread that blocks on
``XREAD`` after the last id it fanned out and hands new entries to the local
fan-out. The sequence number is how the broadcaster knows, exactly and
without another round trip, that entries it never read are gone (trimmed
while it lagged, lost with a Redis restart or failover): ``n`` must grow by
one from entry to entry, and every live stream is told of any hole with an
``sse-hub-gap`` event. A position (a stream id) cannot say that by itself:
``XREAD`` after a trimmed id silently returns what is left.

Replays are read in pages (about 256 KiB of matching events, a Lua script per
page, so that the check "the page starts right after the previous position"
is atomic with the read) and multiplexed: every stream's page requests go
through one queue to ONE connection, pipelined, so a reconnect storm waits
its turn instead of failing on a busy pool.

Publishes are multiplexed too, on a connection of their own: concurrent
publishes go out as one pipeline (one round trip, one ``send``, one ``recv``).

Connections per worker are a constant whatever the number of subscribers:
the broadcaster's, the replay and publish connections, the health probe's and
at most :data:`POOL_SIZE` for presence, so at most :data:`MAX_CONNECTIONS`.

Every wait on Redis is bounded by ``SSE_REDIS_TIMEOUT``: a publish answers
(503 after retries) within it, ``/healthz`` within a second. An outage does
not end open streams (they keep their heartbeats); the broadcaster reconnects
with backoff (through Sentinel, to a new master after a failover) and resumes
after the last id it fanned out. With ``SSE_REDIS_MIN_REPLICAS=N`` a publish
is acknowledged only once N replicas have it (``WAIT``), and the broadcaster
fans an entry out only once N replicas have it too, so no id a client ever
saw is lost in a failover.

What this guarantees, and what it costs: docs/protocol.md#redis.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..broker import (
    PAGE_BYTES,
    Backend,
    Idempotency,
    Published,
    Replay,
    ReplayInterrupted,
    Sink,
)
from ..errors import BackendUnavailable, BatchTooLarge, ConfigError, IdempotencyConflict
from ..wire import CHANNEL_PATTERN, CONTROL_CHANNEL, Event, encode_gap, frame

log = logging.getLogger("flask_sse_hub")

_STREAM_ID = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})")
_U64_MAX = 2**64 - 1
#: How long one XREAD blocks, so that stop() is noticed and the connection checked.
_BLOCK_MS = 2000
#: Entries one XREAD takes at most.
_READ_COUNT = 1000
#: A broadcaster reaching Redis this long after start reads from the start time.
_STARTUP_GRACE = 1.0
#: Seconds of clock skew between this host and Redis tolerated by that reading.
_CLOCK_MARGIN = 5.0
#: Pool connections for presence (per worker).
POOL_SIZE = 2
#: Redis connections one worker holds at most: broadcaster, replay, publish, health,
#: presence pool.
MAX_CONNECTIONS = 4 + POOL_SIZE
#: A replay page: about PAGE_BYTES of matching events, scanning at most this many
#: entries (of any channel).
PAGE_SCAN = 512
#: Replay requests sent to Redis in one pipeline.
_PIPELINE_DEPTH = 32
#: Publish requests sent to Redis in one pipeline.
_PUBLISH_DEPTH = 64
#: The oldest Redis the backend works with: exclusive ranges and XADD options of 6.2.
MIN_REDIS_VERSION = (6, 2, 0)
#: URL options that would change what redis-py hands back (the hub reads raw RESP2 bytes).
_NEUTRALISED_OPTIONS = frozenset({"decode_responses", "protocol", "encoding"})


def _is_stream_id(value: str) -> bool:
    """True for a canonical ``<ms>-<seq>`` with both parts in Redis's 64-bit range."""
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


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_version(found: str) -> str | None:
    """Why a Redis of version ``found`` cannot serve the hub, or None when it can."""
    if _version(found) >= MIN_REDIS_VERSION:
        return None
    wanted = ".".join(map(str, MIN_REDIS_VERSION))
    return f"Redis {found} found; flask-sse-hub needs Redis >= {wanted}"


# Publishing is idempotent per call: the ids of a batch are stored under a
# token for a while, so a retry after a lost reply returns them instead of
# adding the events twice (a 503 answer then never hides a stored event).
# The window is the largest SSE_HISTORY_SIZE of any hub on this stream, so a
# hub with a smaller setting never shortens another's replay (kept in Redis).
# A batch larger than the window could not be retained whole: refused.
_PUBLISH_SCRIPT = """
local done = redis.call('GET', KEYS[4])
if done then
  local answer = cjson.decode(done)
  if answer.f ~= ARGV[2] then return redis.error_reply('SSEHUB_CONFLICT') end
  return answer.ids
end
local window = tonumber(ARGV[1])
local shared = tonumber(redis.call('GET', KEYS[3]) or '0')
if shared > window then window = shared
elseif shared < window then redis.call('SET', KEYS[3], window) end
local count = (#ARGV - 3) / 2
if count > window then
  return redis.error_reply('SSEHUB_TOO_LARGE ' .. window)
end
local n = redis.call('INCRBY', KEYS[2], count) - count
local ids = {}
for i = 4, #ARGV, 2 do
  n = n + 1
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', window, '*',
                             'c', ARGV[i], 'b', ARGV[i + 1], 'n', n)
end
redis.call('SET', KEYS[4], cjson.encode({ids = ids, f = ARGV[2]}), 'EX', ARGV[3])
return ids
"""

# Presence: every worker listed in KEYS[1] whose snapshot (ARGV[2] .. worker,
# expiring with its lease) has an entry for channel ARGV[1]; -> worker, entry, ...
_PRESENCE_SCRIPT = """
local found = {}
for _, worker in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local entry = redis.call('HGET', ARGV[2] .. worker, ARGV[1])
  if entry then
    found[#found + 1] = worker
    found[#found + 1] = entry
  end
end
return found
"""

_WINDOW_SCRIPT = """
local shared = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if mine > shared then redis.call('SET', KEYS[1], mine); return mine end
return shared
"""

# Where the broadcaster goes on from, atomically: {found, id, n}. ``id`` is
# ARGV[1] itself when it is an entry (found = 1), else the newest entry
# before it, else the oldest entry (the caller takes the id just before it),
# else '0-0'; ``n`` is that entry's sequence number (or the counter).
_ANCHOR_SCRIPT = """
local function seq(fields)
  for j = 1, #fields, 2 do
    if fields[j] == 'n' then return tonumber(fields[j + 1]) end
  end
  return false
end
local target = ARGV[1]
if target ~= '+' then
  local here = redis.call('XRANGE', KEYS[1], target, target)
  if #here == 1 then return {1, target, seq(here[1][2])} end
end
local older = redis.call('XREVRANGE', KEYS[1], target, '-', 'COUNT', 1)
if #older == 1 then return {0, older[1][1], seq(older[1][2])} end
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #oldest == 1 then
  local n = seq(oldest[1][2])
  return {2, oldest[1][1], n and n - 1}
end
return {0, '0-0', tonumber(redis.call('GET', KEYS[2]) or '0')}
"""

# One replay page: {head id, head n, last scanned id, complete, id, body, ...}
# with the entries of the wanted channels in [ARGV[1], ARGV[2]] (a body of
# false: an entry without the hub's fields): about ARGV[3] bytes of them, from
# at most ARGV[4] entries or 4 x ARGV[3] bytes scanned. The head, the first entry at
# or after ARGV[1] whatever its channel, is what the caller checks
# contiguity against: read in the same script as the page, so a trim cannot
# slip between the check and the read.
_PAGE_SCRIPT = """
local budget, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local wanted = {}
for i = 5, #ARGV do wanted[ARGV[i]] = true end
local out = {false, false, false, 0}
local size, scanned, seen = 0, 0, 0
local from = ARGV[1]
while true do
  -- Small steps: a page of large events must not copy hundreds of them.
  local step = math.min(16, limit - scanned)
  local rows = redis.call('XRANGE', KEYS[1], from, ARGV[2], 'COUNT', step)
  for _, row in ipairs(rows) do
    local fields = row[2]
    local c, b, n
    for j = 1, #fields, 2 do
      local k = fields[j]
      if k == 'c' then c = fields[j + 1] elseif k == 'b' then b = fields[j + 1]
      elseif k == 'n' then n = fields[j + 1] end
    end
    -- Full: this entry starts the next page (the cursor stays on the one before).
    if b and wanted[c] and size > 0 and size + #b > budget then return out end
    if scanned == 0 then out[1] = row[1]; out[2] = n or false end
    scanned = scanned + 1
    out[3] = row[1]
    if b then seen = seen + #b end
    if c == nil or b == nil then
      out[#out + 1] = row[1]; out[#out + 1] = false
    elseif wanted[c] then
      out[#out + 1] = row[1]; out[#out + 1] = b
      size = size + #b
    end
    if size >= budget or seen >= 4 * budget then return out end
  end
  if #rows < step then out[4] = 1; return out end
  if scanned >= limit then return out end
  from = '(' .. out[3]
end
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_entry(fields: dict[bytes, bytes]) -> tuple[str, bytes, int | None] | None:
    """``(channel, body, n)`` of an entry the hub wrote; None for anything else."""
    channel, body, number = fields.get(b"c"), fields.get(b"b"), fields.get(b"n")
    if not isinstance(channel, bytes) or not isinstance(body, bytes):
        return None
    name = channel.decode("ascii", "replace")
    if name == CONTROL_CHANNEL:
        return name, body, _number(number)
    # A body that is not one whole event would corrupt the events after it.
    if CHANNEL_PATTERN.fullmatch(name) is None or not body.endswith(b"\n\n"):
        return None
    return name, body, _number(number)


def _number(value: bytes | None) -> int | None:
    return int(value) if isinstance(value, bytes) and value.isdigit() else None


def neutralise_url(url: str) -> str:
    """``url`` without the options that would make redis-py decode replies.

    The hub reads raw bytes (bodies are written to sockets as they are):
    ``?decode_responses=true`` would hand it ``str`` and RESP3 other shapes.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k.lower() not in _NEUTRALISED_OPTIONS]
    if len(kept) != len(query):
        dropped = sorted({k for k, _ in query} - {k for k, _ in kept})
        log.warning(
            "SSE_REDIS_URL: ignoring %s (the hub reads raw RESP2 bytes)", ", ".join(dropped)
        )
    return urlunsplit(parts._replace(query=urlencode(kept)))


class _Connector:
    """Makes the backend's Redis clients: from ``SSE_REDIS_URL``, or through Sentinel."""

    def __init__(
        self, url: str | None, sentinels: Sequence[tuple[str, int]], master: str,
    ) -> None:
        self.url = neutralise_url(url) if url else None
        self.master = master
        self._sentinel: Sentinel | None = None
        self._options: dict[str, Any] = {}
        if sentinels:
            if self.url:  # db, username and password come from the URL
                parsed = redis.connection.parse_url(self.url)  # type: ignore[no-untyped-call]
                self._options = {
                    k: parsed[k] for k in ("db", "username", "password") if k in parsed
                }
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(sentinels), sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1},
            )
        elif not self.url:
            raise ConfigError("the Redis backend needs SSE_REDIS_URL or SSE_REDIS_SENTINELS")

    @property
    def where(self) -> str:
        if self._sentinel is not None:
            return f"Sentinel master {self.master!r}"
        assert self.url is not None
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 6379}"

    def client(self, *, timeout: float, max_connections: int = 1) -> redis.Redis:
        # No retries inside redis-py (its default since 6.0): every wait must
        # stay within SSE_REDIS_TIMEOUT, and publish retries itself, idempotently.
        # RESP2 whatever redis-py's default (3 since 8.0): the reply shapes the
        # hub reads, on every Redis it supports.
        options = {
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "max_connections": max_connections, "retry": Retry(NoBackoff(), 0), "protocol": 2,
        }
        if self._sentinel is not None:
            client: redis.Redis = self._sentinel.master_for(  # type: ignore[no-untyped-call]
                self.master, **self._options, **options,
            )
            return client
        assert self.url is not None
        return redis.Redis(connection_pool=redis.ConnectionPool.from_url(self.url, **options))


class _Multiplexer:
    """Many callers, one connection: requests queue up and go out as one pipeline.

    A reconnect storm of thousands of replays then waits its turn on a busy
    connection (each caller blocked only on its own reply) instead of failing
    for want of a pooled one, and concurrent publishes share round trips:
    Redis and redis-py see a few large pipelines instead of one command,
    one ``send`` and one ``recv`` per request.

    Scripts are sent as ``EVALSHA`` (:meth:`evalsha`) and loaded when Redis
    answers ``NOSCRIPT`` (a restarted or flushed Redis, a failover): redis-py's
    ``Script`` in a pipeline would ask ``SCRIPT EXISTS`` before every batch.
    With ``min_replicas``, each batch ends with one ``WAIT`` for all of it.
    """

    def __init__(
        self, client: redis.Redis, name: str, *, depth: int,
        scripts: Sequence[Script] = (), min_replicas: int = 0, wait_ms: int = 0,
    ) -> None:
        self.client = client
        self.name = name
        self.depth = depth
        self.scripts = scripts
        self.min_replicas = min_replicas
        self.wait_ms = wait_ms
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @staticmethod
    def evalsha(pipe: Any, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        pipe.evalsha(script.sha, len(keys), *keys, *args)

    def call(self, command: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """Run ``command(pipeline)`` (which adds ONE command) and return its reply.

        With a ``timeout``: a request still queued when it expires is never
        sent (``ConnectionError`` "connecting to ...": nothing was done); one
        already sent raises ``TimeoutError`` (Redis may yet run it).
        """
        request = _Request(command)
        self._ensure_running()
        self._requests.put(request)
        if not request.done.wait(timeout):
            with self._lock:
                if request.state is _QUEUED:
                    request.state = _ABANDONED
                    raise redis.ConnectionError(
                        f"connecting to Redis: the {self.name} connection was busy "
                        f"for {timeout:.2f}s"
                    )
            if not request.done.wait(0):  # sent: the reply may still be on its way
                raise redis.TimeoutError(f"Timeout reading from Redis ({self.name})")
        reply, request.reply = request.reply, None
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _ensure_running(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name=f"sse-redis-{self.name}", daemon=True,
                )
                self._thread.start()

    def _serve(self) -> None:
        while True:
            waiting = [self._requests.get()]
            while len(waiting) < self.depth:
                try:
                    waiting.append(self._requests.get_nowait())
                except queue.Empty:
                    break
            with self._lock:  # a caller that gave up on its request is not sent
                batch = [request for request in waiting if request.state is _QUEUED]
                for request in batch:
                    request.state = _SENT
            replies: list[Any]
            try:
                replies = self._execute(batch) if batch else []
            except Exception as exc:  # the connection failed: every caller hears of it
                replies = [exc] * len(batch)
            for request, reply in zip(batch, replies, strict=True):
                request.reply = reply
                request.done.set()
            del waiting, batch, replies  # not kept alive while waiting for the next request

    def _execute(self, batch: list[_Request]) -> list[Any]:
        replies = self._pipeline(batch)
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:  # this Redis has not seen our scripts (yet, or any more)
            for script in self.scripts:
                script.sha = self.client.script_load(script.script)
            again = self._pipeline([batch[i] for i in unknown])
            for i, reply in zip(unknown, again, strict=True):
                replies[i] = reply
        return replies

    def _pipeline(self, batch: list[_Request]) -> list[Any]:
        with self.client.pipeline(transaction=False) as pipe:
            for request in batch:
                request.command(pipe)
            if self.min_replicas:
                # WAIT's own timeout stays inside the socket's, so a missing
                # replica is a clear answer, not a timeout.
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "WAIT", self.min_replicas, self.wait_ms,
                )
            replies: list[Any] = pipe.execute(raise_on_error=False)
        if self.min_replicas:
            replicas = replies.pop()
            if isinstance(replicas, Exception):
                raise replicas
            if replicas < self.min_replicas:
                short = BackendUnavailable(
                    f"only {replicas} of {self.min_replicas} replicas (SSE_REDIS_MIN_REPLICAS) "
                    "acknowledged in time: the event(s) may have been published"
                )
                replies = [r if isinstance(r, Exception) else short for r in replies]
        return replies


#: A request's states: queued, taken into a pipeline, or given up by its caller.
_QUEUED, _SENT, _ABANDONED = "queued", "sent", "abandoned"


class _Request:
    __slots__ = ("command", "done", "reply", "state")

    def __init__(self, command: Callable[[Any], Any]) -> None:
        self.command = command
        self.done = threading.Event()
        self.reply: Any = None
        self.state = _QUEUED


@dataclass(frozen=True, slots=True)
class _Page:
    """One replay page as :data:`_PAGE_SCRIPT` returns it."""

    start: str  #: the id the page was read from (included)
    head: str | None  #: the first entry at or after ``start``, any channel
    head_n: int | None
    cursor: str | None  #: the last entry scanned
    complete: bool  #: nothing more up to the replay's end
    items: list[tuple[str, bytes | None]]

    @classmethod
    def parse(cls, start: str, reply: Any) -> _Page:
        head, head_n, cursor, complete, *rest = reply
        items = [
            (_text(rest[i]), rest[i + 1]) for i in range(0, len(rest), 2)
        ]
        number = _text(head_n) if head_n is not None else ""
        return cls(
            start, _text(head) if head else None, int(number) if number.isdigit() else None,
            _text(cursor) if cursor else None, bool(complete), items,
        )

    def follows(self, after: str, upto: str) -> bool:
        """True when nothing can lie between ``after`` and this page: no event is missed."""
        if self.head is None:
            return after == upto
        return (
            self.head == after
            or _previous_id(self.head) == after
            or (after == "0-0" and self.head_n == 1)
        )


class RedisBackend(Backend):
    """Events in one Redis stream; ids, order and history are Redis's."""

    name = "redis"

    def __init__(
        self, url: str | None, *, history_size: int, key: str = "flask-sse-hub:sse",
        timeout: float = 2.0, sentinels: Sequence[tuple[str, int]] = (),
        sentinel_master: str = "mymaster", min_replicas: int = 0,
    ) -> None:
        self.key = key
        self.history_size = history_size
        self.timeout = timeout
        self.min_replicas = min_replicas
        self._connector = _Connector(url, sentinels, sentinel_master)
        # One publish attempt may take this long at most (pool wait, connect,
        # reply): two attempts fit in SSE_REDIS_TIMEOUT.
        self._attempt = timeout * 0.45
        self._client = self._connector.client(timeout=self._attempt, max_connections=POOL_SIZE)
        self._slots = threading.BoundedSemaphore(POOL_SIZE)
        self._health = self._connector.client(timeout=min(0.8, timeout))
        self._health_lock = threading.Lock()
        self._last_health = True
        self._publish_script = self._client.register_script(_PUBLISH_SCRIPT)
        self._page_script = self._client.register_script(_PAGE_SCRIPT)
        self._replays = _Multiplexer(
            self._connector.client(timeout=timeout), "replay", depth=_PIPELINE_DEPTH,
            scripts=[self._page_script],
        )
        # Concurrent publishes share round trips on one connection; a pipeline
        # takes at most one attempt's time (the socket timeout), two fit in
        # SSE_REDIS_TIMEOUT.
        self._publishes = _Multiplexer(
            self._connector.client(timeout=self._attempt), "publish", depth=_PUBLISH_DEPTH,
            scripts=[self._publish_script], min_replicas=min_replicas,
            wait_ms=int(self._attempt * 800),
        )
        self._window_script = self._client.register_script(_WINDOW_SCRIPT)
        self._anchor_script = self._client.register_script(_ANCHOR_SCRIPT)
        self._presence_script = self._client.register_script(_PRESENCE_SCRIPT)
        self._stop = threading.Event()
        self._started_at = time.time()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        #: The broadcaster's state: the last id fanned out and its sequence number.
        self._last_id: str | None = None
        self._last_n: int | None = None
        self._server: str | None = None  # the run_id of the Redis last connected to
        self._running = False
        self._connected = False
        self._refusal: str | None = None
        self.window = history_size
        self.published = 0
        self.reconnects = 0
        self.holes = 0
        #: Seconds between the last entry's XADD and this broadcaster reading it.
        self.broadcaster_lag = 0.0
        self._probe_version()

    def _keys(self, *suffixes: str) -> list[str]:
        return [self.key, *(f"{self.key}:{suffix}" for suffix in suffixes)]

    def _probe_version(self) -> None:
        """Refuse to start on a Redis too old for the hub (when it can be reached now)."""
        try:
            found = self._health.info("server").get("redis_version", "?")
        except redis.RedisError:
            return  # down at start: the broadcaster checks once it gets through
        problem = check_version(str(found))
        if problem is not None:
            raise ConfigError(f"{problem} (at {self._connector.where})")

    # -- publishing ---------------------------------------------------------

    def publish(
        self, events: Sequence[Event], idempotency: Idempotency | None = None,
    ) -> list[str]:
        if self._refusal is not None:
            raise BackendUnavailable(self._refusal)
        # The script remembers each call's ids under a key: a retry of the
        # same call (below) and a repeat of an Idempotency-Key get them back.
        if idempotency is None:
            answer = f"published:{secrets.token_hex(12)}"
            args: list[str | bytes | int] = [self.history_size, "", 30]
        else:
            answer = "idempotency:" + hashlib.sha256(idempotency.key.encode()).hexdigest()
            args = [self.history_size, idempotency.fingerprint, math.ceil(idempotency.seconds)]
        for event in events:
            args += [event.channel, event.body]
        keys = self._keys("seq", "window", answer)
        deadline = time.monotonic() + self.timeout
        sent = False  # whether any attempt got as far as sending the script
        while True:
            try:
                ids = self._publish_once(keys, args, deadline)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # redis-py says "connecting to" when nothing was sent at all.
                sent = sent or "connecting to" not in str(exc)
                if deadline - time.monotonic() < self._attempt:
                    outcome = (
                        "the event(s) may have been published; do not retry blindly"
                        if sent else "nothing was published"
                    )
                    raise BackendUnavailable(f"Redis unavailable ({exc}): {outcome}") from None
                time.sleep(0.02)
            except redis.ResponseError as exc:
                if str(exc).startswith("SSEHUB_CONFLICT"):
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used for a different request; "
                        "use a new key for a new publish"
                    ) from None
                if str(exc).startswith("SSEHUB_TOO_LARGE"):
                    window = str(exc).split()[1]
                    raise BatchTooLarge(
                        f"a batch of {len(events)} events cannot be retained by a history "
                        f"of {window} (SSE_HISTORY_SIZE): nothing was published"
                    ) from None
                raise BackendUnavailable(f"Redis refused the publish: {exc}") from None
            except redis.RedisError as exc:  # e.g. OOM: Redis refused the script
                raise BackendUnavailable(f"Redis refused the publish: {exc}") from None
        decoded = [_text(i) for i in ids]
        self.published += sum(event.channel != CONTROL_CHANNEL for event in events)
        return decoded

    def _publish_once(self, keys: list[str], args: list[Any], deadline: float) -> Any:
        script = self._publish_script
        return self._publishes.call(
            lambda pipe: _Multiplexer.evalsha(pipe, script, keys, args),
            timeout=max(deadline - time.monotonic(), 0.0),
        )

    # -- the broadcaster ----------------------------------------------------

    def start(self, sink: Sink) -> None:
        self._stop.clear()
        self._started_at = time.time()
        self._thread = threading.Thread(
            target=self._supervise, args=(sink,), name="sse-redis-broadcaster", daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_BLOCK_MS / 1000 + self.timeout + 1)
        for client in (
            self._client, self._health, self._replays.client, self._publishes.client,
        ):
            client.connection_pool.disconnect()

    def _supervise(self, sink: Sink) -> None:
        """Run the broadcaster; whatever ends it but stop(), log and run it again."""
        backoff = 0.1
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._broadcast(sink)
            except Exception:
                self._running = False
                log.exception("the Redis broadcaster failed; restarting it in %.1fs", backoff)
            if time.monotonic() - started > 30:
                backoff = 0.1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        self._running = False

    def _broadcast(self, sink: Sink) -> None:
        backoff = 0.1
        conn: redis.Redis | None = None
        self._running = True
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        conn = self._connector.client(timeout=_BLOCK_MS / 1000 + self.timeout)
                        self._attach(conn, sink)
                        backoff = 0.1
                    streams: Any = {self.key: self._last_id}
                    reply: Any = conn.xread(streams, count=_READ_COUNT, block=_BLOCK_MS)
                    if reply:
                        entries = reply[0][1]
                        if self.min_replicas:
                            self._await_replicas(conn)
                        self._deliver(entries, sink)
                except (redis.RedisError, _Refused) as exc:
                    if self._connected:
                        log.warning("Redis backplane lost (%s); reconnecting with backoff", exc)
                        self.reconnects += 1
                    self._connected = False
                    if conn is not None:
                        conn.connection_pool.disconnect()
                        conn = None
                    self._stop.wait(10.0 if isinstance(exc, _Refused) else backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            if conn is not None:
                conn.connection_pool.disconnect()

    def _attach(self, conn: redis.Redis, sink: Sink) -> None:
        """After (re)connecting: check the server, register the window, find where to go on."""
        info: Any = conn.info("server")
        problem = check_version(str(info.get("redis_version", "?")))
        if problem is not None:
            if self._refusal is None:
                log.error("%s (at %s): not delivering", problem, self._connector.where)
            self._refusal = problem
            raise _Refused(problem)
        self._refusal = None
        server = str(info.get("run_id"))
        window = int(self._window_script(
            keys=self._keys("window")[1:], args=[self.history_size], client=conn,
        ))
        if window != self.window or self._server is None:
            if window > self.history_size:
                log.warning(
                    "stream %s keeps %d events, more than SSE_HISTORY_SIZE=%d here: another hub "
                    "on it has the larger window, and the larger window wins",
                    self.key, window, self.history_size,
                )
            else:
                log.info("stream %s keeps %d events (SSE_HISTORY_SIZE)", self.key, window)
            self.window = window
        if self._last_id is None:
            self._start_position(conn, sink)
        else:
            found, position, n = self._anchor(conn, self._last_id)
            # Our position is an entry still there, or a position between
            # entries (the start, or just before the oldest) whose neighbour
            # below has the number we last saw: nothing before it went missing,
            # and the numbering of what XREAD returns next tells the rest.
            intact = found or (n is not None and n == self._last_n)
            changed = self._server is not None and server != self._server
            if not intact or (changed and not self.min_replicas):
                # Restarted, failed over (unreplicated events may be gone), or
                # trimmed while we were away: whatever came after our last id
                # may be lost to this worker's streams.
                log.warning(
                    "Redis may have lost events after %s (%s); telling every stream",
                    self._last_id, "trimmed or restarted" if not intact else "another server",
                )
                self._hole(sink, position)
                self._last_n = n
            elif not self._connected:
                log.info("Redis backplane back; resuming after %s", self._last_id)
        self._server = server
        self._connected = True

    def _start_position(self, conn: redis.Redis, sink: Sink) -> None:
        target = "+"
        if time.time() - self._started_at > _STARTUP_GRACE:
            # Redis was down when this worker started: streams opened
            # meanwhile expect what was published since, which the end of
            # the stream would skip. Start at the worker's start instead
            # (Redis ids are Redis-clock milliseconds; a margin absorbs
            # clock skew): at worst a few seconds of older events.
            target = f"{int((self._started_at - _CLOCK_MARGIN) * 1000)}-0"
        _, position, n = self._anchor(conn, target)
        self._last_id, self._last_n = position, n
        sink.set_position(position)
        self._ready.set()

    def _anchor(self, conn: redis.Redis, target: str) -> tuple[bool, str, int | None]:
        """``target`` if it is an entry, else the newest entry before it, else the
        position just before the oldest entry, else ``0-0``; with its sequence number."""
        reply: Any = self._anchor_script(keys=self._keys("seq"), args=[target], client=conn)
        kind, position, n = int(reply[0]), _text(reply[1]), reply[2]
        if kind == 2:
            position = _previous_id(position)
        return kind == 1, position, int(n) if n is not None else None

    def _await_replicas(self, conn: redis.Redis) -> None:
        """Block until ``min_replicas`` replicas have every entry just read.

        WAIT counts the caller's own writes: a tiny write after the read makes
        the replication offset the one that covers the read entries (the
        replication stream is one ordered log).
        """
        warned = False
        while not self._stop.is_set():
            with conn.pipeline(transaction=False) as pipe:
                pipe.set(f"{self.key}:replicated", "1", ex=60)
                pipe.execute_command("WAIT", self.min_replicas, 1000)  # type: ignore[no-untyped-call]
                _, replicas = pipe.execute()
            if replicas >= self.min_replicas:
                return
            if not warned:
                log.warning(
                    "holding events until %d replicas have them (SSE_REDIS_MIN_REPLICAS); %d do",
                    self.min_replicas, replicas,
                )
                warned = True

    def _deliver(self, entries: Any, sink: Sink) -> None:
        """Fan ``entries`` out in order; every hole in their numbering is a gap first."""
        run: list[Published] = []

        def flush() -> None:
            if run:
                try:
                    sink.fan_out(list(run))
                except Exception:  # a bug in fan-out must not kill the broadcaster
                    log.exception("fan-out of %d events failed", len(run))
                run.clear()

        for raw_id, fields in entries:
            event_id = _text(raw_id)
            decoded = _decode_entry(fields)
            if decoded is None:
                flush()
                log.warning("skipping stream entry %s: not an event of the hub", event_id)
                self._hole(sink, event_id)
                continue
            channel, body, n = decoded
            if n is not None and self._last_n is not None and n != self._last_n + 1:
                flush()
                log.warning(
                    "events %s to %s of %s were trimmed or lost before this worker read them",
                    self._last_n + 1, n - 1, self.key,
                )
                self._hole(sink, _previous_id(event_id))
            # Redis stamped the id with its clock (ms): the publish time, for the lag metric.
            at = int(event_id.partition("-")[0]) / 1000
            run.append(Published(event_id, channel, frame(event_id, body), at))
            self._last_id = event_id
            if n is not None:
                self._last_n = n
        if run:  # one clock read per batch: the lag of its newest entry
            self.broadcaster_lag = max(0.0, time.time() - run[-1].at)
        flush()

    def _hole(self, sink: Sink, position: str) -> None:
        """Tell every stream that events after our last id were lost; go on from ``position``."""
        assert self._last_id is not None
        self.holes += 1
        sink.broadcast_gap(self._last_id, position)
        self._last_id = position

    def comes_after(self, event_id: str, position: str | None) -> bool:
        return _is_stream_id(event_id) and (
            position is None or _stream_key(event_id) > _stream_key(position)
        )

    def published_not_broadcast(self, event_id: str, position: str | None) -> bool:
        if not self.comes_after(event_id, position):
            return False
        # Published (by any worker) but not read by this one's broadcaster yet?
        try:
            return bool(self._replays.call(lambda pipe: pipe.xrange(self.key, event_id, event_id)))
        except redis.RedisError:
            return False

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # -- replay ---------------------------------------------------------------

    def _page(self, channels: frozenset[str], start: str, upto: str) -> _Page:
        args: list[str | int] = [start, upto, PAGE_BYTES, PAGE_SCAN, *sorted(channels)]
        script = self._page_script
        reply = self._replays.call(
            lambda pipe: _Multiplexer.evalsha(pipe, script, [self.key], args)
        )
        return _Page.parse(start, reply)

    def replay(self, channels: frozenset[str], last_id: str, upto: str | None) -> Replay:
        # During an outage the stream still opens (an EventSource gives up for
        # good on a 503): it starts with a gap without id, so the client keeps
        # its own id for a later resume, then gets live events once Redis is back.
        if upto is None:  # the broadcaster has not reached Redis yet
            return Replay(gap=True)
        try:
            # Still beyond ``upto`` (the broker waited for it in vain): history
            # and live events would overlap, so this too is reported as a gap.
            if _is_stream_id(last_id) and not self.comes_after(last_id, upto):
                page = self._page(channels, last_id, upto)
                if page.follows(last_id, upto):
                    return Replay(self._pages(page, channels, last_id, upto))
            page = self._page(channels, "-", upto)
        except redis.RedisError as exc:
            log.warning("cannot replay after %s while Redis is unavailable (%s)", last_id, exc)
            return Replay(gap=True)
        position = _previous_id(page.head) if page.head else "0-0"
        return Replay(self._pages(page, channels, position, upto), gap=True, gap_position=position)

    def _pages(
        self, page: _Page, channels: frozenset[str], last: str, upto: str,
    ) -> Iterator[Published]:
        """The events of ``page`` and of the pages after it, read one page at a time.

        A page that no longer follows the previous one (trimmed meanwhile) is
        an ``sse-hub-gap`` event in the replay, naming the last event sent.
        """
        while True:
            items = page.items
            items.reverse()  # popped from the end: what is written is not kept
            while items:
                event_id, body = items.pop()
                if event_id == page.start:
                    continue  # the client's own last event, or the previous page's end
                if body is None or not body.endswith(b"\n\n"):
                    yield Published(event_id, "", encode_gap(last, event_id))
                else:
                    yield Published(event_id, "", frame(event_id, body))
                last = event_id
            if page.complete or page.cursor is None:
                return
            try:
                page = self._page(channels, page.cursor, upto)
            except redis.RedisError as exc:
                raise ReplayInterrupted(f"Redis failed in a replay after {last}: {exc}") from exc
            if not page.follows(page.start, upto):
                position = _previous_id(page.head) if page.head else upto
                yield Published(position, "", encode_gap(last, position))
                last = position

    # -- presence -------------------------------------------------------------

    shares_presence = True

    def share_presence(self, worker: str, snapshot: dict[str, str], lease: float) -> None:
        """Replace this worker's snapshot; it expires with the lease unless renewed."""
        mine, workers = self._keys(f"presence:{worker}", "presence")[1:]
        try:
            with self._slot("presence"), self._client.pipeline(transaction=True) as pipe:
                pipe.delete(mine)
                if snapshot:
                    pipe.hset(mine, mapping=snapshot)  # type: ignore[arg-type]
                    pipe.pexpire(mine, int(lease * 1000))
                now_ms = int(time.time() * 1000)
                pipe.zadd(workers, {worker: now_ms})
                # Workers silent for an hour are long gone: keep the index short.
                pipe.zremrangebyscore(workers, "-inf", now_ms - 3_600_000)
                pipe.execute()
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis unavailable ({exc}): presence not shared") from None

    def shared_presence(self, channel: str) -> dict[str, str]:
        try:
            with self._slot("presence"):
                found = self._presence_script(
                    keys=[f"{self.key}:presence"], args=[channel, f"{self.key}:presence:"],
                )
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis unavailable ({exc}): presence unknown") from None
        return {_text(found[i]): _text(found[i + 1]) for i in range(0, len(found) - 1, 2)}

    @contextlib.contextmanager
    def _slot(self, what: str) -> Iterator[None]:
        """One of the pooled connections, within one attempt's time, for ``what``."""
        if not self._slots.acquire(timeout=self._attempt):
            raise BackendUnavailable(f"every Redis connection is busy: {what} not done")
        try:
            yield
        finally:
            self._slots.release()

    # -- health ---------------------------------------------------------------

    def healthy(self) -> bool:
        """A live PING within a second, and a running broadcaster.

        One probe at a time: a caller arriving while one runs (Redis hangs)
        gets the last answer at once instead of queueing behind it.
        """
        if (self._thread is not None and not self._running) or self._refusal is not None:
            return False
        if not self._health_lock.acquire(blocking=False):
            return self._last_health
        try:
            self._health.ping()
            self._last_health = True
        except redis.RedisError:
            self._last_health = False
        finally:
            self._health_lock.release()
        return self._last_health

    def stats(self) -> dict[str, Any]:
        return {
            "events_published": self.published,
            "redis_reconnects": self.reconnects,
            "redis_connected": self._connected,
            "redis_broadcaster_running": self._running,
            "redis_window": self.window,
            "redis_holes": self.holes,
            "redis_broadcaster_lag_seconds": round(self.broadcaster_lag, 6),
        }


class _Refused(Exception):
    """The Redis reached cannot serve the hub (too old)."""
