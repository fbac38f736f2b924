"""CORS in a real Chromium: a page on a second origin subscribes and publishes.

The second origin is a plain HTTP server on another port of 127.0.0.1 serving
an empty page; its scripts talk to the hub across origins. The hub's access
log (``SSE_ACCESS_LOG=-``, into the server log) shows which requests reached
it, so the tests can tell that a reconnect needed no preflight.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..conftest import HOST, HubLauncher, HubServer, wait_until

pytestmark = pytest.mark.integration

WAIT_MS = 15_000

LISTEN = """
([url, credentials]) => {
  window.received = [];
  window.states = [];
  const es = new EventSource(url, {withCredentials: credentials});
  window.es = es;
  es.onmessage = (e) => window.received.push({data: e.data, lastEventId: e.lastEventId});
  es.addEventListener('open', () => window.states.push('open'));
  es.addEventListener('error', () => window.states.push(es.readyState === 2 ? 'closed' : 'error'));
}
"""

PUBLISH = """
async ([url, token, body]) => {
  try {
    const response = await fetch(url, {
      method: 'POST', body: JSON.stringify(body),
      headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token},
    });
    return {status: response.status, body: await response.json()};
  } catch (error) {
    return {error: String(error)};
  }
}
"""


class _EmptyPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another origin</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin(free_port: Callable[[], int]) -> Iterator[str]:
    """``http://127.0.0.1:<port>``: a second origin serving an empty page at ``/``."""
    httpd = http.server.ThreadingHTTPServer((HOST, free_port()), _EmptyPage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def requests_seen(hub: HubServer, method: str, path: str, *, at_least: int = 0) -> int:
    """How many ``method path`` requests the hub's access log shows.

    gunicorn logs a request just after answering it: with ``at_least``, wait
    (bounded) until the log shows that many.
    """
    def count() -> int:
        return len(re.findall(rf'"{method} {re.escape(path)} HTTP/1\.1"', hub.log_text()))

    return wait_until(count, lambda n: n >= at_least, timeout=10,
                      what=f"{at_least} {method} {path} in the access log", log=hub.log_text)


def listen(page: Any, origin: str, hub: HubServer, channel: str, *, credentials: bool) -> None:
    page.goto(origin + "/")
    page.evaluate(LISTEN, [f"http://{HOST}:{hub.port}/stream?channel={channel}", credentials])


def test_a_page_on_another_origin_subscribes_and_resumes_without_preflight(
    start_hub: HubLauncher, page: Any, other_origin: str,
) -> None:
    # The hub ends each stream after ~2 s; the browser waits 3 s before it
    # reconnects, so what is published at the drop can only come back through
    # the browser's own Last-Event-ID (a fresh subscription would miss it).
    hub = start_hub(SSE_CORS_ORIGINS=other_origin, SSE_ACCESS_LOG="-",
                    SSE_MAX_CONNECTION_SECONDS=2, SSE_RETRY_MS=3000)
    listen(page, other_origin, hub, "cors", credentials=True)
    page.wait_for_function("window.states.includes('open')", timeout=WAIT_MS)
    first = [hub.publish(f"first-{n}", channel="cors") for n in range(3)]
    page.wait_for_function("window.received.length >= 3", timeout=WAIT_MS)

    page.wait_for_function("window.states.includes('error')", timeout=WAIT_MS)
    meanwhile = [hub.publish(f"meanwhile-{n}", channel="cors") for n in range(3)]
    page.wait_for_function(
        "window.received.length >= 6 && window.states.filter(s => s === 'open').length >= 2",
        timeout=WAIT_MS,
    )

    events = page.evaluate("window.received")
    assert [e["lastEventId"] for e in events] == first + meanwhile
    assert [e["data"] for e in events] == [f"first-{n}" for n in range(3)] + [
        f"meanwhile-{n}" for n in range(3)
    ]
    assert "closed" not in page.evaluate("window.states")
    assert hub.stats()["replays_served"] >= 1
    requests_seen(hub, "GET", "/stream", at_least=1)  # the first stream, ended by the hub
    assert requests_seen(hub, "OPTIONS", "/stream") == 0, "a reconnect needed a preflight"


def test_an_origin_not_listed_cannot_read_the_stream(
    start_hub: HubLauncher, page: Any, other_origin: str,
) -> None:
    hub = start_hub(SSE_CORS_ORIGINS="https://app.example.com")
    listen(page, other_origin, hub, "cors", credentials=False)
    # The hub answers, but without CORS headers: the browser fails the
    # EventSource for good and shows the page nothing.
    page.wait_for_function("window.states.includes('closed')", timeout=WAIT_MS)
    hub.publish("secret", channel="cors")
    assert page.evaluate("window.received") == []
    assert page.evaluate("window.es.readyState") == 2


def test_any_origin_mode_serves_anonymous_pages_but_never_credentials(
    start_hub: HubLauncher, page: Any, other_origin: str,
) -> None:
    hub = start_hub(SSE_CORS_ORIGINS="*")
    listen(page, other_origin, hub, "anyone", credentials=False)
    page.wait_for_function("window.states.includes('open')", timeout=WAIT_MS)
    event_id = hub.publish("for everyone", channel="anyone")
    page.wait_for_function("window.received.length >= 1", timeout=WAIT_MS)
    assert page.evaluate("window.received") == [{"data": "for everyone", "lastEventId": event_id}]

    # withCredentials needs the origin echoed and Allow-Credentials, which `*` never gives.
    page.evaluate(LISTEN, [f"http://{HOST}:{hub.port}/stream?channel=anyone", True])
    page.wait_for_function("window.states.includes('closed')", timeout=WAIT_MS)
    assert page.evaluate("window.received") == []


def test_publish_from_another_origin_goes_through_a_preflight(
    start_hub: HubLauncher, page: Any, other_origin: str,
) -> None:
    hub = start_hub(SSE_CORS_ORIGINS=other_origin, SSE_PUBLISH_TOKEN="s3cret",
                    SSE_ACCESS_LOG="-")
    sub = hub.open_stream("/stream?channel=orders")
    page.goto(other_origin + "/")
    url = f"http://{HOST}:{hub.port}/publish"

    answer = page.evaluate(PUBLISH, [url, "s3cret", {"channel": "orders", "data": "from a page"}])
    assert answer["status"] == 202, answer
    sub.until_id(answer["body"]["id"])
    assert requests_seen(hub, "OPTIONS", "/publish", at_least=1) == 1

    # The hub's refusals are readable by the page too (CORS headers on errors).
    wrong = page.evaluate(PUBLISH, [url, "wrong", {"channel": "orders", "data": "x"}])
    assert wrong["status"] == 401, wrong
    assert "token" in wrong["body"]["error"]


def test_publish_from_an_origin_not_listed_is_blocked_by_the_browser(
    start_hub: HubLauncher, page: Any, other_origin: str,
) -> None:
    hub = start_hub(SSE_CORS_ORIGINS="https://app.example.com", SSE_PUBLISH_TOKEN="s3cret",
                    SSE_ACCESS_LOG="-")
    page.goto(other_origin + "/")
    answer = page.evaluate(
        PUBLISH, [f"http://{HOST}:{hub.port}/publish", "s3cret", {"data": "x"}]
    )
    assert "error" in answer, answer  # TypeError: Failed to fetch
    # The preflight got no CORS approval, so the POST itself was never sent.
    assert requests_seen(hub, "OPTIONS", "/publish", at_least=1) == 1
    assert requests_seen(hub, "POST", "/publish") == 0
