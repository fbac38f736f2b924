"""Requests to a hub app through Flask's test client: streams, publishes, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import flask_sse_hub

from .flask_stream import OpenStream


def client_with(app: Flask, cookies: dict[str, str] | None = None) -> FlaskClient:
    """A test client holding ``cookies`` (it ignores a ``Cookie`` header passed by hand)."""
    client = app.test_client()
    for name, value in (cookies or {}).items():
        client.set_cookie(name, value)
    return client


def get_stream(
    app: Flask, query: str = "", *, cookies: dict[str, str] | None = None, **kwargs: Any
) -> TestResponse:
    return client_with(app, cookies).get(f"/stream{query}", buffered=False, **kwargs)


def open_stream(
    app: Flask, query: str = "", *, cookies: dict[str, str] | None = None, **kwargs: Any
) -> OpenStream:
    return OpenStream(get_stream(app, query, cookies=cookies, **kwargs))


def refused(response: TestResponse, status: int) -> str:
    """Assert a JSON error answer with ``status``; return its reason (and close it)."""
    try:
        if response.status_code == 200:  # a stream: its body never ends, do not read it
            pytest.fail(f"expected {status}, got a 200 {response.mimetype} answer")
        assert response.status_code == status, (response.status_code, response.get_data())
        assert response.mimetype == "application/json", response.headers
        reason: str = response.get_json()["error"]
    finally:
        response.close()
    assert reason
    return reason


def publish(app: Flask, body: Any, headers: dict[str, str] | None = None) -> TestResponse:
    return app.test_client().post("/publish", json=body, headers=headers or {})


def published(app: Flask) -> int:
    count: int = flask_sse_hub.hubs(app)["sse"].broker.stats()["events_published"]
    return count


def subscribers(app: Flask, name: str = "sse") -> int:
    """How many streams the hub of blueprint ``name`` holds right now."""
    count: int = flask_sse_hub.hubs(app)[name].broker.stats()["subscribers"]
    return count
