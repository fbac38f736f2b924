"""flask-sse-hub: a Server-Sent Events hub for Flask.

::

    from flask import Flask
    from flask_sse_hub import sse, publish

    app = Flask(__name__)
    app.register_blueprint(sse, url_prefix="/stream")

    @app.post("/orders")
    def create_order():
        return {"event_id": publish({"order": 42}, event="order-created", channel="orders")}, 201
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from .auth import mint_token
from .blueprint import EXTENSION_KEY, Hub, SSEBlueprint
from .errors import (
    BackendUnavailable,
    BatchTooLarge,
    ConfigError,
    EventTooLarge,
    Forbidden,
    HubError,
    InvalidChannel,
    InvalidData,
    InvalidEventType,
    TooManyChannels,
    TooManyConnections,
    Unauthorized,
)
from .wire import Event

__all__ = [
    "BackendUnavailable",
    "BatchTooLarge",
    "ConfigError",
    "Event",
    "EventTooLarge",
    "Forbidden",
    "Hub",
    "HubError",
    "InvalidChannel",
    "InvalidData",
    "InvalidEventType",
    "SSEBlueprint",
    "TooManyChannels",
    "TooManyConnections",
    "Unauthorized",
    "hubs",
    "mint_token",
    "publish",
    "shutdown",
    "sse",
]

#: The default blueprint: ``app.register_blueprint(sse, url_prefix="/stream")``.
sse = SSEBlueprint("sse", __name__)


def hubs(app: Flask | None = None) -> dict[str, Hub]:
    """The hubs of ``app`` (default: the current app), by blueprint name."""
    app = current_app if app is None else app
    found: dict[str, Hub] = app.extensions.get(EXTENSION_KEY, {})
    return found


def publish(
    data: Any, *, channel: str = "default", event: str | None = None, retry: int | None = None
) -> str:
    """Publish through the current app's hub; return the id the hub assigned.

    The hub is the default ``sse`` blueprint's, or the only one registered.
    Same arguments and errors as :meth:`SSEBlueprint.publish`.
    """
    registered = hubs()
    hub = registered.get(sse.name)
    if hub is None:
        if len(registered) != 1:
            raise RuntimeError(
                "flask_sse_hub.publish() needs the 'sse' blueprint or exactly one SSEBlueprint "
                f"registered on the app (found: {sorted(registered) or 'none'}); "
                "call the blueprint's own publish() instead"
            )
        (hub,) = registered.values()
    return hub.publish(data, channel=channel, event=event, retry=retry)


def shutdown(app: Flask) -> None:
    """End every open stream of ``app`` so clients reconnect (call on SIGTERM)."""
    for hub in hubs(app).values():
        hub.broker.close()
