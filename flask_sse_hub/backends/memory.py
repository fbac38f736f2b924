"""The embedded backend: ids, history and the broadcaster, all in this process.

Correct for ONE worker process: events do not cross processes
(docs/protocol.md#memory).
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..broker import PAGE_BYTES, Backend, Idempotency, Published, Replay, Sink
from ..errors import IdempotencyConflict
from ..wire import CONTROL_CHANNEL, Event, encode_gap, frame

log = logging.getLogger("flask_sse_hub")

#: The inbox's end marker (subscriptions have their own, broker.CLOSE).
_STOP = None


class MemoryBackend(Backend):
    """Ids ``<epoch>-<sequence>``, a history ring, and a broadcaster thread.

    The epoch is random per instance, so an id handed out by another process or
    an earlier run of the hub is recognised as unknown instead of being taken
    for a position in this one's sequence.
    """

    name = "memory"

    def __init__(self, *, history_size: int) -> None:
        self.epoch = ""  # chosen by start(): in the process that serves
        self._lock = threading.Lock()
        self._seq = 0
        self._history: deque[tuple[int, Published]] = deque(maxlen=history_size)
        self._inbox: queue.Queue[list[Published] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.published = 0
        #: Idempotency keys: key -> (expires at, monotonic; fingerprint; ids).
        self._answered: dict[str, tuple[float, str, list[str]]] = {}

    def start(self, sink: Sink) -> None:
        # A new epoch in every process that starts the broadcaster: a worker
        # forked from a preloaded app (gunicorn --preload) must not inherit
        # its predecessor's, or the dead worker's ids would pass for positions.
        self.epoch = secrets.token_hex(4)
        # Before the first event: a known position (replay from it is complete).
        sink.set_position(f"{self.epoch}-0")
        self._thread = threading.Thread(
            target=self._broadcast, args=(sink.fan_out,), name="sse-broadcaster", daemon=True
        )
        self._thread.start()
        log.info("memory backend started (epoch %s)", self.epoch)

    def stop(self) -> None:
        self._inbox.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def publish(
        self, events: Sequence[Event], idempotency: Idempotency | None = None,
    ) -> list[str]:
        # The inbox put happens under the lock so that batches reach the
        # broadcaster in id order even when several threads publish at once.
        now = time.time()
        with self._lock:
            if idempotency is not None:
                answered = self._answered_before(idempotency)
                if answered is not None:
                    return answered
            batch = []
            for event in events:
                self._seq += 1
                event_id = f"{self.epoch}-{self._seq}"
                published = Published(event_id, event.channel, frame(event_id, event.body), now)
                self._history.append((self._seq, published))
                batch.append(published)
            self.published += sum(event.channel != CONTROL_CHANNEL for event in events)
            ids = [event.id for event in batch]
            self._inbox.put(batch)  # the broadcaster owns ``batch`` from here on
            if idempotency is not None:
                self._answered[idempotency.key] = (
                    time.monotonic() + idempotency.seconds, idempotency.fingerprint, ids,
                )
        return ids

    def _answered_before(self, idempotency: Idempotency) -> list[str] | None:
        """The ids a live earlier use of the key got (caller holds the lock)."""
        now = time.monotonic()
        if len(self._answered) > 1024:  # forget expired keys, in bulk
            self._answered = {k: v for k, v in self._answered.items() if v[0] > now}
        found = self._answered.get(idempotency.key)
        if found is None or found[0] <= now:
            return None
        if found[1] != idempotency.fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was used for a different request within "
                f"{idempotency.seconds:g} s; use a new key for a new publish"
            )
        return list(found[2])

    def _broadcast(self, deliver: Callable[[list[Published]], None]) -> None:
        inbox = self._inbox
        while True:
            batch = inbox.get()
            if batch is _STOP:
                return
            # Fan out everything already waiting in one go: each subscriber
            # then gets one queue item (and the socket one write) for all of it.
            while len(batch) < 4096:
                try:
                    more = inbox.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    deliver(batch)
                    return
                batch.extend(more)
            try:
                deliver(batch)
            except Exception:  # a bug in fan-out must not kill the broadcaster
                log.exception("fan-out of %d events failed", len(batch))

    def _sequence_of(self, event_id: str | None) -> int | None:
        """The sequence number of an id of this epoch, or None for anything else."""
        if event_id is None:
            return None
        epoch, _, seq = event_id.partition("-")
        if epoch != self.epoch or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
            return None
        if len(seq) > 1 and seq[0] == "0":  # never issued: "007" is not position 7
            return None
        return int(seq)

    def published_not_broadcast(self, event_id: str, position: str | None) -> bool:
        seq = self._sequence_of(event_id)
        return self.comes_after(event_id, position) and seq is not None and seq <= self._seq

    def comes_after(self, event_id: str, position: str | None) -> bool:
        seq = self._sequence_of(event_id)
        return seq is not None and seq > (self._sequence_of(position) or 0)

    def replay(self, channels: frozenset[str], last_id: str, upto: str | None) -> Replay:
        after = self._sequence_of(last_id)
        until = self._sequence_of(upto) or 0
        with self._lock:
            first = self._history[0][0] if self._history else self._seq + 1
        # The known positions are "before the first retained event" up to
        # the last fanned-out one; anything else cannot be resumed from.
        gap = after is None or not first - 1 <= after <= until
        start = first - 1 if after is None or gap else after
        events = self._pages(channels, start, until)
        if gap:
            return Replay(events, gap=True, gap_position=f"{self.epoch}-{start}")
        return Replay(events)

    def _pages(self, channels: frozenset[str], after: int, until: int) -> Iterator[Published]:
        """The events of ``channels`` in (``after``, ``until``], taken a page at a time.

        A slow client then holds about one page of references, not the whole
        history (which would also keep evicted events alive). Events evicted
        while it read are an ``sse-hub-gap`` in its replay.
        """
        last = f"{self.epoch}-{after}"
        while after < until:
            page: list[Published] = []
            size = 0
            with self._lock:
                first = self._history[0][0] if self._history else self._seq + 1
                if after + 1 < first:
                    position = f"{self.epoch}-{first - 1}"
                    page.append(Published(position, "", encode_gap(last, position)))
                    after = first - 1
                for seq, published in itertools.islice(self._history, after + 1 - first, None):
                    if seq > until or size >= PAGE_BYTES:
                        break
                    after = seq
                    if published.channel in channels:
                        page.append(published)
                        size += len(published.frame)
                else:
                    after = until
            if page:
                last = page[-1].id
            yield from page

    def healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events_published": self.published,
                "history": len(self._history),
                "epoch": self.epoch,
            }
