"""The module-level API (``api.py``): ``sse``, ``publish()``, ``publish_many()``, ``hubs()``,
``shutdown()`` (docs/protocol.md#library).

``publish()`` and ``publish_many()`` find the hub of the current app: the
default ``sse`` blueprint's, or the only one registered; anything else is a
clear ``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

import flask_sse_hub
from flask_sse_hub import InvalidChannel, InvalidData, SSEBlueprint
from tests.support.hub_http import open_stream, subscribers

# -- publish through the current app ------------------------------------------------------


def test_publish_many_publishes_a_batch_in_order_and_a_bad_item_publishes_nothing(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(flask_sse_hub.sse)
    stream = open_stream(app, "?channel=a&channel=b")
    try:
        with app.app_context():
            ids = flask_sse_hub.publish_many([
                {"data": {"n": 1}, "channel": "a"},
                {"data": "two", "channel": "b", "event": "note"},
                {"data": "three", "channel": "a", "retry": 700},
            ])
            no_data, unknown_field = {"channel": "a"}, {"data": 2, "colour": "red"}
            for bad in ([{"data": 1}, no_data], [{"data": 1}, unknown_field]):
                with pytest.raises(InvalidData, match=r"events\[1\]"):
                    flask_sse_hub.publish_many(bad)
            with pytest.raises(InvalidChannel):
                flask_sse_hub.sse.publish_many([{"data": 1}, {"data": 2, "channel": "bad name"}])
            assert flask_sse_hub.publish_many([]) == []
            last = flask_sse_hub.publish("last", channel="a")
        events = stream.read(4)
    finally:
        stream.close()
    assert [(e.type, e.data, e.last_event_id) for e in events] == [
        ("message", '{"n":1}', ids[0]), ("note", "two", ids[1]), ("message", "three", ids[2]),
        ("message", "last", last),
    ]
    assert stream.parser.retry == 700


def test_default_sse_blueprint_and_module_publish(make_app: Callable[..., Flask]) -> None:
    """The README's example: ``from flask_sse_hub import sse, publish``."""
    app = make_app(flask_sse_hub.sse)
    stream = open_stream(app)
    try:
        with app.app_context():
            ids = [flask_sse_hub.publish("one"), flask_sse_hub.sse.publish("two")]
        events = stream.read(2)
    finally:
        stream.close()
    assert [(e.data, e.last_event_id) for e in events] == [("one", ids[0]), ("two", ids[1])]


def test_publish_without_the_blueprint_registered_is_a_clear_runtime_error() -> None:
    bp = SSEBlueprint("sse", __name__)
    app = Flask(__name__)
    with app.app_context():
        with pytest.raises(RuntimeError, match="not registered"):
            bp.publish("x")
        with pytest.raises(RuntimeError, match="blueprint"):
            flask_sse_hub.publish("x")


def test_module_publish_with_two_other_blueprints_is_ambiguous(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(SSEBlueprint("alerts", __name__), url_prefix="/alerts")
    with app.app_context():
        flask_sse_hub.publish("only one hub: it is used")
    app.register_blueprint(SSEBlueprint("news", __name__), url_prefix="/news")
    with app.app_context(), pytest.raises(RuntimeError, match="alerts"):
        flask_sse_hub.publish("which hub?")


def test_publish_outside_an_app_context_is_a_clear_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="application context"):
        flask_sse_hub.publish("x")
    with pytest.raises(RuntimeError, match="application context"):
        flask_sse_hub.publish_many([{"data": "x"}])


# -- hubs and shutdown ---------------------------------------------------------------------


def test_hubs_are_the_apps_own_by_blueprint_name(make_app: Callable[..., Flask]) -> None:
    app = make_app(flask_sse_hub.sse)
    app.register_blueprint(SSEBlueprint("alerts", __name__), url_prefix="/alerts")
    other = make_app()
    found = flask_sse_hub.hubs(app)
    assert sorted(found) == ["alerts", "sse"]
    assert found["sse"] is flask_sse_hub.sse.hub(app)
    with app.app_context():
        assert flask_sse_hub.hubs() == found  # the current app's
    assert flask_sse_hub.hubs(Flask(__name__)) == {}
    assert flask_sse_hub.hubs(other)["sse"] is not found["sse"]


def test_hub_shutdown_ends_open_streams(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    stream = open_stream(app)
    flask_sse_hub.shutdown(app)
    with pytest.raises(EOFError):
        stream.read(1)
    assert subscribers(app) == 0
