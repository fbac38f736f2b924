"""Node's ``eventsource`` npm package against the real hub.

``listen.mjs`` (tests/clients/node) runs ``new EventSource(url)`` from the
pinned package, not Node's own experimental one, and prints what its listeners
see; see ``conftest.py``. The same tricky events as the browser tests, then
what only a client that reconnects by itself shows: it resumes with
``Last-Event-ID`` after the hub ends the stream, after a restart of the hub,
and it waits the ``retry`` the hub sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from ..conftest import GAP_EVENT, HubLauncher, HubServer
from .conftest import TRICKY, NodeEventSource

pytestmark = pytest.mark.integration

Listen = Callable[..., NodeEventSource]


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module()


def test_node_eventsource_gets_tricky_data_exactly(hub: HubServer, listen_node: Listen) -> None:
    client = listen_node(hub, "channel=node-tricky")
    hub.wait_subscribers("node-tricky", 1)

    ids = [hub.publish(data, channel="node-tricky") for data, _ in TRICKY]
    events = client.wait_events(len(TRICKY))

    assert [e["data"] for e in events] == [expected for _, expected in TRICKY]
    assert [e["lastEventId"] for e in events] == ids
    assert {e["type"] for e in events} == {"message"}
    assert json.loads(events[-1]["data"]) == TRICKY[-1][0]


def test_named_events_reach_their_listeners_with_the_published_ids(
    hub: HubServer, listen_node: Listen,
) -> None:
    client = listen_node(hub, "channel=node-named", ("order-created", "order-paid"))
    hub.wait_subscribers("node-named", 1)

    created = hub.publish({"order": 1}, channel="node-named", event="order-created")
    plain = hub.publish("plain", channel="node-named")
    paid = hub.publish("o1 paid\nin full", channel="node-named", event="order-paid")
    # Nobody listens to this type: no listener of the page would see it.
    hub.publish("unheard", channel="node-named", event="not-listened")
    # An explicit "message" type is what onmessage gets.
    explicit = hub.publish("explicit", channel="node-named", event="message")
    last = hub.publish("end", channel="node-named")

    assert client.wait_events(5) == [
        {"type": "order-created", "data": '{"order":1}', "lastEventId": created},
        {"type": "message", "data": "plain", "lastEventId": plain},
        {"type": "order-paid", "data": "o1 paid\nin full", "lastEventId": paid},
        {"type": "message", "data": "explicit", "lastEventId": explicit},
        {"type": "message", "data": "end", "lastEventId": last},
    ]


def test_node_eventsource_gets_several_channels_in_publish_order(
    hub: HubServer, listen_node: Listen
) -> None:
    client = listen_node(hub, "channel=node-a&channel=node-b&channel=node-c", ("tick",))
    hub.wait_subscribers("node-c", 1)

    sent = [(f"node-{'abc'[n % 3]}", f"event-{n}") for n in range(12)]
    ids = [hub.publish(data, channel=channel, event="tick" if n % 2 else None)
           for n, (channel, data) in enumerate(sent)]
    hub.publish("elsewhere", channel="node-other")
    events = client.wait_events(len(sent))

    assert [e["data"] for e in events] == [data for _, data in sent]
    assert [e["lastEventId"] for e in events] == ids
    assert [e["type"] for e in events] == ["tick" if n % 2 else "message" for n in range(12)]


def test_exits_cleanly_on_stdin_close_and_on_sigterm(hub: HubServer, listen_node: Listen) -> None:
    by_stdin = listen_node(hub, "channel=node-exit")
    by_signal = listen_node(hub, "channel=node-exit")
    hub.wait_subscribers("node-exit", 2)

    assert by_stdin.close() == 0
    by_signal.proc.terminate()  # SIGTERM to the pid we started; its stdin stays open
    assert by_signal.proc.wait(timeout=5) == 0
    for client in (by_stdin, by_signal):
        client.wait_count("closed", 1)
        assert client.count("error") == 0, client.describe()


def test_resumes_after_the_hub_ends_the_stream_exactly_once(
    start_hub: HubLauncher, listen_node: Listen,
) -> None:
    # The hub ends each stream after 1.35-1.5 s; the client waits the 1 s
    # `retry` before it reconnects, long enough to publish while it is away.
    hub = start_hub(SSE_MAX_CONNECTION_SECONDS=1.5, SSE_RETRY_MS=1000)
    client = listen_node(hub, "channel=node-resume")
    hub.wait_subscribers("node-resume", 1)

    before = [hub.publish(f"before-{n}", channel="node-resume") for n in range(3)]
    client.wait_events(3)
    client.wait_count("error", 1)  # the hub ended the stream
    meanwhile = hub.publish_batch(
        [{"channel": "node-resume", "data": f"meanwhile-{n}"} for n in range(3)])
    # The test is only worth something if those were published while it was away.
    assert client.count("open") == 1, "reconnected before the batch was published: " \
        + client.describe()
    assert hub.stats()["replays_served"] == 0

    client.wait_count("open", 2)
    events = client.wait_events(6)
    hub.wait_subscribers("node-resume", 1)
    after = [hub.publish(f"after-{n}", channel="node-resume") for n in range(2)]
    events = client.wait_events(8)

    assert [e["data"] for e in events] == [
        *(f"before-{n}" for n in range(3)), *(f"meanwhile-{n}" for n in range(3)),
        *(f"after-{n}" for n in range(2))]
    assert [e["lastEventId"] for e in events] == [*before, *meanwhile, *after]
    errors = client.lines("error")
    assert errors[0]["readyState"] == 0, errors  # CONNECTING: it reconnects by itself
    stats = hub.stats()
    # Only a resume (Last-Event-ID) replays the batch to a new connection.
    assert stats["replays_served"] >= 1 and stats["gaps_reported"] == 0, stats


def test_sends_its_last_event_id_after_a_hub_restart_and_gets_the_gap_event(
    start_hub: HubLauncher, listen_node: Listen,
) -> None:
    hub = start_hub(SSE_RETRY_MS=100)
    client = listen_node(hub, "channel=node-restart")
    hub.wait_subscribers("node-restart", 1)
    seen = hub.publish("before restart", channel="node-restart")
    client.wait_events(1)

    # A new run of the memory hub is a new epoch: the id the client resumes
    # with is unknown there, and the gap event echoes it.
    hub.restart()
    client.wait_count("open", 2)
    hub.wait_subscribers("node-restart", 1)
    live = hub.publish("after restart", channel="node-restart")
    events = client.wait_events(3)

    assert events[0] == {"type": "message", "data": "before restart", "lastEventId": seen}
    assert events[1]["type"] == GAP_EVENT
    assert json.loads(events[1]["data"]) == {"last_event_id": seen}
    assert events[2] == {"type": "message", "data": "after restart", "lastEventId": live}
    assert len(events) == 3


def test_honours_the_retry_field_of_the_hub(
    start_hub: HubLauncher, listen_node: Listen,
) -> None:
    hub = start_hub(SSE_MAX_CONNECTION_SECONDS=1, SSE_RETRY_MS=100)
    client = listen_node(hub, "channel=node-retry")
    client.wait_count("error", 1)  # the hub ended the stream after about 1 s
    ended = client.lines("error")[0]["arrived"]

    # Without the hub's `retry: 100` the client would wait its own default
    # (3 s); a hub that sent its default would make it wait 2 s. The deadline,
    # counted from when we read the error, is far above 100 ms and below both.
    deadline = 1.5 - (time.monotonic() - ended)
    client.wait_count("open", 2, timeout=max(deadline, 0.0))
    hub.wait_subscribers("node-retry", 1)
    event_id = hub.publish("after the reconnect", channel="node-retry")
    assert client.wait_events(1) == [
        {"type": "message", "data": "after the reconnect", "lastEventId": event_id}]
