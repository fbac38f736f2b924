"""The demo page (``GET /``, docs/protocol.md#demo) in a real headless Chromium.

What a person sees, checked two ways: a screenshot (a real PNG of the viewport,
whose pixels show the green "open" badge) and the DOM it was taken from (event
rows with the ids the hub returned, exact type and data text, the state badge,
the stats panel against ``/stats``). The page loads nothing from outside the
hub, survives a hub restart (the badge goes to "reconnecting" and back; the
browser's own ``Last-Event-ID`` resumes), works behind a path prefix
(gunicorn's ``SCRIPT_NAME``), sends its token field as a bearer token and as
``?token=`` (``SSE_PUBLISH_TOKEN``, JWT), and says why a stream was refused.
"""

from __future__ import annotations

import json
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.sse_client import http_request as raw_http_request

from .. import conftest as hub_conftest
from ..conftest import GAP_EVENT, HubLauncher, HubServer
from ..redis import conftest as redis_fixtures

pytestmark = pytest.mark.integration

# The Redis tests' own redis-server, for the restart test's Redis case.
redis_server = redis_fixtures.redis_server
redis_url = redis_fixtures.redis_url

WAIT_MS = 10_000
VIEWPORT = (1200, 800)  # the ``page`` fixture's viewport
#: The badge's background when open (demo.css ``.badge[data-state="open"]``).
OPEN_GREEN = (0x1F, 0x8A, 0x4C)
CLOCK_RE = re.compile(r"\d\d:\d\d:\d\d\.\d\d\d")

#: Every event row as the page shows it, newest first.
ROWS_JS = """
() => [...document.querySelectorAll('#events tr')].map((row) => ({
  id: row.querySelector('td.id').textContent,
  type: row.querySelector('td.type').textContent,
  data: row.querySelector('td.data').textContent,
  time: row.querySelector('td.time').textContent,
  dataId: row.dataset.id,
}))
"""

#: Records every change of the badge's state (a test-side observer, not page code).
RECORD_STATES = """
() => {
  const badge = document.getElementById('state');
  window.stateLog = [badge.dataset.state];
  new MutationObserver(() => window.stateLog.push(badge.dataset.state))
    .observe(badge, {attributes: true, attributeFilter: ['data-state']});
}
"""


# -- page helpers ---------------------------------------------------------------


def open_demo(page: Any, url: str) -> list[str]:
    """Go to the demo page, record every URL it requests, wait until its stream is open."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url)
    page.wait_for_selector("#state[data-state=open]", timeout=WAIT_MS)
    return requested


def rows(page: Any) -> list[dict[str, str]]:
    shown: list[dict[str, str]] = page.evaluate(ROWS_JS)
    return shown


def wait_rows(page: Any, count: int) -> list[dict[str, str]]:
    page.wait_for_function(
        f"document.querySelectorAll('#events tr').length >= {count}", timeout=WAIT_MS
    )
    return rows(page)


def publish_from_form(
    page: Any, *, channel: str, data: str, event: str = "", as_json: bool = False
) -> str:
    """Fill and send the page's publish form; wait for its answer and return the id it shows."""
    page.evaluate("() => { const r = document.getElementById('publish-result');"
                  " r.textContent = ''; delete r.dataset.kind; }")
    page.fill("#pub-channel", channel)
    page.fill("#pub-event", event)
    page.fill("#pub-data", data)
    page.set_checked("#pub-json", as_json)
    page.click("#publish-form button[type=submit]")
    page.wait_for_selector("#publish-result[data-kind=ok]", timeout=WAIT_MS)
    event_id: str = page.get_attribute("#publish-result", "data-id")
    assert event_id in page.text_content("#publish-result")
    return event_id


def shown_stats(page: Any) -> dict[str, int]:
    """The stats panel's numbers (each ``<dd>`` keeps the raw value in ``data-value``)."""
    values: dict[str, int] = page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('.stats dd')]"
        ".filter((dd) => dd.dataset.value !== undefined)"
        ".map((dd) => [dd.id, Number(dd.dataset.value)]))"
    )
    return values


def outside(requested: list[str], base: str) -> list[str]:
    """Requested URLs that are not under ``base`` (``data:`` URLs are no request)."""
    return [url for url in requested if not url.startswith(("data:", base))]


# -- PNG --------------------------------------------------------------------------


