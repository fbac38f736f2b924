"""The stream response itself, over real sockets to gunicorn's gevent worker.

The subscribe answer's status and headers, with no hop-by-hop headers from
the app (docs/protocol.md#headers); the ``retry:`` + comment opening sent at
once (docs/protocol.md#opening); heartbeat comments, and ``SSE_PING_EVENT``
heartbeats as named events without id (docs/protocol.md#heartbeats); the
settings involved: SSE_RETRY_MS, SSE_HEARTBEAT_SECONDS, SSE_PING_EVENT.
"""

from __future__ import annotations

import pytest

from .conftest import HubLauncher, HubServer

pytestmark = pytest.mark.integration

RETRY_MS = 4321
#: RFC 9110 §7.6.1 hop-by-hop fields, minus the two gunicorn itself writes for
#: its chunked framing and keep-alive (Connection, Transfer-Encoding).
APP_FORBIDDEN_HOP_BY_HOP = (
    "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "upgrade",
)


@pytest.fixture(scope="module")
def slow_heartbeat_hub(start_hub_for_module: HubLauncher) -> HubServer:
    """Heartbeats far apart: anything that arrives at once is the preamble."""
    return start_hub_for_module(SSE_HEARTBEAT_SECONDS=15, SSE_RETRY_MS=RETRY_MS)


def test_stream_response_has_event_stream_headers_and_no_app_hop_by_hop_headers(
    slow_heartbeat_hub: HubServer,
) -> None:
    stream = slow_heartbeat_hub.open_stream("/stream?channel=headers")
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    cache_control = stream.headers.get("cache-control", "")
    assert "no-store" in cache_control or "no-cache" in cache_control, cache_control
    assert stream.headers.get("x-accel-buffering") == "no"
    # A stream has no length: gunicorn frames it with chunked encoding.
    assert "content-length" not in stream.headers
    assert stream.framing == "chunked"
    assert stream.headers["transfer-encoding"].lower() == "chunked"
    assert stream.headers.get("connection", "keep-alive").lower() in ("keep-alive", "close")
    added = [name for name, _ in stream.raw_headers if name.lower() in APP_FORBIDDEN_HOP_BY_HOP]
    assert added == [], f"hop-by-hop headers in the response: {stream.raw_headers}"
    names = [name.lower() for name, _ in stream.raw_headers]
    assert len(names) == len(set(names)), f"repeated headers: {stream.raw_headers}"


def test_head_request_answers_stream_headers_without_subscribing(
    slow_heartbeat_hub: HubServer,
) -> None:
    status, headers, body = slow_heartbeat_hub.request("HEAD", "/stream?channel=head-only")
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert body == b""
    assert slow_heartbeat_hub.channel_subscribers("head-only") == 0


def test_first_chunk_is_retry_and_comment_within_a_second_despite_slow_heartbeat(
    slow_heartbeat_hub: HubServer,
) -> None:
    stream = slow_heartbeat_hub.open_stream("/stream?channel=first-chunk")
    assert stream.status == 200
    stream.wait_comment(timeout=1.0)
    assert stream.connected_at is not None and stream.first_chunk_time is not None
    assert stream.first_chunk_time - stream.connected_at < 1.0
    assert stream.retry == RETRY_MS
    assert stream.body.startswith(f"retry: {RETRY_MS}\n".encode()), stream.body
    assert b"\n:" in stream.body
    assert stream.pending_events == 0, "the preamble must not dispatch an event"


def test_idle_stream_receives_heartbeat_comments(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_HEARTBEAT_SECONDS=0.5)
    stream = hub.subscribe("idle")
    comments_after_preamble = len(stream.comments)
    stream.wait_comment(timeout=5, new_only=True)
    stream.wait_comment(timeout=5, new_only=True)
    assert len(stream.comments) >= comments_after_preamble + 2
    assert stream.pending_events == 0, "heartbeat comments must not dispatch events"
    assert not stream.stream_ended


def test_ping_event_heartbeats_are_named_events_without_id(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_HEARTBEAT_SECONDS=0.5, SSE_PING_EVENT="ping")
    stream = hub.subscribe("pinged")
    event_id = hub.publish("real", channel="pinged")
    assert stream.next_event(timeout=5).last_event_id == event_id
    pings = [stream.next_event(timeout=5), stream.next_event(timeout=5)]
    for ping in pings:
        assert ping.type == "ping"
        # No id field: the browser's lastEventId stays the last real event's.
        assert ping.last_event_id == event_id
    ping_frames = [block for block in stream.body.split(b"\n\n") if b"event: ping" in block]
    assert len(ping_frames) >= 2
    assert all(b"id:" not in block for block in ping_frames), ping_frames
    assert len(stream.comments) == 1, f"only the preamble comment expected: {stream.comments}"
