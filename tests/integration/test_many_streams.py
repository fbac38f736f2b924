"""Many streams on one worker: one gevent worker holds thousands of streams.

Past 1 024 open descriptors, anything built on ``select()`` breaks; a worker
with that many streams must keep every one of them open across heartbeats,
and still deliver to all of them.
"""

from __future__ import annotations

import resource
import selectors
import socket
import time

import pytest

from .conftest import HOST, HubLauncher

pytestmark = pytest.mark.integration

STREAMS = 1200  # the worker's descriptors go past 1 024
HEARTBEAT_SECONDS = 1


@pytest.fixture
def descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = STREAMS + 500
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"open-file hard limit {hard} < {wanted}: cannot open {STREAMS} streams")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def read_until_all_contain(socks: list[socket.socket], marker: bytes, timeout: float) -> None:
    """Read every socket until each has received ``marker``; fail on EOF or timeout."""
    selector = selectors.DefaultSelector()
    seen = {sock: b"" for sock in socks}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    waiting = set(socks)
    deadline = time.monotonic() + timeout
    try:
        while waiting:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(waiting)} of {len(socks)} streams never got {marker!r}"
            for key, _ in selector.select(min(left, 1.0)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(65536)
                assert data, "the hub closed a live stream"
                seen[sock] = (seen[sock] + data)[-4096:]
                if marker in seen[sock] and sock in waiting:
                    waiting.discard(sock)
                    selector.unregister(sock)
    finally:
        selector.close()


def test_streams_past_1024_descriptors_survive_heartbeats_and_all_receive(
    start_hub: HubLauncher, descriptors: None,
) -> None:
    hub = start_hub(SSE_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS)
    socks = []
    try:
        for _ in range(STREAMS):
            sock = socket.create_connection((HOST, hub.port), timeout=10)
            sock.sendall(f"GET /stream?channel=many HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            socks.append(sock)
        hub.wait_for_stats(lambda s: s["subscribers"] == STREAMS, what=f"{STREAMS} subscribers")
        # Every stream gets a heartbeat (the check for a vanished client runs
        # right before it) and stays open ...
        read_until_all_contain(socks, b": heartbeat", timeout=10 * HEARTBEAT_SECONDS)
        read_until_all_contain(socks, b": heartbeat", timeout=10 * HEARTBEAT_SECONDS)
        assert hub.stats()["subscribers"] == STREAMS
        # ... and every one receives an event.
        event_id = hub.publish("to all", channel="many")
        read_until_all_contain(socks, f"id: {event_id}\n".encode(), timeout=20)
    finally:
        for sock in socks:
            sock.close()