@dataclass
class Png:
    width: int
    height: int
    channels: int
    rows: list[bytes]  # the first decoded rows, unfiltered

    def pixel(self, x: int, y: int) -> tuple[int, ...]:
        start = x * self.channels
        return tuple(self.rows[y][start : start + self.channels])


def read_png(data: bytes, *, decode_rows: int = 0) -> Png:
    """Check a PNG's structure (signature, chunk CRCs, IHDR, complete image data) and
    decode its first ``decode_rows`` rows. 8-bit RGB or RGBA, not interlaced: what
    Chromium writes.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", [k for k, _ in chunks]
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, interlace) == (8, 0) and color in (2, 6), (depth, color, interlace)
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    assert len(raw) == height * (stride + 1), "image data does not fill the image"

    decoded: list[bytes] = []
    previous = bytearray(stride)
    for y in range(min(decode_rows, height)):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            upper_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - upper_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
                line[i] = (line[i] + predictor) & 0xFF
        decoded.append(bytes(line))
        previous = line
    return Png(width, height, channels, decoded)


def share_of_color(png: Png, box: dict[str, float], color: tuple[int, int, int]) -> float:
    """The share of pixels inside ``box`` (CSS pixels = image pixels here) close to ``color``."""
    xs = range(int(box["x"]) + 1, int(box["x"] + box["width"]) - 1)
    ys = range(int(box["y"]) + 1, int(box["y"] + box["height"]) - 1)
    close = sum(
        all(abs(a - b) <= 12 for a, b in zip(png.pixel(x, y)[:3], color, strict=True))
        for y in ys for x in xs
    )
    return close / (len(xs) * len(ys))


# -- tests ------------------------------------------------------------------------


#: (channel, event type, data sent, data the page must show when not the data itself)
SAMPLES: list[tuple[str, str | None, Any, str | None]] = [
    ("orders", "order-created", {"order": 42, "total": "19.90 €"},
     '{"order":42,"total":"19.90 €"}'),
    ("news", None, "line one\nline two\n  indented, héllo wörld ✓", None),
    ("orders", "order-created", "日本語 🚀\n\nafter a blank line", None),
    ("news", None, "<b>not bold</b> & <script>alert(1)</script>", None),
]


def publish_samples_then_from_the_form(
    hub: HubServer, page: Any
) -> tuple[list[str], list[tuple[str, Any]], list[dict[str, str]]]:
    """The SAMPLES over HTTP, then one event from the page's own form.

    Returns the ids, the (type, data) each row must show, and the rows shown.
    """
    ids = [hub.publish(data, channel=channel, event=event)
           for channel, event, data, _ in SAMPLES]
    expected: list[tuple[str, Any]] = [(event or "message", shown or data)
                                       for _, event, data, shown in SAMPLES]
    wait_rows(page, len(SAMPLES))

    # The page's own form: a type it does not listen to yet (it starts to), JSON data.
    form_id = publish_from_form(
        page, channel="news", event="note", data='{"from": "the form",\n "n": [1, 2]}',
        as_json=True,
    )
    ids.append(form_id)
    expected.append(("note", '{"from":"the form","n":[1,2]}'))
    assert "note" in page.input_value("#types")
    shown = wait_rows(page, len(ids))
    # The stats panel catches up (it polls /stats every 2 s and after a publish).
    page.wait_for_function(
        "Number(document.getElementById('published').dataset.value) >= 5"
        " && Number(document.getElementById('delivered').dataset.value) >= 5",
        timeout=WAIT_MS,
    )
    return ids, expected, shown


def assert_rows_and_badge(
    page: Any, shown: list[dict[str, str]], ids: list[str], expected: list[tuple[str, Any]],
) -> None:
    """The rows: newest first, the hub's ids, exact types and data; the badge open."""
    assert [row["id"] for row in shown] == list(reversed(ids))
    assert [row["dataId"] for row in shown] == list(reversed(ids))
    assert [(row["type"], row["data"]) for row in shown] == list(reversed(expected))
    assert all(CLOCK_RE.fullmatch(row["time"]) for row in shown), shown
    assert page.text_content("#count") == "5"
    assert page.locator("#events b, #events script").count() == 0  # inserted as text
    # The badge: open, with the last id.
    assert page.text_content("#state") == "open"
    assert page.text_content("#last-id") == ids[-1]


