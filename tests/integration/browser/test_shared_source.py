"""sse-hub.js's ``SSEHubSource`` in a real headless Chromium: one stream per browser.

Several pages (tabs) of one browser context, each on the hub's origin
(``/healthz``) with ``/stream/sse-hub.js`` added, each with its own
``SSEHubSource``. The leader tab reads one ``?relay=1`` stream and relays it
over a BroadcastChannel; the hub's ``/stats`` counts the streams. Each page
records what its source dispatches in ``window.received`` and its
``open``/``error`` in ``window.states``; every wait is a poll with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.threads import run_in_thread

from ..conftest import HubLauncher, HubServer, wait_until

pytestmark = pytest.mark.integration

WAIT_MS = 15_000

LISTEN = """
([url, channels]) => {
  window.received = [];
  window.states = [];
  const source = new SSEHubSource(url, {channels});
  window.source = source;
  const record = (e) => window.received.push({type: e.type, data: e.data, id: e.lastEventId});
  window.record = record;
  source.onmessage = record;
  source.addEventListener('sse-hub-gap', record);
  source.onopen = () => window.states.push('open');
  source.onerror = () => window.states.push('error:' + source.readyState);
}
"""

#: Deletes the Web Locks API before any page script runs: sse-hub.js must fall back.
NO_WEB_LOCKS = "delete Navigator.prototype.locks;"


@dataclass
class Tab:
    page: Any
    streams: list[str] = field(default_factory=list)  # the stream URLs this page requested
    resumes: list[str | None] = field(default_factory=list)  # their Last-Event-ID headers

    def received(self) -> list[dict[str, str]]:
        events: list[dict[str, str]] = self.page.evaluate("window.received")
        return events

    def wait_count(self, count: int) -> list[dict[str, str]]:
        self.page.wait_for_function(f"window.received.length >= {count}", timeout=WAIT_MS)
        return self.received()

    def wait_id(self, event_id: str) -> list[dict[str, str]]:
        self.page.wait_for_function(
            f"window.received.some((e) => e.id === {event_id!r})", timeout=WAIT_MS)
        return self.received()

    def data(self) -> list[str]:
        return [event["data"] for event in self.received()]


class Browser:
    """One browser context of the session's Chromium; its tabs on one hub."""

    def __init__(self, context: Any, hub: HubServer) -> None:
        self.context = context
        self.hub = hub
        self.tabs: list[Tab] = []

    def open_tab(self, *channels: str, url: str = "/stream", until: str = "open") -> Tab:
        """A new page with an ``SSEHubSource(url, {channels})``, once ``until`` is in its states."""
        tab = Tab(self.context.new_page())
        tab.page.on("request", lambda request: self._record(tab, request))
        tab.page.goto(f"http://127.0.0.1:{self.hub.port}/healthz")
        tab.page.add_script_tag(url="/stream/sse-hub.js")
        tab.page.evaluate(LISTEN, [url, list(channels)])
        tab.page.wait_for_function(f"window.states.includes({until!r})", timeout=WAIT_MS)
        self.tabs.append(tab)
        return tab

    @staticmethod
    def _record(tab: Tab, request: Any) -> None:
        if "/stream?" in request.url and request.method == "GET":
            tab.streams.append(request.url)
            tab.resumes.append(request.headers.get("last-event-id"))

    def wait_streams(self, count: int) -> dict[str, Any]:
        """Until the hub counts exactly ``count`` streams."""
        return self.hub.wait_for_stats(lambda s: s["subscribers"] == count,
                                       what=f"{count} stream(s) at the hub")

    def readers(self) -> list[Tab]:
        """The open tabs that requested a stream (the leaders, so far)."""
        tabs = [tab for tab in self.tabs if not tab.page.is_closed()]
        for tab in tabs:
            tab.page.evaluate("0")  # lets Playwright hand over the page's request events
        return [tab for tab in tabs if tab.streams]


