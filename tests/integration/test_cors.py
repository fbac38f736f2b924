"""SSE_CORS_ORIGINS over raw HTTP against gunicorn: preflights and actual requests.

Listed origins are echoed (once) with ``Access-Control-Allow-Credentials: true``
and ``Vary: Origin``; ``*`` answers ``Access-Control-Allow-Origin: *`` and
never allows credentials; unlisted origins get no CORS headers at all, and the
answer itself (a stream, a publish) is unchanged.
"""

from __future__ import annotations

import json

import pytest

from .conftest import HubLauncher, HubServer, HubStream

pytestmark = pytest.mark.integration

ORIGIN = "https://app.example.com"
LOCAL_ORIGIN = "http://localhost:3000"
STRANGER = "https://evil.example"
JSON_TYPE = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def listed_hub(start_hub_for_module: HubLauncher) -> HubServer:
    # Written the way people write it: case, default port and trailing slash are normalised.
    return start_hub_for_module(SSE_CORS_ORIGINS=f"HTTPS://App.Example.com:443/ {LOCAL_ORIGIN}",
                                SSE_HEARTBEAT_SECONDS=0.3)


@pytest.fixture(scope="module")
def star_hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_CORS_ORIGINS="*", SSE_HEARTBEAT_SECONDS=0.3)


def cors(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.startswith("access-control-")}


def vary(headers: dict[str, str]) -> set[str]:
    return {part.strip().lower() for part in headers.get("vary", "").split(",") if part.strip()}


def assert_listed(headers: dict[str, str], origin: str) -> None:
    # http_request and SSEClient join repeated headers with ", ": a second copy would show.
    assert headers.get("access-control-allow-origin") == origin, headers
    assert headers.get("access-control-allow-credentials") == "true", headers
    assert "origin" in vary(headers), headers


def stream_event(hub: HubServer, stream: HubStream, channel: str, data: str) -> None:
    """Publish to ``channel``; the stream gets it: CORS did not disturb the stream."""
    hub.wait_subscribers(channel, 1)
    event_id = hub.publish(data, channel=channel)
    event = stream.next_event(timeout=5)
    assert (event.data, event.last_event_id) == (data, event_id)


@pytest.mark.parametrize("origin", [ORIGIN, LOCAL_ORIGIN])
def test_listed_origin_preflight_and_publish(listed_hub: HubServer, origin: str) -> None:
    status, headers, _ = listed_hub.request("OPTIONS", "/publish", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    })
    assert status in (200, 204)
    assert_listed(headers, origin)
    assert "POST" in headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "last-event-id"} <= allowed
    assert int(headers["access-control-max-age"]) > 0

    status, headers, body = listed_hub.request(
        "POST", "/publish", json.dumps({"channel": "cors", "data": 1}).encode(),
        {**JSON_TYPE, "Origin": origin},
    )
    assert status == 202, body
    assert_listed(headers, origin)
    assert "access-control-allow-methods" not in headers


def test_listed_origin_stream_preflight_and_stream(listed_hub: HubServer) -> None:
    status, headers, _ = listed_hub.request("OPTIONS", "/stream?channel=cors-s", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id",
    })
    assert status in (200, 204)
    assert_listed(headers, ORIGIN)
    assert "GET" in headers["access-control-allow-methods"]
    assert "last-event-id" in headers["access-control-allow-headers"].lower()
    assert listed_hub.stats()["subscribers"] == 0  # a preflight subscribes to nothing

    stream = listed_hub.subscribe("cors-s", headers={"Origin": ORIGIN})
    names = [name.lower() for name, _ in stream.raw_headers]
    assert names.count("access-control-allow-origin") == 1, stream.raw_headers
    assert_listed(stream.headers, ORIGIN)
    assert stream.headers["content-type"].startswith("text/event-stream")
    stream_event(listed_hub, stream, "cors-s", "cross-origin")


def test_error_answers_carry_cors_headers(listed_hub: HubServer) -> None:
    stream = listed_hub.open_stream("/stream?channel=bad%20name", {"Origin": ORIGIN})
    stream.read_body(timeout=5)
    assert stream.status == 400
    assert_listed(stream.headers, ORIGIN)
    status, headers, _ = listed_hub.request("POST", "/publish", b"{oops",
                                            {**JSON_TYPE, "Origin": ORIGIN})
    assert status == 400
    assert_listed(headers, ORIGIN)
    for path in ("/stats", "/healthz"):
        status, headers, _ = listed_hub.request("GET", path, headers={"Origin": ORIGIN})
        assert status == 200
        assert_listed(headers, ORIGIN)


def test_unlisted_origin_gets_no_cors_headers(listed_hub: HubServer) -> None:
    for origin in (STRANGER, "http://app.example.com", "https://app.example.com.evil.example"):
        status, headers, _ = listed_hub.request("OPTIONS", "/publish", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
        })
        assert cors(headers) == {}, (origin, headers)
        status, headers, _ = listed_hub.request(
            "POST", "/publish", json.dumps({"channel": "cors-u", "data": 1}).encode(),
            {**JSON_TYPE, "Origin": origin},
        )
        assert status == 202  # the request itself is served; the browser withholds the answer
        assert cors(headers) == {}, (origin, headers)
        assert "origin" in vary(headers)
    stream = listed_hub.subscribe("cors-u", headers={"Origin": STRANGER})
    assert cors(stream.headers) == {}, stream.headers
    stream_event(listed_hub, stream, "cors-u", "still served")


def test_star_never_allows_credentials(star_hub: HubServer) -> None:
    for origin in (ORIGIN, STRANGER):
        for method, path in (("POST", "/publish"), ("GET", "/stream?channel=star")):
            status, headers, _ = star_hub.request("OPTIONS", path, headers={
                "Origin": origin, "Access-Control-Request-Method": method,
            })
            assert status in (200, 204)
            assert headers.get("access-control-allow-origin") == "*", headers
            assert "access-control-allow-credentials" not in headers, headers
            assert method in headers["access-control-allow-methods"]
        status, headers, _ = star_hub.request(
            "POST", "/publish", json.dumps({"channel": "star-p", "data": 1}).encode(),
            {**JSON_TYPE, "Origin": origin},
        )
        assert status == 202
        assert headers.get("access-control-allow-origin") == "*", headers
        assert "access-control-allow-credentials" not in headers, headers
    stream = star_hub.subscribe("star", headers={"Origin": STRANGER, "Cookie": "session=1"})
    assert stream.headers.get("access-control-allow-origin") == "*", stream.headers
    assert "access-control-allow-credentials" not in stream.headers, stream.headers
    stream_event(star_hub, stream, "star", "anyone")
