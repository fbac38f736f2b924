"""The blueprint (``blueprint.py``) through Flask's test client: publish, subscribe, refuse, resume.

``SSEBlueprint`` and its hub (docs/protocol.md#library, docs/protocol.md#subscribe-api);
the module-level ``publish()``/``publish_many()``/``shutdown()`` are tested in
test_api.py, what a stream's body sends and when it ends in test_stream.py,
the CLI in test_cli.py, the standalone app in test_server.py.

Streams are opened with ``buffered=False`` and read chunk by chunk from the
response iterator (the test client has already pulled the first chunk, the
preamble); closing the response closes the generator, which unsubscribes.
Every app gets a short heartbeat, so a read never blocks for long and each
wait is bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask, request

import flask_sse_hub
from flask_sse_hub import (
    EventTooLarge,
    InvalidChannel,
    InvalidEventType,
    SSEBlueprint,
)
from tests.support.flask_stream import WAIT, OpenStream
from tests.support.hub_http import open_stream, subscribers
from tests.support.sse_parser import Event
from tests.support.threads import run_in_thread

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
}


# -- subscribe: headers and the first chunk --------------------------------------------


def test_stream_headers_and_first_chunk_open_the_stream(make_app: Callable[..., Flask]) -> None:
    app = make_app(SSE_RETRY_MS=1234)
    stream = open_stream(app)
    try:
        headers = stream.response.headers
        assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
        cache = headers["Cache-Control"]
        assert "no-store" in cache or "no-cache" in cache
        assert headers["X-Accel-Buffering"] == "no"
        assert not HOP_BY_HOP & {name.lower() for name, _ in headers.items()}
        # Retry and a comment, right after the headers, before any event
        # (docs/protocol.md#opening).
        assert stream.first_chunk.startswith(b"retry: 1234\n:")
        assert stream.parser.retry == 1234
        assert len(stream.parser.comments) == 1
        assert stream.events == []
    finally:
        stream.close()


# -- publish ------------------------------------------------------------------------------


def test_published_events_arrive_with_the_ids_publish_returned(
    make_app: Callable[..., Flask],
) -> None:
    bp = SSEBlueprint("sse", __name__)
    app = make_app(bp)
    stream = open_stream(app, "?channel=orders")
    try:
        with app.app_context():
            first = bp.publish({"order": 42}, channel="orders", event="order-created")
            second = flask_sse_hub.publish("plain text", channel="orders", retry=500)
            flask_sse_hub.publish("elsewhere", channel="other")
        created, text = stream.read(2)
    finally:
        stream.close()
    assert created == Event("order-created", '{"order":42}', first)
    assert text == Event("message", "plain text", second)
    assert stream.parser.retry == 500


def test_publish_from_a_view_and_from_a_background_thread(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()

    @app.post("/orders")
    def create_order() -> tuple[dict[str, str], int]:
        return {"event_id": flask_sse_hub.publish({"order": 42}, channel="orders")}, 201

    stream = open_stream(app, "?channel=orders")
    try:
        from_view = app.test_client().post("/orders").get_json()["event_id"]
        from_thread: list[str] = []

        def background() -> None:
            with app.app_context():
                from_thread.append(flask_sse_hub.publish("from a thread", channel="orders"))

        run_in_thread(background).join(WAIT)
        events = stream.read(2)
    finally:
        stream.close()
    assert [e.last_event_id for e in events] == [from_view, *from_thread]


def test_channel_parameter_repeats_and_defaults_to_default(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    both = open_stream(app, "?channel=a&channel=b")
    default = open_stream(app)
    try:
        with app.app_context():
            ids = [
                flask_sse_hub.publish("1", channel="a"),
                flask_sse_hub.publish("2", channel="c"),
                flask_sse_hub.publish("3", channel="b"),
                flask_sse_hub.publish("4"),
            ]
        assert [e.last_event_id for e in both.read(2)] == [ids[0], ids[2]]
        assert [e.last_event_id for e in default.read(1)] == [ids[3]]
        assert flask_sse_hub.hubs(app)["sse"].broker.stats()["channels"] == {
            "a": 1, "b": 1, "default": 1,
        }
    finally:
        both.close()
        default.close()


def test_publish_errors_are_specific(make_app: Callable[..., Flask]) -> None:
    app = make_app(SSE_MAX_EVENT_BYTES=500)
    with app.app_context():
        with pytest.raises(InvalidChannel):
            flask_sse_hub.publish("x", channel="no spaces")
        with pytest.raises(InvalidEventType):
            flask_sse_hub.publish("x", event="sse-hub-gap")
        with pytest.raises(TypeError):
            flask_sse_hub.publish({1, 2})
        with pytest.raises(EventTooLarge):  # the app's SSE_MAX_EVENT_BYTES applies
            flask_sse_hub.publish("x" * 500)
        flask_sse_hub.publish("x" * 400)


def test_one_blueprint_on_two_apps_gives_two_independent_hubs(
    make_app: Callable[..., Flask],
) -> None:
    bp = SSEBlueprint("sse", __name__)
    first, second = make_app(bp), make_app(bp)
    assert bp.hub(first) is not bp.hub(second)
    on_first, on_second = open_stream(first), open_stream(second)
    try:
        with first.app_context():
            only_first = bp.publish("for the first app")
        with second.app_context():
            marker = bp.publish("for the second app")
        assert [e.last_event_id for e in on_first.read(1)] == [only_first]
        assert [e.last_event_id for e in on_second.read(1)] == [marker]
    finally:
        on_first.close()
        on_second.close()
    # An id of one hub is unknown to the other (epochs: docs/protocol.md#memory-ids).
    resumed = open_stream(second, headers={"Last-Event-ID": only_first})
    try:
        assert resumed.read(1)[0].type == "sse-hub-gap"
    finally:
        resumed.close()


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "?channel=a%20b",
        "?channel=",
        "?channel=" + "x" * 129,
        "?channel=" + quote("café"),
        "?channel=ok&channel=not%20ok",
        "?" + "&".join(f"channel=c{n}" for n in range(33)),
    ],
    ids=["space", "empty", "129-chars", "non-ascii", "one-bad-of-two", "33-channels"],
)
def test_bad_or_too_many_channels_are_refused_with_400(
    make_app: Callable[..., Flask], query: str
) -> None:
    app = make_app()
    response = app.test_client().get(f"/stream{query}")
    assert response.status_code == 400
    reason = response.get_json()["error"]
    assert isinstance(reason, str) and reason
    assert subscribers(app) == 0


def test_max_channels_is_a_limit_not_an_off_by_one(make_app: Callable[..., Flask]) -> None:
    app = make_app(SSE_MAX_CHANNELS=3)
    too_many = app.test_client().get("/stream?channel=a&channel=b&channel=c&channel=d")
    assert too_many.status_code == 400
    stream = open_stream(app, "?channel=a&channel=b&channel=c")
    stream.close()


def test_authorize_refuses_with_403_before_the_stream_starts(
    make_app: Callable[..., Flask],
) -> None:
    bp = SSEBlueprint("sse", __name__)
    asked: list[str] = []

    @bp.authorize
    def may_read(channel: str) -> bool:
        asked.append(channel)
        # Called in the request context of the subscribe request.
        return channel.startswith("public") and request.headers.get("X-User") == "alice"

    app = make_app(bp)
    client = app.test_client()
    refused = client.get("/stream?channel=public&channel=secret", headers={"X-User": "alice"})
    assert refused.status_code == 403
    assert "secret" in refused.get_data(as_text=True)
    assert client.get("/stream?channel=public").status_code == 403  # no X-User
    assert subscribers(app) == 0
    asked.clear()
    stream = open_stream(app, "?channel=public&channel=public-2", headers={"X-User": "alice"})
    try:
        assert sorted(asked) == ["public", "public-2"]
        assert subscribers(app) == 1
    finally:
        stream.close()


def test_every_authorizer_must_allow(make_app: Callable[..., Flask]) -> None:
    bp = SSEBlueprint("sse", __name__)
    bp.authorize(lambda channel: True)
    bp.authorize(lambda channel: channel != "b")
    app = make_app(bp)
    assert app.test_client().get("/stream?channel=a&channel=b").status_code == 403
    open_stream(app, "?channel=a").close()


@pytest.mark.parametrize("answer", [42, "", "x" * 257])
def test_an_identify_function_naming_a_stream_wrongly_is_the_apps_error_not_a_stream(
    make_app: Callable[..., Flask], answer: object,
) -> None:
    bp = SSEBlueprint("sse", __name__)
    bp.identify(lambda: answer)
    app = make_app(bp)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(TypeError, match=r"@sse\.identify .*subject must be a string"):
        app.test_client().get("/stream?channel=a")
    assert subscribers(app) == 0
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert app.test_client().get("/stream?channel=a").status_code == 500


# -- resume -----------------------------------------------------------------------------


@pytest.fixture
def three_events(make_app: Callable[..., Flask]) -> tuple[Flask, list[str]]:
    app = make_app()
    watcher = open_stream(app, "?channel=r")
    try:
        with app.app_context():
            ids = [flask_sse_hub.publish(str(n), channel="r") for n in range(3)]
        watcher.read(3)  # fanned out: every id is a position now
    finally:
        watcher.close()
    return app, ids


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        (1, None, [2]),
        (None, "lastEventId=0", [1, 2]),
        (None, "last_event_id=0", [1, 2]),
        (1, "lastEventId=0", [2]),  # the header wins
        (1, "last_event_id=0", [2]),
    ],
    ids=["header", "lastEventId", "last_event_id", "header-over-lastEventId",
         "header-over-last_event_id"],
)
def test_resume_id_from_header_or_query_and_header_wins(
    three_events: tuple[Flask, list[str]],
    header: int | None, query: str | None, expected: list[int],
) -> None:
    app, ids = three_events
    headers = {} if header is None else {"Last-Event-ID": ids[header]}
    query_string = "" if query is None else "&" + query.replace("=0", "=" + quote(ids[0]))
    stream = open_stream(app, f"?channel=r{query_string}", headers=headers)
    try:
        with app.app_context():
            live = flask_sse_hub.publish("live", channel="r")
        events = stream.read(len(expected) + 1)
    finally:
        stream.close()
    assert [e.last_event_id for e in events] == [ids[n] for n in expected] + [live]
    assert all(e.type == "message" for e in events)


@pytest.mark.parametrize("padding", [" ", "\t", " \t "])
def test_whitespace_around_the_last_event_id_header_is_not_part_of_the_id(
    three_events: tuple[Flask, list[str]], padding: str,
) -> None:
    # Some servers (gunicorn 22) pass a header value's surrounding whitespace on.
    app, ids = three_events
    padded = f"{padding}{ids[1]}{padding}"
    stream = open_stream(app, "?channel=r", headers={"Last-Event-ID": padded})
    try:
        events = stream.read(1)
    finally:
        stream.close()
    assert [(e.type, e.last_event_id) for e in events] == [("message", ids[2])]


def test_unknown_resume_id_starts_with_a_gap_event_then_history_then_live(
    three_events: tuple[Flask, list[str]],
) -> None:
    app, ids = three_events
    stream = open_stream(app, "?channel=r", headers={"Last-Event-ID": "stale-id"})
    try:
        with app.app_context():
            live = flask_sse_hub.publish("live", channel="r")
        gap, *history = stream.read(5)
    finally:
        stream.close()
    assert gap.type == "sse-hub-gap"
    assert json.loads(gap.data) == {"last_event_id": "stale-id"}
    assert [e.last_event_id for e in history] == [*ids, live]
    # Resuming from the gap's own id gives no second gap.
    again = open_stream(app, "?channel=r", headers={"Last-Event-ID": gap.last_event_id})
    try:
        assert [e.last_event_id for e in again.read(4)] == [*ids, live]
    finally:
        again.close()


def test_garbage_resume_id_with_non_ascii_digits_is_a_gap_not_a_500(
    three_events: tuple[Flask, list[str]],
) -> None:
    app, ids = three_events
    epoch = ids[0].rsplit("-", 1)[0]
    response = app.test_client().get(
        f"/stream?channel=r&lastEventId={quote(epoch + '-²')}", buffered=False
    )
    try:
        assert response.status_code == 200
        assert OpenStream(response).read(1)[0].type == "sse-hub-gap"
    finally:
        response.close()


def test_the_demo_page_mounts_in_a_library_app_with_the_blueprints_urls(
    make_app: Callable[..., Flask],
) -> None:
    sse = SSEBlueprint("sse", __name__)
    app = make_app(sse, url_prefix="/events")
    app.add_url_rule("/sse-demo", view_func=sse.demo_view)
    client = app.test_client()
    urls = demo_urls(client.get("/sse-demo"))
    assert urls == {"static": "/events/static/", "stream": "/events", "publish": None,
                    "stats": None, "presence": None, "disconnect": None}
    for name in ("demo.js", "demo.css", "sse-hub.js"):
        assert client.get(urls["static"] + name).status_code == 200, name
    other = SSEBlueprint("sse", __name__)
    with_presence = make_app(other)
    with_presence.add_url_rule("/sse-demo", view_func=other.demo_view)
    with_presence.add_url_rule("/who", view_func=other.presence_view)
    assert demo_urls(with_presence.test_client().get("/sse-demo"))["presence"] == "/who"


def demo_urls(page: Any) -> dict[str, Any]:
    """The URLs the demo page was rendered with (its ``data-urls``)."""
    assert page.status_code == 200
    found = re.search(r"data-urls='([^']*)'", page.get_data(as_text=True))
    assert found, "no data-urls on the page"
    urls: dict[str, Any] = json.loads(found[1])
    return urls