@pytest.fixture
def open_browser(browser: Any) -> Iterator[Callable[..., Browser]]:
    """``open_browser(hub, init_script=None) -> Browser``: a fresh context, closed at the end."""
    contexts: list[Any] = []

    def make(hub: HubServer, init_script: str | None = None) -> Browser:
        context = browser.new_context()
        if init_script:
            context.add_init_script(init_script)
        contexts.append(context)
        return Browser(context, hub)

    yield make
    for context in contexts:
        context.close()


def publish_all(hub: HubServer, items: list[tuple[str, str]]) -> list[str]:
    """Publish ``(channel, data)`` items in order; their ids."""
    with hub.publisher() as publish:
        return [publish({"channel": channel, "data": data}) for channel, data in items]


def assert_got_exactly(tab: Tab, expected: list[tuple[str, str]]) -> None:
    """``tab`` dispatched exactly ``expected`` ``(id, data)``, in order (waits for the last)."""
    got = tab.wait_id(expected[-1][0])
    assert [(e["id"], e["data"]) for e in got] == expected
    assert {e["type"] for e in got} == {"message"}


# -- tests ----------------------------------------------------------------------


def test_three_tabs_on_one_channel_share_one_stream_and_each_gets_every_event_once(
    start_hub: HubLauncher, open_browser: Callable[..., Browser],
) -> None:
    hub = start_hub()
    chromium = open_browser(hub)
    tabs = [chromium.open_tab("shared") for _ in range(3)]
    chromium.wait_streams(1)

    items = [("shared", f"event-{n}") for n in range(30)]
    ids = publish_all(hub, items)

    for tab in tabs:
        assert_got_exactly(tab, [(i, data) for i, (_, data) in zip(ids, items, strict=True)])
    assert chromium.readers() == [tabs[0]]  # the first tab leads; the others asked nothing
    assert all("relay=1" in url for url in tabs[0].streams), tabs[0].streams
    assert hub.stats()["subscribers"] == 1
    assert all(tab.page.evaluate("window.source.lastEventId") == ids[-1] for tab in tabs)


def test_tricky_data_and_named_types_reach_leader_and_follower_exactly(
    start_hub: HubLauncher, open_browser: Callable[..., Browser],
) -> None:
    hub = start_hub()
    chromium = open_browser(hub)
    tabs = [chromium.open_tab("tricky") for _ in range(2)]  # the leader, and one relayed to
    for tab in tabs:  # a named type, as an EventSource reports it: only when listened for
        tab.page.evaluate("window.source.addEventListener('order-created', window.record)")

    sent: list[tuple[Any, str | None, str]] = [
        ("crlf one\r\ncrlf two\rcr three", None, "crlf one\ncrlf two\ncr three"),
        (" \n  both lines indented", "order-created", " \n  both lines indented"),
        ("", None, ""),
        ("unheard", "not-listened", ""),
        ({"a": 1, "s": "héllo ✓ 🚀 日本"}, "order-created", '{"a":1,"s":"héllo ✓ 🚀 日本"}'),
    ]
    ids = [hub.publish(data, channel="tricky", event=event) for data, event, _ in sent]
    expected = [{"type": event or "message", "data": shown, "id": event_id}
                for (_, event, shown), event_id in zip(sent, ids, strict=True)
                if event != "not-listened"]
    for tab in tabs:
        assert tab.wait_id(ids[-1]) == expected


def test_closing_the_leader_tab_while_publishing_loses_and_repeats_nothing(
    start_hub: HubLauncher, open_browser: Callable[..., Browser],
) -> None:
    hub = start_hub()
    chromium = open_browser(hub)
    leader, *others = [chromium.open_tab("handover") for _ in range(3)]
    chromium.wait_streams(1)
    assert chromium.readers() == [leader]

    sent: list[tuple[str, str]] = []
    stop = threading.Event()

    def publish_until_stopped() -> None:
        with hub.publisher() as publish:
            n = 0
            while not stop.is_set():
                data = f"event-{n}"
                sent.append((publish({"channel": "handover", "data": data}), data))
                n += 1
                time.sleep(0.005)  # paces the publisher, not an assertion

    publisher = run_in_thread(publish_until_stopped)
    others[0].wait_count(20)
    leader.page.close()  # mid-stream: another tab takes the lock and resumes
    (successor,) = wait_until(chromium.readers, lambda readers: len(readers) == 1, timeout=10,
                              what="one of the remaining tabs to read the stream")
    # Well after the hand-over: more events, then stop.
    others[0].wait_count(len(others[0].received()) + 30)
    stop.set()
    publisher.join(10)
    assert len(sent) >= 50  # 20 before the close, 30 after the successor asked for the stream

    for tab in others:
        assert_got_exactly(tab, sent)
    chromium.wait_streams(1)
    # The successor resumed from the position every tab had seen, with Last-Event-ID.
    assert successor.resumes[0] in {event_id for event_id, _ in sent}, successor.resumes


