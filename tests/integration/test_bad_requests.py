"""Every bad request the standalone hub must refuse, with its status and a short reason.

The rules (docs/protocol.md#errors): subscribe answers 400 for bad or too many
channel names before any
stream starts; ``POST /publish`` answers JSON ``{"error": ...}`` with 400
(bad JSON / field / name, reserved type, bad retry, empty batch, one bad item
spoils the whole batch), 401 (``SSE_PUBLISH_TOKEN`` set: missing or wrong
bearer token), 403 (anonymous publish from a non-loopback client: a request
relayed by a proxy counts as one), 413 (event over ``SSE_MAX_EVENT_BYTES``,
body over ``SSE_MAX_PUBLISH_BYTES``), 415 (not JSON); wrong methods get 405.
Event types have no CR/LF/NUL, at most 128 characters, and ``sse-hub-`` is
the hub's own prefix (docs/protocol.md#event-types); channel names and
``SSE_MAX_CHANNELS``: docs/protocol.md#channels.

A subscriber opened before the first bad request must, after all of them,
still receive a normal event as its very first event: the hub keeps serving
and nothing of a refused request was published.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import HOST, HubLauncher, HubServer, HubStream

pytestmark = pytest.mark.integration

MAX_CHANNELS = 4
MAX_EVENT_BYTES = 1024
MAX_PUBLISH_BYTES = 8192
TOKEN = "s3cret-token"
JSON_TYPE = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(
        SSE_HEARTBEAT_SECONDS=5, SSE_MAX_CHANNELS=MAX_CHANNELS,
        SSE_MAX_EVENT_BYTES=MAX_EVENT_BYTES, SSE_MAX_PUBLISH_BYTES=MAX_PUBLISH_BYTES,
    )


@pytest.fixture(scope="module", autouse=True)
def live(hub: HubServer) -> Iterator[HubStream]:
    """Opened before the first test of the module; checked by the last one."""
    stream = hub.subscribe("default", "lab")
    yield stream
    stream.close()


@pytest.fixture(scope="module")
def token_hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_HEARTBEAT_SECONDS=5, SSE_PUBLISH_TOKEN=TOKEN)


def settled_stats(hub: HubServer) -> dict[str, Any]:
    """``/stats`` once only the module's ``live`` stream is registered.

    Streams an earlier test closed leave when the hub's watcher next sweeps
    (every 0.5 s): counted before and gone after, they would hide a stream
    that a refused request opened.
    """
    return hub.wait_for_stats(lambda s: s["subscribers"] == 1,
                              what="only the module's live stream registered")


def published_count(hub: HubServer) -> int:
    count: int = hub.stats()["events_published"]
    return count


def assert_json_reason(status: int, headers: dict[str, str], body: bytes, expected: int) -> str:
    """The status is ``expected`` and the body is ``{"error": "<short reason>"}``."""
    assert status == expected, f"expected {expected}, got {status}: {body[:300]!r}"
    assert headers.get("content-type", "").startswith("application/json"), headers
    answer = json.loads(body)
    assert set(answer) == {"error"}, answer
    reason = answer["error"]
    assert isinstance(reason, str) and 0 < len(reason) <= 300, reason
    return reason


def assert_short_reason(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    """A refused subscribe: ``expected`` status, a short text or JSON reason, no stream."""
    assert status == expected, f"expected {expected}, got {status}: {body[:300]!r}"
    content_type = headers.get("content-type", "")
    assert not content_type.startswith("text/event-stream"), headers
    assert content_type.startswith(("text/plain", "application/json")), headers
    assert 0 < len(body.strip()) <= 500, body
    assert b"<html" not in body.lower()


# -- subscribe ----------------------------------------------------------------

BAD_SUBSCRIPTIONS = [
    pytest.param("channel=bad%20name", id="space"),
    pytest.param("channel=", id="empty-name"),
    pytest.param("channel=" + "c" * 129, id="129-characters"),
    pytest.param("channel=caf%C3%A9", id="non-ascii"),
    pytest.param("channel=a%3Bb", id="semicolon"),
    pytest.param("channel=a%0Ab", id="newline"),
    pytest.param("channel=ok&channel=bad%20name", id="one-bad-among-good"),
    pytest.param("&".join(f"channel=many{n}" for n in range(MAX_CHANNELS + 1)),
                 id="over-SSE_MAX_CHANNELS"),
]


@pytest.mark.parametrize("query", BAD_SUBSCRIPTIONS)
def test_subscribe_with_bad_channels_is_refused_with_400_before_any_stream(
    hub: HubServer, query: str,
) -> None:
    before = settled_stats(hub)
    status, headers, body = hub.request("GET", f"/stream?{query}")
    assert_short_reason(status, headers, body, 400)
    after = hub.stats()
    assert after["subscribers"] == before["subscribers"]
    assert after["channels"] == before["channels"]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("channel=" + "c" * 128, id="128-characters"),
        pytest.param("channel=A-Z_a.z:0/9", id="every-allowed-punctuation"),
        pytest.param("&".join(f"channel=max{n}" for n in range(MAX_CHANNELS)),
                     id="exactly-SSE_MAX_CHANNELS"),
        pytest.param("channel=dup&" * (MAX_CHANNELS + 2) + "channel=dup",
                     id="one-channel-repeated"),
    ],
)
def test_subscribe_at_the_limits_is_accepted(hub: HubServer, query: str) -> None:
    stream = hub.open_stream(f"/stream?{query}")
    try:
        assert stream.status == 200, stream.read_body(timeout=5)
    finally:
        stream.close()


# -- publish: 400 -------------------------------------------------------------


def item(**fields: Any) -> bytes:
    return json.dumps({"channel": "lab", **fields}).encode()


BAD_PUBLISH_BODIES = [
    pytest.param(b'{"channel": "lab", "data": ', id="truncated-json"),
    pytest.param(b"{'data': 1}", id="single-quotes"),
    pytest.param(b"", id="empty-body"),
    pytest.param(b"42", id="number-not-object"),
    pytest.param(b'"text"', id="string-not-object"),
    pytest.param(b"null", id="null-not-object"),
    pytest.param(b"[42]", id="batch-of-non-object"),
    pytest.param(b"[]", id="empty-batch"),
    pytest.param(item(data=1, colour="red"), id="unknown-field"),
    pytest.param(item(data=1, id="my-own-id"), id="caller-chosen-id"),
    pytest.param(b'{"channel": "lab", "event": "x"}', id="missing-data"),
    pytest.param(item(data=1, channel="bad name"), id="channel-with-space"),
    pytest.param(item(data=1, channel=""), id="channel-empty"),
    pytest.param(item(data=1, channel="c" * 129), id="channel-129-characters"),
    pytest.param(item(data=1, channel=7), id="channel-not-a-string"),
    pytest.param(item(data=1, event=""), id="event-empty"),
    pytest.param(item(data=1, event="e" * 129), id="event-129-characters"),
    pytest.param(item(data=1, event=7), id="event-not-a-string"),
    pytest.param(item(data=1, event="a\rb"), id="event-with-CR"),
    pytest.param(item(data=1, event="a\nb"), id="event-with-LF"),
    pytest.param(item(data=1, event="a\u0000b"), id="event-with-NUL"),
    pytest.param(item(data=1, event="sse-hub-gap"), id="event-reserved-gap"),
    pytest.param(item(data=1, event="sse-hub-anything"), id="event-reserved-prefix"),
    pytest.param(item(data=1, retry="100"), id="retry-string"),
    pytest.param(item(data=1, retry=1.5), id="retry-float"),
    pytest.param(item(data=1, retry=True), id="retry-bool"),
    pytest.param(item(data=1, retry=-1), id="retry-negative"),
    pytest.param(b'{"channel": "lab", "data": NaN}', id="data-NaN"),
    pytest.param(b'{"channel": "lab", "data": "\\ud800"}', id="data-lone-surrogate"),
    pytest.param(b'{"channel": "lab", "data": {"k": "\\udfff"}}',
                 id="data-object-with-lone-surrogate"),
    pytest.param(b'{"channel": "lab", "data": "\xff\xfe"}', id="body-not-utf8"),
    pytest.param(b"[" * 4000 + b"]" * 4000, id="absurdly-deep-nesting"),
    pytest.param(
        json.dumps([{"channel": "lab", "data": "fine"},
                    {"channel": "bad name", "data": "spoils the batch"}]).encode(),
        id="batch-with-one-bad-item",
    ),
    pytest.param(
        json.dumps([{"channel": "lab", "data": "fine"},
                    {"channel": "lab", "data": "x", "event": "sse-hub-gap"}]).encode(),
        id="batch-with-reserved-type-last",
    ),
]


@pytest.mark.parametrize("body", BAD_PUBLISH_BODIES)
def test_bad_publish_is_refused_with_400_and_publishes_nothing(hub: HubServer, body: bytes) -> None:
    before = published_count(hub)
    assert_json_reason(*hub.request("POST", "/publish", body, JSON_TYPE), 400)
    assert published_count(hub) == before


def test_reason_names_the_bad_item_of_a_batch(hub: HubServer) -> None:
    body = json.dumps([{"channel": "lab", "data": 1}, {"channel": "lab", "data": 2, "x": 3}])
    reason = assert_json_reason(*hub.request("POST", "/publish", body.encode(), JSON_TYPE), 400)
    assert "1" in reason and "x" in reason, reason


# -- publish: 413, 415 ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(item(data="x" * MAX_EVENT_BYTES), id="event-over-SSE_MAX_EVENT_BYTES"),
        pytest.param(
            json.dumps([{"channel": "lab", "data": "small"},
                        {"channel": "lab", "data": "x" * MAX_EVENT_BYTES}]).encode(),
            id="batch-with-one-event-too-large",
        ),
        pytest.param(
            json.dumps([{"channel": "lab", "data": "y" * 100}] * 100).encode(),
            id="body-over-SSE_MAX_PUBLISH_BYTES",
        ),
        pytest.param(item(data="z" * (3 * MAX_PUBLISH_BYTES)), id="body-far-over-both-limits"),
    ],
)
def test_too_large_publish_is_refused_with_413_and_publishes_nothing(
    hub: HubServer, body: bytes,
) -> None:
    before = published_count(hub)
    assert_json_reason(*hub.request("POST", "/publish", body, JSON_TYPE), 413)
    assert published_count(hub) == before


def post_chunked(hub: HubServer, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST /publish with ``Transfer-Encoding: chunked``: no Content-Length to check up front."""
    conn = http.client.HTTPConnection(HOST, hub.port, timeout=10)
    try:
        pieces = (body[i : i + 1000] for i in range(0, len(body), 1000))
        conn.request("POST", "/publish", body=pieces, headers=JSON_TYPE, encode_chunked=True)
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def test_chunked_body_under_the_limit_is_accepted(hub: HubServer) -> None:
    status, _, body = post_chunked(hub, item(data="chunked", channel="chunked"))
    assert status == 202, body


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(json.dumps([{"channel": "lab", "data": "y" * 100}] * 100).encode(),
                     id="batch"),
        pytest.param(item(data="ok", channel="chunked-over") + b" " * MAX_PUBLISH_BYTES,
                     id="valid-prefix-then-padding"),
    ],
)
def test_chunked_body_over_SSE_MAX_PUBLISH_BYTES_is_refused_with_413(
    hub: HubServer, body: bytes,
) -> None:
    before = published_count(hub)
    assert_json_reason(*post_chunked(hub, body), 413)
    assert published_count(hub) == before


