"""``mint_token`` and ``flask sse token``: tokens the hub accepts, granting what was asked."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from flask import Flask

from flask_sse_hub import mint_token, sse
from flask_sse_hub.auth import LEEWAY_SECONDS, TokenVerifier
from flask_sse_hub.config import HubConfig
from flask_sse_hub.errors import Forbidden

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


def verifier(**settings: Any) -> TokenVerifier:
    return TokenVerifier(HubConfig.from_mapping({"SSE_JWT_SECRET": SECRET, **settings}))


def make_app(**settings: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(settings)
    app.register_blueprint(sse, url_prefix="/stream")
    return app


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
    app = make_app(SSE_JWT_SECRET=SECRET, SSE_JWT_AUDIENCE="hub", SSE_JWT_ISSUER="shop")
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
    result = make_app(**settings).test_cli_runner().invoke(args=["sse", "token", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "eyJ" not in result.output  # no token printed
