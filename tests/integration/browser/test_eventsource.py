"""A page's own ``EventSource`` in a real headless Chromium.

The page is served from the hub's origin (``/healthz``) so the stream is
same-origin. A small script records every event it sees (``type``, ``data``,
``lastEventId``) in ``window.received`` and every ``open``/``error`` in
``window.states``; the tests wait for conditions with ``wait_for_function``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.threads import run_in_thread

from ..conftest import GAP_EVENT, HubLauncher
from ..redis import conftest as redis_fixtures

pytestmark = pytest.mark.integration

# The Redis tests' own redis-server (fixtures of tests/integration/redis/conftest.py,
# which pytest does not load for this directory).
redis_server = redis_fixtures.redis_server
redis_url = redis_fixtures.redis_url

WAIT_MS = 15_000

LISTEN = """
([url, types]) => {
  window.received = [];
  window.states = [];
  const es = new EventSource(url);
  window.es = es;
  const record = (e) => window.received.push(
    {type: e.type, data: e.data, lastEventId: e.lastEventId});
  es.onmessage = record;
  for (const type of types) es.addEventListener(type, record);
  es.addEventListener('sse-hub-gap', record);
  es.addEventListener('open', () => window.states.push('open'));
  es.addEventListener('error', () => window.states.push('error'));
}
"""


def listen(page: Any, port: int, query: str, types: tuple[str, ...] = ()) -> None:
    """Open the hub's origin in ``page`` and start an ``EventSource`` on ``/stream?query``."""
    page.goto(f"http://127.0.0.1:{port}/healthz")
    page.evaluate(LISTEN, [f"/stream?{query}", list(types)])
    page.wait_for_function("window.states.includes('open')", timeout=WAIT_MS)


def received(page: Any) -> list[dict[str, str]]:
    events: list[dict[str, str]] = page.evaluate("window.received")
    return events


def wait_count(page: Any, count: int) -> list[dict[str, str]]:
    page.wait_for_function(f"window.received.length >= {count}", timeout=WAIT_MS)
    return received(page)


def test_browser_eventsource_gets_tricky_data_exactly(start_hub: HubLauncher, page: Any) -> None:
    hub = start_hub()
    listen(page, hub.port, "channel=tricky")
    hub.wait_subscribers("tricky", 1)

    sent: list[tuple[Any, str]] = [
        ("line one\nline two\nline three", "line one\nline two\nline three"),
        ("crlf one\r\ncrlf two", "crlf one\ncrlf two"),
        ("cr one\rcr two", "cr one\ncr two"),
        ("   three leading spaces", "   three leading spaces"),
        (" \n  both lines indented", " \n  both lines indented"),
        ("", ""),
        ("héllo ✓ 🚀 日本", "héllo ✓ 🚀 日本"),
        ({"a": 1, "b": [True, None], "s": "é"}, '{"a":1,"b":[true,null],"s":"é"}'),
    ]
    ids = [hub.publish(data, channel="tricky") for data, _ in sent]
    events = wait_count(page, len(sent))

    assert [e["data"] for e in events] == [expected for _, expected in sent]
    assert [e["lastEventId"] for e in events] == ids
    assert {e["type"] for e in events} == {"message"}
    assert json.loads(events[-1]["data"]) == sent[-1][0]


def test_named_events_reach_add_event_listener_not_onmessage(
    start_hub: HubLauncher, page: Any,
) -> None:
    hub = start_hub()
    listen(page, hub.port, "channel=named", types=("order-created", "order-paid"))
    hub.wait_subscribers("named", 1)

    created = hub.publish("o1", channel="named", event="order-created")
    plain = hub.publish("plain", channel="named")
    paid = hub.publish("o1 paid", channel="named", event="order-paid")
    # A type nobody listens to: neither onmessage nor any listener sees it.
    hub.publish("unheard", channel="named", event="not-listened")
    last = hub.publish("end", channel="named")
    events = wait_count(page, 4)

    assert events == [
        {"type": "order-created", "data": "o1", "lastEventId": created},
        {"type": "message", "data": "plain", "lastEventId": plain},
        {"type": "order-paid", "data": "o1 paid", "lastEventId": paid},
        {"type": "message", "data": "end", "lastEventId": last},
    ]


def test_reconnects_after_a_gunicorn_restart_with_redis_and_resumes_exactly_once(
    start_hub: HubLauncher, page: Any, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_RETRY_MS=200)
    listen(page, hub.port, "channel=restart")
    hub.wait_subscribers("restart", 1)

    before = [f"before-{n}" for n in range(3)]
    for data in before:
        hub.publish(data, channel="restart")
    wait_count(page, 3)
    states_before = page.evaluate("window.states.length")

    # A full gunicorn restart on the same port. While it is down, a second hub
    # on the same Redis publishes: only the browser's Last-Event-ID resume can
    # deliver those. More are published right after it is back.
    other = start_hub(SSE_REDIS_URL=redis_url)
    hub.stop()
    meanwhile = [f"meanwhile-{n}" for n in range(3)]
    for data in meanwhile:
        other.publish(data, channel="restart")
    hub.start(new_port_on_conflict=False)
    after = [f"after-{n}" for n in range(2)]
    for data in after:
        hub.publish(data, channel="restart")

    page.wait_for_function(
        f"window.received.length >= 8 && window.states.length > {states_before} "
        "&& window.states[window.states.length - 1] === 'open'",
        timeout=WAIT_MS,
    )
    hub.wait_subscribers("restart", 1)
    last = hub.publish("final", channel="restart")
    events = wait_count(page, 9)

    assert [e["data"] for e in events] == [*before, *meanwhile, *after, "final"]
    assert events[-1]["lastEventId"] == last
    assert len({e["lastEventId"] for e in events}) == 9
    states = page.evaluate("window.states")
    assert states[0] == "open"
    assert "error" in states[states_before:], states
    assert states[-1] == "open", states


def test_reconnects_after_the_hub_ends_the_stream_and_misses_nothing(
    start_hub: HubLauncher, page: Any,
) -> None:
    hub = start_hub(SSE_MAX_CONNECTION_SECONDS=1, SSE_RETRY_MS=200)
    listen(page, hub.port, "channel=drop")

    sent: list[str] = []

    def publish_for_three_seconds() -> None:
        with hub.publisher() as publish:
            deadline = time.monotonic() + 3.0
            n = 0
            while time.monotonic() < deadline:
                publish({"channel": "drop", "data": f"event-{n}"})
                sent.append(f"event-{n}")
                n += 1
                time.sleep(0.02)  # paces the publisher, not an assertion

    run_in_thread(publish_for_three_seconds).join(20)
    assert len(sent) > 20

    events = wait_count(page, len(sent))
    # Give any duplicate a chance to show: one more event, then compare all.
    hub.publish("end", channel="drop")
    events = wait_count(page, len(sent) + 1)
    assert [e["data"] for e in events] == [*sent, "end"]
    assert len({e["lastEventId"] for e in events}) == len(events)
    states = page.evaluate("window.states")
    assert states.count("error") >= 1 and states.count("open") >= 2, states


def test_unknown_last_event_id_starts_with_a_gap_event(
    start_hub: HubLauncher, page: Any,
) -> None:
    hub = start_hub()
    listen(page, hub.port, "channel=gap&lastEventId=garbage")
    event_id = hub.publish("live", channel="gap")
    events = wait_count(page, 2)

    assert events[0]["type"] == GAP_EVENT
    assert json.loads(events[0]["data"]) == {"last_event_id": "garbage"}
    assert events[1] == {"type": "message", "data": "live", "lastEventId": event_id}