def test_event_just_under_the_size_limit_is_accepted(hub: HubServer) -> None:
    # 1024 bytes minus the event's own framing and the room kept for its id line.
    status, answer = hub.post_json("/publish", {"channel": "size-ok", "data": "x" * 800})
    assert status == 202, answer


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Content-Type": "text/plain"}, id="text-plain"),
        pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, id="form"),
        pytest.param({}, id="no-content-type"),
    ],
)
def test_publish_that_is_not_json_is_refused_with_415(
    hub: HubServer, headers: dict[str, str],
) -> None:
    before = published_count(hub)
    assert_json_reason(*hub.request("POST", "/publish", item(data="x"), headers), 415)
    assert published_count(hub) == before


def test_json_with_charset_parameter_is_accepted(hub: HubServer) -> None:
    status, _, body = hub.request(
        "POST", "/publish", item(data="x", channel="charset"),
        {"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 202, body


# -- publish: 401, 403 ----------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer wrong-token", id="wrong-token"),
        pytest.param("Bearer s3cret", id="prefix-of-the-token"),
        pytest.param(f"Bearer {TOKEN}x", id="token-plus-a-character"),
        pytest.param("Bearer", id="scheme-without-token"),
        pytest.param(f"Basic {TOKEN}", id="other-scheme"),
        pytest.param(TOKEN, id="token-without-scheme"),
    ],
)
def test_publish_without_the_right_token_is_refused_with_401(
    token_hub: HubServer, authorization: str | None,
) -> None:
    headers = dict(JSON_TYPE)
    if authorization is not None:
        headers["Authorization"] = authorization
    before = published_count(token_hub)
    assert_json_reason(*token_hub.request("POST", "/publish", item(data="x"), headers), 401)
    assert published_count(token_hub) == before


