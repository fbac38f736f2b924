"""A page's own EventSource dropped as a slow consumer (docs/protocol.md#slow-consumers).

The hub disconnects a subscriber whose queue overflows; the browser must
reconnect on its own and, through its own ``Last-Event-ID``, get what was
published meanwhile from history, exactly once and in order.

The drop is forced deterministically: the page's main thread is kept busy
for a few seconds (so the browser stops taking the stream's bytes: its buffers
fill, then the socket's), and meanwhile one ``POST /publish`` batch of 300
events of 30 KB (9 MB) goes out with ``SSE_QUEUE_SIZE=8``. The stream's write
blocks, its queue overflows, and the hub drops it. ``/stats``
(``subscribers_dropped_slow``) shows that it really happened. (A batch alone no
longer does it: the broadcaster lets a reader that keeps up write between
chunks.)
"""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import HubLauncher
from .test_eventsource import WAIT_MS, listen, received, wait_count

pytestmark = pytest.mark.integration

BATCH = 300
#: Each event's data: the batch is far more than the browser and the socket buffer.
PADDING = "x" * 30_000
SETTINGS = {
    "SSE_QUEUE_SIZE": 8, "SSE_HISTORY_SIZE": 5000, "SSE_RETRY_MS": 200,
    "SSE_MAX_PUBLISH_BYTES": 20_000_000,
}


def publish_while_the_page_is_frozen(hub: Any, page: Any) -> list[str]:
    """Freeze the page's main thread for a while, publish the big batch, return its ids."""
    page.evaluate("() => { setTimeout(() => { const end = Date.now() + 4000; "
                  "while (Date.now() < end) {} }, 0); }")
    ids: list[str] = hub.publish_batch(
        [{"channel": "flood", "data": f"event-{n} {PADDING}"} for n in range(BATCH)]
    )
    return ids


def data_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"].split(" ")[0] for e in events]


def test_a_page_dropped_as_slow_reconnects_and_gets_every_event_exactly_once(
    start_hub: HubLauncher, page: Any,
) -> None:
    hub = start_hub(**SETTINGS)
    listen(page, hub.port, "channel=flood")
    hub.wait_subscribers("flood", 1)
    # One event first: the browser resumes from it (the batch's events never
    # reach it before the drop). Without it, see the next test.
    warm_up = hub.publish("warm-up", channel="flood")
    wait_count(page, 1)
    assert hub.stats()["subscribers_dropped_slow"] == 0
    opened_before = page.evaluate("window.states.filter((s) => s === 'open').length")
    assert opened_before == 1

    ids = publish_while_the_page_is_frozen(hub, page)
    hub.wait_for_stats(lambda s: s["subscribers_dropped_slow"] >= 1,
                       what="the page's stream dropped as slow")
    # The browser noticed (error), reconnected by itself (open again) and caught up.
    page.wait_for_function(
        "window.states.includes('error') && window.states[window.states.length - 1] === 'open'",
        timeout=WAIT_MS,
    )
    wait_count(page, 1 + BATCH)
    # One more, live: a duplicate anywhere before it would put it out of place.
    end = hub.publish("end", channel="flood")
    events = wait_count(page, 2 + BATCH)

    assert data_of(events) == ["warm-up", *(f"event-{n}" for n in range(BATCH)), "end"]
    assert [e["lastEventId"] for e in events] == [warm_up, *ids, end]
    assert {e["type"] for e in events} == {"message"}
    states = page.evaluate("window.states")
    assert states[0] == "open" and states[1] == "error" and states[-1] == "open", states
    stats = hub.stats()
    assert stats["subscribers_dropped_slow"] >= 1
    assert stats["replays_served"] >= 1  # the catch-up came from history
    assert stats["channels"] == {"flood": 1}


@pytest.mark.parametrize("history", ["empty hub", "events before"])
def test_a_page_dropped_before_its_first_event_still_catches_up(
    start_hub: HubLauncher, page: Any, history: str,
) -> None:
    # The stream's opening block gives the browser its start position as its
    # last event id (no event fires): the only thing it can resume from here.
    hub = start_hub(**SETTINGS)
    if history == "events before":
        hub.publish("before the page subscribed", channel="flood")
    listen(page, hub.port, "channel=flood")
    hub.wait_subscribers("flood", 1)

    ids = publish_while_the_page_is_frozen(hub, page)
    hub.wait_for_stats(lambda s: s["subscribers_dropped_slow"] >= 1,
                       what="the page's stream dropped as slow")
    page.wait_for_function(
        "window.states.includes('error') && window.states[window.states.length - 1] === 'open'",
        timeout=WAIT_MS,
    )
    hub.wait_subscribers("flood", 1)
    end = hub.publish("end", channel="flood")
    page.wait_for_function("window.received.some((e) => e.data === 'end')", timeout=WAIT_MS)

    events = received(page)
    assert [e["lastEventId"] for e in events] == [*ids, end]
