"""Presence (``presence.py``): the grace of a stream that left, and the workers' snapshots.

On a fake broker (its registry as a list of ``(channel, subject)``, a
``changes`` count) and a fake backend recording what is shared, with the
module's clock patched: every grace and lease here is exact. Presence
through a hub, across gunicorn workers: tests/integration/test_presence_and_disconnect.py.
"""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace
from typing import cast

import pytest

from flask_sse_hub import presence as presence_module
from flask_sse_hub.broker import Broker
from flask_sse_hub.presence import Key, Presence

GRACE = 1.0
LEASE = 10.0


class Clock:
    """The module's ``time.monotonic``, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeBackend:
    """A backend sharing presence: what was shared, and the other workers' entries."""

    def __init__(self, shares: bool = True) -> None:
        self.shares_presence = shares
        self.shared: list[tuple[str, dict[str, str], float]] = []
        self.others: dict[str, dict[str, str]] = {}

    def share_presence(self, worker: str, snapshot: dict[str, str], lease: float) -> None:
        self.shared.append((worker, snapshot, lease))

    def shared_presence(self, channel: str) -> dict[str, str]:
        return self.others.get(channel, {})


class FakeBroker:
    """The broker's registry: ``streams(...)`` replaces it, logging who left and who came."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self._streams: Counter[Key] = Counter()
        self._log: list[tuple[Key, int]] = []

    def registration_changes(self) -> list[tuple[Key, int]]:
        log, self._log = self._log, []
        return log

    def streams(self, *keys: Key) -> None:
        now = Counter(keys)
        for key, count in (self._streams - now).items():
            self._log += [(key, -1)] * count
        for key, count in (now - self._streams).items():
            self._log += [(key, 1)] * count
        self._streams = now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    found = Clock()
    monkeypatch.setattr(presence_module, "time", SimpleNamespace(monotonic=found))
    return found


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def broker(backend: FakeBackend) -> FakeBroker:
    return FakeBroker(backend)


@pytest.fixture
def presence(broker: FakeBroker, clock: Clock) -> Presence:
    return Presence(cast(Broker, broker), grace=GRACE, lease=LEASE)


def entry(streams: int, *subjects: str) -> str:
    """A worker's snapshot entry for one channel, as Presence.snapshot() writes it."""
    return json.dumps([streams, sorted(subjects)])


# -- this worker: joins, leaves, the grace ------------------------------------------------


def test_streams_and_their_subjects_count_per_channel(
    presence: Presence, broker: FakeBroker,
) -> None:
    broker.streams(("a", "alice"), ("a", "alice"), ("a", None), ("b", "bob"))
    assert presence.of("a") == (3, ["alice"])
    assert presence.of("b") == (1, ["bob"])
    assert presence.of("c") == (0, [])


def test_a_stream_that_left_lingers_for_the_grace_then_is_gone(
    presence: Presence, broker: FakeBroker, clock: Clock,
) -> None:
    broker.streams(("a", "alice"))
    assert presence.of("a") == (1, ["alice"])
    broker.streams()
    assert presence.of("a") == (1, ["alice"])  # lingers from when it was seen gone
    clock.now += GRACE - 0.01
    assert presence.of("a") == (1, ["alice"])
    clock.now += 0.02
    assert presence.of("a") == (0, [])


def test_a_rejoin_within_the_grace_takes_its_place_back(
    presence: Presence, broker: FakeBroker, clock: Clock,
) -> None:
    broker.streams(("a", "alice"))
    presence.of("a")
    broker.streams()
    clock.now += GRACE / 2
    assert presence.of("a") == (1, ["alice"])
    broker.streams(("a", "alice"))
    assert presence.of("a") == (1, ["alice"])  # not two
    clock.now += GRACE
    assert presence.of("a") == (1, ["alice"])  # the lingering one is gone with the rejoin
    broker.streams()
    clock.now += GRACE / 2
    assert presence.of("a") == (1, ["alice"])  # and the next leave has a grace of its own


# -- every worker: snapshots ----------------------------------------------------------------


def test_of_adds_the_other_workers_entries_but_not_its_own(
    presence: Presence, broker: FakeBroker, backend: FakeBackend,
) -> None:
    broker.streams(("a", "alice"))
    backend.others["a"] = {
        "other": entry(2, "bob", "alice"),
        "third": entry(1),
        presence.worker: entry(5, "ghost"),  # what this worker shared: stale here
    }
    assert presence.of("a") == (4, ["alice", "bob"])


@pytest.mark.parametrize("malformed", [
    "not json", "5", "null", json.dumps([1]), json.dumps(["x", ["bob"]]), json.dumps({}),
])
def test_of_ignores_entries_that_are_not_snapshots(
    presence: Presence, backend: FakeBackend, malformed: str,
) -> None:
    backend.others["a"] = {"other": entry(2, "bob"), "odd": malformed}
    assert presence.of("a") == (2, ["bob"])


def test_of_ignores_an_entry_whose_subjects_are_not_a_list(
    presence: Presence, backend: FakeBackend,
) -> None:
    backend.others["a"] = {"other": entry(2, "bob"), "odd": json.dumps([3, 7])}
    assert presence.of("a") == (2, ["bob"])


def test_tick_shares_the_snapshot_when_it_changed_or_half_the_lease_passed(
    presence: Presence, broker: FakeBroker, backend: FakeBackend, clock: Clock,
) -> None:
    broker.streams(("a", "alice"), ("a", None), ("b", None))
    presence.tick()
    snapshot = {"a": entry(2, "alice"), "b": entry(1)}
    assert backend.shared == [(presence.worker, snapshot, LEASE)]
    presence.tick()  # no change, lease fresh: nothing
    clock.now += LEASE / 2 - 0.01
    presence.tick()
    assert len(backend.shared) == 1
    clock.now += 0.01
    presence.tick()  # half the lease: renewed
    assert backend.shared[1:] == [(presence.worker, snapshot, LEASE)]
    broker.streams(("b", None))
    presence.tick()  # a change: at once, the one that left lingering
    assert backend.shared[2:] == [(presence.worker, snapshot, LEASE)]
    clock.now += GRACE
    presence.tick()  # its grace ran out: a change too
    assert backend.shared[3:] == [(presence.worker, {"b": entry(1)}, LEASE)]


def test_a_backend_not_sharing_presence_is_never_written(
    broker: FakeBroker, clock: Clock,
) -> None:
    backend = FakeBackend(shares=False)
    broker.backend = backend
    presence = Presence(cast(Broker, broker), grace=GRACE, lease=LEASE)
    broker.streams(("a", "alice"))
    presence.tick()
    clock.now += LEASE
    presence.tick()
    presence.leave()
    assert backend.shared == []
    assert presence.of("a") == (1, ["alice"])


def test_leave_shares_an_empty_snapshot(
    presence: Presence, broker: FakeBroker, backend: FakeBackend,
) -> None:
    broker.streams(("a", "alice"))
    presence.tick()
    presence.leave()
    assert backend.shared[-1] == (presence.worker, {}, LEASE)
