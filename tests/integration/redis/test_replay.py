"""Replay from Redis history (docs/protocol.md#replay): across restarts, after trimming.

History lives in the Redis stream, so it outlives gunicorn: a client resuming
after a full restart of the hub (master and workers) with an id it saw before
gets exactly what it missed. When its id has been trimmed away
(``SSE_HISTORY_SIZE``; Redis trims approximately, whole nodes at a time) it
gets an ``sse-hub-gap`` event, then what Redis retained; resuming from the
last event seen after that gap is no second gap.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.conftest import GAP_EVENT, HubLauncher, HubServer, HubStream, wait_until
from tests.support.sse_parser import Event

from .conftest import HUB_STREAM, assert_every_event_or_a_gap

pytestmark = pytest.mark.integration


def read_through_live(hub: HubServer, channel: str, stream: HubStream) -> list[Event]:
    """Publish one live event on ``channel``; return all the stream got up to and with it."""
    live = hub.publish("live", channel=channel)
    events = stream.until_id(live, timeout=10)
    assert events[-1].data == "live"
    return events


#: Events per publish: at most SSE_HISTORY_SIZE of the small-history hub (a larger
#: batch could not be retained whole and is refused with 413: docs/protocol.md#redis-window).
BATCH = 10


def publish_seen(hub: HubServer, channel: str, count: int) -> list[str]:
    """Publish ``count`` events (batches of ``BATCH``); return their ids once a live
    subscriber has seen the last one.

    That subscriber may lag behind the trimming of a small history: then it must
    have been told, by a gap before its first missing event (docs/protocol.md#never-silent).
    """
    witness = hub.subscribe(channel)
    ids: list[str] = []
    for first in range(0, count, BATCH):
        ids += hub.publish_batch([{"channel": channel, "data": f"e{n}"}
                                  for n in range(first, min(first + BATCH, count))])
    assert_every_event_or_a_gap(witness.until_id(ids[-1], timeout=10), ids, "the witness")
    witness.close()
    return ids


def test_resume_after_a_full_gunicorn_restart_gives_exactly_the_later_events(
    start_hub: HubLauncher, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, WEB_CONCURRENCY=2, SSE_HEARTBEAT_SECONDS=1)
    before = publish_seen(hub, "restart", 10)
    assert hub.proc is not None
    port, master = hub.port, hub.proc.pid

    hub.restart()  # SIGTERM, the master and its workers exit; a new master, same port
    assert hub.proc.pid != master
    assert hub.port == port
    while_away = [hub.publish(f"away {n}", channel="restart") for n in range(3)]

    stream = hub.subscribe("restart", headers={"Last-Event-ID": before[4]})
    events = read_through_live(hub, "restart", stream)
    assert [e.type for e in events].count(GAP_EVENT) == 0
    assert [e.last_event_id for e in events[:-1]] == [*before[5:], *while_away]
    assert [e.data for e in events[:-1]] == [f"e{n}" for n in range(5, 10)] + [
        f"away {n}" for n in range(3)
    ]


@pytest.fixture
def small_history_hub(start_hub: HubLauncher, redis_url: str) -> HubServer:
    return start_hub(SSE_REDIS_URL=redis_url, SSE_HISTORY_SIZE=10, SSE_HEARTBEAT_SECONDS=1)


def retained_ids(redis_client: Any) -> list[str]:
    return [event_id for event_id, _ in redis_client.xrange(HUB_STREAM)]


def test_trimmed_id_gives_a_gap_then_the_retained_history_then_live(
    small_history_hub: HubServer, redis_client: Any,
) -> None:
    hub = small_history_hub
    ids = publish_seen(hub, "trim", 200)
    retained = retained_ids(redis_client)
    assert 10 <= len(retained) < 200, "SSE_HISTORY_SIZE=10 should have trimmed the stream"
    assert retained == ids[len(ids) - len(retained) :]

    stream = hub.subscribe("trim", headers={"Last-Event-ID": ids[0]})
    gap, *history, _live = read_through_live(hub, "trim", stream)
    assert gap.type == GAP_EVENT
    assert json.loads(gap.data) == {"last_event_id": ids[0]}
    assert [e.last_event_id for e in history] == retained
    assert GAP_EVENT not in {e.type for e in history}


def test_resuming_from_the_last_event_seen_after_a_gap_is_no_second_gap(
    small_history_hub: HubServer, redis_client: Any,
) -> None:
    hub = small_history_hub
    ids = publish_seen(hub, "regap", 200)
    retained = retained_ids(redis_client)

    first = hub.subscribe("regap", query=f"lastEventId={ids[0]}")
    gap, *some = first.events(1 + 5, timeout=10)
    assert gap.type == GAP_EVENT
    assert [e.last_event_id for e in some] == retained[:5]
    first.close()  # disconnected in the middle of the retained history

    again = hub.subscribe("regap", headers={"Last-Event-ID": some[-1].last_event_id})
    events = read_through_live(hub, "regap", again)
    assert [e.type for e in events].count(GAP_EVENT) == 0
    assert [e.last_event_id for e in events[:-1]] == retained[5:]


def test_the_gap_position_of_an_empty_hub_still_reports_a_gap_once_history_is_trimmed(
    small_history_hub: HubServer,
) -> None:
    """A client that got its gap event while the hub was empty holds that event's id
    (``0-0``, "before the first event"). If more than the history is published
    while it is away, resuming from there must report the events it lost."""
    hub = small_history_hub
    stream = hub.subscribe("empty", headers={"Last-Event-ID": "garbage"})
    gap = stream.next_event(timeout=5)
    assert gap.type == GAP_EVENT
    position = gap.last_event_id
    assert position, "the gap event of an empty hub has an id to resume from"
    stream.close()

    ids = publish_seen(hub, "empty", 200)  # trimmed down to about 100: e0.. are gone

    again = hub.subscribe("empty", headers={"Last-Event-ID": position})
    first = again.next_event(timeout=5)
    assert first.type == GAP_EVENT, (
        f"resuming from {position!r} after {len(ids)} events with SSE_HISTORY_SIZE=10 "
        f"gave {first.type} {first.last_event_id} ({first.data!r}) instead of a gap: "
        "the trimmed events were lost silently"
    )


def xread_clients(redis_client: Any) -> set[str]:
    """Ids of the Redis clients running XREAD: the hubs' broadcasters."""
    return {c["id"] for c in redis_client.client_list() if c["cmd"] == "xread"}


def test_resume_on_a_hub_behind_the_clients_last_event_gives_no_duplicate(
    start_hub: HubLauncher, redis_url: str, redis_client: Any,
) -> None:
    """Two hosts on one Redis; the client saw event X on host A and resumes on host B,
    whose broadcaster has not fanned X out yet (here: its connection was just cut and
    it waits 0.1 s before reconnecting). B must not send X again."""
    host_a = start_hub(SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=1)
    on_a = host_a.subscribe("behind")  # starts A's broadcaster
    broadcaster_a = wait_until(lambda: xread_clients(redis_client), lambda ids: len(ids) == 1,
                               timeout=5, what="host A's broadcaster")
    host_b = start_hub(SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=1)
    host_b.subscribe("behind")  # starts B's broadcaster
    (broadcaster_b,) = wait_until(
        lambda: xread_clients(redis_client) - broadcaster_a, lambda ids: len(ids) == 1,
        timeout=5, what="host B's broadcaster",
    )

    redis_client.client_kill_filter(_id=broadcaster_b)  # B now lags for 0.1 s
    seen = host_a.publish("x", channel="behind")
    assert on_a.next_event(timeout=5).last_event_id == seen
    on_a.close()
    on_b = host_b.subscribe("behind", headers={"Last-Event-ID": seen})

    later = host_a.publish("y", channel="behind")
    events = on_b.until_id(later, timeout=10)
    assert [(e.last_event_id, e.data) for e in events] == [(later, "y")], (
        f"resumed on host B from {seen}, got {[(e.last_event_id, e.data) for e in events]}"
    )
