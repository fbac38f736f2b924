"""Resuming a stream: replay of what was missed, gaps, epochs.

A stream resumes with the ``Last-Event-ID`` header, ``?lastEventId=`` or
``?last_event_id=``, and the header wins (docs/protocol.md#resume-ids). A
resume gives every retained event (``SSE_HISTORY_SIZE``) after the id on the
stream's channels, then live events, no gap and no duplicate
(docs/protocol.md#replay). Ids carry an epoch, so an id from an earlier run of
the hub or garbage is unknown (docs/protocol.md#memory-ids); an unknown or
trimmed id starts the stream with an ``sse-hub-gap`` event whose data is
``{"last_event_id": <requested>}``, then the retained history
(docs/protocol.md#gap).

Every test waits until a witness stream has received what was published
before it resumes: the ids a client resumes with are ids it has seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.support.sse_parser import Event

from .conftest import EVENT_ID_RE, GAP_EVENT, HubLauncher, HubServer, HubStream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_HEARTBEAT_SECONDS=5)


@pytest.fixture(autouse=True)
def _close_streams_after_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "hub" in request.fixturenames:
        request.getfixturevalue("hub").close_streams()


def publish_seen(hub: HubServer, plan: list[str], tag: str) -> list[tuple[str, str]]:
    """Publish one event per channel in ``plan``; return (channel, id) once a witness saw all."""
    witness = hub.subscribe(*sorted(set(plan)))
    published = [
        (channel, hub.publish(f"{tag}:{n}", channel=channel)) for n, channel in enumerate(plan)
    ]
    witness.until_id(published[-1][1], timeout=5)
    witness.close()
    return published


def ids_on(published: list[tuple[str, str]], channels: set[str]) -> list[str]:
    return [event_id for channel, event_id in published if channel in channels]


def read_through_live(hub: HubServer, channel: str, stream: HubStream) -> list[Event]:
    """Publish a live event on ``channel``; return everything the stream got up to it."""
    live_id = hub.publish("live", channel=channel)
    events = stream.until_id(live_id, timeout=5)
    assert events[-1].data == "live"
    return events


@pytest.mark.parametrize("position", [0, 3, 6, 8])
def test_last_event_id_header_replays_exactly_the_missed_events_of_the_streams_channels(
    hub: HubServer, position: int,
) -> None:
    plan = ["ra", "rb", "rx", "ra", "ra", "rx", "rb", "ra", "rx", "rb"]
    published = publish_seen(hub, plan, f"header-{position}")
    last_seen = published[position][1]  # may be an event of a channel the stream lacks
    stream = hub.subscribe("ra", "rb", headers={"Last-Event-ID": last_seen})
    events = read_through_live(hub, "ra", stream)
    expected = ids_on(published[position + 1 :], {"ra", "rb"})
    assert [e.last_event_id for e in events[:-1]] == expected
    assert GAP_EVENT not in {e.type for e in events}


@pytest.mark.parametrize("parameter", ["lastEventId", "last_event_id"])
def test_query_parameter_resumes_a_first_connection(hub: HubServer, parameter: str) -> None:
    channel = f"query-{parameter}"
    published = publish_seen(hub, [channel] * 5, parameter)
    stream = hub.subscribe(channel, query=f"{parameter}={quote(published[1][1])}")
    events = read_through_live(hub, channel, stream)
    assert [e.last_event_id for e in events[:-1]] == ids_on(published[2:], {channel})


@pytest.mark.parametrize("parameter", ["lastEventId", "last_event_id"])
def test_last_event_id_header_wins_over_the_query(hub: HubServer, parameter: str) -> None:
    channel = f"wins-{parameter}"
    published = publish_seen(hub, [channel] * 6, parameter)
    stream = hub.subscribe(
        channel, query=f"{parameter}={quote(published[0][1])}",
        headers={"Last-Event-ID": published[3][1]},
    )
    events = read_through_live(hub, channel, stream)
    assert [e.last_event_id for e in events[:-1]] == ids_on(published[4:], {channel})


def test_resume_from_the_newest_id_replays_nothing_and_continues_live(hub: HubServer) -> None:
    published = publish_seen(hub, ["newest"] * 3, "newest")
    stream = hub.subscribe("newest", headers={"Last-Event-ID": published[-1][1]})
    events = read_through_live(hub, "newest", stream)
    assert [e.data for e in events] == ["live"]


def test_resume_includes_events_published_while_disconnected_without_duplicates(
    hub: HubServer,
) -> None:
    first = hub.subscribe("away")
    before = [hub.publish(f"before {n}", channel="away") for n in range(3)]
    seen = first.until_id(before[-1], timeout=5)
    first.close()
    missed = [hub.publish(f"missed {n}", channel="away") for n in range(4)]
    second = hub.subscribe("away", headers={"Last-Event-ID": seen[-1].last_event_id})
    live = hub.publish("live", channel="away")
    events = second.until_id(live, timeout=5)
    assert [e.last_event_id for e in seen + events] == [*before, *missed, live]


#: Stands for an id shaped like this hub's own ones that it never handed out.
NEVER_HANDED_OUT = "<a real id + 0000>"

UNKNOWN_IDS = [
    pytest.param("header", "garbage", id="header-garbage"),
    pytest.param("query", "garbage", id="query-garbage"),
    pytest.param("header", "0", id="header-zero"),
    pytest.param("header", "1", id="header-one"),
    pytest.param("header", "deadbeef-1", id="header-other-epoch-shape"),
    pytest.param("header", NEVER_HANDED_OUT, id="header-never-handed-out"),
    pytest.param("query", NEVER_HANDED_OUT, id="query-never-handed-out"),
    pytest.param("header", "x" * 200, id="header-overlong"),
    pytest.param("query", "a\nb", id="query-with-newline"),
    pytest.param("query", "ünknown 🎉", id="query-non-ascii"),
    pytest.param("query", '"},{"evil":1', id="query-json-breaker"),
]


@pytest.mark.parametrize(("via", "requested"), UNKNOWN_IDS)
def test_unknown_or_garbage_id_starts_with_a_gap_event_then_retained_history(
    hub: HubServer, via: str, requested: str, request: pytest.FixtureRequest,
) -> None:
    channel = f"gap-{request.node.callspec.id}"
    if requested == NEVER_HANDED_OUT:
        requested = publish_seen(hub, ["id-shape"], "shape")[0][1] + "0000"
    published = publish_seen(hub, [channel] * 3, channel)
    if via == "header":
        stream = hub.subscribe(channel, headers={"Last-Event-ID": requested})
    else:
        stream = hub.subscribe(channel, query=f"lastEventId={quote(requested)}")
    events = read_through_live(hub, channel, stream)
    gap, *history = events[:-1]
    assert gap.type == GAP_EVENT
    assert json.loads(gap.data) == {"last_event_id": requested}
    assert [e.last_event_id for e in history] == ids_on(published, {channel})


def test_reconnecting_with_the_gap_events_own_id_gives_no_second_gap(hub: HubServer) -> None:
    published = publish_seen(hub, ["regap"] * 3, "regap")
    stream = hub.subscribe("regap", headers={"Last-Event-ID": "garbage"})
    gap = stream.next_event(timeout=5)
    assert gap.type == GAP_EVENT
    assert EVENT_ID_RE.fullmatch(gap.last_event_id), "the gap needs an id to resume from"
    stream.close()
    again = hub.subscribe("regap", headers={"Last-Event-ID": gap.last_event_id})
    events = read_through_live(hub, "regap", again)
    assert [e.type for e in events].count(GAP_EVENT) == 0
    assert [e.last_event_id for e in events[:-1]] == ids_on(published, {"regap"})


@pytest.fixture
def small_history_hub(start_hub: HubLauncher) -> HubServer:
    return start_hub(SSE_HISTORY_SIZE=5, SSE_HEARTBEAT_SECONDS=5)


def test_id_older_than_the_retained_history_gives_a_gap_then_what_is_retained(
    small_history_hub: HubServer,
) -> None:
    hub = small_history_hub
    published = publish_seen(hub, ["trim"] * 10, "trim")
    retained = ids_on(published[5:], {"trim"})
    stream = hub.subscribe("trim", headers={"Last-Event-ID": published[3][1]})
    gap, *history = stream.events(1 + len(retained), timeout=5)
    assert gap.type == GAP_EVENT
    assert json.loads(gap.data) == {"last_event_id": published[3][1]}
    assert [e.last_event_id for e in history] == retained
    stream.close()

    # The gap's own id is a position: resuming from it is no second gap.
    again = hub.subscribe("trim", headers={"Last-Event-ID": gap.last_event_id})
    events = read_through_live(hub, "trim", again)
    assert [e.type for e in events].count(GAP_EVENT) == 0
    assert [e.last_event_id for e in events[:-1]] == retained


def test_id_just_before_the_retained_history_is_no_gap(small_history_hub: HubServer) -> None:
    hub = small_history_hub
    published = publish_seen(hub, ["edge"] * 10, "edge")
    stream = hub.subscribe("edge", headers={"Last-Event-ID": published[4][1]})
    events = read_through_live(hub, "edge", stream)
    assert [e.last_event_id for e in events[:-1]] == ids_on(published[5:], {"edge"})


def test_id_from_a_previous_run_of_the_hub_is_unknown(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_HEARTBEAT_SECONDS=5)
    (_, old_id), = publish_seen(hub, ["epoch"], "old run")
    hub.restart()
    # Without an epoch, the old id would be a position in the new run's
    # sequence, and the first new event would silently be skipped.
    published = publish_seen(hub, ["epoch"] * 3, "new run")
    assert old_id not in ids_on(published, {"epoch"})
    stream = hub.subscribe("epoch", headers={"Last-Event-ID": old_id})
    events = read_through_live(hub, "epoch", stream)
    gap, *history = events[:-1]
    assert gap.type == GAP_EVENT
    assert json.loads(gap.data) == {"last_event_id": old_id}
    assert [e.last_event_id for e in history] == ids_on(published, {"epoch"})
