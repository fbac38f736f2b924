"""Subscriptions, the backend interface, and the fan-out to local subscribers.

Data flows one way::

    publish() -> Backend.publish (ids, history, transport)
              -> the backend's broadcaster thread -> Broker.fan_out
              -> each Subscription's bounded queue -> the stream generator

The :class:`Broker` is the same for every backend. It keeps the registry of
local subscriptions under one lock and remembers the *position*: the id of the
last event it fanned out. :meth:`Broker.subscribe` registers a subscription and
reads that position in the same critical section in which :meth:`fan_out`
advances it, so a resuming client replays history up to exactly that position
and receives everything after it live: no gap, no duplicate, even while events
are being published during the reconnect.

Everything here works with real OS threads and, unchanged, under gevent's
monkey-patching (``threading``, ``queue`` and locks become cooperative); no
``threading`` name is bound at import time so that patching after import works.

The guarantees this keeps: docs/protocol.md#guarantees; its threads, locks and
invariants: docs/architecture.md#concurrency, docs/architecture.md#invariants.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import AtCapacity, TooManyConnections
from .logs import RateLimitedLog
from .wire import CONTROL_CHANNEL, Event, control_fields, encode_disconnect, encode_gap

log = logging.getLogger("flask_sse_hub")


@dataclass(frozen=True, slots=True)
class Published:
    """An event with its hub-assigned id: the complete bytes a client receives.

    ``at`` is when it was published (wall clock), for the delivery-lag metric.
    """

    id: str
    channel: str
    frame: bytes
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resuming subscriber gets before live events.

    ``gap`` is true when the requested id is unknown (garbage, another hub's
    epoch) or older than the retained history; ``gap_position`` is then the id
    just before ``events`` (None when there is no such id to give).
    ``start`` is, for a subscription without ``last_id``, the position it
    starts after (None when none is known yet): its client's resume point
    until the first event reaches it.

    ``events`` may be lazy (Redis reads history a page at a time while the
    stream writes it), so a slow client holds one page, not the whole
    history; it raises :class:`ReplayInterrupted` when the rest cannot be read.
    """

    events: Iterable[Published] = field(default_factory=list)
    gap: bool = False
    gap_position: str | None = None
    start: str | None = None


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An ``Idempotency-Key``: the key, a digest of what it publishes, and how long it holds."""

    key: str
    fingerprint: str
    seconds: float


class ReplayInterrupted(Exception):
    """The rest of a replay cannot be read (the backplane failed): end the stream.

    Its client resumes from the last event it got, which loses nothing.
    """


#: (Un)registrations noted for presence before it must read the whole registry instead.
JOINS_KEPT = 100_000
#: A replay page: what a resuming stream reads at a time (one event, if larger).
PAGE_BYTES = 128 * 1024
#: What it writes at a time. Beyond the shared history a resuming stream holds
#: the rest of one page and one chunk (and the server's framed copy of it).
CHUNK_BYTES = 64 * 1024


#: Queue items: ``(chunk, number of events in it, when its oldest event was
#: published)``; ``CLOSE`` ends the stream.
Chunk = tuple[bytes, int, float]
CLOSE = None


class Subscription:
    """One stream's registration: its channels and its queue of chunks.

    The queue is a plain ``queue.Queue`` (gevent's when the process is
    monkey-patched), used only through its documented methods. Its bound is
    counted in *events*, not items, with two counters that each have a single
    writer — ``enqueued`` the broadcaster, ``dequeued`` the stream — so the
    count is race-free under OS threads without another lock. ``delivered`` is
    likewise written by the stream alone.
    """

    __slots__ = (
        "abort", "channels", "client", "delivered", "dequeued", "end_reason", "enqueued",
        "heard", "joined", "queue", "subject", "tagged",
    )

    def __init__(
        self, channels: Sequence[str], client: str | None = None, subject: str | None = None,
        *, tagged: bool = False,
    ) -> None:
        self.channels = frozenset(channels)
        #: Each event comes with a ``channel:`` field (``?relay=1``: a relaying client).
        self.tagged = tagged
        #: Gets chunks joined for it (several channels, or tagged) rather than a channel's.
        self.joined = tagged or len(self.channels) > 1
        #: The client address counted against ``SSE_MAX_CONNECTIONS_PER_IP``.
        self.client = client
        #: Who the stream is (a token's ``sub``, or ``@sse.identify``): presence, disconnect.
        self.subject = subject
        self.queue: queue.Queue[Chunk | None] = queue.Queue()
        self.enqueued = 0
        self.dequeued = 0
        self.delivered = 0
        #: ``delivered`` at the last heartbeat sweep: unchanged means idle since
        #: (-1: not swept yet, so a new stream's first heartbeat comes a whole interval on).
        self.heard = -1
        #: Why the hub ended this stream ("slow", "shutdown"), or None.
        self.end_reason: str | None = None
        #: Set by the stream when the server exposes its socket: cuts a client
        #: that no longer reads, so a write blocked on it returns at once.
        self.abort: Callable[[], None] | None = None

    @property
    def pending(self) -> int:
        """Events queued and not yet taken by the stream."""
        return self.enqueued - self.dequeued

    def close(self, reason: str, *, release: bool) -> None:
        """Make the stream end; ``release`` first drops what is queued (freeing it)."""
        self.end_reason = reason
        if release:
            try:
                while True:
                    self.queue.get_nowait()
            except queue.Empty:
                pass
        self.queue.put_nowait(CLOSE)


class Sink(Protocol):
    """What a backend's broadcaster feeds: the :class:`Broker`."""

    def fan_out(self, batch: list[Published]) -> None:
        """Deliver a batch of events, in id order, to the local subscribers."""

    def set_position(self, position: str) -> None:
        """Where the broadcaster starts: every later event will come through fan_out."""

    def broadcast_gap(self, last_id: str, position: str | None) -> None:
        """Events after ``last_id`` were lost to this process: tell every subscriber.

        ``position`` (the gap event's id) is where the broadcaster goes on
        from: a client resuming from it is not told of the same loss again.
        """


