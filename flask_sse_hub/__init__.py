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

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AtCapacity,
    BackendUnavailable,
    BatchTooLarge,
    ConfigError,
    EventTooLarge,
    Forbidden,
    HubError,
    IdempotencyConflict,
    InvalidChannel,
    InvalidData,
    InvalidEventType,
    TooManyChannels,
    TooManyConnections,
    Unauthorized,
    WrongServer,
)

if TYPE_CHECKING:
    from .api import hubs, publish, publish_many, shutdown, sse
    from .auth import mint_token
    from .blueprint import Hub, SSEBlueprint

__version__ = "0.2.0"

__all__ = [
    "AtCapacity",
    "BackendUnavailable",
    "BatchTooLarge",
    "ConfigError",
    "EventTooLarge",
    "Forbidden",
    "Hub",
    "HubError",
    "IdempotencyConflict",
    "InvalidChannel",
    "InvalidData",
    "InvalidEventType",
    "SSEBlueprint",
    "TooManyChannels",
    "TooManyConnections",
    "Unauthorized",
    "WrongServer",
    "__version__",
    "hubs",
    "mint_token",
    "publish",
    "publish_many",
    "shutdown",
    "sse",
]

# Imported on first use: ``gunicorn -c python:flask_sse_hub.gunicorn_config``
# imports this package in the master, before the gevent worker patches the
# standard library, and Flask, PyJWT and redis-py must not be imported there
# (gevent warns, rightly, about an ssl imported before its patching).
_LAZY = {
    "sse": ".api", "hubs": ".api", "publish": ".api", "publish_many": ".api",
    "shutdown": ".api",
    "Hub": ".blueprint", "SSEBlueprint": ".blueprint", "mint_token": ".auth",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
