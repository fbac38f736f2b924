"""Reading a :class:`~flask_sse_hub.broker.Broker`'s subscriptions the way a stream does.

Queue items start with ``(chunk, event_count, ...)`` (or are ``CLOSE``); a reader advances
``Subscription.dequeued`` by the count and parses the chunk with the WHATWG
parser, so what a test sees is what a browser would see. Shared by the unit
tests of the broker and of the memory backend, and by ``gevent_broker_check.py``
(which imports them after ``gevent.monkey.patch_all()``: they use
``threading``, ``queue`` and ``time`` only through module attributes).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Sequence

from flask_sse_hub.backends.memory import MemoryBackend
from flask_sse_hub.broker import CLOSE, Broker, Published, Replay, Subscription
from flask_sse_hub.wire import make_event

from .sse_parser import Event, EventStreamParser

WAIT = 10.0  # seconds: the bound on every wait; a pass never comes near it


def listed(sub: Subscription, replay: Replay) -> tuple[Subscription, Replay]:
    """``subscribe``'s answer with the (lazily read) replay events taken into a list."""
    return sub, dataclasses.replace(replay, events=list(replay.events))


def seq(event_id: str) -> int:
    """The sequence number of a memory-backend id ``<epoch>-<n>``."""
    return int(event_id.rsplit("-", 1)[1])


def frames_of(events: Sequence[Published]) -> list[Event]:
    """Parse replayed events as the stream writes them."""
    return EventStreamParser().feed(b"".join(event.frame for event in events))


class QueueReader:
    """Drains one subscription's queue in its own thread, like the stream generator.

    Checks on every item that the announced event count matches the events the
    chunk dispatches; ``wait_for(n)`` is a bounded wait for ``n`` events.
    """

    def __init__(self, sub: Subscription, name: str = "reader") -> None:
        self.sub = sub
        self.parser = EventStreamParser()
        self.events: list[Event] = []
        self.errors: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> QueueReader:
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            item = self.sub.queue.get()
            if item is CLOSE:
                with self._cond:
                    self.closed = True
                    self._cond.notify_all()
                return
            chunk, count = item[0], item[1]
            self.sub.dequeued += count
            events = self.parser.feed(chunk)
            with self._cond:
                if len(events) != count:
                    self.errors.append(f"chunk announced {count} events, held {len(events)}")
                self.events.extend(events)
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        """True once at least ``count`` events arrived; False after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.events) >= count, timeout)

    def wait_for_id(self, event_id: str, timeout: float = WAIT) -> bool:
        """True once the event ``event_id`` arrived; False after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: any(e.last_event_id == event_id for e in self.events), timeout
            )

    def wait_closed(self, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.closed, timeout)

    @property
    def ids(self) -> list[str]:
        with self._cond:
            return [event.last_event_id for event in self.events]


def read_events(
    sub: Subscription, parser: EventStreamParser, at_least: int, timeout: float = WAIT
) -> list[Event]:
    """Read the queue in this thread until ``at_least`` events came (and what is queued)."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            wait = 0.0 if len(got) >= at_least else max(deadline - time.monotonic(), 0.0)
            item = sub.queue.get(timeout=wait) if wait else sub.queue.get_nowait()
        except queue.Empty:
            if len(got) >= at_least:
                return got
            raise TimeoutError(f"got {len(got)} of {at_least} events") from None
        assert item is not CLOSE, f"subscription closed unexpectedly ({sub.end_reason})"
        chunk, count = item[0], item[1]
        sub.dequeued += count
        events = parser.feed(chunk)
        assert len(events) == count
        got += events


def new_broker(*, history_size: int = 1000, queue_size: int = 1000) -> Broker:
    return Broker(MemoryBackend(history_size=history_size), queue_size=queue_size)


def publish_and_settle(broker: Broker, items: list[tuple[str, str]]) -> list[str]:
    """Publish ``(channel, data)`` items and wait until the broadcaster fanned them all out."""
    watcher, _ = broker.subscribe(sorted({channel for channel, _ in items}))
    reader = QueueReader(watcher).start()
    ids = broker.publish([make_event(data, channel=channel) for channel, data in items])
    assert reader.wait_for(len(ids))
    broker.unsubscribe(watcher)
    watcher.close("done", release=True)
    reader.thread.join(WAIT)
    return ids
