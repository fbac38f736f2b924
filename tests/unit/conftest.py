"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

import flask_sse_hub
from flask_sse_hub.config import DEFAULTS
from flask_sse_hub.server import create_app

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
    for app in apps:
        for hub in flask_sse_hub.hubs(app).values():
            hub.broker.stop()
