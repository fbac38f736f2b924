"""The module-level API: the default blueprint, and the functions that find an app's hubs."""

from __future__ import annotations

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