def test_401_tells_the_client_to_use_bearer_authentication(token_hub: HubServer) -> None:
    """RFC 9110 §15.5.2: a 401 response MUST carry WWW-Authenticate."""
    status, headers, _ = token_hub.request("POST", "/publish", item(data="x"), JSON_TYPE)
    assert status == 401
    assert headers.get("www-authenticate", "").lower().startswith("bearer"), headers


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="direct"),
        pytest.param({"X-Forwarded-For": "203.0.113.7"}, id="through-a-proxy"),
    ],
)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_publish_with_the_right_token_is_accepted(
    token_hub: HubServer, extra: dict[str, str], scheme: str,
) -> None:
    stream = token_hub.subscribe("tokened")
    headers = {**JSON_TYPE, "Authorization": f"{scheme} {TOKEN}", **extra}
    status, _, body = token_hub.request("POST", "/publish", item(data="ok", channel="tokened"),
                                        headers)
    assert status == 202, body
    event = stream.next_event(timeout=5)
    assert (event.data, event.last_event_id) == ("ok", json.loads(body)["id"])
    stream.close()


@pytest.mark.parametrize(
    "forwarding",
    [
        pytest.param({"X-Forwarded-For": "203.0.113.7"}, id="x-forwarded-for"),
        pytest.param({"X-Forwarded-For": "127.0.0.1"}, id="x-forwarded-for-loopback"),
        pytest.param({"Forwarded": "for=203.0.113.7;proto=https"}, id="forwarded"),
        pytest.param({"X-Real-IP": "203.0.113.7"}, id="x-real-ip"),
    ],
)
def test_anonymous_publish_through_a_proxy_is_refused_with_403(
    hub: HubServer, forwarding: dict[str, str],
) -> None:
    before = published_count(hub)
    assert_json_reason(
        *hub.request("POST", "/publish", item(data="x"), {**JSON_TYPE, **forwarding}), 403
    )
    assert published_count(hub) == before


