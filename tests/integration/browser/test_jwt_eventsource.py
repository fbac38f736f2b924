"""JWT-protected streams in a real Chromium: the token in a cookie, in ``?token=``, and expiry.

The README's pattern for expiring tokens is run as written: when the hub
ends a stream because its token expired, the browser's own reconnect gets
401 and the ``EventSource`` closes; the page then opens a new one with a
fresh token and ``lastEventId`` and misses nothing.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from ..conftest import HOST, HubLauncher, HubServer

pytestmark = pytest.mark.integration

WAIT_MS = 15_000
SECRET = "a-test-secret-that-is-at-least-32-bytes-long"
#: flask_sse_hub.auth.LEEWAY_SECONDS: a token is accepted until exp + this.
LEEWAY = 10


def token(subscribe: list[str], *, expires_in: float = 3600) -> str:
    claims = {"sse": {"subscribe": subscribe}, "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def publish(hub: HubServer, data: str, channel: str) -> str:
    """Publish with a publisher's token (with JWT on, loopback alone is not enough)."""
    claims = {"sse": {"publish": ["*"]}, "exp": int(time.time() + 600)}
    bearer = jwt.encode(claims, SECRET, algorithm="HS256")
    status, answer = hub.post_json("/publish", {"channel": channel, "data": data},
                                   {"Authorization": f"Bearer {bearer}"})
    assert status == 202, answer
    event_id: str = answer["id"]
    return event_id


RECORD = """
([url]) => {
  window.received = [];
  window.states = [];
  const es = new EventSource(url);
  window.es = es;
  es.onmessage = (e) => window.received.push({data: e.data, lastEventId: e.lastEventId});
  es.addEventListener('open', () => window.states.push('open'));
  es.addEventListener('error', () => window.states.push(es.readyState === 2 ? 'closed' : 'error'));
}
"""

# The README's re-open pattern: resume across EventSource objects with
# ?lastEventId=, a fresh token each time the old one is refused.
REOPEN = """
([channel, tokens]) => {
  window.received = [];
  window.opened = 0;
  let last = null;
  function connect() {
    const q = new URLSearchParams({channel, token: tokens.shift()});
    if (last) q.set('lastEventId', last);
    const source = new EventSource('/stream?' + q);
    source.onopen = () => { window.opened += 1; };
    source.onmessage = (e) => { last = e.lastEventId; window.received.push(e.data); };
    source.onerror = () => { if (source.readyState === EventSource.CLOSED) connect(); };
  }
  connect();
}
"""


def test_a_token_in_a_cookie_opens_the_stream(start_hub: HubLauncher, page: Any) -> None:
    hub = start_hub(SSE_JWT_SECRET=SECRET)
    page.context.add_cookies([{
        "name": "sse_token", "value": token(["orders:*"]), "url": f"http://{HOST}:{hub.port}",
    }])
    page.goto(f"http://{HOST}:{hub.port}/healthz")
    page.evaluate(RECORD, ["/stream?channel=orders:eu"])
    page.wait_for_function("window.states.includes('open')", timeout=WAIT_MS)
    event_id = publish(hub, "for the cookie holder", "orders:eu")
    page.wait_for_function("window.received.length >= 1", timeout=WAIT_MS)
    assert page.evaluate("window.received") == [
        {"data": "for the cookie holder", "lastEventId": event_id}
    ]


def test_without_a_token_or_with_another_channels_token_the_browser_gets_nothing(
    start_hub: HubLauncher, page: Any,
) -> None:
    hub = start_hub(SSE_JWT_SECRET=SECRET)
    page.goto(f"http://{HOST}:{hub.port}/healthz")
    page.evaluate(RECORD, ["/stream?channel=orders"])
    page.wait_for_function("window.states.includes('closed')", timeout=WAIT_MS)
    page.evaluate(RECORD, [f"/stream?channel=orders&token={token(['billing'])}"])
    page.wait_for_function("window.states.includes('closed')", timeout=WAIT_MS)
    publish(hub, "secret", "orders")
    assert page.evaluate("window.received") == []
    assert hub.stats()["subscribers"] == 0


def test_an_expired_token_ends_the_stream_and_a_fresh_one_resumes_without_loss(
    start_hub: HubLauncher, page: Any,
) -> None:
    hub = start_hub(SSE_JWT_SECRET=SECRET, SSE_RETRY_MS=300)
    # Expired 8 s ago: still accepted for the 10 s leeway, so the stream ends ~2 s in.
    expiring = token(["news"], expires_in=-(LEEWAY - 2))
    page.goto(f"http://{HOST}:{hub.port}/healthz")
    page.evaluate(REOPEN, ["news", [expiring, token(["news"])]])
    hub.wait_subscribers("news", 1)
    before = [publish(hub, f"before-{n}", "news") for n in range(3)]
    page.wait_for_function("window.received.length >= 3", timeout=WAIT_MS)

    # The hub ends the stream at expiry: wait until nobody is subscribed,
    # publish while the page is between streams, then it comes back.
    hub.wait_subscribers("news", 0, timeout=10)
    meanwhile = [publish(hub, f"meanwhile-{n}", "news") for n in range(3)]
    page.wait_for_function("window.opened >= 2 && window.received.length >= 6",
                           timeout=WAIT_MS)
    after = publish(hub, "after", "news")
    page.wait_for_function("window.received.length >= 7", timeout=WAIT_MS)

    assert page.evaluate("window.received") == [
        *(f"before-{n}" for n in range(3)), *(f"meanwhile-{n}" for n in range(3)), "after",
    ]
    assert len({*before, *meanwhile, after}) == 7
    assert hub.stats()["replays_served"] == 1