class Backend(ABC):
    """Where published events go and where fanned-out events come from.

    A backend assigns ids, keeps the history, and runs ONE broadcaster thread
    per process that hands batches of :class:`Published` events, in id order,
    to the sink given to :meth:`start`.
    """

    name: str

    @abstractmethod
    def start(self, sink: Sink) -> None:
        """Start the broadcaster thread, feeding ``sink``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the broadcaster thread (no more deliveries)."""

    @abstractmethod
    def publish(
        self, events: Sequence[Event], idempotency: Idempotency | None = None,
    ) -> list[str]:
        """Publish ``events`` in order; return their ids. Raises BackendUnavailable.

        With ``idempotency``: a key already used within its ``seconds`` returns
        the ids it got then and publishes nothing; a different ``fingerprint``
        under the same key raises ``IdempotencyConflict``.
        """

    @abstractmethod
    def replay(self, channels: frozenset[str], last_id: str, upto: str | None) -> Replay:
        """The retained events of ``channels`` after ``last_id``, up to ``upto`` included."""

    def published_not_broadcast(self, event_id: str, position: str | None) -> bool:
        """True when ``event_id`` was published but not yet fanned out here (may do I/O).

        A client may resume from an id that ``publish()`` just returned, or that
        another worker already delivered; the broker then waits for this
        broadcaster to pass it, so that the replay ends at or after it and
        nothing up to it arrives live a second time.
        """
        return False

    def comes_after(self, event_id: str, position: str | None) -> bool:
        """True when ``event_id`` comes after ``position`` (a comparison, no I/O)."""
        return False

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the broadcaster knows where it starts; False if it does not in time.

        A subscription registered before that could miss the events published
        meanwhile, and a replay would have no position to end at.
        """
        return True

    #: Whether other processes' presence is reachable (see presence.py).
    shares_presence = False

    def share_presence(  # noqa: B027 - optional: only a shared backend has it
        self, worker: str, snapshot: dict[str, str], lease: float,
    ) -> None:
        """Publish this worker's presence snapshot for ``lease`` seconds (replacing the last)."""

    def shared_presence(self, channel: str) -> dict[str, str]:
        """Every live worker's snapshot entry for ``channel``, by worker."""
        return {}

    @abstractmethod
    def healthy(self) -> bool:
        """True when publishing would currently succeed."""

    def stats(self) -> dict[str, Any]:
        """Backend-specific figures for ``/stats``."""
        return {}


