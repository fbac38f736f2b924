"""The Broker (``broker.py``) with the memory backend, under real OS threads.

What it must keep: docs/protocol.md#guarantees; how: docs/architecture.md#invariants.
The memory backend's own part (ids, history, replays and gaps) is in
test_memory_backend.py.

Subscriptions are read the way the stream generator reads them
(``tests/support/subscriptions.py``): queue items are ``(chunk,
event_count)`` (or ``CLOSE``), the reader advances ``Subscription.dequeued``
by the count, and the chunk is parsed with the WHATWG parser — so what a test
sees is what a browser would see.

The scenario functions (``run_fanout_scenario``, ``run_resume_race``) are
plain functions: ``gevent_broker_check.py`` runs the very same code in a
subprocess after ``gevent.monkey.patch_all()``. They only use ``threading``,
``queue`` and ``time`` through module attributes, so the patched versions are
the ones used there.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

import flask_sse_hub.broker as broker_module
from flask_sse_hub.broker import CLOSE, Broker, Published, Subscription
from flask_sse_hub.wire import make_event
from tests.support.sse_parser import Event, EventStreamParser
from tests.support.subscriptions import (
    WAIT,
    QueueReader,
    listed,
    new_broker,
    publish_and_settle,
    read_events,
    seq,
)
from tests.support.threads import run_in_thread

#: How long the resume race may publish: its 20 reconnects need a fraction of it.
RACE_BUDGET = 5.0


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
        finally:
            started.set()  # a failed publisher must not leave the client waiting for it

    seen: list[Event] = []
    replayed: list[int] = []  # events replayed, per reconnect
    try:
        sub, replay = listed(*broker.subscribe(["race"]))
        # A second stream that stays connected: what it received, the fan-out
        # has passed, so a resume from an earlier id replays it.
        witness, _ = broker.subscribe(["race"])
        witness_parser = EventStreamParser()
        publisher = run_in_thread(publish_forever, name="publisher")
        assert started.wait(WAIT)
        publisher.check()
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
                publisher.check()
            publisher.check()
            sub, replay = listed(*broker.subscribe(["race"], last_id=seen[-1].last_event_id))
            assert not replay.gap, f"reconnect {attempt}: gap after a known id"
            parser = EventStreamParser()
            seen += parser.feed(b"".join(event.frame for event in replay.events))
            replayed.append(len(list(replay.events)))
        stop.set()
        publisher.join(WAIT)
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
        count = stalled.queue.get(timeout=WAIT)[1]  # reads once...
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
