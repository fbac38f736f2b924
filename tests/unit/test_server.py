"""The standalone hub (``flask_sse_hub.server``) through Flask's test client.

``create_app()``: ``POST /publish`` (single events and batches, its JSON errors,
who may publish: loopback, ``SSE_PUBLISH_TOKEN``, JWT publish grants),
``/stream``, ``/healthz``, ``/stats`` and the demo page at ``/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

import flask_sse_hub
from flask_sse_hub import BackendUnavailable
from tests.support.hub_http import client_with, open_stream, publish, published, refused
from tests.support.sse_parser import Event
from tests.support.tokens import (
    CHALLENGE,
    INVALID_TOKEN_CHALLENGE,
    PUBLISH_TOKEN,
    SECRET,
    bearer,
    mint,
)

# -- publishing, the stream, health and stats -------------------------------------------------


def post_publish(app: Flask, body: Any, **kwargs: Any) -> TestResponse:
    return app.test_client().post("/publish", json=body, **kwargs)


def test_standalone_publish_single_and_batch(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True)
    stream = open_stream(app, "?channel=orders")
    try:
        single = post_publish(
            app, {"channel": "orders", "event": "order-created", "data": {"order": 42}}
        )
        assert single.status_code == 202
        first = single.get_json()["id"]
        batch = post_publish(
            app,
            [{"channel": "orders", "data": "a"}, {"channel": "other", "data": "b"},
             {"channel": "orders", "data": "c", "retry": 100}],
        )
        assert batch.status_code == 202
        ids = batch.get_json()["ids"]
        assert len(ids) == 3
        events = stream.read(3)
    finally:
        stream.close()
    assert events == [
        Event("order-created", '{"order":42}', first),
        Event("message", "a", ids[0]),
        Event("message", "c", ids[2]),
    ]


def test_standalone_stream_is_served_at_stream(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True, SSE_RETRY_MS=777)
    stream = open_stream(app)
    try:
        assert stream.parser.retry == 777
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": "not json", "content_type": "text/plain"}, 415),
        ({"data": "{oops", "content_type": "application/json"}, 400),
        ({"json": {"channel": "orders"}}, 400),  # no data
        ({"json": {"data": 1, "colour": "red"}}, 400),  # unknown field
        ({"json": {"data": 1, "channel": "a b"}}, 400),
        ({"json": {"data": 1, "event": "sse-hub-gap"}}, 400),
        ({"json": {"data": 1, "event": "a\nb"}}, 400),
        ({"json": {"data": 1, "retry": "soon"}}, 400),
        ({"json": {"data": 1, "retry": True}}, 400),
        ({"json": {"data": 1, "retry": -1}}, 400),
        ({"json": []}, 400),
        ({"json": 42}, 400),
        ({"json": [{"data": 1}, "not an object"]}, 400),
        ({"json": [{"data": 1}, {"data": 2, "channel": "bad channel"}]}, 400),
        ({"json": {"data": "x" * 2000}}, 413),  # over SSE_MAX_EVENT_BYTES
        ({"json": [{"data": "x" * 900}] * 5}, 413),  # over SSE_MAX_PUBLISH_BYTES
    ],
    ids=[
        "not-json-415", "bad-json", "missing-data", "unknown-field", "bad-channel",
        "reserved-event", "event-with-LF", "retry-str", "retry-bool", "retry-negative",
        "empty-batch", "not-an-object", "batch-item-not-object", "batch-item-bad-channel",
        "event-too-large", "body-too-large",
    ],
)
def test_standalone_publish_errors_are_json_with_status(
    make_app: Callable[..., Flask], kwargs: dict[str, Any], status: int
) -> None:
    app = make_app(standalone=True, SSE_MAX_EVENT_BYTES=1024, SSE_MAX_PUBLISH_BYTES=4096)
    response = app.test_client().post("/publish", **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert isinstance(error, str) and error
    # Nothing of a refused request is published, not even the valid part of a batch.
    assert flask_sse_hub.hubs(app)["sse"].broker.stats().get("events_published", 0) == 0


def test_standalone_publish_token_is_required_when_set(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(standalone=True, SSE_PUBLISH_TOKEN="s3cret-token")
    body = {"data": "x"}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer s3cret-toke"},
        {"Authorization": "Basic s3cret-token"},
        {"Authorization": "s3cret-token"},
    ):
        response = post_publish(app, body, headers=headers)
        assert response.status_code == 401, headers
        assert "error" in response.get_json()
        assert "Bearer" in response.headers.get("WWW-Authenticate", "")
    ok = post_publish(app, body, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 202
    # With a token, where the request comes from does not matter.
    relayed = post_publish(
        app, body,
        headers={"Authorization": "Bearer s3cret-token", "X-Forwarded-For": "203.0.113.9"},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert relayed.status_code == 202


@pytest.mark.parametrize(
    ("remote_addr", "headers", "status"),
    [
        ("127.0.0.1", {}, 202),
        ("::1", {}, 202),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, 403),
        ("127.0.0.1", {"Forwarded": "for=203.0.113.9"}, 403),
        ("127.0.0.1", {"X-Real-IP": "203.0.113.9"}, 403),
        ("203.0.113.9", {}, 403),
        ("10.0.0.5", {}, 403),
    ],
    ids=["loopback", "loopback-v6", "x-forwarded-for", "forwarded", "x-real-ip",
         "public-address", "private-address"],
)
def test_anonymous_publish_only_from_loopback(
    make_app: Callable[..., Flask], remote_addr: str, headers: dict[str, str], status: int
) -> None:
    app = make_app(standalone=True)
    response = post_publish(
        app, {"data": "x"}, headers=headers, environ_base={"REMOTE_ADDR": remote_addr}
    )
    assert response.status_code == status
    if status != 202:
        assert "error" in response.get_json()


def test_standalone_backend_unavailable_is_503(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(standalone=True)
    backend = flask_sse_hub.hubs(app)["sse"].broker.backend

    def unreachable(events: Any, idempotency: Any = None) -> list[str]:
        raise BackendUnavailable("Redis unavailable, nothing published")

    monkeypatch.setattr(backend, "publish", unreachable)
    response = post_publish(app, {"data": "x"})
    assert response.status_code == 503
    assert "unavailable" in response.get_json()["error"]
    monkeypatch.setattr(backend, "healthy", lambda: False)
    health = app.test_client().get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["status"] != "ok"


def test_standalone_healthz(make_app: Callable[..., Flask]) -> None:
    response = make_app(standalone=True).test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_standalone_stats_report_this_worker(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True)
    stream = open_stream(app, "?channel=orders&channel=news")
    try:
        ids = [post_publish(app, {"channel": "orders", "data": n}).get_json()["id"]
               for n in range(2)]
        stream.read(2)
        stats = app.test_client().get("/stats").get_json()
    finally:
        stream.close()
    assert ids
    assert stats["channels"] == {"orders": 1, "news": 1}
    assert stats["events_published"] == 2
    for key in ("events_delivered", "subscribers_dropped_slow", "replays_served"):
        assert isinstance(stats[key], int), key
    assert stats["subscribers_dropped_slow"] == 0


def test_standalone_demo_page(make_app: Callable[..., Flask]) -> None:
    client = make_app(standalone=True).test_client()
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    script = client.get("/static/demo.js")
    assert script.status_code == 200
    assert b"EventSource" in script.data


# == publishing over HTTP ================================================================


def test_with_jwt_on_anonymous_loopback_publish_is_refused(jwt_app: Flask) -> None:
    response = publish(jwt_app, {"channel": "orders", "data": 1})
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    refused(response, 401)
    assert published(jwt_app) == 0


def test_publisher_token_only_from_the_header(jwt_app: Flask) -> None:
    token = mint({"publish": ["*"]})
    client = jwt_app.test_client()
    refused(client.post(f"/publish?token={token}", json={"data": 1}), 401)
    refused(client_with(jwt_app, {"sse_token": token}).post("/publish", json={"data": 1}), 401)
    assert published(jwt_app) == 0
    assert publish(jwt_app, {"data": 1}, bearer(token)).status_code == 202


def test_publish_grants(jwt_app: Flask) -> None:
    token = bearer(mint({"publish": ["orders:*", "news"]}))
    ok = publish(jwt_app, {"channel": "orders:eu", "data": 1}, token)
    assert ok.status_code == 202, ok.get_data()
    assert publish(jwt_app, {"channel": "news", "data": 1}, token).status_code == 202
    assert "billing" in refused(publish(jwt_app, {"channel": "billing", "data": 1}, token), 403)
    refused(publish(jwt_app, {"channel": "orders", "data": 1}, token), 403)
    refused(publish(jwt_app, {"data": 1}, token), 403)  # the default channel
    # A subscribe grant is not a publish grant.
    refused(publish(jwt_app, {"channel": "news", "data": 1},
                    bearer(mint({"subscribe": ["*"]}))), 403)
    assert published(jwt_app) == 2


def test_a_batch_with_one_ungranted_channel_publishes_nothing(jwt_app: Flask) -> None:
    stream = open_stream(jwt_app, "?channel=orders:eu&channel=billing",
                         headers=bearer(mint({"subscribe": ["*"]})))
    try:
        token = bearer(mint({"publish": ["orders:*"]}))
        batch = [{"channel": "orders:eu", "data": "first"}, {"channel": "billing", "data": "x"},
                 {"channel": "orders:eu", "data": "third"}]
        assert "billing" in refused(publish(jwt_app, batch, token), 403)
        assert published(jwt_app) == 0
        answer = publish(jwt_app, {"channel": "orders:eu", "data": "after"}, token)
        assert answer.status_code == 202
        # The subscriber's first event is the one published after the refused batch.
        assert stream.read(1) == [Event("message", "after", answer.get_json()["id"])]
    finally:
        stream.close()


def test_publish_token_grants_everything_with_jwt_on(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True, SSE_JWT_SECRET=SECRET, SSE_PUBLISH_TOKEN=PUBLISH_TOKEN)
    batch = [{"channel": "orders", "data": 1}, {"channel": "billing:x", "data": 2}]
    answer = publish(app, batch, bearer(PUBLISH_TOKEN))
    assert answer.status_code == 202, answer.get_data()
    assert len(answer.get_json()["ids"]) == 2
    # JWTs still work, limited to their grants.
    assert publish(app, {"channel": "orders", "data": 1},
                   bearer(mint({"publish": ["orders"]}))).status_code == 202
    refused(publish(app, {"channel": "billing", "data": 1},
                    bearer(mint({"publish": ["orders"]}))), 403)
    # Neither token, nor a near miss of the static one.
    refused(publish(app, {"channel": "orders", "data": 1}), 401)
    refused(publish(app, {"channel": "orders", "data": 1}, bearer(PUBLISH_TOKEN + "x")), 401)
    refused(publish(app, {"channel": "orders", "data": 1}, bearer(PUBLISH_TOKEN[:-1])), 401)
    assert published(app) == 3


def test_publish_token_alone_keeps_its_old_behaviour(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True, SSE_PUBLISH_TOKEN=PUBLISH_TOKEN)
    missing = publish(app, {"data": 1})
    assert missing.headers["WWW-Authenticate"] == CHALLENGE
    refused(missing, 401)
    wrong = publish(app, {"data": 1}, bearer("nope"))
    assert wrong.headers["WWW-Authenticate"] == INVALID_TOKEN_CHALLENGE
    refused(wrong, 401)
    # A JWT means nothing without SSE_JWT_* settings.
    refused(publish(app, {"data": 1}, bearer(mint({"publish": ["*"]}))), 401)
    assert publish(app, {"data": 1}, bearer(PUBLISH_TOKEN)).status_code == 202
    open_stream(app, "?channel=default").close()  # subscribing needs no token


def test_the_memory_backend_in_a_multi_process_server_answers_500_naming_redis(
    make_app: Callable[..., Flask],
) -> None:
    """Several processes would each see only their own subscribers: refused, saying what to set."""
    client = make_app(standalone=True).test_client()
    for answer in (  # wsgi.multiprocess, as gunicorn -w 2 sets it
        client.post("/publish", json={"data": 1}, multiprocess=True),
        client.get("/stream?channel=a", multiprocess=True),
    ):
        assert answer.status_code == 500
        assert "SSE_REDIS_URL" in answer.get_json()["error"]
    assert client.post("/publish", json={"data": 1}).status_code == 202  # one process: fine


def test_streams_and_publishes_leave_no_reference_cycles(make_app: Callable[..., Flask]) -> None:
    """What the worker's rare collections (gunicorn_config._tune_gc) rely on.

    Raw WSGI calls, as a server makes them (the test client makes cycles of its own).
    """
    import gc

    from werkzeug.test import EnvironBuilder

    app = make_app(standalone=True)

    def call(**request: Any) -> Any:
        environ = EnvironBuilder(**request).get_environ()
        environ["REMOTE_ADDR"] = "127.0.0.1"
        return app(environ, lambda status, headers, exc_info=None: None)

    def streams_and_publishes() -> None:
        streams = [call(path="/stream", query_string="channel=c") for _ in range(20)]
        chunks = [iter(stream) for stream in streams]
        for chunk in chunks:
            next(chunk)  # the stream's opening
        for n in range(20):
            body = {"channel": "c", "data": n}
            assert b'"id"' in b"".join(call(method="POST", path="/publish", json=body))
        for stream, chunk in zip(streams, chunks, strict=True):
            assert b"data:" in next(chunk)
            stream.close()

    streams_and_publishes()  # first calls fill caches, which are not garbage
    gc.collect()
    gc.disable()
    try:
        streams_and_publishes()
        assert gc.collect() == 0
    finally:
        gc.enable()
