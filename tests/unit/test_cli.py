"""The ``flask sse`` CLI, and ``mint_token`` behind ``flask sse token``.

``flask sse publish`` publishes what a subscriber receives; ``flask sse token``
(like ``mint_token``) prints a token the hub accepts, granting what was asked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from flask import Flask

import flask_sse_hub
from flask_sse_hub import mint_token, sse
from flask_sse_hub.auth import LEEWAY_SECONDS, TokenVerifier
from flask_sse_hub.config import HubConfig
from flask_sse_hub.errors import Forbidden
from tests.support.hub_http import open_stream
from tests.support.sse_parser import Event

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


def verifier(**settings: Any) -> TokenVerifier:
    return TokenVerifier(HubConfig.from_mapping({"SSE_JWT_SECRET": SECRET, **settings}))


def app_with(**settings: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(settings)
    app.register_blueprint(sse, url_prefix="/stream")
    return app


# -- flask sse publish ------------------------------------------------------------------


def test_cli_publish_prints_the_id_a_subscriber_receives(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    stream = open_stream(app, "?channel=orders")
    try:
        result = app.test_cli_runner().invoke(
            args=["sse", "publish", "orders", "hello", "--event", "created"]
        )
        assert result.exit_code == 0, result.output
        event_id = result.stdout.strip()
        (event,) = stream.read(1)
    finally:
        stream.close()
    assert event == Event("created", "hello", event_id)


def test_cli_publish_json_data(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    stream = open_stream(app, "?channel=orders")
    try:
        result = app.test_cli_runner().invoke(
            args=["sse", "publish", "orders", '{"n": 1}', "--json"]
        )
        assert result.exit_code == 0, result.output
        (event,) = stream.read(1)
    finally:
        stream.close()
    assert json.loads(event.data) == {"n": 1}
    assert event.last_event_id == result.stdout.strip()


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["sse", "publish", "bad channel", "hello"], "invalid channel"),
        (["sse", "publish", "orders", "hello", "--event", "sse-hub-x"], "reserved"),
        (["sse", "publish", "orders", "{not json", "--json"], "Expecting"),
    ],
    ids=["bad-channel", "reserved-event", "bad-json"],
)
def test_cli_publish_refuses_bad_input_with_the_reason(
    make_app: Callable[..., Flask], args: list[str], reason: str
) -> None:
    app = make_app()
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code != 0
    assert reason in result.output
    assert flask_sse_hub.hubs(app)["sse"].broker.stats().get("events_published", 0) == 0


# -- mint_token and flask sse token -------------------------------------------------------


def test_a_minted_token_grants_exactly_what_was_asked() -> None:
    before = time.time()
    token = mint_token(SECRET, subscribe=["orders", "user:42:*"], publish=["user:42:outbox"],
                       ttl=120, subject="user-42")
    grants = verifier().grants(token)
    grants.check_subscribe(["orders", "user:42:inbox"])
    grants.check_publish(["user:42:outbox"])
    with pytest.raises(Forbidden):
        grants.check_subscribe(["user:43:inbox"])
    with pytest.raises(Forbidden):
        grants.check_publish(["orders"])
    assert before + 120 - 1 <= grants.expires_at - LEEWAY_SECONDS <= time.time() + 120
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["sub"] == "user-42"


@pytest.mark.parametrize(("grants", "ttl"), [
    ({"subscribe": ["bad channel"]}, 60), ({"publish": ["ord*ers"]}, 60),
    ({"subscribe": [""]}, 60), ({"subscribe": ["orders"]}, 0), ({"subscribe": ["orders"]}, -5),
])
def test_mint_token_refuses_what_the_hub_would_refuse(grants: dict[str, list[str]],
                                                       ttl: float) -> None:
    with pytest.raises(ValueError):
        mint_token(SECRET, ttl=ttl, **grants)


def test_flask_sse_token_prints_a_token_with_the_hubs_audience_and_issuer() -> None:
    app = app_with(SSE_JWT_SECRET=SECRET, SSE_JWT_AUDIENCE="hub", SSE_JWT_ISSUER="shop")
    result = app.test_cli_runner().invoke(
        args=["sse", "token", "-s", "orders:*", "--publish", "orders:eu", "--ttl", "60"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    grants = verifier(SSE_JWT_AUDIENCE="hub", SSE_JWT_ISSUER="shop").grants(token)
    grants.check_subscribe(["orders:us"])
    grants.check_publish(["orders:eu"])
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="hub")
    assert claims["iss"] == "shop" and claims["exp"] <= time.time() + 60


@pytest.mark.parametrize(("settings", "args", "message"), [
    ({}, ["-s", "orders"], "SSE_JWT_SECRET is not set"),
    ({"SSE_JWT_SECRET": SECRET}, [], "grant something"),
    ({"SSE_JWT_SECRET": SECRET}, ["-s", "not a channel"], "neither a channel name"),
    ({"SSE_JWT_SECRET": SECRET}, ["-s", "orders", "--ttl", "0"], "0"),
])
def test_flask_sse_token_says_what_is_wrong(settings: dict[str, str], args: list[str],
                                            message: str) -> None:
    result = app_with(**settings).test_cli_runner().invoke(args=["sse", "token", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "eyJ" not in result.output  # no token printed
