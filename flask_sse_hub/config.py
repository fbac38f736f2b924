"""The ``SSE_*`` settings: defaults in one place, typed and checked once.

A Flask app sets them in ``app.config``; the standalone hub also reads each
from the environment variable of the same name (:func:`from_environ`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "SSE_REDIS_URL": None,
    "SSE_HEARTBEAT_SECONDS": 15.0,
    "SSE_RETRY_MS": 2000,
    "SSE_HISTORY_SIZE": 1000,
    "SSE_QUEUE_SIZE": 1000,
    "SSE_MAX_EVENT_BYTES": 65536,
    "SSE_MAX_CHANNELS": 32,
    "SSE_PING_EVENT": None,
    "SSE_MAX_CONNECTION_SECONDS": None,
    "SSE_PUBLISH_TOKEN": None,
    # Not in SPEC §6 but needed by a real deployment: the largest POST /publish body.
    "SSE_MAX_PUBLISH_BYTES": 1048576,
}


def _positive_int(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a positive integer, got {value!r}") from None
    if isinstance(value, bool) or number <= 0 or (isinstance(value, float) and value != number):
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return number


def _positive_float(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not number > 0 or number == float("inf"):
        raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}")
    return number


def _optional(parse: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def parse_optional(key: str, value: Any) -> Any:
        return None if value in (None, "") else parse(key, value)

    return parse_optional


def _optional_str(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "SSE_REDIS_URL": _optional_str,
    "SSE_HEARTBEAT_SECONDS": _positive_float,
    "SSE_RETRY_MS": _positive_int,
    "SSE_HISTORY_SIZE": _positive_int,
    "SSE_QUEUE_SIZE": _positive_int,
    "SSE_MAX_EVENT_BYTES": _positive_int,
    "SSE_MAX_CHANNELS": _positive_int,
    "SSE_PING_EVENT": _optional_str,
    "SSE_MAX_CONNECTION_SECONDS": _optional(_positive_float),
    "SSE_PUBLISH_TOKEN": _optional_str,
    "SSE_MAX_PUBLISH_BYTES": _positive_int,
}


@dataclass(frozen=True)
class HubConfig:
    """The settings one hub runs with, parsed and range-checked."""

    redis_url: str | None
    heartbeat_seconds: float
    retry_ms: int
    history_size: int
    queue_size: int
    max_event_bytes: int
    max_channels: int
    ping_event: str | None
    max_connection_seconds: float | None
    publish_token: str | None
    max_publish_bytes: int

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> HubConfig:
        """Read the ``SSE_*`` keys of ``config`` (a Flask config), defaults for missing ones."""
        values = {
            key: parse(key, config.get(key, DEFAULTS[key])) for key, parse in _PARSERS.items()
        }
        return cls(**{key[len("SSE_"):].lower(): value for key, value in values.items()})

    def summary(self) -> str:
        """One log line of the settings, with secrets masked."""
        shown = []
        for key in _PARSERS:
            value = getattr(self, key[len("SSE_"):].lower())
            if key == "SSE_PUBLISH_TOKEN" and value:
                value = "***"
            elif key == "SSE_REDIS_URL" and value:
                value = _mask_url(value)
            shown.append(f"{key}={value}")
        return " ".join(shown)


def _mask_url(url: str) -> str:
    """``url`` without its password (in the user part or a ``password=`` query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urlencode(
        [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query)],
        safe="*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def set_defaults(config: MutableMapping[str, Any]) -> None:
    """Give ``config`` every ``SSE_*`` key it does not have yet."""
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``SSE_*`` keys found in the environment, as strings (parsed by :class:`HubConfig`)."""
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in DEFAULTS if key in environ}