def test_anonymous_publish_from_loopback_is_accepted(hub: HubServer) -> None:
    status, _, body = hub.request("POST", "/publish", item(data="x", channel="loop"), JSON_TYPE)
    assert status == 202, body


# -- methods --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/publish"),
        ("PUT", "/publish"),
        ("DELETE", "/publish"),
        ("PATCH", "/publish"),
        ("POST", "/stream"),
        ("PUT", "/stream"),
        ("DELETE", "/stream"),
        ("POST", "/healthz"),
        ("POST", "/stats"),
        ("POST", "/"),
    ],
)
def test_wrong_method_is_refused_with_405(hub: HubServer, method: str, path: str) -> None:
    before = settled_stats(hub)
    body = item(data="x") if method in ("POST", "PUT", "PATCH") else None
    status, headers, answer = hub.request(method, path, body, JSON_TYPE)
    assert_json_reason(status, headers, answer, 405)
    after = hub.stats()
    assert after["events_published"] == before["events_published"]
    assert after["subscribers"] == before["subscribers"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("GET", "/publish", {"POST"}, id="GET-publish"),
        pytest.param("POST", "/stream", {"GET", "HEAD"}, id="POST-stream"),
    ],
)
def test_405_lists_the_allowed_methods(
    hub: HubServer, method: str, path: str, allowed: set[str],
) -> None:
    """RFC 9110 §15.5.6: a 405 response MUST carry an Allow header."""
    body = item(data="x") if method == "POST" else None
    status, headers, _ = hub.request(method, path, body, JSON_TYPE)
    assert status == 405
    listed = {m.strip() for m in headers.get("allow", "").split(",") if m.strip()}
    assert allowed <= listed, f"Allow: {headers.get('allow')!r}"


# -- and still serving ----------------------------------------------------------


def test_hub_keeps_serving_the_subscriber_opened_before_all_bad_requests(
    hub: HubServer, live: HubStream,
) -> None:
    """Runs last in this module: ``live`` was opened before the first bad request."""
    assert not live.stream_ended
    default_id = hub.publish("still here", channel="default")
    lab_id = hub.publish("still here too", channel="lab")
    events = live.until_id(lab_id, timeout=5)
    assert [(e.last_event_id, e.data) for e in events] == [
        (default_id, "still here"), (lab_id, "still here too"),
    ], "the subscriber received events that a refused request should not have published"
