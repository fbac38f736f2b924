"""``GET /metrics``: the hub's Prometheus metrics follow what it did (memory backend, one worker).

The figures are copied from the ``/stats`` counters by a ticker (at most a
second behind), so every check polls the scrape against a deadline. Every
test reads increases from its own starting scrape: the hub is shared by the
module. The last tests mount ``sse.metrics_view`` in a library app and read it
through Flask's test client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

import flask_sse_hub
from flask_sse_hub import SSEBlueprint

from .conftest import GAP_EVENT, HubLauncher, HubServer, wait_until

pytestmark = pytest.mark.integration

#: A sample's name and its labels, sorted: ``("sse_hub_gaps_total", (("hub", "sse"),))``.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
HUB = (("hub", "sse"),)
STREAMS = ("sse_hub_streams", HUB)
PUBLISHED = ("sse_hub_events_published_total", HUB)
DELIVERED = ("sse_hub_events_delivered_total", HUB)
GAPS = ("sse_hub_gaps_total", HUB)
REPLAYS = ("sse_hub_replays_total", HUB)
DISCONNECTS = ("sse_hub_disconnects_total", HUB)
LAG_COUNT = ("sse_hub_delivery_lag_seconds_count", ())
LAG_INF = ("sse_hub_delivery_lag_seconds_bucket", (("le", "+Inf"),))
REFUSED_400 = ("sse_hub_requests_refused_total", (("status", "400"),))
#: Seconds a scrape may lag behind /stats (the ticker copies once per 0.25-1 s).
SYNC_SECONDS = 5.0


def parse(text: str) -> dict[SampleKey, float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(hub: HubServer) -> dict[SampleKey, float]:
    status, headers, body = hub.request("GET", "/metrics")
    assert status == 200, (status, body[:300])
    assert headers["content-type"].startswith("text/plain"), headers
    return parse(body.decode())


def wait_metrics(
    hub: HubServer, expected: dict[SampleKey, float], what: str,
) -> dict[SampleKey, float]:
    """Poll /metrics until every sample of ``expected`` has its value (0 when absent)."""
    return wait_until(
        lambda: scrape(hub),
        lambda got: all(got.get(key, 0.0) == value for key, value in expected.items()),
        timeout=SYNC_SECONDS, what=what, log=hub.log_text,
    )


def plus(before: dict[SampleKey, float]) -> Callable[[SampleKey, float], float]:
    """``at(key, n)``: the value ``key`` had in ``before``, plus ``n``."""
    return lambda key, increase: before.get(key, 0.0) + increase




@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_HEARTBEAT_SECONDS=1)


def test_publishes_deliveries_lag_and_open_streams_are_counted(hub: HubServer) -> None:
    publishes, opened = 5, 3
    before = scrape(hub)
    at = plus(before)
    streams = [hub.subscribe("m-fan") for _ in range(opened)]
    wait_metrics(hub, {STREAMS: at(STREAMS, opened)}, f"{opened} more open streams")

    sent = [f"e{n}" for n in range(publishes)]
    for data in sent:
        hub.publish(data, channel="m-fan")
    for stream in streams:
        assert stream.messages(publishes) == sent
    after = wait_metrics(hub, {
        PUBLISHED: at(PUBLISHED, publishes),
        DELIVERED: at(DELIVERED, publishes * opened),
        LAG_COUNT: at(LAG_COUNT, publishes * opened),
    }, f"{publishes} publishes, {publishes * opened} deliveries and lag observations")
    assert after[LAG_INF] == after[LAG_COUNT], "the +Inf bucket holds every observation"
    assert after[("sse_hub_delivery_lag_seconds_sum", ())] > before.get(
        ("sse_hub_delivery_lag_seconds_sum", ()), 0.0)

    for stream in streams:
        stream.close()
    wait_metrics(hub, {STREAMS: before.get(STREAMS, 0.0)}, "the closed streams leave the gauge")


def test_a_resume_counts_a_replay_and_its_replayed_events_are_no_live_lag(
    hub: HubServer,
) -> None:
    first, *rest = [hub.publish(n, channel="m-replay") for n in range(3)]
    before = scrape(hub)
    at = plus(before)
    stream = hub.subscribe("m-replay", headers={"Last-Event-ID": first})
    assert [e.last_event_id for e in stream.events(len(rest), timeout=5)] == rest
    wait_metrics(hub, {REPLAYS: at(REPLAYS, 1), DELIVERED: at(DELIVERED, len(rest))},
                 "one replay of two events")
    assert scrape(hub).get(LAG_COUNT, 0.0) == before.get(LAG_COUNT, 0.0), (
        "replayed events were observed as live deliveries")


def test_a_resume_from_a_garbage_id_counts_a_gap(hub: HubServer) -> None:
    before = scrape(hub)
    stream = hub.subscribe("m-gap", headers={"Last-Event-ID": "garbage"})
    assert stream.next_event(timeout=5).type == GAP_EVENT
    wait_metrics(hub, {GAPS: plus(before)(GAPS, 1)}, "one gap")


def test_a_refused_publish_is_counted_by_its_status(hub: HubServer) -> None:
    before = scrape(hub)
    status, _, _ = hub.request("POST", "/publish", b"{not json",
                               {"Content-Type": "application/json"})
    assert status == 400
    wait_metrics(hub, {REFUSED_400: plus(before)(REFUSED_400, 1)}, "one refused 400")


def test_a_disconnect_is_counted_per_stream_ended(hub: HubServer) -> None:
    before = scrape(hub)
    streams = [hub.subscribe("m-cut") for _ in range(2)]
    status, _ = hub.post_json("/disconnect", {"channel": "m-cut"})
    assert status == 202
    for stream in streams:
        stream.read_until_closed(timeout=5)
    wait_metrics(hub, {DISCONNECTS: plus(before)(DISCONNECTS, 2)}, "two streams disconnected")


# -- the library: sse.metrics_view mounted in an app of one's own ---------------


@pytest.fixture
def library_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """A Flask app with an SSEBlueprint named ``opsmetrics`` and its metrics view mounted."""
    for key in ("SSE_REDIS_URL", "SSE_JWT_SECRET", "SSE_STATS_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    sse = SSEBlueprint("opsmetrics", __name__)
    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_SECONDS=0.2)
    app.register_blueprint(sse, url_prefix="/stream")
    app.add_url_rule("/metrics", view_func=sse.metrics_view)
    app.add_url_rule("/presence", view_func=sse.presence_view)

    @sse.identify
    def who() -> str:
        from flask import request

        return request.args.get("me", "nobody")

    yield app
    flask_sse_hub.hubs(app)["opsmetrics"].stop()


def library_scrape(app: Flask) -> dict[SampleKey, float]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200, response.get_data()
    assert response.mimetype == "text/plain", response.headers
    return parse(response.get_data(as_text=True))


def test_the_metrics_view_in_a_library_app_gives_prometheus_text(library_app: Flask) -> None:
    published = ("sse_hub_events_published_total", (("hub", "opsmetrics"),))
    before = library_scrape(library_app).get(published, 0.0)
    hub = flask_sse_hub.hubs(library_app)["opsmetrics"]
    with library_app.app_context():
        for n in range(3):
            hub.publish(n, channel="lib")
    got = wait_until(lambda: library_scrape(library_app), lambda m: m.get(published) == before + 3,
                     timeout=SYNC_SECONDS, what="3 publishes in the library app's metrics")
    assert ("sse_hub_streams", (("hub", "opsmetrics"),)) in got


def test_occupancy_and_presence_of_library_streams(library_app: Flask) -> None:
    hub = flask_sse_hub.hubs(library_app)["opsmetrics"]
    client = library_app.test_client()
    carol = client.get("/stream?channel=lib-p&me=carol", buffered=False)
    dave = client.get("/stream?channel=lib-p&me=dave", buffered=False)
    try:
        assert (carol.status_code, dave.status_code) == (200, 200)
        assert hub.occupancy("lib-p") == 2
        assert hub.presence("lib-p") == ["carol", "dave"]
        answer = client.get("/presence?channel=lib-p").get_json()
        assert answer == {"channel": "lib-p", "occupancy": 2, "subjects": ["carol", "dave"]}
    finally:
        carol.close()
        dave.close()