def test_tabs_on_different_channels_each_get_only_theirs_over_one_stream(
    start_hub: HubLauncher, open_browser: Callable[..., Browser],
) -> None:
    hub = start_hub()
    chromium = open_browser(hub)
    wanted = {"alpha": ("alpha",), "beta": ("beta",), "alpha+gamma": ("alpha", "gamma")}
    tabs = {name: chromium.open_tab(*channels) for name, channels in wanted.items()}
    stats = chromium.wait_streams(1)
    assert stats["channels"] == {"alpha": 1, "beta": 1, "gamma": 1}  # one stream, the union

    items = [(channel, f"{channel}-{n}") for n in range(5)
             for channel in ("alpha", "beta", "gamma", "nobody")]
    ids = publish_all(hub, items)
    # A last event every tab listens to would not be one; each tab waits for its own last.
    for name, tab in tabs.items():
        mine = [(i, data) for i, (channel, data) in zip(ids, items, strict=True)
                if channel in wanted[name]]
        assert_got_exactly(tab, mine)
    assert len(chromium.readers()) == 1
    assert hub.stats()["subscribers"] == 1


def test_a_tab_refused_its_channel_closes_alone_and_the_others_keep_the_stream(
    start_hub: HubLauncher, open_browser: Callable[..., Browser],
) -> None:
    jwt = pytest.importorskip("jwt")
    secret = "a-shared-source-test-secret-of-32-bytes-or-more"
    hub = start_hub(SSE_JWT_SECRET=secret)
    grants = {"subscribe": ["granted"], "publish": ["granted"]}
    token = jwt.encode({"sse": grants, "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    chromium = open_browser(hub)
    url = f"/stream?token={token}"
    granted = chromium.open_tab("granted", url=url)
    # The same hub URL (same token, so the same shared stream) on a channel the token
    # does not grant: the union is refused (403); the leader asks the hub about each
    # tab's own channels (HEAD) and closes only the refused tab, as an EventSource would be.
    refused = chromium.open_tab("secret", url=url, until="error:2")

    assert refused.page.evaluate("window.source.readyState") == 2  # CLOSED
    assert "open" not in refused.page.evaluate("window.states")
    status, answer = hub.post_json("/publish", {"channel": "granted", "data": "still here"},
                                   {"Authorization": f"Bearer {token}"})
    assert status == 202, answer
    event_id = answer["id"]
    assert granted.wait_id(event_id)[-1]["data"] == "still here"
    assert granted.page.evaluate("window.source.readyState") == 1
    chromium.wait_streams(1)


def test_without_web_locks_each_tab_falls_back_to_its_own_eventsource(
    start_hub: HubLauncher, open_browser: Callable[..., Browser],
) -> None:
    hub = start_hub()
    chromium = open_browser(hub, init_script=NO_WEB_LOCKS)
    tabs = [chromium.open_tab("plain") for _ in range(3)]
    chromium.wait_streams(3)

    items = [("plain", f"event-{n}") for n in range(10)]
    ids = publish_all(hub, items)

    for tab in tabs:
        assert_got_exactly(tab, [(i, data) for i, (_, data) in zip(ids, items, strict=True)])
        assert tab.streams and not any("relay=1" in url for url in tab.streams), tab.streams
    assert hub.stats()["subscribers"] == 3
