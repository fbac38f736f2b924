"""The module-level API: the default blueprint, and the functions that find an app's hubs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask, current_app

from .blueprint import EXTENSION_KEY, Hub, SSEBlueprint

#: The default blueprint: ``app.register_blueprint(sse, url_prefix="/stream")``.
sse = SSEBlueprint("sse", "flask_sse_hub")


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
    return _current_hub("publish").publish(data, channel=channel, event=event, retry=retry)


def publish_many(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """Publish a batch through the current app's hub, in order, all or nothing; return the ids.

    Items have the fields of ``POST /publish`` (``data``, ``channel``,
    ``event``, ``retry``); see :meth:`SSEBlueprint.publish_many`.
    """
    return _current_hub("publish_many").publish_many(items)


def _current_hub(caller: str) -> Hub:
    """The default ``sse`` blueprint's hub of the current app, or its only hub."""
    registered = hubs()
    hub = registered.get(sse.name)
    if hub is None:
        if len(registered) != 1:
            raise RuntimeError(
                f"flask_sse_hub.{caller}() needs the 'sse' blueprint or exactly one "
                f"SSEBlueprint registered on the app (found: {sorted(registered) or 'none'}); "
                f"call the blueprint's own {caller}() instead"
            )
        (hub,) = registered.values()
    return hub


def shutdown(app: Flask) -> None:
    """End every open stream of ``app`` so clients reconnect (call on SIGTERM)."""
    for hub in hubs(app).values():
        hub.broker.close()
