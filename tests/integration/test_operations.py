"""The standalone hub's operational endpoints and its demo page.

``GET /healthz`` answers 200 ``{"status": "ok", ...}`` (docs/protocol.md#healthz);
``GET /stats`` gives subscribers per channel, events published and delivered,
subscribers dropped as slow, replays served (docs/protocol.md#stats); ``GET /``
is a demo page that subscribes with a real ``EventSource``
(docs/protocol.md#demo). The hub runs as ``gunicorn wsgi:app`` with the
repository's gunicorn.conf.py.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest

from .conftest import HubLauncher, HubServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_HEARTBEAT_SECONDS=0.5)


def test_healthz_answers_200_json_status_ok(hub: HubServer) -> None:
    health = hub.get_json("/healthz")
    assert health["status"] == "ok"


def test_stats_counts_subscribers_publishes_deliveries_and_replays(hub: HubServer) -> None:
    before = hub.stats()
    for key in ("subscribers", "channels", "events_published", "events_delivered",
                "subscribers_dropped_slow", "replays_served"):
        assert key in before, f"/stats lacks {key!r}: {before}"
    assert before["subscribers_dropped_slow"] == 0

    x1, x2 = hub.subscribe("st-x"), hub.subscribe("st-x")
    xy = hub.subscribe("st-x", "st-y")
    stats = hub.wait_for_stats(
        lambda s: s["subscribers"] == before["subscribers"] + 3, what="3 more subscribers")
    assert stats["channels"]["st-x"] == 3
    assert stats["channels"]["st-y"] == 1

    ids = [hub.publish(n, channel="st-x") for n in range(2)]
    hub.publish("nobody listens", channel="st-nobody")
    for stream in (x1, x2, xy):
        assert [e.last_event_id for e in stream.events(2, timeout=5)] == ids
    stats = hub.wait_for_stats(
        lambda s: s["events_delivered"] == before["events_delivered"] + 6,
        what="2 events x 3 subscribers delivered")
    assert stats["events_published"] == before["events_published"] + 3
    assert stats["replays_served"] == before["replays_served"]

    resumed = hub.subscribe("st-x", headers={"Last-Event-ID": ids[0]})
    assert resumed.next_event(timeout=5).last_event_id == ids[1]
    stats = hub.wait_for_stats(
        lambda s: s["replays_served"] == before["replays_served"] + 1
        and s["events_delivered"] == before["events_delivered"] + 7,
        what="one replay of one event")
    assert stats["channels"]["st-x"] == 4

    for stream in (x1, xy, resumed):
        stream.close()
    stats = hub.wait_for_stats(lambda s: s["channels"].get("st-x") == 1,
                               what="closed subscribers to be unregistered")
    assert "st-y" not in stats["channels"]
    assert stats["subscribers_dropped_slow"] == 0
    # Deliveries of closed streams still count.
    assert stats["events_delivered"] == before["events_delivered"] + 7


def test_demo_page_subscribes_with_an_eventsource_script_served_under_static(
    hub: HubServer,
) -> None:
    status, headers, body = hub.request("GET", "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    page = body.decode()
    scripts = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", page)
    assert scripts, "the demo page loads no script"
    sources = []
    for src in scripts:
        path = urljoin("/", src)
        assert path.startswith("/static/"), path
        status, headers, script = hub.request("GET", path)
        assert status == 200, path
        assert "javascript" in headers.get("content-type", ""), headers
        sources.append(script.decode())
    assert any("new EventSource(" in source for source in sources)
    assert any(re.search(r"fetch\([^)]*publish", source) for source in sources), (
        "the page's script does not POST to the publish endpoint"
    )
    assert "<form" in page


def test_demo_page_assets_are_served(hub: HubServer) -> None:
    _, _, body = hub.request("GET", "/")
    for href in re.findall(r"<link[^>]*\bhref=\"([^\"]+)\"", body.decode()):
        if href.startswith("data:"):  # inline (the empty favicon): nothing to fetch
            continue
        status, _, _ = hub.request("GET", urljoin("/", href))
        assert status == 200, href


def test_unknown_path_is_404(hub: HubServer) -> None:
    status, _, _ = hub.request("GET", "/no-such-thing")
    assert status == 404
