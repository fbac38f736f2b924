"""Never silent (docs/protocol.md#redis-never-silent): no event is lost unannounced.

* A batch with more events than the history window could not be retained
  whole: ``POST /publish`` refuses it with 413 and publishes nothing. A batch
  that fits is delivered whole to every live subscriber.
* A worker that falls behind the trimming of the Redis stream (here: SIGSTOP
  while another hub publishes more than the window) cannot deliver what was
  trimmed before it read it. Each of its live streams then gets an
  ``sse-hub-gap`` event placed before its first missing event, then the
  retained events, contiguous, in order, without duplicates. The gap event's
  id is a position to resume from that is not reported as a gap again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.conftest import HubLauncher, HubServer, HubStream
from tests.support.sse_parser import Event

from .conftest import (
    HUB_STREAM,
    assert_every_event_or_a_gap,
    gap_ids_on_the_wire,
    stopped,
)

pytestmark = pytest.mark.integration

HISTORY = 100


def test_a_batch_larger_than_the_history_is_refused_whole_and_one_that_fits_is_delivered_whole(
    start_hub: HubLauncher, redis_url: str, redis_client: Any,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_HISTORY_SIZE=HISTORY, SSE_HEARTBEAT_SECONDS=1)
    streams = [hub.subscribe("batch") for _ in range(3)]
    first = hub.publish("first", channel="batch")
    for stream in streams:
        assert [e.data for e in stream.until_id(first, timeout=5)] == ["first"]
    length = redis_client.xlen(HUB_STREAM)
    published = hub.stats()["events_published"]

    status, answer = hub.post_json(
        "/publish", [{"channel": "batch", "data": f"big {n}"} for n in range(3 * HISTORY)]
    )
    assert status == 413, f"a batch of {3 * HISTORY} with SSE_HISTORY_SIZE={HISTORY}: {answer!r}"
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]
    assert redis_client.xlen(HUB_STREAM) == length, "a refused batch was (partly) published"
    assert hub.stats()["events_published"] == published
    marker = hub.publish("marker", channel="batch")
    for stream in streams:  # nothing of the refused batch, just the next event
        events = stream.until_id(marker, timeout=5)
        assert [(e.last_event_id, e.data) for e in events] == [(marker, "marker")]

    ids = hub.publish_batch(
        [{"channel": "batch", "data": f"fits {n}"} for n in range(HISTORY)]
    )
    assert len(ids) == HISTORY
    for number, stream in enumerate(streams):
        events = stream.until_id(ids[-1], timeout=10)
        assert [(e.type, e.last_event_id, e.data) for e in events] == [
            ("message", event_id, f"fits {n}") for n, event_id in enumerate(ids)
        ], f"stream {number}"
    assert hub.stats()["events_published"] == published + 1 + HISTORY


@dataclass
class Lagging:
    """Hub B's streams, and every id hub A published, in order and by channel."""

    channels: list[str]
    streams: dict[str, list[HubStream]]
    priming: dict[str, str]
    in_order: list[str] = field(default_factory=list)
    expected: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rank(self) -> dict[str, int]:
        return {event_id: index for index, event_id in enumerate(self.in_order)}


def subscribe_and_prime(hub_a: HubServer, hub_b: HubServer, channels: list[str]) -> Lagging:
    """Three streams per channel on B, each of which got its channel's priming event from A."""
    streams = {channel: [hub_b.subscribe(channel) for _ in range(3)] for channel in channels}
    # B's broadcaster is reading: each stream gets the priming event of its channel.
    priming = {channel: hub_a.publish("priming", channel=channel) for channel in channels}
    for channel, subscribers in streams.items():
        for stream in subscribers:
            assert [e.last_event_id for e in stream.until_id(priming[channel], timeout=5)] == [
                priming[channel]
            ]
    return Lagging(channels, streams, priming, in_order=list(priming.values()),
                   expected={channel: [] for channel in channels})


