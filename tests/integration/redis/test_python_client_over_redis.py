"""flask_sse_hub.client against a Redis-backed hub that restarts under it.

With Redis the ids outlive the hub's processes: a listener that resumes
after a restart (and after the streams it held were ended by the SIGTERM)
gets every event published before, during and after it, exactly once, and
no gap.
"""

from __future__ import annotations

import threading
import time

import pytest

from flask_sse_hub.client import listen
from tests.support.threads import run_in_thread

from ..conftest import HubLauncher, HubServer, wait_until
from ..test_python_client import Collector, check_exactly_once_in_order, stream_url

pytestmark = pytest.mark.integration


def test_every_event_once_across_a_restart_of_a_redis_hub(
    start_hub: HubLauncher, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_RETRY_MS=100, WEB_CONCURRENCY=2)
    reader = Collector(listen(stream_url(hub), channels=["a"]))
    hub.wait_subscribers("a", 1)
    ids: list[str] = []
    restarted = threading.Event()
    publishing = run_in_thread(publish_through, hub, ids, restarted, name="publisher")
    wait_until(lambda: len(ids), lambda n: n >= 30, timeout=10, what="events before the restart")
    hub.restart()
    restarted.set()
    publishing.join(30)
    reader.wait_for(lambda got: len(got) >= len(ids), f"{len(ids)} events")
    reader.stop()
    check_exactly_once_in_order(reader.events, ids)
    assert reader.listener.reconnects >= 1
    assert not any(event.is_gap for event in reader.events)


def publish_through(hub: HubServer, ids: list[str], restarted: threading.Event) -> None:
    """Publish ``{"n": i}`` to ``a`` until 50 events after the restart (retrying while down)."""
    after = None
    while after is None or len(ids) < after + 50:
        if after is None and restarted.is_set():
            after = len(ids)
        # Retried under the same Idempotency-Key: a publish cut by the restart
        # may have happened, and must not happen twice.
        key = {"Idempotency-Key": f"event-{len(ids)}"}
        try:
            status, answer = hub.post_json(
                "/publish", {"channel": "a", "data": {"n": len(ids)}}, key,
            )
        except OSError:  # between the old master and the new one
            status, answer = 0, None
        if status == 202:
            ids.append(answer["id"])
        time.sleep(0.01)
