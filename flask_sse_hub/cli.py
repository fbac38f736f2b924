"""``flask sse ...``: hub commands in the app's Flask CLI (through the blueprint's group)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from .errors import HubError

if TYPE_CHECKING:
    from .blueprint import SSEBlueprint


def add_commands(blueprint: SSEBlueprint) -> None:
    """Add ``publish`` to ``blueprint.cli``: ``flask <blueprint name> publish CHANNEL DATA``."""

    @blueprint.cli.command("publish")
    @click.argument("channel")
    @click.argument("data")
    @click.option("--event", default=None, help="Event type (default: message).")
    @click.option("--json", "as_json", is_flag=True, help="DATA is JSON: send it parsed.")
    def publish_command(channel: str, data: str, event: str | None, as_json: bool) -> None:
        """Publish DATA to CHANNEL and print the event id."""
        hub = blueprint.hub()
        if hub.config.redis_url is None:
            click.echo(
                "warning: memory backend: only subscribers of this process receive it; "
                "set SSE_REDIS_URL to reach a running hub",
                err=True,
            )
        try:
            payload = json.loads(data) if as_json else data
            click.echo(hub.publish(payload, channel=channel, event=event))
        except (ValueError, TypeError, HubError) as exc:
            raise click.ClickException(str(exc)) from None