def publish_past_the_window_while_stopped(lag: Lagging, hub_a: HubServer, hub_b: HubServer) -> None:
    """Four windows' worth on A, then a marker per channel, while B's worker is stopped."""
    with stopped(hub_b.worker_pid()):
        for first in range(0, 4 * HISTORY, HISTORY):
            items = [{"channel": lag.channels[n % 2], "data": f"e{n}"}
                     for n in range(first, first + HISTORY)]
            for item, event_id in zip(items, hub_a.publish_batch(items), strict=True):
                lag.expected[item["channel"]].append(event_id)
                lag.in_order.append(event_id)
        # The markers too while B is stopped: no trimming after B has seen the
        # hole, so resuming from its gap position is exactly no gap.
        markers = hub_a.publish_batch([{"channel": c, "data": "marker"} for c in lag.channels])
    for channel, marker in zip(lag.channels, markers, strict=True):
        lag.expected[channel].append(marker)
        lag.in_order.append(marker)


def assert_told_of_the_gap(
    lag: Lagging, channel: str, number: int, stream: HubStream
) -> tuple[Event, list[str]]:
    """The stream got its events with one gap event before its first missing one.

    Returns the gap event and the ids the stream got after it.
    """
    who = f"stream {number} of {channel} on hub B"
    expected, rank = lag.expected[channel], lag.rank
    events = stream.until_id(expected[-1], timeout=15)
    gap = assert_every_event_or_a_gap(events, expected, who)
    assert gap is not None, (
        f"{who}: {4 * HISTORY} events published with SSE_HISTORY_SIZE={HISTORY} while "
        f"its worker was stopped, all {len(events)} delivered without a gap?"
    )
    at = events.index(gap)
    before = [e.last_event_id for e in events[:at]]
    after = [e.last_event_id for e in events[at + 1 :]]
    assert len(before) + len(after) < len(expected), f"{who}: nothing missing"
    # The gap names the last event B fanned out before the hole: not
    # before this stream's last event, before its first missing one.
    named = json.loads(gap.data)["last_event_id"]
    assert named in rank, f"{who}: the gap names {named!r}, never published"
    first_missing = expected[len(before)]
    last_got = before[-1] if before else lag.priming[channel]
    assert rank[last_got] <= rank[named] < rank[first_missing], (who, named)
    assert gap_ids_on_the_wire(stream) == [gap.last_event_id], (
        f"{who}: the gap event must carry an id (a position to resume from)"
    )
    assert gap.last_event_id not in rank or rank[gap.last_event_id] < rank[after[0]]
    return gap, after


def test_a_worker_that_lags_behind_the_trimming_tells_its_streams_of_the_gap(
    start_hub: HubLauncher, redis_url: str,
) -> None:
    hub_a, hub_b = (
        start_hub(SSE_REDIS_URL=redis_url, SSE_HISTORY_SIZE=HISTORY, SSE_HEARTBEAT_SECONDS=1)
        for _ in range(2)
    )
    lag = subscribe_and_prime(hub_a, hub_b, ["lag-0", "lag-1"])
    publish_past_the_window_while_stopped(lag, hub_a, hub_b)

    after_gap: dict[str, list[str]] = {}
    gap_position: dict[str, str] = {}
    for channel, subscribers in lag.streams.items():
        for number, stream in enumerate(subscribers):
            gap, after = assert_told_of_the_gap(lag, channel, number, stream)
            after_gap.setdefault(channel, after)
            assert after == after_gap[channel], (
                f"stream {number} of {channel} on hub B: not what the other streams got")
            gap_position.setdefault(channel, gap.last_event_id)

    resumed = {
        channel: hub_b.subscribe(channel, headers={"Last-Event-ID": gap_position[channel]})
        for channel in lag.channels
    }
    for channel, stream in resumed.items():
        events = stream.until_id(lag.expected[channel][-1], timeout=10)
        assert [(e.type, e.last_event_id) for e in events] == [
            ("message", event_id) for event_id in after_gap[channel]
        ], f"resumed on {channel} from the gap's id {gap_position[channel]}: a second gap?"

    finals = hub_a.publish_batch([{"channel": c, "data": "final"} for c in lag.channels])
    for channel, final in zip(lag.channels, finals, strict=True):
        for stream in [*lag.streams[channel], resumed[channel]]:
            events = stream.until_id(final, timeout=10)
            assert [(e.type, e.data) for e in events] == [("message", "final")]
