"""JWT channel grants end to end: a real gunicorn hub, raw sockets.

A subscriber presents its token as ``Authorization: Bearer``, ``?token=`` or
the ``sse_token`` cookie; a publisher in the header. The stream ends when the
token stops being accepted (``exp`` + the 10 s leeway), and the same token is
then refused. A resume is checked against the token before anything is
replayed. Tokens never reach the server's log, access log included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from flask_sse_hub.auth import LEEWAY_SECONDS

from .conftest import EVENT_ID_RE, HubLauncher, HubServer, HubStream, wait_until

pytestmark = pytest.mark.integration

SECRET = "integration-hs256-secret-0123456789abcdef"
INVALID_TOKEN_CHALLENGE = 'Bearer realm="flask-sse-hub", error="invalid_token"'
CHALLENGE = 'Bearer realm="flask-sse-hub"'


def mint(sse: dict[str, Any], *, exp: float | None = None, key: str = SECRET) -> str:
    payload = {"sse": sse, "exp": int(time.time() + 300) if exp is None else exp}
    return jwt.encode(payload, key, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    # The access log goes to the server log too: it must not hold a token either.
    return start_hub_for_module(SSE_JWT_SECRET=SECRET, SSE_HEARTBEAT_SECONDS=0.3,
                                SSE_ACCESS_LOG="-")


@pytest.fixture(autouse=True)
def no_streams_left(hub: HubServer) -> Iterator[None]:
    yield
    hub.close_streams()
    hub.wait_for_stats(lambda s: s["subscribers"] == 0, what="every stream of the test closed")


def publish(hub: HubServer, body: Any, token: str | None = None) -> tuple[int, Any]:
    # The default publisher's token is minted per call: one minted at import
    # expired (300 s + leeway) before the module's tests ran on a slow CI run.
    if token is None:
        token = mint({"publish": ["*"]})
    return hub.post_json("/publish", body, headers=bearer(token))


def publish_ok(hub: HubServer, channel: str, data: str) -> str:
    status, answer = publish(hub, {"channel": channel, "data": data})
    assert status == 202, answer
    event_id: str = answer["id"]
    return event_id


def refused_stream(hub: HubServer, path: str, headers: dict[str, str], status: int) -> HubStream:
    """Open ``path``; assert a JSON error answer with ``status`` and no event in it."""
    stream = hub.open_stream(path, headers)
    body = stream.read_body(timeout=5)
    assert stream.status == status, (stream.status, body)
    assert stream.headers["content-type"].startswith("application/json"), stream.headers
    assert json.loads(body)["error"]
    assert stream.pending_events == 0
    return stream


def test_subscribe_with_header_query_or_cookie(hub: HubServer) -> None:
    token = mint({"subscribe": ["orders", "user:42:*"]})
    streams = [
        hub.subscribe("orders", headers=bearer(token)),
        hub.subscribe("orders", query=f"token={token}"),
        hub.subscribe("orders", headers={"Cookie": f"theme=dark; sse_token={token}"}),
        hub.subscribe("user:42:inbox", "orders", headers=bearer(token)),
    ]
    hub.wait_subscribers("orders", 4)
    event_id = publish_ok(hub, "orders", "for everyone")
    assert EVENT_ID_RE.fullmatch(event_id)
    for stream in streams:
        event = stream.next_event(timeout=5)
        assert (event.data, event.last_event_id) == ("for everyone", event_id)


def test_no_token_bad_token_or_ungranted_channel(hub: HubServer) -> None:
    missing = refused_stream(hub, "/stream?channel=orders", {}, 401)
    assert missing.headers["www-authenticate"] == CHALLENGE
    forged = mint({"subscribe": ["*"]}, key="not-the-hub-secret-0123456789abcdef")
    for headers, path in (
        (bearer(forged), "/stream?channel=orders"),
        ({}, f"/stream?channel=orders&token={forged}"),
        ({"Cookie": f"sse_token={forged}"}, "/stream?channel=orders"),
    ):
        bad = refused_stream(hub, path, headers, 401)
        assert bad.headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE
    only_orders = mint({"subscribe": ["orders"]})
    refused_stream(hub, "/stream?channel=orders&channel=billing", bearer(only_orders), 403)
    assert hub.stats()["subscribers"] == 0


def test_stream_ends_when_its_token_expires_and_the_token_is_then_refused(
    hub: HubServer,
) -> None:
    # exp 7-8 s in the past: still accepted for 2-3 s (10 s leeway), then the hub ends
    # the stream. (A whole number: PyJWT compares int(exp).)
    expires = math.ceil(time.time()) + 2
    token = mint({"subscribe": ["expiring"]}, exp=expires - LEEWAY_SECONDS)
    stream = hub.subscribe("expiring", headers=bearer(token))
    live = publish_ok(hub, "expiring", "while valid")
    assert stream.next_event(timeout=5).last_event_id == live
    assert time.time() < expires, "setup too slow: the token expired before the check"
    stream.read_until_closed(timeout=expires - time.time() + 5)
    ended_at = time.time()
    assert stream.stream_ended
    assert ended_at >= expires - 0.5, "the stream ended long before its token expired"
    hub.wait_subscribers("expiring", 0)
    # The client's reconnect, same token: refused, not reopened to end at once.
    again = refused_stream(hub, "/stream?channel=expiring", bearer(token), 401)
    assert again.headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE


def test_resume_with_an_ungranted_channel_is_refused_before_any_replay(hub: HubServer) -> None:
    start = publish_ok(hub, "res-a", "a0")
    status, answer = publish(hub, [{"channel": "res-a", "data": "a1"},
                                   {"channel": "res-b", "data": "b1"},
                                   {"channel": "res-a", "data": "a2"}])
    assert status == 202, answer
    a1, _, a2 = answer["ids"]
    token_a = mint({"subscribe": ["res-a"]})
    replays = hub.stats()["replays_served"]
    refused_stream(hub, "/stream?channel=res-a&channel=res-b",
                   {**bearer(token_a), "Last-Event-ID": start}, 403)
    refused_stream(hub, f"/stream?channel=res-a&channel=res-b&lastEventId={start}",
                   bearer(token_a), 403)
    assert hub.stats()["replays_served"] == replays
    # The same token resuming only what it grants: A's events, then live ones.
    stream = hub.open_stream("/stream?channel=res-a", {**bearer(token_a), "Last-Event-ID": start})
    assert stream.status == 200
    replayed = stream.events(2, timeout=5)
    assert [(e.data, e.last_event_id) for e in replayed] == [("a1", a1), ("a2", a2)]
    publish_ok(hub, "res-b", "b2")
    a3 = publish_ok(hub, "res-a", "a3")
    assert stream.next_event(timeout=5).last_event_id == a3


def test_publisher_token_limited_to_its_channels(hub: HubServer) -> None:
    orders = mint({"publish": ["orders:*"]})
    watcher = hub.subscribe("orders:eu", "billing", headers=bearer(mint({"subscribe": ["*"]})))
    before = hub.stats()["events_published"]
    status, answer = publish(hub, {"channel": "orders:eu", "data": "ok"}, orders)
    assert status == 202, answer
    first = answer["id"]
    status, answer = publish(hub, {"channel": "billing", "data": "no"}, orders)
    assert status == 403 and "billing" in answer["error"]
    status, answer = publish(hub, [{"channel": "orders:eu", "data": "batch-1"},
                                   {"channel": "billing", "data": "batch-2"}], orders)
    assert status == 403, answer
    # A subscribe-only token, no token, a forged token.
    status, _ = publish(hub, {"channel": "orders:eu", "data": "no"},
                        mint({"subscribe": ["*"]}))
    assert status == 403
    status, headers, body = hub.request("POST", "/publish", b'{"channel": "orders:eu", "data": 1}',
                                        {"Content-Type": "application/json"})
    assert status == 401 and headers["www-authenticate"] == CHALLENGE, body
    status, _ = publish(hub, {"channel": "orders:eu", "data": "no"},
                        mint({"publish": ["*"]}, key="forged-secret-0123456789abcdef-xyz"))
    assert status == 401
    assert hub.stats()["events_published"] == before + 1
    last = publish_ok(hub, "orders:eu", "last")
    assert [(e.data, e.last_event_id) for e in watcher.events(2, timeout=5)] == [
        ("ok", first), ("last", last)
    ]


def full_log(hub: HubServer) -> str:
    assert hub.log_path is not None
    return hub.log_path.read_text(errors="replace")  # log_text() keeps only the tail


def test_no_token_reaches_the_log(hub: HubServer) -> None:
    good = mint({"subscribe": ["logged"], "publish": ["logged"]})
    forged = mint({"subscribe": ["*"], "publish": ["*"]}, key="forged-0123456789abcdef-0123456789")
    ungranted = mint({"subscribe": ["other"], "publish": ["other"]})
    streams_before = full_log(hub).count("GET /stream")
    stream = hub.subscribe("logged", query=f"token={good}")
    assert publish(hub, {"channel": "logged", "data": 1}, good)[0] == 202
    assert publish(hub, {"channel": "logged", "data": 1}, forged)[0] == 401
    assert publish(hub, {"channel": "logged", "data": 1}, ungranted)[0] == 403
    refused_stream(hub, f"/stream?channel=logged&token={forged}", {}, 401)
    refused_stream(hub, f"/stream?channel=logged&token={ungranted}", {}, 403)
    refused_stream(hub, "/stream?channel=logged", {"Cookie": f"sse_token={forged}"}, 401)
    stream.close()
    hub.wait_subscribers("logged", 0)
    # The stream's access-log line is written when it closes: wait for all four.
    log = wait_until(
        lambda: full_log(hub), lambda text: text.count("GET /stream") >= streams_before + 4,
        timeout=10, what="the access log lines of this test's four streams",
    )
    assert "refused publish" in log  # the 401/403 publishes were logged, without tokens
    for token in (good, forged, ungranted):
        for part in token.split("."):
            assert part not in log, f"token part {part[:12]}... found in the server log"


def test_rs256_tokens_with_the_public_key_from_a_file(
    start_hub: HubLauncher, tmp_path: Any,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_file = tmp_path / "hub-public.pem"
    key_file.write_bytes(public_pem)
    rs_hub = start_hub(SSE_JWT_PUBLIC_KEY=str(key_file))

    def rs256(sse: dict[str, Any]) -> str:
        return jwt.encode({"sse": sse, "exp": int(time.time() + 300)}, private, algorithm="RS256")

    stream = rs_hub.subscribe("signed", headers=bearer(rs256({"subscribe": ["signed"]})))
    status, answer = rs_hub.post_json("/publish", {"channel": "signed", "data": "by RS256"},
                                      headers=bearer(rs256({"publish": ["signed"]})))
    assert status == 202, answer
    assert stream.until_id(answer["id"])[-1].data == "by RS256"
    # Algorithm confusion: HS256 "signed" with the (public) PEM as the secret
    # (PyJWT refuses to make one, so by hand) is refused, and so is no token.
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"sse": {"subscribe": ["signed"]}, "exp": int(time.time() + 300)}
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    forged = signing_input + "." + b64(
        hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    refused_stream(rs_hub, "/stream?channel=signed", bearer(forged), 401)
    refused_stream(rs_hub, "/stream?channel=signed", {}, 401)
