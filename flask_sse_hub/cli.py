"""``flask sse ...``: hub commands in the app's Flask CLI (through the blueprint's group)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from .auth import mint_token
from .errors import HubError

if TYPE_CHECKING:
    from .blueprint import SSEBlueprint


def add_commands(blueprint: SSEBlueprint) -> None:
    """Add ``publish`` and ``token`` to ``blueprint.cli`` (``flask <blueprint name> ...``)."""

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

    @blueprint.cli.command("token")
    @click.option("--subscribe", "-s", multiple=True, metavar="CHANNEL",
                  help="A channel (or prefix*) it may subscribe to; repeat for more.")
    @click.option("--publish", "-p", multiple=True, metavar="CHANNEL",
                  help="A channel (or prefix*) it may publish to; repeat for more.")
    @click.option("--ttl", type=click.IntRange(min=1), default=3600, show_default=True,
                  help="Seconds until it expires.")
    @click.option("--subject", default=None, help="Its 'sub' claim (who it is for).")
    def token_command(
        subscribe: tuple[str, ...], publish: tuple[str, ...], ttl: int, subject: str | None,
    ) -> None:
        """Print a token signed with SSE_JWT_SECRET, e.g. for curl or the demo page."""
        config = blueprint.hub().config
        if config.jwt_secret is None:
            raise click.ClickException(
                "SSE_JWT_SECRET is not set in this app's config (a library app reads "
                "app.config, not the environment; the standalone hub reads SSE_* environment "
                "variables). With SSE_JWT_PUBLIC_KEY, tokens are minted with the private key, "
                "by whoever holds it"
            )
        if not subscribe and not publish:
            raise click.UsageError("grant something: --subscribe CHANNEL and/or --publish CHANNEL")
        try:
            click.echo(mint_token(
                config.jwt_secret, subscribe=subscribe, publish=publish, ttl=ttl,
                subject=subject, audience=config.jwt_audience, issuer=config.jwt_issuer,
            ))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