class Broker:
    """The local registry of subscriptions and the fan-out to them.

    One broker per app and blueprint. Its lock guards bookkeeping only (the
    registry, the position, counters); puts are non-blocking and happen
    outside it.
    """

    def __init__(
        self, backend: Backend, *, queue_size: int, max_streams: int | None = None,
    ) -> None:
        self.backend = backend
        self.queue_size = queue_size
        #: Streams this process holds at most (``SSE_MAX_STREAMS``); None: no limit.
        self.max_streams = max_streams
        #: Warnings that a flood could repeat (slow drops, refusals), rate limited.
        self.warnings = RateLimitedLog(log)
        self._lock = threading.Lock()
        self._channels: dict[str, set[Subscription]] = {}
        self._position: str | None = None
        # Notified when the position advances, only while someone waits (see
        # Backend.published_not_broadcast): Condition.notify checks ownership with a failing
        # non-blocking acquire, which under gevent yields while holding the lock.
        self._advanced = threading.Condition(self._lock)
        self._waiting = 0
        self._started = False
        self._closed = False
        self.connections = 0
        self._per_client: dict[str, int] = {}
        self.dropped_slow = 0
        self.replays = 0
        self.gaps = 0
        self.disconnected = 0
        # Every (un)registration since presence last looked: ((channel, subject), +1 or -1);
        # None once it grew past JOINS_KEPT unread: presence then reads the whole registry.
        self._joins: list[tuple[tuple[str, str | None], int]] | None = []
        self._delivered_by_closed = 0
        #: Streams that end at a time (max age, token expiry): (when, tie-break, sub), a heap.
        self._deadlines: list[tuple[float, int, Subscription]] = []
        self._tiebreak = itertools.count()

    # -- publishing -----------------------------------------------------------

    def publish(
        self, events: Sequence[Event], idempotency: Idempotency | None = None,
    ) -> list[str]:
        """Publish already validated events in order; return their ids.

        With ``idempotency``, a repeat of the same key within its time answers
        the first call's ids and publishes nothing (backend-wide: any worker).
        """
        self._ensure_started()
        return self.backend.publish(events, idempotency)

    def wait_broadcast(self, event_id: str, timeout: float) -> bool:
        """Wait until this process's broadcaster has passed ``event_id`` (published here).

        True at once where publishing is broadcasting (the memory backend);
        False if it has not passed it in time. A publisher that paces itself by
        it never runs further ahead of this worker's streams than it waits for.
        """
        if not self.backend.comes_after(event_id, self._position):
            return True
        return self._wait_passed(event_id, timeout)

    def _wait_passed(self, event_id: str, timeout: float) -> bool:
        with self._lock:
            self._waiting += 1
            try:
                return self._advanced.wait_for(
                    lambda: not self.backend.comes_after(event_id, self._position), timeout=timeout
                )
            finally:
                self._waiting -= 1

    # -- subscribing ----------------------------------------------------------

    def subscribe(
        self, channels: Sequence[str], last_id: str | None = None, *,
        client: str | None = None, max_per_client: int | None = None,
        subject: str | None = None, tagged: bool = False,
    ) -> tuple[Subscription, Replay]:
        """Register a subscription; with ``last_id``, also compute what it missed.

        With ``client`` and ``max_per_client``, refuse (``TooManyConnections``)
        a client that already holds that many subscriptions here; refuse
        (``AtCapacity``) anyone once this process holds ``max_streams``.
        """
        self._check_capacity()
        self._ensure_started()
        self.backend.wait_ready(timeout=3.0)
        if last_id is not None and self.backend.published_not_broadcast(last_id, self._position):
            self._wait_passed(last_id, timeout=3.0)
        sub = Subscription(channels, client, subject, tagged=tagged)
        with self._lock:
            self._check_capacity()
            if client is not None:
                held = self._per_client.get(client, 0)
                if max_per_client is not None and held >= max_per_client:
                    raise TooManyConnections(
                        f"{client} already has {held} open streams on this worker "
                        f"(SSE_MAX_CONNECTIONS_PER_IP={max_per_client})"
                    )
                self._per_client[client] = held + 1
            if self._closed:
                sub.close("shutdown", release=False)
            for channel in sub.channels:
                self._channels.setdefault(channel, set()).add(sub)
            self.connections += 1
            self._log_join(sub, 1)
            upto = self._position
        if last_id is None:
            return sub, Replay(start=upto)
        try:
            replay = self.backend.replay(sub.channels, last_id, upto)
        except BaseException:
            self.unsubscribe(sub)
            raise
        with self._lock:
            self.replays += 1
            self.gaps += replay.gap
        return sub, replay

    def _check_capacity(self) -> None:
        if self.max_streams is not None and self.connections >= self.max_streams:
            raise AtCapacity(
                f"this worker holds {self.connections} streams (SSE_MAX_STREAMS={self.max_streams})"
            )

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget ``sub``; safe to call more than once."""
        with self._lock:
            removed = False
            for channel in sub.channels:
                subs = self._channels.get(channel)
                if subs is not None and sub in subs:
                    subs.discard(sub)
                    removed = True
                    if not subs:
                        del self._channels[channel]
            if removed:
                self.connections -= 1
                self._log_join(sub, -1)
                self._delivered_by_closed += sub.delivered
                if sub.client is not None:
                    held = self._per_client.pop(sub.client) - 1
                    if held:
                        self._per_client[sub.client] = held
        sub.abort = None

    # -- fan-out (the broadcaster thread) -------------------------------------

    def fan_out(self, batch: list[Published]) -> None:
        """Hand ``batch`` (in id order) to every local subscriber of its channels.

        Frames of one channel are joined once per batch and that one ``bytes``
        object is put, as a single item, into every single-channel subscriber's
        queue. A subscriber of several channels gets the frames of its channels
        merged in id order (one join per distinct channel set in the batch).
        A full queue never blocks: its subscriber is dropped as slow.
        """
        # A chunk never takes more than a quarter of a queue, so a subscriber
        # that keeps up always has room for the chunks in flight.
        step = max(1, self.queue_size // 4)
        for start in range(0, len(batch), step):
            if start:
                # A batch larger than a chunk: let the streams write what they
                # got before the next chunk (gevent and OS threads alike yield
                # here), so one large batch never overflows a reader that keeps up.
                time.sleep(0)
            self._fan_out(batch[start : start + step])

    def _fan_out(self, batch: list[Published]) -> None:
        if not batch:
            return
        by_channel: dict[str, list[bytes]] = {}
        oldest: dict[str, float] = {}
        for event in batch:
            frames = by_channel.get(event.channel)
            if frames is None:
                by_channel[event.channel] = [event.frame]
                oldest[event.channel] = event.at
            else:
                frames.append(event.frame)
        controls = by_channel.pop(CONTROL_CHANNEL, None)
        with self._lock:
            self._position = batch[-1].id
            if self._waiting:
                self._advanced.notify_all()
            targets = [
                (channel, list(subs))
                for channel in by_channel
                if (subs := self._channels.get(channel))
            ]
        joined: set[Subscription] = set()
        for channel, listed in targets:
            frames = by_channel[channel]
            item: Chunk = (
                frames[0] if len(frames) == 1 else b"".join(frames), len(frames), oldest[channel],
            )
            for sub in listed:
                if sub.joined:
                    joined.add(sub)
                else:
                    self._offer(sub, item)
        if joined:
            self._offer_joined(batch, joined)
        if controls:
            for control in controls:
                self._apply_control(control)

    def _offer_joined(self, batch: list[Published], subs: set[Subscription]) -> None:
        """Chunks of several channels merged in id order, tagged or not: one join per kind."""
        chunks: dict[tuple[frozenset[str], bool], Chunk] = {}
        for sub in subs:
            kind = (sub.channels, sub.tagged)
            found = chunks.get(kind)
            if found is None:
                mine = [event for event in batch if event.channel in sub.channels]
                frames = [tag(event) for event in mine] if sub.tagged else [
                    event.frame for event in mine
                ]
                found = chunks[kind] = (b"".join(frames), len(mine), mine[0].at)
            self._offer(sub, found)

    def set_position(self, position: str) -> None:
        with self._lock:
            self._position = position
            if self._waiting:
                self._advanced.notify_all()

    def broadcast_gap(self, last_id: str, position: str | None) -> None:
        with self._lock:
            if position is not None:
                self._position = position
            subs = {sub for subs in self._channels.values() for sub in subs}
            self.gaps += len(subs)
        item = (encode_gap(last_id, position), 1, time.time())
        for sub in subs:
            self._offer(sub, item)

    def _offer(self, sub: Subscription, item: Chunk) -> None:
        # An empty queue always takes a chunk, however many events it holds.
        pending = sub.pending
        if pending and pending + item[1] > self.queue_size:
            self._drop_slow(sub)
            return
        sub.enqueued += item[1]
        sub.queue.put_nowait(item)

    def _drop_slow(self, sub: Subscription) -> None:
        if sub.end_reason is not None:
            return
        with self._lock:
            self.dropped_slow += 1
        self.warnings.warn(
            "slow",
            "dropping slow subscriber of %s: %d events queued (SSE_QUEUE_SIZE=%d); "
            "it will resume from history",
            ",".join(sorted(sub.channels)), sub.pending, self.queue_size,
        )
        self.unsubscribe_and_release(sub)

    def unsubscribe_and_release(self, sub: Subscription) -> None:
        """End ``sub``'s stream now and free what its queue holds."""
        self.end(sub, "slow", cut=True)

    def end(self, sub: Subscription, reason: str, *, cut: bool = False) -> None:
        """Unregister ``sub`` and end its stream, freeing its queue; ``cut`` its socket too.

        Cutting makes a write blocked on a client that stopped reading return
        at once.
        """
        abort = sub.abort
        self.unsubscribe(sub)
        sub.close(reason, release=True)
        if cut and abort is not None:
            abort()

    # -- heartbeats and deadlines (the ticker) ------------------------------------

    def end_at(self, sub: Subscription, deadline: float) -> None:
        """End ``sub`` at ``deadline`` (monotonic): its age limit, or its token's expiry."""
        with self._lock:
            heapq.heappush(self._deadlines, (deadline, next(self._tiebreak), sub))

    def sweep(self, heartbeat: bytes | None) -> None:
        """End the streams whose deadline passed; with ``heartbeat``, beat each idle stream.

        Idle: nothing written since the last sweep with a heartbeat and
        nothing queued. Called by the ticker (every tick; with ``heartbeat``
        once per ``SSE_HEARTBEAT_SECONDS``), so no stream waits with a timer
        of its own.
        """
        now = time.monotonic()
        expired = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                expired.append(heapq.heappop(self._deadlines)[2])
            live = (
                {sub for subs in self._channels.values() for sub in subs}
                if heartbeat is not None else ()
            )
        for sub in expired:
            if sub.end_reason is None:
                self.end(sub, "expired")
        if heartbeat is None:
            return
        item: Chunk = (heartbeat, 0, 0.0)
        for sub in live:
            if sub.delivered == sub.heard and sub.queue.empty():
                sub.queue.put_nowait(item)
            sub.heard = sub.delivered

    # -- ending streams on demand ------------------------------------------------

    def _apply_control(self, event_frame: bytes) -> None:
        try:
            fields = control_fields(event_frame)
            match = fields["disconnect"]
            channel, subject = match.get("channel"), match.get("subject")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.warnings.warn("control", "ignoring a control entry the hub cannot read")
            return
        self.disconnect_here(channel, subject)

    def disconnect_here(self, channel: str | None, subject: str | None) -> int:
        """End this process's streams of ``channel`` and/or ``subject`` (None: any).

        Each gets what is queued, then ``sse-hub-disconnect``, then its end;
        returns how many.
        """
        with self._lock:
            candidates = (
                self._channels.get(channel, set()) if channel is not None
                else {sub for subs in self._channels.values() for sub in subs}
            )
            matched = [
                sub for sub in candidates if subject is None or sub.subject == subject
            ]
            self.disconnected += len(matched)
        last = (encode_disconnect(channel, subject), 1, time.time())
        for sub in matched:
            self.unsubscribe(sub)
            sub.enqueued += 1
            sub.queue.put_nowait(last)
            sub.queue.put_nowait(CLOSE)
        return len(matched)

    def _log_join(self, sub: Subscription, delta: int) -> None:
        """Note an (un)registration for presence (caller holds the lock)."""
        joins = self._joins
        if joins is None:
            return
        if len(joins) > JOINS_KEPT:  # nobody reads them (no presence ticking): stop noting
            self._joins = None
            return
        joins.extend(((channel, sub.subject), delta) for channel in sub.channels)

    def registration_changes(self) -> list[tuple[tuple[str, str | None], int]] | None:
        """``((channel, subject), +1 or -1)`` for every (un)registration since the last call.

        What presence follows: its cost is the streams that came and went,
        not the streams there are. None: too many went unread; read
        :meth:`registrations` instead (and the log starts again).
        """
        with self._lock:
            joins, self._joins = self._joins, []
        return joins

    def registrations(self) -> list[tuple[str, str | None]]:
        """``(channel, subject)`` of every stream of every channel here (one per stream)."""
        with self._lock:
            self._joins = []
            return [
                (channel, sub.subject)
                for channel, subs in self._channels.items() for sub in subs
            ]

    # -- lifecycle ------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        self.backend.start(self)

    def close(self) -> None:
        """End every open stream (SIGTERM): clients reconnect, to another worker if need be."""
        with self._lock:
            self._closed = True
            subs = {sub for subs in self._channels.values() for sub in subs}
        for sub in subs:
            # Cut as well: a stream blocked writing to a client that stopped
            # reading would otherwise hold the worker until the graceful-timeout kill.
            abort = sub.abort
            sub.close("shutdown", release=True)
            if abort is not None:
                abort()
        if subs:
            log.info("closed %d open streams for shutdown", len(subs))

    @property
    def stopped(self) -> bool:
        """True once :meth:`close` or :meth:`stop` ran: no stream is served any more."""
        return self._closed

    def stop(self) -> None:
        """Close every stream and stop the backend's broadcaster."""
        self.close()
        if self._started:
            self.backend.stop()

    def stats(self) -> dict[str, Any]:
        """Figures for ``/stats``, for this process."""
        with self._lock:
            per_channel = {channel: len(subs) for channel, subs in self._channels.items()}
            live = {sub for subs in self._channels.values() for sub in subs}
            delivered = self._delivered_by_closed + sum(sub.delivered for sub in live)
            return {
                "backend": self.backend.name,
                "subscribers": self.connections,
                "client_addresses": len(self._per_client),
                "channels": per_channel,
                "events_delivered": delivered,
                "subscribers_dropped_slow": self.dropped_slow,
                "replays_served": self.replays,
                "gaps_reported": self.gaps,
                "streams_disconnected": self.disconnected,
                **self.backend.stats(),
            }


def tag(event: Published) -> bytes:
    """``event``'s frame with a ``channel:`` field, which WHATWG clients ignore.

    For ``?relay=1`` streams: a client that shares one stream between
    several tabs (sse-hub.js) reads it to hand each tab its channels' events.
    """
    if not event.channel:  # the hub's own lines (a gap in a replay)
        return event.frame
    return b"channel: " + event.channel.encode("ascii") + b"\n" + event.frame


def join_chunks(frames: Iterable[bytes], limit: int = CHUNK_BYTES) -> Iterator[tuple[bytes, int]]:
    """Group frames into chunks of at most ``limit`` bytes (or one frame, if larger).

    Lazy, and the parts of a chunk are let go before it is handed on: while a
    client is slow to take a chunk, the stream holds that chunk and nothing else.
    """
    parts: list[bytes] = []
    size = 0
    for data in frames:
        if parts and size + len(data) > limit:
            chunk, count = b"".join(parts), len(parts)
            parts, size = [], 0
            yield chunk, count
        parts.append(data)
        size += len(data)
    if parts:
        chunk, count = b"".join(parts), len(parts)
        parts = []
        yield chunk, count
