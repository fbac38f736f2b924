"""The ``SSE_*`` settings: defaults in one place, typed and checked once.

A Flask app sets them in ``app.config``; the standalone hub also reads each
from the environment variable of the same name (:func:`from_environ`).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ConfigError

log = logging.getLogger("flask_sse_hub")

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
    # Issue 4: browsers on other origins, channel tokens, per-client limits.
    "SSE_CORS_ORIGINS": None,
    "SSE_JWT_SECRET": None,
    "SSE_JWT_PUBLIC_KEY": None,
    "SSE_JWT_AUDIENCE": None,
    "SSE_JWT_ISSUER": None,
    "SSE_JWT_COOKIE": "sse_token",
    "SSE_MAX_CONNECTIONS_PER_IP": None,
    # Standalone: reverse proxies whose X-Forwarded-* headers are trusted.
    "SSE_PROXY_HOPS": 0,
    # The Redis backplane under faults: bounded waits, Sentinel, replicated publishes.
    "SSE_REDIS_TIMEOUT": 2.0,
    "SSE_REDIS_SENTINELS": None,
    "SSE_REDIS_SENTINEL_MASTER": "mymaster",
    "SSE_REDIS_MIN_REPLICAS": 0,
    # Bounded resources per client.
    "SSE_MAX_STREAMS": None,
    "SSE_DEAD_CLIENT_SECONDS": 60.0,
    "SSE_MAX_BATCH": 1000,
    "SSE_PUBLISH_BODY_SECONDS": 10.0,
    "SSE_STATS_TOKEN": None,
}

#: Settings whose values are never logged.
SECRETS = frozenset({"SSE_PUBLISH_TOKEN", "SSE_JWT_SECRET", "SSE_STATS_TOKEN"})


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


def _count(key: str, value: Any) -> int:
    """A non-negative integer (0 allowed)."""
    if value in (0, "0", "", None) and not isinstance(value, bool):
        return 0
    try:
        return _positive_int(key, value)
    except ConfigError:
        raise ConfigError(f"{key} must be 0 or a positive integer, got {value!r}") from None


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


def _origins(key: str, value: Any) -> tuple[str, ...]:
    """An allow-list of origins: a list, or a string split on commas and spaces.

    ``*`` (alone) allows any origin, without credentials. Each other entry must
    be a bare origin as browsers send it: ``scheme://host[:port]``, no path.
    """
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        entries = [entry for entry in value.replace(",", " ").split() if entry]
    elif isinstance(value, (list, tuple, set, frozenset)) and all(
        isinstance(entry, str) for entry in value
    ):
        entries = list(value)
    else:
        raise ConfigError(f"{key} must be a list of origins or a string of them, got {value!r}")
    if "*" in entries:
        if len(entries) > 1:
            raise ConfigError(f"{key}: '*' allows every origin and cannot be combined with others")
        return ("*",)
    return tuple(dict.fromkeys(_origin(key, entry) for entry in entries))


def _origin(key: str, entry: str) -> str:
    bad = ConfigError(
        f"{key}: {entry!r} is not an origin like https://app.example.com or http://localhost:3000"
    )
    parts = urlsplit(entry.strip())
    if not parts.scheme or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise bad
    try:
        port = parts.port
    except ValueError:
        raise bad from None
    default_port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    # Browsers send the scheme and host in lower case and omit a default port.
    shown = f"{parts.scheme.lower()}://{host.lower()}"
    return shown if port is None or port == default_port else f"{shown}:{port}"


def _cookie_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        raise ConfigError(f"{key} must be a cookie name (an HTTP token), got {value!r}")
    return value


def _sentinels(key: str, value: Any) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (or a list of such strings): the Redis Sentinels to ask."""
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        entries = [entry for entry in value.replace(",", " ").split() if entry]
    elif isinstance(value, (list, tuple)) and all(isinstance(entry, str) for entry in value):
        entries = list(value)
    else:
        raise ConfigError(f"{key} must be 'host:port,host:port', got {value!r}")
    found = []
    for entry in entries:
        host, sep, port = entry.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{key}: {entry!r} is not host:port (e.g. 10.0.0.5:26379)")
        found.append((host, int(port)))
    return tuple(dict.fromkeys(found))


def _master_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._\-]{1,128}", value):
        raise ConfigError(f"{key} must be a Sentinel master name like 'mymaster', got {value!r}")
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
    "SSE_CORS_ORIGINS": _origins,
    "SSE_JWT_SECRET": _optional_str,
    "SSE_JWT_PUBLIC_KEY": _optional_str,
    "SSE_JWT_AUDIENCE": _optional_str,
    "SSE_JWT_ISSUER": _optional_str,
    "SSE_JWT_COOKIE": _cookie_name,
    "SSE_MAX_CONNECTIONS_PER_IP": _optional(_positive_int),
    "SSE_PROXY_HOPS": _count,
    "SSE_REDIS_TIMEOUT": _positive_float,
    "SSE_REDIS_SENTINELS": _sentinels,
    "SSE_REDIS_SENTINEL_MASTER": _master_name,
    "SSE_REDIS_MIN_REPLICAS": _count,
    "SSE_MAX_STREAMS": _optional(_positive_int),
    "SSE_DEAD_CLIENT_SECONDS": _positive_float,
    "SSE_MAX_BATCH": _positive_int,
    "SSE_PUBLISH_BODY_SECONDS": _positive_float,
    "SSE_STATS_TOKEN": _optional_str,
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
    cors_origins: tuple[str, ...]
    jwt_secret: str | None
    jwt_public_key: str | None
    jwt_audience: str | None
    jwt_issuer: str | None
    jwt_cookie: str
    max_connections_per_ip: int | None
    proxy_hops: int
    redis_timeout: float
    redis_sentinels: tuple[tuple[str, int], ...]
    redis_sentinel_master: str
    redis_min_replicas: int
    max_streams: int | None
    dead_client_seconds: float
    max_batch: int
    publish_body_seconds: float
    stats_token: str | None

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
            if key in SECRETS and value:
                value = "***"
            elif key == "SSE_REDIS_URL" and value:
                value = _mask_url(value)
            elif key == "SSE_JWT_PUBLIC_KEY" and value:
                value = "(set)"
            elif key == "SSE_CORS_ORIGINS":
                value = ",".join(value) or None
            elif key == "SSE_REDIS_SENTINELS":
                value = ",".join(f"{host}:{port}" for host, port in value) or None
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


#: ``SSE_*`` environment variables of the packaged gunicorn settings, not of the hub.
SERVER_KEYS = frozenset({
    "SSE_BIND", "SSE_GRACEFUL_TIMEOUT", "SSE_WORKER_CONNECTIONS", "SSE_LOG_LEVEL",
    "SSE_ACCESS_LOG",
})


def warn_unknown_keys(config: Mapping[str, Any]) -> list[str]:
    """Log each ``SSE_*`` key the hub does not know (a typo is otherwise silently ignored)."""
    known = DEFAULTS.keys() | SERVER_KEYS
    unknown = sorted(key for key in config if key.startswith("SSE_") and key not in known)
    for key in unknown:
        close = difflib.get_close_matches(key, DEFAULTS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        log.warning("unknown setting %s is ignored%s", key, hint)
    return unknown


def set_defaults(config: MutableMapping[str, Any]) -> None:
    """Give ``config`` every ``SSE_*`` key it does not have yet."""
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``SSE_*`` keys found in the environment, as strings (parsed by :class:`HubConfig`)."""
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in DEFAULTS if key in environ}
