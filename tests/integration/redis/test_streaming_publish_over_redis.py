"""A streaming publish (``application/x-ndjson``) through Redis, as fast as one connection goes.

The hub publishes what arrived while its last group was out as one group
(one Redis round trip), so one connection publishes faster than the worker
serving it reads the events back from Redis (the same CPU does both). Paced
by that worker's broadcaster (at most half the history unread), it never
runs so far ahead that the worker's own streams get a gap instead of events.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.integration.conftest import HubLauncher, HubServer, HubStream
from tests.integration.test_streaming_publish import a_piece, streaming_publish

from .conftest import RedisServer

pytestmark = pytest.mark.integration

HISTORY = 100


def test_a_streaming_publish_never_outruns_its_workers_broadcaster(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_HISTORY_SIZE=HISTORY, SSE_HEARTBEAT_SECONDS=1)
    # The worker and Redis share one CPU, as on a busy host: the worker's
    # broadcaster then reads back slower than its publish can write.
    assert redis_server.process is not None
    redis_pid, every_cpu = redis_server.process.pid, os.sched_getaffinity(0)
    one_cpu = {min(every_cpu)}
    os.sched_setaffinity(hub.worker_pid(), one_cpu)
    os.sched_setaffinity(redis_pid, one_cpu)
    try:
        _publish_fast_and_check(hub, streams=[hub.subscribe("nd-fast") for _ in range(3)])
    finally:
        os.sched_setaffinity(redis_pid, every_cpu)  # the session's Redis, shared


def _publish_fast_and_check(hub: HubServer, streams: list[HubStream]) -> None:
    lines = [{"channel": "nd-fast", "data": f"fast {n}"} for n in range(20000)]
    with streaming_publish(hub) as publisher:
        for start in range(0, len(lines), 500):  # 200 times the history, as fast as it goes
            publisher.send(*lines[start:start + 500])
        publisher.finish()
        assert publisher.head() == 200
        results = [publisher.result() for _ in lines]
    assert all(set(result) == {"id"} for result in results), [r for r in results if "id" not in r]
    ids = [result["id"] for result in results]
    for n, stream in enumerate(streams):
        events = stream.until_id(ids[-1], timeout=30)
        assert [e.type for e in events if e.type != "message"] == [], f"stream {n}: a gap"
        assert [e.last_event_id for e in events] == ids, f"stream {n}"
        assert [e.data for e in events] == [line["data"] for line in lines]


def test_lines_sent_while_redis_is_down_are_refused_alone_and_the_stream_goes_on(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_REDIS_TIMEOUT=1, SSE_HEARTBEAT_SECONDS=0.5)
    stream = hub.subscribe("nd-down")

    def line(data: str) -> dict[str, Any]:  # one piece of the body: handed on at once
        return a_piece({"channel": "nd-down", "data": data})

    with streaming_publish(hub) as publisher:
        publisher.send(line("up"))
        assert publisher.head() == 200
        up = publisher.result()["id"]
        redis_server.kill()
        try:
            publisher.send(line("down"))
            down = publisher.result()
        finally:
            redis_server.start()
        assert down["status"] == 503 and "nothing was published" in down["error"], down
        deadline_result = None
        for attempt in range(40):  # until the hub has its connections back
            publisher.send(line(f"again {attempt}"))
            deadline_result = publisher.result()
            if "id" in deadline_result:
                break
        assert deadline_result is not None and "id" in deadline_result, deadline_result
        publisher.finish()
    got = [e.data.rstrip(".") for e in stream.until_id(deadline_result["id"], timeout=15)
           if e.type == "message"]
    assert got[0] == "up" and "down" not in got and got[-1].startswith("again"), got
    assert up
