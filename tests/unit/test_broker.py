"""The Broker with the memory backend, under real OS threads.

What it must keep: docs/protocol.md#guarantees; how: docs/architecture.md#invariants.

Subscriptions are read the way the stream generator reads them: queue items
are ``(chunk, event_count)`` (or ``None``, the CLOSE sentinel), the reader
advances ``Subscription.dequeued`` by the count, and the chunk is parsed with
the WHATWG parser — so what a test sees is what a browser would see.

The scenario functions (``run_fanout_scenario``, ``run_resume_race``) are
plain functions: ``gevent_broker_check.py`` runs the very same code in a
subprocess after ``gevent.monkey.patch_all()``. They only use ``threading``,
``queue`` and ``time`` through module attributes, so the patched versions are
the ones used there.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import queue
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import flask_sse_hub.broker as broker_module
from flask_sse_hub.backends.memory import MemoryBackend
from flask_sse_hub.broker import CLOSE, Broker, Published, Replay, Subscription
from flask_sse_hub.wire import make_event
from tests.support.sse_parser import Event, EventStreamParser
from tests.support.threads import run_in_thread

WAIT = 10.0  # seconds: the bound on every wait; a pass never comes near it
#: How long the resume race may publish: its 20 reconnects need a fraction of it.
RACE_BUDGET = 5.0


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
            chunk, count = item
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
        chunk, count = item
        sub.dequeued += count
        events = parser.feed(chunk)
        assert len(events) == count
        got += events


def new_broker(*, history_size: int = 1000, queue_size: int = 1000) -> Broker:
    return Broker(MemoryBackend(history_size=history_size), queue_size=queue_size)


@pytest.fixture
def make_broker() -> Iterator[Callable[..., Broker]]:
    """Brokers stopped (streams closed, broadcaster joined) at teardown."""
    made: list[Broker] = []

    def factory(**options: int) -> Broker:
        broker = new_broker(**options)
        made.append(broker)
        return broker

    yield factory
    for broker in made:
        broker.stop()


# -- the scenarios (also run under gevent by gevent_broker_check.py) -------------------


def run_fanout_scenario(
    *, publishers: int = 8, per_publisher: int = 500, subscribers: int = 30
) -> None:
    """Many publishers x many subscribers: each gets its channels' events exactly once, in order.

    Subscriber ``i`` listens to channel ``i % 3``; every 4th also to the next
    channel and every 5th to all three. Every publisher spreads its events
    over the three channels; every 7th publish is a batch of two.
    """
    channels = ("red", "green", "blue")
    # The queue bound is not under test here (see the slow-subscriber test):
    # make it large enough that no well-behaved reader can be dropped.
    broker = new_broker(history_size=100, queue_size=1_000_000)
    readers: list[tuple[frozenset[str], QueueReader]] = []
    try:
        for i in range(subscribers):
            wanted = {channels[i % 3]}
            if i % 4 == 0:
                wanted.add(channels[(i + 1) % 3])
            if i % 5 == 0:
                wanted.update(channels)
            sub, replay = listed(*broker.subscribe(sorted(wanted)))
            assert replay.events == [] and not replay.gap
            readers.append((frozenset(wanted), QueueReader(sub, f"reader-{i}").start()))

        published: dict[str, tuple[str, dict[str, int]]] = {}
        per_thread_ids: list[list[str]] = [[] for _ in range(publishers)]
        start = threading.Barrier(publishers)

        def publish_all(p: int) -> None:
            start.wait(WAIT)
            i = 0
            while i < per_publisher:
                size = 2 if i % 7 == 6 and i + 1 < per_publisher else 1
                batch = [
                    ({"p": p, "i": j}, channels[(p + j) % 3]) for j in range(i, i + size)
                ]
                ids = broker.publish([make_event(d, channel=c) for d, c in batch])
                # One id per event published, never anyone else's.
                assert len(ids) == size, f"publish of {size} event(s) returned {ids}"
                for event_id, (data, channel) in zip(ids, batch, strict=True):
                    published[event_id] = (channel, data)
                    per_thread_ids[p].append(event_id)
                i += size
                if i % 16 == 0:
                    time.sleep(0)  # let the others run (a greenlet yields only here)

        workers = [
            run_in_thread(publish_all, p, name=f"publisher-{p}") for p in range(publishers)
        ]
        for worker in workers:
            worker.join(WAIT * 3)
        assert len(published) == publishers * per_publisher, "ids are not unique"

        # Ids follow publish order: each publisher's ids are increasing.
        for ids in per_thread_ids:
            assert [seq(i) for i in ids] == sorted(seq(i) for i in ids)

        for wanted, reader in readers:
            expected = sorted(
                (event_id for event_id, (channel, _) in published.items() if channel in wanted),
                key=seq,
            )
            assert reader.wait_for(len(expected)), (
                f"{reader.thread.name} ({sorted(wanted)}) got {len(reader.events)} "
                f"of {len(expected)} events"
            )
            # Exactly once, in the hub's id order (which is publish order per channel).
            assert reader.ids == expected, f"{reader.thread.name}: lost, duplicated or reordered"
            for event in reader.events:
                _, data = published[event.last_event_id]
                assert json.loads(event.data) == data
                assert event.type == "message"
            assert not reader.errors, reader.errors
            assert not reader.closed
        stats = broker.stats()
        assert stats["subscribers_dropped_slow"] == 0
        assert stats["subscribers"] == subscribers
    finally:
        broker.stop()
    for _, reader in readers:
        assert reader.wait_closed(), f"{reader.thread.name} was not closed by stop()"
        reader.thread.join(WAIT)


def run_resume_race(*, reconnects: int = 20) -> None:
    """A client reconnects again and again while a publisher never pauses.

    Each time it unsubscribes and subscribes again with the id of the last
    event it saw, reads the replay, then live events. All it saw, put
    together, must be every event from its first one on, exactly once, in
    order (docs/protocol.md#exactly-once).
    """
    broker = new_broker(history_size=1_000_000, queue_size=1_000_000)
    stop = threading.Event()
    started = threading.Event()
    published: list[str] = []
    failures: list[BaseException] = []

    def publish_forever() -> None:
        # The client needs well under a second; if it is still reconnecting
        # after this, subscribe/unsubscribe are starved by the fan-out.
        deadline = time.monotonic() + RACE_BUDGET
        try:
            n = 0
            while not stop.is_set():
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"client starved: {len(published)} events published in {RACE_BUDGET} s "
                        "and it has not finished its reconnects"
                    )
                published.extend(broker.publish([make_event(str(n), channel="race")]))
                n += 1
                if n == 50:
                    started.set()
                time.sleep(0)  # pace it, and let the client run (gevent)
        except BaseException as exc:
            failures.append(exc)
            started.set()

    publisher = threading.Thread(target=publish_forever, name="publisher")
    seen: list[Event] = []
    replayed: list[int] = []  # events replayed, per reconnect
    try:
        sub, replay = listed(*broker.subscribe(["race"]))
        # A second stream that stays connected: what it received, the fan-out
        # has passed, so a resume from an earlier id replays it.
        witness, _ = broker.subscribe(["race"])
        witness_parser = EventStreamParser()
        publisher.start()
        assert started.wait(WAIT)
        parser = EventStreamParser()
        seen += read_events(sub, parser, at_least=1)
        for attempt in range(reconnects):
            # 0, 1 or 2 live events before dropping the connection: with 0 it
            # reconnects at once, with events still queued for the old stream.
            if attempt % 3:
                seen += read_events(sub, parser, at_least=attempt % 3)
            broker.unsubscribe(sub)
            # The publisher runs while the client is "reconnecting": wait until
            # the witness got an event after the last one seen (a bounded,
            # blocking wait; time.sleep(0) does not hand over to the publisher
            # thread on CPython 3.10).
            missed = seq(seen[-1].last_event_id)
            while not any(
                seq(event.last_event_id) > missed
                for event in read_events(witness, witness_parser, at_least=1)
            ):
                assert not failures, failures
            assert not failures, failures
            sub, replay = listed(*broker.subscribe(["race"], last_id=seen[-1].last_event_id))
            assert not replay.gap, f"reconnect {attempt}: gap after a known id"
            parser = EventStreamParser()
            seen += parser.feed(b"".join(event.frame for event in replay.events))
            replayed.append(len(list(replay.events)))
        stop.set()
        publisher.join(WAIT)
        assert not failures, failures
        last = published[-1]
        deadline = time.monotonic() + WAIT
        while seen[-1].last_event_id != last:
            assert time.monotonic() < deadline, "the last published event never arrived"
            seen += read_events(sub, parser, at_least=1)
    finally:
        stop.set()
        broker.stop()
    numbers = [int(event.data) for event in seen]
    first = numbers[0]
    assert numbers == list(range(first, first + len(numbers))), "lost, duplicated or reordered"
    assert [event.last_event_id for event in seen] == published[first:]
    # Every reconnect missed at least the event the witness got meanwhile.
    assert len(replayed) == reconnects
    assert all(replayed), f"a reconnect replayed nothing (events per reconnect: {replayed})"


# -- fan-out, order, exactly once -------------------------------------------------------


def test_many_publishers_many_subscribers_each_event_exactly_once_in_order() -> None:
    run_fanout_scenario()


def test_publish_returns_exactly_its_own_ids_when_publishers_race() -> None:
    """Each publish() returns one id per event it published, even with others racing it.

    The broadcaster merges the batches waiting in its inbox into the first
    one's list; when that list is the very one a publisher is about to read
    its ids from, it returns other publishers' ids too. Made deterministic:
    publisher A is held right after it released the backend's lock (the
    window in which the broadcaster can merge into its batch) while B
    publishes and the broadcaster merges both.
    """
    backend = MemoryBackend(history_size=100)
    broker = Broker(backend, queue_size=1000)
    first_fan_out = threading.Event()
    let_fan_out_go = threading.Event()
    merged_delivered = threading.Event()
    a_released = threading.Event()
    real_fan_out = broker.fan_out
    calls = 0

    def gated_fan_out(batch: list[Published]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the broadcaster is busy with an earlier batch...
            first_fan_out.set()
            let_fan_out_go.wait(WAIT)
        real_fan_out(batch)
        if calls == 2:
            merged_delivered.set()

    broker.fan_out = gated_fan_out  # type: ignore[method-assign]
    real_lock = backend._lock
    in_publisher_a = threading.local()

    class HoldAfterRelease:
        """The backend's lock, except that publisher A pauses right after releasing it."""

        def __enter__(self) -> None:
            real_lock.acquire()

        def __exit__(self, *exc: object) -> None:
            real_lock.release()
            if getattr(in_publisher_a, "on", False):
                a_released.set()
                merged_delivered.wait(WAIT)

    backend._lock = HoldAfterRelease()  # type: ignore[assignment]
    result: list[list[str]] = []

    def publisher_a() -> None:
        in_publisher_a.on = True
        result.append(broker.publish([make_event("a", channel="c")]))

    try:
        broker.publish([make_event("first", channel="c")])
        assert first_fan_out.wait(WAIT)
        thread = run_in_thread(publisher_a)
        assert a_released.wait(WAIT)
        ids_b = broker.publish([make_event("b", channel="c")])
        let_fan_out_go.set()  # ...and now finds A's and B's batches waiting
        thread.join(WAIT)  # fails if it is still running
    finally:
        let_fan_out_go.set()
        merged_delivered.set()
        broker.stop()
    (ids_a,) = result
    assert len(ids_a) == 1, f"publish of one event returned {ids_a} (B's own: {ids_b})"
    assert ids_a != ids_b


