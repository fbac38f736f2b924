"""SSE_MAX_CONNECTIONS_PER_IP against gunicorn: counted per worker per client address.

The stream past the limit is refused with 429 and a JSON reason; the streams
already open keep streaming; a closed stream frees its slot; HEAD (no
subscription) is not counted; another client address has a count of its own
(127.0.0.2: Linux routes all of 127.0.0.0/8 to the loopback interface);
publishing is not limited.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import HOST, HubLauncher, HubServer, HubStream

pytestmark = pytest.mark.integration

LIMIT = 3
SECOND_ADDRESS = "127.0.0.2"


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_MAX_CONNECTIONS_PER_IP=LIMIT, SSE_HEARTBEAT_SECONDS=0.3)


@pytest.fixture(autouse=True)
def all_slots_free(hub: HubServer) -> Iterator[None]:
    hub.wait_for_stats(lambda s: s["subscribers"] == 0, what="no stream left by another test")
    yield
    hub.close_streams()
    hub.wait_for_stats(lambda s: s["subscribers"] == 0 and s["client_addresses"] == 0,
                       what="every slot of the test freed")


@contextlib.contextmanager
def from_address(address: str) -> Iterator[None]:
    """Connections opened inside come from ``address`` (every client here goes through
    ``socket.create_connection``)."""
    original = socket.create_connection

    def bound(addr: Any, timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
              source_address: Any = None, **kwargs: Any) -> socket.socket:
        return original(addr, timeout, (address, 0), **kwargs)

    socket.create_connection = functools.wraps(original)(bound)  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.create_connection = original


@pytest.fixture(scope="module")
def second_address() -> str:
    with socket.socket() as server:
        server.bind((HOST, 0))
        server.listen()
        try:
            with socket.create_connection(server.getsockname(), 2, (SECOND_ADDRESS, 0)):
                pass
        except OSError as exc:
            pytest.skip(f"cannot connect from {SECOND_ADDRESS}: {exc}")
    return SECOND_ADDRESS


def assert_too_many(hub: HubServer, channel: str) -> None:
    stream = hub.open_stream(f"/stream?channel={channel}")
    body = stream.read_body(timeout=5)
    assert stream.status == 429, (stream.status, body)
    assert stream.headers["content-type"].startswith("application/json"), stream.headers
    reason = json.loads(body)["error"]
    assert "SSE_MAX_CONNECTIONS_PER_IP" in reason, reason
    assert stream.pending_events == 0


def open_streams(hub: HubServer, channel: str, count: int) -> list[HubStream]:
    return [hub.subscribe(channel) for _ in range(count)]


def test_stream_over_the_limit_is_429_and_the_others_keep_streaming(hub: HubServer) -> None:
    streams = open_streams(hub, "lim", LIMIT)
    assert_too_many(hub, "lim")
    assert_too_many(hub, "other-channel")  # per client, not per channel
    stats = hub.stats()
    assert stats["subscribers"] == LIMIT and stats["client_addresses"] == 1
    # Publishing is not limited, and every open stream still gets events.
    event_id = hub.publish("still here", channel="lim")
    for stream in streams:
        event = stream.next_event(timeout=5)
        assert (event.data, event.last_event_id) == ("still here", event_id)
    # HEAD subscribes to nothing, so it is not counted (nor refused).
    status, headers, _ = hub.request("HEAD", "/stream?channel=lim")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert hub.stats()["subscribers"] == LIMIT
    # Refusals held no slot: still exactly LIMIT.
    assert_too_many(hub, "lim")


def test_a_closed_stream_frees_its_slot(hub: HubServer) -> None:
    streams = open_streams(hub, "free", LIMIT)
    assert_too_many(hub, "free")
    streams[0].close()
    hub.wait_for_stats(lambda s: s["subscribers"] == LIMIT - 1, what="the closed stream's slot")
    replacement = hub.subscribe("free")
    assert_too_many(hub, "free")
    event_id = hub.publish("after the swap", channel="free")
    for stream in [*streams[1:], replacement]:
        assert stream.next_event(timeout=5).last_event_id == event_id


def test_head_is_not_counted(hub: HubServer) -> None:
    for _ in range(LIMIT + 2):
        status, _, _ = hub.request("HEAD", "/stream?channel=head")
        assert status == 200
    assert hub.stats()["subscribers"] == 0
    open_streams(hub, "head", LIMIT)


def test_another_client_address_is_counted_separately(
    hub: HubServer, second_address: str
) -> None:
    first = open_streams(hub, "addr", LIMIT)
    assert_too_many(hub, "addr")
    with from_address(second_address):
        second = open_streams(hub, "addr", LIMIT)
        assert_too_many(hub, "addr")
    stats = hub.stats()
    assert stats["subscribers"] == 2 * LIMIT
    assert stats["client_addresses"] == 2
    event_id = hub.publish("both addresses", channel="addr")
    for stream in first + second:
        assert stream.next_event(timeout=5).last_event_id == event_id
    # Freeing a slot of one address does not give the other one more.
    second[0].close()
    hub.wait_for_stats(lambda s: s["subscribers"] == 2 * LIMIT - 1, what="one slot of .2 freed")
    assert_too_many(hub, "addr")
    with from_address(second_address):
        hub.subscribe("addr")