def assert_stats_panel(page: Any, hub: HubServer) -> None:
    """The stats panel against /stats (it was read before, so at most what /stats says now)."""
    stats, panel = hub.stats(), shown_stats(page)
    assert 5 <= panel["published"] <= stats["events_published"]
    assert 5 <= panel["delivered"] <= stats["events_delivered"]
    assert panel["subscribers"] == stats["subscribers"] == 1
    assert panel["dropped"] == stats["subscribers_dropped_slow"] == 0
    per_channel = page.eval_on_selector_all(
        "#channel-stats tr", "rows => rows.map(r => [r.dataset.channel, r.cells[1].textContent])"
    )
    assert sorted(per_channel) == [["news", "1"], ["orders", "1"]]
    assert page.text_content("#stats-backend") == "memory"


def assert_screenshot_shows_it(page: Any, shot: Path) -> None:
    """The screenshot is a real image of the viewport, and its pixels show the badge."""
    data = shot.read_bytes()
    assert len(data) > 30_000, f"{len(data)} bytes: suspiciously little for a page with content"
    badge = page.locator("#state").bounding_box()
    png = read_png(data, decode_rows=int(badge["y"] + badge["height"]) + 1)
    assert (png.width, png.height) == VIEWPORT
    assert share_of_color(png, badge, OPEN_GREEN) > 0.5
    # ... and the rest of what was checked is inside the screenshot too.
    for selector in ("#events tr:first-child", "#published", "#publish-result", "#last-id"):
        box = page.locator(selector).bounding_box()
        assert box and box["y"] + box["height"] <= VIEWPORT[1], (selector, box)


def test_screenshot_after_events_arrive_shows_them_with_state_and_stats(
    start_hub: HubLauncher, page: Any, tmp_path: Path,
) -> None:
    hub = start_hub()
    origin = f"http://127.0.0.1:{hub.port}/"
    # Two channels and one named type chosen through the page's own URL.
    requested = open_demo(page, origin + "?channel=orders&channel=news&event=order-created")
    assert page.input_value("#channels") == "orders, news"
    hub.wait_subscribers("orders", 1)
    hub.wait_subscribers("news", 1)
    ids, expected, shown = publish_samples_then_from_the_form(hub, page)

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot))
    assert_rows_and_badge(page, shown, ids, expected)
    assert_stats_panel(page, hub)
    assert_screenshot_shows_it(page, shot)
    # Nothing outside the hub: no CDN, no web font.
    assert requested and not outside(requested, origin), outside(requested, origin)


def restart_with_events_while_down(
    start_hub: HubLauncher, hub: HubServer, page: Any, redis_url: str,
    before: str,
) -> list[tuple[str, Any]]:
    """Redis: down for a while, another hub on the same Redis publishing meanwhile (which
    only the browser's Last-Event-ID resume can deliver), then up again. What it published."""
    other = start_hub(SSE_REDIS_URL=redis_url)
    hub.stop()
    page.wait_for_function("window.stateLog.includes('reconnecting')", timeout=WAIT_MS)
    assert page.text_content("#last-id") == before  # still shown while reconnecting
    published: list[tuple[str, Any]] = []
    for n in range(3):
        other.publish(f"while down {n}", channel="restart")
        published.append(("message", f"while down {n}"))
    hub.start(new_port_on_conflict=False)
    return published


