"""The Redis broadcaster is supervised: no exception ends it, and it loses nothing by failing.

The backend runs against the tests' own redis-server with a recording sink
in place of the broker. A fault is injected into its delivery step (the one
place an unforeseen bug would surface): the broadcaster logs it, reports
itself down (``healthy()`` false, so ``/healthz`` answers 503) while it
waits to start again, then starts again after its last delivered id, so the
event whose delivery failed is delivered, once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


class RecordingSink:
    """What the broker would get from the broadcaster (``Sink``), recorded."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.gaps: list[tuple[str, str | None]] = []
        self.positions: list[str] = []

    def fan_out(self, batch: list[Any]) -> None:
        self.ids += [event.id for event in batch]

    def set_position(self, position: str) -> None:
        self.positions.append(position)

    def broadcast_gap(self, last_id: str, position: str | None) -> None:
        self.gaps.append((last_id, position))


def test_a_failing_broadcaster_is_restarted_and_delivers_what_it_failed_on_once(
    redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    from flask_sse_hub.backends.redis import RedisBackend
    from flask_sse_hub.wire import make_event

    backend = RedisBackend(redis_url, history_size=100, key="flask-sse-hub:supervised")
    sink = RecordingSink()
    deliver = backend._deliver
    failing = threading.Event()
    failing.set()
    down: list[bool] = []

    def flaky(entries: Any, target: Any) -> None:
        if failing.is_set():
            failing.clear()
            raise RuntimeError("injected fault in the delivery step")
        down.append(not backend.healthy())  # a restarted broadcaster reports itself up
        deliver(entries, target)

    backend._deliver = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="flask_sse_hub"):
        backend.start(sink)
        try:
            assert backend.wait_ready(5), "the broadcaster never reached Redis"
            first = backend.publish([make_event("one", channel="c")])
            wait_until(lambda: sink.ids, lambda ids: bool(ids), timeout=10,
                       what="the event the first delivery failed on")
            second = backend.publish([make_event("two", channel="c")])
            wait_until(lambda: sink.ids, lambda ids: len(ids) >= 2, timeout=10,
                       what="the next event")
        finally:
            backend.stop()
    assert sink.ids == [*first, *second], "delivered once each, in order, after the restart"
    assert sink.gaps == [], "a restart after the last delivered id loses nothing"
    assert "the Redis broadcaster failed; restarting it" in caplog.text
    assert "injected fault" in caplog.text
    assert down == [False, False]


def test_a_broadcaster_that_is_not_running_is_unhealthy(redis_url: str) -> None:
    from flask_sse_hub.backends.redis import RedisBackend

    backend = RedisBackend(redis_url, history_size=100, key="flask-sse-hub:unhealthy")
    sink = RecordingSink()
    assert backend.healthy(), "not started yet: Redis answers, so healthy"
    blocked = threading.Event()
    release = threading.Event()

    def stuck(conn: Any, target: Any) -> None:
        blocked.set()
        release.wait(10)
        raise RuntimeError("injected fault while attaching")

    backend._attach = stuck  # type: ignore[method-assign]
    backend.start(sink)
    try:
        assert blocked.wait(5)
        release.set()
        wait_until(backend.healthy, lambda healthy: not healthy, timeout=5,
                   what="healthy() to turn false while the broadcaster restarts")
    finally:
        backend.stop()
