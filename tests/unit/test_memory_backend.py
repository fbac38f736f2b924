"""The memory backend (``backends/memory.py``): ids, the history ring, replays, batches.

Through a :class:`~flask_sse_hub.broker.Broker`, as a hub uses it: ids are
``<epoch>-<sequence>`` and only those this run issued and fanned out are
positions (docs/protocol.md#memory-ids); a resume from a position replays the
later events of its channels; anything else, or an id older than the
retained history, is a gap with what is retained (docs/protocol.md#resume);
and ``publish()`` returns the ids of its own events, whatever the broadcaster
merges (docs/architecture.md#invariants, 3).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from flask_sse_hub.backends.memory import MemoryBackend
from flask_sse_hub.broker import Broker, Published, Replay
from flask_sse_hub.wire import make_event
from tests.support.subscriptions import WAIT, frames_of, listed, publish_and_settle, seq
from tests.support.threads import run_in_thread

# -- ids and the start ------------------------------------------------------------------


class PositionSink:
    """A ``Sink`` that only records the positions it is given."""

    def __init__(self) -> None:
        self.positions: list[str] = []

    def fan_out(self, batch: list[Published]) -> None:
        pass

    def set_position(self, position: str) -> None:
        self.positions.append(position)

    def broadcast_gap(self, last_id: str, position: str | None) -> None:
        pass


def test_the_epoch_is_drawn_by_start_and_the_first_position_is_before_any_event() -> None:
    sink = PositionSink()
    first, second = MemoryBackend(history_size=10), MemoryBackend(history_size=10)
    assert first.epoch == ""  # nothing inherited through a fork: chosen where it serves
    try:
        first.start(sink)
        second.start(sink)
        assert len(first.epoch) == 8 and set(first.epoch) <= set("0123456789abcdef")
        assert first.epoch != second.epoch
        assert sink.positions == [f"{first.epoch}-0", f"{second.epoch}-0"]
        ids = first.publish([make_event(n, channel="a") for n in range(3)])
        assert ids == [f"{first.epoch}-{n}" for n in (1, 2, 3)]
        assert first.stats() == {"events_published": 3, "history": 3, "epoch": first.epoch}
    finally:
        first.stop()
        second.stop()


class HoldAfterRelease:
    """A lock that calls ``after_release`` in the releasing thread, right after releasing."""

    def __init__(self, lock: Any, after_release: Callable[[], None]) -> None:
        self._lock = lock
        self._after_release = after_release

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        self._after_release()


class MergeRace:
    """Publisher A held in the window where the broadcaster can merge into its batch.

    The broadcaster's first fan-out waits for ``let_fan_out_go`` (it is busy
    with an earlier batch); publisher A, right after it released the
    backend's lock, waits until the next fan-out (the merged one) is delivered.
    """

    def __init__(self) -> None:
        self.backend = MemoryBackend(history_size=100)
        self.broker = Broker(self.backend, queue_size=1000)
        self.first_fan_out = threading.Event()
        self.let_fan_out_go = threading.Event()
        self.merged_delivered = threading.Event()
        self.a_released = threading.Event()
        self.ids_a: list[list[str]] = []
        self._fan_outs = 0
        self._real_fan_out = self.broker.fan_out
        self._in_publisher_a = threading.local()
        self.broker.fan_out = self._gated_fan_out  # type: ignore[method-assign]
        self.backend._lock = HoldAfterRelease(  # type: ignore[assignment]
            self.backend._lock, self._hold_publisher_a
        )

    def _gated_fan_out(self, batch: list[Published]) -> None:
        self._fan_outs += 1
        if self._fan_outs == 1:  # the broadcaster is busy with an earlier batch...
            self.first_fan_out.set()
            self.let_fan_out_go.wait(WAIT)
        self._real_fan_out(batch)
        if self._fan_outs == 2:
            self.merged_delivered.set()

    def _hold_publisher_a(self) -> None:
        if getattr(self._in_publisher_a, "on", False):
            self.a_released.set()
            self.merged_delivered.wait(WAIT)

    def publish_as_a(self) -> None:
        self._in_publisher_a.on = True
        self.ids_a.append(self.broker.publish([make_event("a", channel="c")]))

    def end(self) -> None:
        self.let_fan_out_go.set()
        self.merged_delivered.set()
        self.broker.stop()


def test_publish_returns_exactly_its_own_ids_when_publishers_race() -> None:
    """Each publish() returns one id per event it published, even with others racing it.

    The broadcaster merges the batches waiting in its inbox into the first
    one's list; when that list is the very one a publisher is about to read
    its ids from, it returns other publishers' ids too. Made deterministic:
    publisher A is held right after it released the backend's lock (the
    window in which the broadcaster can merge into its batch) while B
    publishes and the broadcaster merges both.
    """
    race = MergeRace()
    try:
        race.broker.publish([make_event("first", channel="c")])
        assert race.first_fan_out.wait(WAIT)
        thread = run_in_thread(race.publish_as_a)
        assert race.a_released.wait(WAIT)
        ids_b = race.broker.publish([make_event("b", channel="c")])
        race.let_fan_out_go.set()  # ...and now finds A's and B's batches waiting
        thread.join(WAIT)  # fails if it is still running
    finally:
        race.end()
    (ids_a,) = race.ids_a
    assert len(ids_a) == 1, f"publish of one event returned {ids_a} (B's own: {ids_b})"
    assert ids_a != ids_b


# -- resume from a position -------------------------------------------------------------


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


# -- gaps --------------------------------------------------------------------------------


def unknown_ids(broker: Broker, position: str) -> list[str]:
    epoch = broker.backend.epoch  # type: ignore[attr-defined]
    other = f"{(int(epoch, 16) + 1) % 16**8:08x}"  # an epoch of another run of the hub
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


def test_an_id_written_with_leading_zeros_is_unknown_not_a_position(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker()
    ids = publish_and_settle(broker, [("a", str(n)) for n in range(10)])
    epoch, _, seq = ids[6].rpartition("-")
    _, replay = listed(*broker.subscribe(["a"], last_id=f"{epoch}-00{seq}"))
    assert replay.gap
    assert [event.id for event in replay.events] == ids