def assert_resumed_exactly_once(
    page: Any, shown: list[dict[str, str]], expected: list[tuple[str, Any]],
    after: list[str], final: str,
) -> None:
    got = [
        (row["type"], json.loads(row["data"]) if row["type"] == GAP_EVENT else row["data"])
        for row in reversed(shown)
    ]
    assert got == expected
    assert shown[0]["id"] == final and shown[1]["id"] == after[-1]
    message_ids = [row["id"] for row in shown if row["type"] == "message"]
    assert len(set(message_ids)) == len(message_ids)
    log = page.evaluate("window.stateLog")
    assert log[0] == "open" and log[-1] == "open", log
    assert "reconnecting" in log and "closed" not in log, log
    assert page.text_content("#last-id") == final
    assert "resumed" in page.text_content("#conn-note")


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_badge_follows_a_hub_restart_and_the_browser_resumes_exactly_once(
    start_hub: HubLauncher, page: Any, request: pytest.FixtureRequest, backend: str,
) -> None:
    settings: dict[str, Any] = {"SSE_RETRY_MS": 300}
    if backend == "redis":
        settings["SSE_REDIS_URL"] = request.getfixturevalue("redis_url")
    hub = start_hub(**settings)
    open_demo(page, f"http://127.0.0.1:{hub.port}/?channel=restart")
    page.evaluate(RECORD_STATES)
    before = hub.publish("before the restart", channel="restart")
    wait_rows(page, 1)
    assert page.text_content("#last-id") == before

    expected: list[tuple[str, Any]] = [("message", "before the restart")]
    if backend == "redis":
        expected += restart_with_events_while_down(
            start_hub, hub, page, settings["SSE_REDIS_URL"], before)
    else:
        # A memory hub starts a new epoch: the id the browser resends is unknown
        # to it, so its stream starts with a gap event that names that id.
        hub.restart()
        expected.append((GAP_EVENT, {"last_event_id": before}))
    # Up: published at once, before or after the browser is back; either way once.
    after = [hub.publish(f"after {n}", channel="restart") for n in range(3)]
    expected += [("message", f"after {n}") for n in range(3)]

    page.wait_for_function(
        "window.stateLog.includes('reconnecting')"
        " && document.getElementById('state').dataset.state === 'open'",
        timeout=WAIT_MS,
    )
    hub.wait_subscribers("restart", 1)
    final = hub.publish("final", channel="restart")
    expected.append(("message", "final"))
    shown = wait_rows(page, len(expected))
    assert_resumed_exactly_once(page, shown, expected, after, final)


