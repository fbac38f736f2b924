"""A new stream's start position (SPEC §5, resume; issue 4): a complete resume point.

A stream opens with an id-only block (type ``sse-hub-position``, no data):
the client's last event id before its first event. A client whose stream
ends before any event (slow, max age, shutdown, network) resumes from it and
gets exactly what was published meanwhile: no gap, nothing twice. With Redis
the position is an id of the shared stream, so it resumes on another worker
or after a restart as well.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import GAP_EVENT, HubLauncher

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("history", ["empty", "published before"])
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_stream_ended_before_its_first_event_resumes_from_its_start_position(
    start_hub: HubLauncher, request: pytest.FixtureRequest, backend: str, history: str,
) -> None:
    settings = {"SSE_REDIS_URL": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    hub = start_hub(**settings)
    if history == "published before":
        earlier = hub.publish("earlier", channel="start")
    stream = hub.subscribe("start")
    position = stream.parser.last_event_id
    assert position, "the stream opened without a start position"
    if history == "published before":
        assert position == earlier
    assert stream.pending_events == 0  # the position block fires no event
    stream.close()

    missed = [hub.publish(f"missed-{n}", channel="start") for n in range(3)]
    if backend == "redis":
        hub.restart()  # the position is a Redis stream id: it outlives the worker
    resumed = hub.subscribe("start", headers={"Last-Event-ID": position})
    live = hub.publish("live", channel="start")
    events = resumed.until_id(live, timeout=10)

    assert GAP_EVENT not in [event.type for event in events]
    assert [(event.data, event.last_event_id) for event in events] == [
        *((f"missed-{n}", missed[n]) for n in range(3)), ("live", live),
    ]
