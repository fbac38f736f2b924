"""Redis connections per worker are constant, never one per subscriber (docs/protocol.md#redis).

Each worker holds its broadcaster's connection, one replay connection (every
stream's replay pages are pipelined on it), one for publishes (pipelined
too), one for health checks and a small pool for presence. Redis's
``CLIENT LIST`` is attributed to processes through /proc, so the count is the
worker's own.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.conftest import HubLauncher, HubServer, HubStream, wait_until

from .conftest import process_tree, redis_connections_by_pid

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

#: Broadcaster, replay, publish, health, and a presence pool of at most 2.
MAX_PER_WORKER = 6


def connections_per_worker(hub: HubServer, redis_client: Any) -> dict[int, int]:
    """Redis connections of each gunicorn worker of ``hub``, by pid.

    Waits until every Redis client but ours belongs to ``hub`` (a server an
    earlier test killed may still be on the list for a moment).
    """
    assert hub.proc is not None
    master, *workers = process_tree(hub.proc.pid)
    redis_port = redis_client.connection_pool.connection_kwargs["port"]
    ours = redis_client.client_id()

    def attribute() -> tuple[dict[int, int], list[dict[str, str]]]:
        clients = [c for c in redis_client.client_list() if int(c["id"]) != ours]
        return redis_connections_by_pid(clients, [master, *workers], redis_port), clients

    counts, _ = wait_until(attribute, lambda found: sum(found[0].values()) == len(found[1]),
                           timeout=5, what="every Redis client to belong to the hub")
    assert counts.pop(master) == 0, "the gunicorn master holds no Redis connection"
    assert len(counts) == 1, f"expected one worker, found {sorted(counts)}"
    return counts


def exercise(hub: HubServer, streams: list[HubStream], channel: str) -> None:
    """Use every kind of Redis access: publish, replay, health, and delivery to ``streams``."""
    event_id = hub.publish("probe", channel=channel)
    for stream in streams:
        stream.until_id(event_id, timeout=10)
    status, _, _ = hub.request("GET", "/healthz")
    assert status == 200


def test_redis_connections_per_worker_stay_constant_with_200_subscribers(
    start_hub: HubLauncher, redis_url: str, redis_client: Any,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=5)
    first = hub.subscribe("conn")
    exercise(hub, [first], "conn")
    with_one = connections_per_worker(hub, redis_client)

    # 199 more, opened concurrently and each resuming (a replay from Redis),
    # while events are published: as many Redis accesses at once as we can.
    resume_from = hub.publish("resume point", channel="conn")
    first.until_id(resume_from, timeout=5)
    with ThreadPoolExecutor(max_workers=50) as pool:
        opening = [
            pool.submit(hub.subscribe, "conn", headers={"Last-Event-ID": resume_from})
            for _ in range(199)
        ]
        publishing = [pool.submit(hub.publish, f"during {n}", channel="conn") for n in range(50)]
        streams = [first, *(future.result() for future in opening)]
        for future in publishing:
            future.result()
    hub.wait_subscribers("conn", 200)
    exercise(hub, streams, "conn")
    with_200 = connections_per_worker(hub, redis_client)

    (one,) = with_one.values()
    (many,) = with_200.values()
    assert 1 <= one <= MAX_PER_WORKER, with_one
    assert 1 <= many <= MAX_PER_WORKER, (
        f"{many} Redis connections with 200 subscribers (1 subscriber: {one})"
    )