def under_prefix(prefix: str) -> Callable[..., tuple[int, dict[str, str], bytes]]:
    """``http_request`` for the hub fixtures' own requests (``/healthz``, ``/publish``,
    ``/stats``): under gunicorn's ``SCRIPT_NAME`` every path outside the prefix is a 500.
    """
    plain = hub_conftest.http_request

    def request(host: str, port: int, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        return plain(host, port, method, prefix + path, *args, **kwargs)

    return request


def test_demo_page_works_behind_a_path_prefix(
    start_hub: HubLauncher, page: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gunicorn reads SCRIPT_NAME from its environment for every request: it
    # becomes the WSGI SCRIPT_NAME and is cut off PATH_INFO (and a path outside
    # it is refused), as a reverse proxy mounting the hub at /hub/ would need.
    monkeypatch.setattr(hub_conftest, "http_request", under_prefix("/hub"))
    hub = start_hub(SCRIPT_NAME="/hub")
    server = f"http://127.0.0.1:{hub.port}"
    base = f"{server}/hub/"
    # Outside the prefix gunicorn answers 500 itself ("does not start with SCRIPT_NAME").
    assert raw_http_request("127.0.0.1", hub.port, "GET", "/healthz")[0] == 500
    statuses: dict[str, int] = {}
    page.on("response", lambda response: statuses.setdefault(response.url, response.status))

    # Without the trailing slash Flask redirects to it, so relative URLs resolve under it.
    requested = open_demo(page, f"{server}/hub")
    assert page.url == base
    assert statuses[f"{base}static/demo.css"] == 200
    assert statuses[f"{base}static/demo.js"] == 200
    assert page.evaluate(  # the stylesheet applies
        "getComputedStyle(document.getElementById('state')).backgroundColor"
    ) == "rgb({}, {}, {})".format(*OPEN_GREEN)
    hub.wait_subscribers("default", 1)
    assert page.text_content("#stream-url") == "stream?channel=default"

    form_id = publish_from_form(page, channel="default", data="via the form under /hub/")
    http_id = hub.publish("via POST /hub/publish", channel="default")
    shown = wait_rows(page, 2)
    assert [(row["id"], row["data"]) for row in shown] == [
        (http_id, "via POST /hub/publish"), (form_id, "via the form under /hub/"),
    ]
    page.wait_for_function(
        "Number(document.getElementById('published').dataset.value) >= 2", timeout=WAIT_MS
    )
    assert page.text_content("#last-id") == http_id

    prefixed = [url for url in requested if not url.startswith("data:")]
    assert {url.split("?")[0] for url in prefixed} >= {
        base, f"{base}static/demo.css", f"{base}static/demo.js", f"{base}stream",
        f"{base}stats", f"{base}publish",
    }
    assert requested[0] == f"{server}/hub"  # what we opened; all the rest is under /hub/
    assert not outside(requested[1:], base), outside(requested[1:], base)
    assert all(status < 400 for status in statuses.values()), statuses


def test_token_field_authorizes_publishing_and_rides_on_the_stream_url(
    start_hub: HubLauncher, page: Any,
) -> None:
    hub = start_hub(SSE_PUBLISH_TOKEN="s3cret-token")
    origin = f"http://127.0.0.1:{hub.port}/"
    requested = open_demo(page, origin)
    assert "required by this hub" in page.text_content("label[for=token]")

    # No token: the hub's 401 and its reason are shown, nothing is published.
    page.fill("#pub-data", "refused")
    page.click("#publish-form button[type=submit]")
    page.wait_for_selector("#publish-result[data-kind=error]", timeout=WAIT_MS)
    assert page.text_content("#publish-result").startswith("401 ")
    assert "bearer token" in page.text_content("#publish-result")

    # With it: sent as a bearer token, kept for the tab, and on the stream URL.
    page.fill("#token", "s3cret-token")
    page.press("#token", "Enter")  # connects again, now with ?token=
    page.wait_for_function(
        "document.getElementById('stream-url').textContent.endsWith('&token=…')"
        " && document.getElementById('state').dataset.state === 'open'",
        timeout=WAIT_MS,
    )
    event_id = publish_from_form(page, channel="default", data="with the token")
    shown = wait_rows(page, 1)
    assert [(row["id"], row["data"]) for row in shown] == [(event_id, "with the token")]
    # The page's SSEHubSource (sse-hub.js) asks for the tagged stream it can share: ?relay=1.
    assert f"{origin}stream?channel=default&token=s3cret-token&relay=1" in requested
    assert "s3cret-token" not in page.text_content("body")  # never shown
    assert hub.stats()["events_published"] == 1

    page.reload()
    page.wait_for_selector("#state[data-state=open]", timeout=WAIT_MS)
    assert page.input_value("#token") == "s3cret-token"
    assert page.evaluate("sessionStorage.getItem('flask-sse-hub.token')") == "s3cret-token"


def test_a_refused_stream_shows_closed_with_the_hubs_reason(
    start_hub: HubLauncher, page: Any,
) -> None:
    hub = start_hub()
    open_demo(page, f"http://127.0.0.1:{hub.port}/")
    page.fill("#channels", "fine, not*valid")
    page.click("#subscribe-form button[type=submit]")
    # An EventSource gives up on a 400 without a word; the page asks the hub why.
    page.wait_for_function(
        "document.getElementById('state').dataset.state === 'closed'"
        " && document.getElementById('conn-note').textContent.startsWith('400: ')",
        timeout=WAIT_MS,
    )
    assert "not*valid" in page.text_content("#conn-note")
    assert page.url.endswith("/?channel=fine&channel=not*valid")  # kept for a reload
    hub.wait_subscribers("fine", 0)


def test_with_jwt_the_page_is_refused_until_given_a_token_then_subscribes_and_publishes(
    start_hub: HubLauncher, page: Any,
) -> None:
    jwt = pytest.importorskip("jwt")
    secret = "a-demo-page-test-secret-of-at-least-32-bytes"
    hub = start_hub(SSE_JWT_SECRET=secret)
    page.goto(f"http://127.0.0.1:{hub.port}/")
    assert "required by this hub" in page.text_content("label[for=token]")
    # No token: the hub refuses the stream (401) and the page says so.
    page.wait_for_function(
        "document.getElementById('state').dataset.state === 'closed'"
        " && document.getElementById('conn-note').textContent.startsWith('401: ')",
        timeout=WAIT_MS,
    )

    claims = {"sse": {"subscribe": ["default"], "publish": ["default"]},
              "exp": int(time.time()) + 600}
    page.fill("#token", jwt.encode(claims, secret, algorithm="HS256"))
    page.press("#token", "Enter")  # subscribes again, the token in ?token=
    page.wait_for_selector("#state[data-state=open]", timeout=WAIT_MS)
    hub.wait_subscribers("default", 1)
    event_id = publish_from_form(page, channel="default", data="signed")  # as a bearer token
    shown = wait_rows(page, 1)
    assert [(row["id"], row["data"]) for row in shown] == [(event_id, "signed")]