def test_multi_channel_subscriber_gets_one_merged_stream_in_id_order(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker()
    sub, _ = broker.subscribe(["a", "b"])
    only_a, _ = broker.subscribe(["a"])
    both = QueueReader(sub).start()
    reader_a = QueueReader(only_a).start()
    channels = ["a", "b", "a"] * 10  # one batch, interleaved
    ids = broker.publish([make_event(n, channel=c) for n, c in enumerate(channels)])
    broker.publish([make_event("not subscribed", channel="c")])
    assert both.wait_for(30)
    assert both.ids == ids
    expected_a = [i for i, c in zip(ids, channels, strict=True) if c == "a"]
    assert reader_a.wait_for(len(expected_a))
    assert reader_a.ids == expected_a
    assert not both.errors and not reader_a.errors


# -- slow consumers ---------------------------------------------------------------------


def test_slow_subscriber_is_dropped_and_broadcaster_never_blocks(
    make_broker: Callable[..., Broker],
) -> None:
    """An overflowing subscriber is disconnected; nobody else notices.

    The slow one reads its first chunk and then never again. The others keep
    up (each burst is a quarter of a queue and is read before the next), and
    publishing 50 queues' worth of events completes without anyone waiting on
    the slow one.
    """
    queue_size = 32
    broker = make_broker(history_size=10, queue_size=queue_size)
    slow, _ = broker.subscribe(["news"])
    slow_multi, _ = broker.subscribe(["news", "sport"])
    keeping_up = [QueueReader(broker.subscribe(["news"])[0]).start() for _ in range(4)]
    keeping_up.append(QueueReader(broker.subscribe(["news", "sport"])[0]).start())

    first_id = broker.publish([make_event("first", channel="news")])[0]
    assert all(reader.wait_for(1) for reader in keeping_up)
    for stalled in (slow, slow_multi):
        _, count = stalled.queue.get(timeout=WAIT)  # reads once...
        stalled.dequeued += count  # ...and then stops reading

    total = 1
    burst = queue_size // 4
    while total < 50 * queue_size:
        broker.publish([make_event(total + n, channel="news") for n in range(burst)])
        total += burst
        for reader in keeping_up:
            assert reader.wait_for(total), f"a reader that keeps up got stuck at {total}"

    for stalled in (slow, slow_multi):
        assert stalled.queue.get(timeout=WAIT) is CLOSE
        assert stalled.queue.empty(), "a dropped subscriber's queue still holds events"
        assert stalled.end_reason == "slow"
    stats = broker.stats()
    assert stats["subscribers_dropped_slow"] == 2
    assert stats["subscribers"] == len(keeping_up)
    assert stats["channels"] == {"news": len(keeping_up), "sport": 1}
    for reader in keeping_up:
        assert reader.ids[0] == first_id
        assert [json.loads(e.data) for e in reader.events[1:]] == list(range(1, total))
        assert not reader.closed and not reader.errors


# -- resume ------------------------------------------------------------------------------


def test_resume_while_publishing_sees_every_event_once_in_order() -> None:
    run_resume_race()


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


def test_resume_from_known_id_replays_only_later_events_of_its_channels(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker(history_size=100)
    ids = publish_and_settle(broker, [("ab"[n % 2], str(n)) for n in range(10)] + [("c", "x")])
    sub, replay = listed(*broker.subscribe(["a"], last_id=ids[3]))
    assert not replay.gap
    assert [event.id for event in replay.events] == [ids[4], ids[6], ids[8]]
    assert [event.data for event in frames_of(replay.events)] == ["4", "6", "8"]
    broker.unsubscribe(sub)
    sub, replay = listed(*broker.subscribe(["a", "b", "c"], last_id=ids[7]))
    assert not replay.gap and replay.gap_position is None
    assert [event.id for event in replay.events] == ids[8:]


def test_resume_from_latest_id_replays_nothing(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    ids = publish_and_settle(broker, [("a", "x"), ("a", "y")])
    _, replay = listed(*broker.subscribe(["a"], last_id=ids[-1]))
    assert replay == Replay()


@pytest.mark.parametrize("published_before", [0, 3])
def test_a_new_subscription_starts_at_a_position_that_resumes_without_loss(
    make_broker: Callable[..., Broker], published_before: int,
) -> None:
    # A stream ended before its first event (slow, max age, shutdown) has only
    # this start position to resume from: it must be known, and complete.
    broker = make_broker()
    before = publish_and_settle(broker, [("a", f"old-{n}") for n in range(published_before)])
    sub, replay = listed(*broker.subscribe(["a"]))
    assert replay.start == (before[-1] if before else f"{broker.backend.epoch}-0")  # type: ignore[attr-defined]
    broker.unsubscribe(sub)
    meanwhile = publish_and_settle(broker, [("a", "m1"), ("b", "other"), ("a", "m2")])
    _, resumed = listed(*broker.subscribe(["a"], last_id=replay.start))
    assert not resumed.gap
    assert [event.id for event in resumed.events] == [meanwhile[0], meanwhile[2]]


def test_resume_with_an_id_published_but_not_yet_fanned_out_is_not_a_gap(
    make_broker: Callable[..., Broker],
) -> None:
    """An id publish() returned is known to the hub, even before fan-out reaches it.

    A gap is for an id that is unknown or older than the retained history
    (docs/protocol.md#resume-ahead). A client handed the id by the publishing
    view (publish() returns it) may subscribe with it while the broadcaster lags: it must get the
    events after it, and not that event itself a second time.
    """
    broker = make_broker()
    real_fan_out = broker.fan_out
    go = threading.Event()

    def lagging_fan_out(batch: list[Published]) -> None:
        go.wait(WAIT)
        real_fan_out(batch)

    broker.fan_out = lagging_fan_out  # type: ignore[method-assign]
    real_check = broker.backend.published_not_broadcast

    def wait_then_go(event_id: str, position: str | None) -> bool:
        go.set()  # the subscriber is in: let the broadcaster catch up with it now
        return real_check(event_id, position)

    broker.backend.published_not_broadcast = wait_then_go  # type: ignore[method-assign]
    fallback = threading.Timer(2.0, go.set)  # whatever subscribe() does, nothing hangs
    fallback.start()
    try:
        (known,) = broker.publish([make_event("mine", channel="orders")])
        sub, replay = listed(*broker.subscribe(["orders"], last_id=known))
        reader = QueueReader(sub).start()
        go.set()
        later = broker.publish([make_event("next", channel="orders")])
        later += broker.publish([make_event("end", channel="orders")])
        assert reader.wait_for_id(later[-1])
    finally:
        fallback.cancel()
    assert not replay.gap, "an id the hub issued is reported as unknown"
    assert replay.events == []
    assert reader.ids == later, "the event the client resumed after came again"


# -- gaps --------------------------------------------------------------------------------


def unknown_ids(broker: Broker, position: str) -> list[str]:
    epoch = broker.backend.epoch  # type: ignore[attr-defined]
    other = MemoryBackend(history_size=1).epoch
    return [
        "garbage",
        "",
        "-",
        f"{epoch}",
        f"{epoch}-",
        f"{epoch}-x",
        f"{other}-1",  # another hub instance (a restarted hub, another worker)
        f"{epoch}-{seq(position) + 1}",  # beyond the position: never handed out
        f"{epoch}-{10**30}",
        f"{epoch}--1",
    ]


@pytest.mark.parametrize("index", range(10))
def test_unknown_id_is_a_gap_with_all_retained_history(
    make_broker: Callable[..., Broker], index: int
) -> None:
    broker = make_broker(history_size=100)
    ids = publish_and_settle(broker, [("ab"[n % 2], str(n)) for n in range(6)])
    last_id = unknown_ids(broker, ids[-1])[index]
    sub, replay = listed(*broker.subscribe(["a"], last_id=last_id))
    assert replay.gap, f"{last_id!r} was taken for a position"
    assert [event.id for event in replay.events] == ids[0::2]
    assert replay.gap_position is not None
    assert seq(replay.gap_position) == seq(ids[0]) - 1
    broker.unsubscribe(sub)
    _, again = listed(*broker.subscribe(["a"], last_id=replay.gap_position))
    assert again == Replay(replay.events)
    assert broker.stats()["gaps_reported"] == 1


@pytest.mark.parametrize(
    "digits", ["\u00b2", "\u0663", "\uff13"], ids=["superscript-two", "arabic-three", "fullwidth"]
)
def test_id_with_non_ascii_digits_is_unknown_not_a_position(
    make_broker: Callable[..., Broker], digits: str
) -> None:
    """Garbage is never mistaken for a position — nor a crash (a 500 over HTTP).

    ``str.isdigit`` is true for these; ``int()`` takes two of them as 3 and
    fails on the superscript.
    """
    broker = make_broker(history_size=100)
    ids = publish_and_settle(broker, [("a", str(n)) for n in range(5)])
    epoch = broker.backend.epoch  # type: ignore[attr-defined]
    _, replay = listed(*broker.subscribe(["a"], last_id=f"{epoch}-{digits}"))
    assert replay.gap
    assert [event.id for event in replay.events] == ids


def test_trimmed_history_is_a_gap_then_the_gap_position_resumes_cleanly(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker(history_size=5)
    ids = publish_and_settle(broker, [("a", str(n)) for n in range(12)])
    retained = ids[-5:]

    _, replay = listed(*broker.subscribe(["a"], last_id=ids[2]))  # trimmed away
    assert replay.gap
    assert [event.id for event in replay.events] == retained
    assert [event.data for event in frames_of(replay.events)] == [str(n) for n in range(7, 12)]
    assert replay.gap_position == ids[6]  # just before the oldest retained event

    _, again = listed(*broker.subscribe(["a"], last_id=replay.gap_position))
    assert not again.gap
    assert [event.id for event in again.events] == retained

    _, inside = listed(*broker.subscribe(["a"], last_id=ids[7]))
    assert not inside.gap
    assert [event.id for event in inside.events] == ids[8:]


def test_gap_on_a_quiet_channel_still_gives_a_position(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker(history_size=3)
    publish_and_settle(broker, [("busy", str(n)) for n in range(10)])
    _, replay = listed(*broker.subscribe(["quiet"], last_id="stale"))
    assert replay.gap and replay.events == []
    assert replay.gap_position is not None
    _, again = listed(*broker.subscribe(["quiet"], last_id=replay.gap_position))
    assert again == Replay()


def test_gap_on_a_fresh_hub_resumes_from_its_start(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    _, replay = listed(*broker.subscribe(["a"], last_id="from-an-old-hub-9"))
    assert replay.gap and replay.events == []
    assert replay.gap_position is not None
    _, again = listed(*broker.subscribe(["a"], last_id=replay.gap_position))
    assert not again.gap


# -- disconnects: nothing stays in memory -------------------------------------------


class WeakrefableSubscription(Subscription):
    """``Subscription`` has ``__slots__`` without ``__weakref__``; this one can be watched."""

    __slots__ = ("__weakref__",)


@pytest.fixture
def watched_subscriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module, "Subscription", WeakrefableSubscription)


def settle_broadcaster(broker: Broker) -> None:
    """Return once the broadcaster finished every fan-out begun so far.

    A fan-out in progress holds a list of the subscriptions it feeds; one on
    an unrelated channel, delivered after, proves the earlier ones returned.
    """
    publish_and_settle(broker, [("settle-barrier", "x")])


def assert_released(broker: Broker, ref: weakref.ref[Subscription]) -> None:
    settle_broadcaster(broker)
    gc.collect()
    assert ref() is None, f"still referenced by {gc.get_referrers(ref())!r:.300}"
    stats = broker.stats()
    assert stats["subscribers"] == 0
    assert stats["channels"] == {}


@pytest.mark.usefixtures("watched_subscriptions")
def test_unsubscribed_subscription_is_released(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    sub, _ = broker.subscribe(["a", "b"], last_id="garbage")
    publish_and_settle(broker, [("a", "queued"), ("b", "queued")])  # left unread in its queue
    ref = weakref.ref(sub)
    broker.unsubscribe(sub)
    broker.unsubscribe(sub)  # twice is harmless
    del sub
    assert_released(broker, ref)


@pytest.mark.usefixtures("watched_subscriptions")
def test_dropped_slow_subscription_is_released(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker(queue_size=4)
    sub, _ = broker.subscribe(["a"])
    ref = weakref.ref(sub)
    publish_and_settle(broker, [("a", str(n)) for n in range(3)])
    publish_and_settle(broker, [("a", str(n)) for n in range(3)])
    assert sub.end_reason == "slow"
    assert sub.queue.get_nowait() is CLOSE
    del sub
    assert_released(broker, ref)
    assert broker.stats()["subscribers_dropped_slow"] == 1


@pytest.mark.usefixtures("watched_subscriptions")
def test_subscription_ended_by_close_is_released(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    sub, _ = broker.subscribe(["a"])
    publish_and_settle(broker, [("a", "x")])
    ref = weakref.ref(sub)
    broker.close()
    # What the stream generator does: it reads CLOSE and unsubscribes on its way out.
    assert sub.queue.get(timeout=WAIT) is CLOSE
    broker.unsubscribe(sub)
    del sub
    gc.collect()
    assert ref() is None
    assert broker.stats()["subscribers"] == 0


# -- shutdown ----------------------------------------------------------------------------


def test_close_ends_every_stream_and_later_subscriptions_are_born_closed(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker()
    subs = [broker.subscribe(channels)[0] for channels in (["a"], ["b"], ["a", "b"], ["a"])]
    publish_and_settle(broker, [("a", "queued"), ("b", "queued")])
    broker.close()
    for sub in subs:
        assert sub.end_reason == "shutdown"
        assert sub.queue.get_nowait() is CLOSE  # what was queued is dropped, CLOSE first
    late, replay = listed(*broker.subscribe(["a"], last_id="whatever"))
    assert late.end_reason == "shutdown"
    assert late.queue.get_nowait() is CLOSE
    assert replay.gap


def test_stop_ends_streams_and_the_broadcaster(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    reader = QueueReader(broker.subscribe(["a"])[0]).start()
    broker.publish([make_event("x", channel="a")])
    assert reader.wait_for(1)
    broker.stop()
    assert reader.wait_closed()
    thread = broker.backend._thread  # type: ignore[attr-defined]
    assert thread is not None and not thread.is_alive()


# -- stats -------------------------------------------------------------------------------


def test_stats_count_subscribers_per_channel_published_and_replays(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker()
    a, _ = broker.subscribe(["a"])
    ab, _ = broker.subscribe(["a", "b"])
    ids = publish_and_settle(broker, [("a", "1"), ("b", "2")])
    broker.subscribe(["b"], last_id=ids[0])
    stats = broker.stats()
    assert stats["channels"] == {"a": 2, "b": 2}
    assert stats["subscribers"] == 3
    assert stats["events_published"] == 2
    assert stats["replays_served"] == 1
    assert stats["backend"] == "memory"
    broker.unsubscribe(a)
    broker.unsubscribe(ab)
    assert broker.stats()["channels"] == {"b": 1}


# -- the same scenarios under gevent ---------------------------------------------------


def test_fanout_and_resume_race_under_gevent_monkey_patching() -> None:
    """The same code, unchanged, with greenlets instead of OS threads."""
    pytest.importorskip("gevent")
    script = Path(__file__).with_name("gevent_broker_check.py")
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("OK"), done.stdout + done.stderr



def test_an_event_is_encoded_once_and_its_bytes_shared_by_every_subscriber(
    make_broker: Callable[..., Broker], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each event is encoded once per publish, not once per subscriber."""
    import flask_sse_hub.wire as wire

    encodings = 0
    original = wire.encode_body

    def counting_encode_body(*args: object, **kwargs: object) -> bytes:
        nonlocal encodings
        encodings += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(wire, "encode_body", counting_encode_body)
    broker = make_broker()
    subs = [broker.subscribe(["shared"])[0] for _ in range(50)]
    (event_id,) = broker.publish([wire.make_event({"n": 1}, channel="shared")])
    chunks = []
    for sub in subs:
        item = sub.queue.get(timeout=5)
        assert item is not None
        chunks.append(item[0])
    assert encodings == 1
    assert f"id: {event_id}\n".encode() in chunks[0]
    # Not 50 equal copies: the very same bytes object in every queue.
    assert all(chunk is chunks[0] for chunk in chunks)


def test_an_id_written_with_leading_zeros_is_unknown_not_a_position(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker()
    ids = publish_and_settle(broker, [("a", str(n)) for n in range(10)])
    epoch, _, seq = ids[6].rpartition("-")
    _, replay = listed(*broker.subscribe(["a"], last_id=f"{epoch}-00{seq}"))
    assert replay.gap
    assert [event.id for event in replay.events] == ids
