"""Fixtures shared by the unit tests."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

import flask_sse_hub
from flask_sse_hub import SSEBlueprint
from flask_sse_hub.broker import Broker
from flask_sse_hub.config import DEFAULTS
from flask_sse_hub.server import create_app
from tests.support.subscriptions import new_broker
from tests.support.tokens import SECRET

#: SSE_HEARTBEAT_SECONDS of these apps: how long one read of a stream may block.
HEARTBEAT = 0.2


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """Fresh apps with a short heartbeat; every hub they made is stopped after the test.

    ``make_app(**settings)`` is a Flask app with an ``SSEBlueprint`` (a fresh
    one, or ``blueprint``) at ``url_prefix``; ``make_app(standalone=True,
    **settings)`` is the standalone hub, ``create_app(settings)``. No ``SSE_*``
    variable of the calling shell reaches either.
    """
    for key in DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    apps: list[Flask] = []

    def factory(
        blueprint: SSEBlueprint | None = None, *, url_prefix: str = "/stream",
        standalone: bool = False, **config: Any,
    ) -> Flask:
        settings = {"SSE_HEARTBEAT_SECONDS": HEARTBEAT, **config}
        if standalone:
            assert blueprint is None, "the standalone hub registers its own blueprint"
            app = create_app(settings)
        else:
            app = Flask(__name__)
            app.config.update(settings)
            app.register_blueprint(blueprint or SSEBlueprint("sse", __name__),
                                   url_prefix=url_prefix)
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
def make_hub_app(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """``make_app(standalone=True, ...)`` under its former name (for tests not yet moved)."""
    return functools.partial(make_app, standalone=True)


@pytest.fixture
def jwt_app(make_app: Callable[..., Flask]) -> Flask:
    """The standalone hub verifying HS256 tokens signed with ``tests.support.tokens.SECRET``."""
    return make_app(standalone=True, SSE_JWT_SECRET=SECRET)


@pytest.fixture
def make_broker() -> Iterator[Callable[..., Broker]]:
    """Brokers on a memory backend, stopped (streams closed, broadcaster joined) at teardown."""
    made: list[Broker] = []

    def factory(**options: int) -> Broker:
        broker = new_broker(**options)
        made.append(broker)
        return broker

    yield factory
    for broker in made:
        broker.stop()
