"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

import flask_sse_hub
from flask_sse_hub import SSEBlueprint
from flask_sse_hub.config import DEFAULTS
from flask_sse_hub.server import create_app
from tests.support.tokens import SECRET

#: SSE_HEARTBEAT_SECONDS of these apps: how long one read of a stream may block.
HEARTBEAT = 0.2


@pytest.fixture
def make_hub_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """``create_app()`` with a clean environment; its hub is stopped after the test."""
    for key in DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    apps: list[Flask] = []

    def factory(**config: Any) -> Flask:
        app = create_app({"SSE_HEARTBEAT_SECONDS": HEARTBEAT, **config})
        apps.append(app)
        return app

    yield factory
    stop_hubs(apps)


def stop_hubs(apps: list[Flask]) -> None:
    """Stop every hub of ``apps`` (their broadcasters, their streams)."""
    for app in apps:
        for hub in flask_sse_hub.hubs(app).values():
            hub.broker.stop()


@pytest.fixture
def jwt_app(make_hub_app: Callable[..., Flask]) -> Flask:
    """The standalone hub verifying HS256 tokens signed with ``tests.support.tokens.SECRET``."""
    return make_hub_app(SSE_JWT_SECRET=SECRET)


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    """Fresh apps, each with a fresh ``SSEBlueprint`` (or the one given); hubs stopped after."""
    apps: list[Flask] = []

    def factory(
        blueprint: SSEBlueprint | None = None, *, url_prefix: str = "/stream", **config: Any
    ) -> Flask:
        app = Flask(__name__)
        app.config.update({"SSE_HEARTBEAT_SECONDS": HEARTBEAT, **config})
        app.register_blueprint(blueprint or SSEBlueprint("sse", __name__), url_prefix=url_prefix)
        apps.append(app)
        return app

    yield factory
    stop_hubs(apps)
