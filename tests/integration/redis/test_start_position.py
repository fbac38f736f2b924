"""A new stream's start position (docs/protocol.md#position): a complete resume point.

A stream opens with an id-only block (type ``sse-hub-position``, no data):
the client's last event id before its first event. A client whose stream
ends before any event (slow, max age, shutdown, network) resumes from it and
gets exactly what was published meanwhile: no gap, nothing twice. With Redis
the position is an id of the shared stream, so it resumes on another worker
or after a restart as well.
"""

from __future__ import annotations

import time
from typing import Any

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


class _Sink:
    """What the broker would learn from the broadcaster (``Sink``), recorded."""

    def __init__(self) -> None:
        self.positions: list[str] = []

    def fan_out(self, batch: list[Any]) -> None:
        pass

    def set_position(self, position: str) -> None:
        self.positions.append(position)

    def broadcast_gap(self, last_id: str, position: str | None) -> None:
        raise AssertionError(f"unexpected gap after {last_id}")


def test_a_worker_started_while_redis_was_down_starts_streams_at_a_known_position(
    redis_url: str,
) -> None:
    # The broadcaster of a worker that started 10 s ago, Redis down until now,
    # reads from the worker's start (minus the clock margin), which falls
    # between entries. The position it gives new streams must still be one a
    # resume finds: the newest entry at or before that moment.
    redis = pytest.importorskip("redis")
    from flask_sse_hub.backends.redis import RedisBackend

    key = "flask-sse-hub:startup"
    backend = RedisBackend(redis_url, history_size=100, key=key)
    backend._started_at = time.time() - 10  # simulating the start-up outage
    conn = redis.Redis.from_url(redis_url)
    try:
        conn.xadd(key, {"c": "start", "b": b"data: long before\n\n"}, id="1000-0")
        recent = conn.xadd(key, {"c": "start", "b": b"data: while the worker waited\n\n"}).decode()
        sink = _Sink()
        backend._start_position(conn, sink)
        reads_from = backend._last_id
        assert sink.positions == [reads_from] == ["1000-0"]
        replay = backend.replay(frozenset({"start"}), reads_from, upto=recent)
        assert not replay.gap
        assert [event.id for event in replay.events] == [recent]
    finally:
        conn.close()
        backend.stop()
