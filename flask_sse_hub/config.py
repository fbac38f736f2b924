"""The ``SSE_*`` settings: one table (:data:`SETTINGS`) says each one's default,
parser, meaning and scope; the defaults, the parsing, the start-up summary
and the documented reference all come from it.

A Flask app sets them in ``app.config``; the standalone hub also reads each
from the environment variable of the same name (:func:`from_environ`).
Settings of scope ``hub`` make a :class:`HubConfig` (every app's hub);
settings of scope ``standalone`` make a :class:`ServerConfig`, read by the
standalone hub's own routes (``POST /publish``, its proxies) and never put
into a library app's config. Every check of a value is here, raising
:class:`~flask_sse_hub.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ConfigError
from .wire import validate_event_type

log = logging.getLogger("flask_sse_hub")

#: The shortest HS256 secret accepted: RFC 7518 section 3.2 asks for a key of the hash's size.
MIN_SECRET_BYTES = 32


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


def _event_type(key: str, value: Any) -> str | None:
    """An event type for ``SSE_PING_EVENT``: what ``publish(event=...)`` accepts too."""
    text = _optional_str(key, value)
    if text is None:
        return None
    try:
        return validate_event_type(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _jwt_secret(key: str, value: Any) -> str | None:
    secret = _optional_str(key, value)
    if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{key} must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2); "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return secret


@dataclass(frozen=True)
class PublicKey:
    """A loaded ``SSE_JWT_PUBLIC_KEY`` and the JWT algorithms it verifies."""

    key: Any
    algorithms: tuple[str, ...]


def _public_key(key: str, value: Any) -> PublicKey | None:
    """A PEM public key: the text, or the path of a file holding it."""
    if isinstance(value, PublicKey):
        return value
    text = _optional_str(key, value)
    if text is None:
        return None
    pem = text if text.lstrip().startswith("-----BEGIN") else _read_key_file(key, text)
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise ConfigError(
            f"{key} needs the cryptography package: pip install 'flask-sse-hub[rsa]'"
        ) from None
    try:
        loaded = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError(f"{key} is not a PEM public key: {exc}") from None
    if isinstance(loaded, rsa.RSAPublicKey):
        return PublicKey(loaded, ("RS256", "RS384", "RS512"))
    if isinstance(loaded, ec.EllipticCurvePublicKey):
        return PublicKey(loaded, ("ES256", "ES384", "ES512"))
    if isinstance(loaded, ed25519.Ed25519PublicKey):
        return PublicKey(loaded, ("EdDSA",))
    raise ConfigError(f"{key}: unsupported key type {type(loaded).__name__}")


def _read_key_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key} is neither PEM text nor a readable PEM file: {exc}") from None


@dataclass(frozen=True)
class Setting:
    """One ``SSE_*`` setting: its key, default, parser, meaning and who reads it."""

    key: str
    default: Any
    parse: Callable[[str, Any], Any]
    doc: str
    #: Never logged (the start-up summary shows ``***``).
    secret: bool = False
    #: ``hub`` (library apps and the standalone hub) or ``standalone`` (its routes only).
    scope: str = "hub"
    #: How the summary shows a set value, when not as it is.
    show: Callable[[Any], str] | None = None

    @property
    def field(self) -> str:
        """The :class:`HubConfig` attribute: the key without ``SSE_``, lower-cased."""
        return self.key[len("SSE_"):].lower()


SETTINGS: tuple[Setting, ...] = (
    Setting("SSE_REDIS_URL", None, _optional_str,
            "unset: memory backend; set (`redis://host:port/db`): Redis backplane",
            show=lambda url: _mask_url(url)),
    Setting("SSE_HEARTBEAT_SECONDS", 15.0, _positive_float,
            "idle comment interval"),
    Setting("SSE_RETRY_MS", 2000, _positive_int, "reconnect delay sent to clients"),
    Setting("SSE_HISTORY_SIZE", 1000, _positive_int,
            "events retained for replay (all channels together)"),
    Setting("SSE_QUEUE_SIZE", 1000, _positive_int,
            "events a subscriber may have pending before it is dropped as slow"),
    Setting("SSE_MAX_EVENT_BYTES", 65536, _positive_int, "largest encoded event"),
    Setting("SSE_MAX_CHANNELS", 32, _positive_int, "channels per stream"),
    Setting("SSE_PING_EVENT", None, _event_type,
            "heartbeat as an event of this type (no id) instead of a comment"),
    Setting("SSE_MAX_CONNECTION_SECONDS", None, _optional(_positive_float),
            "end a stream after this age (minus up to 10 % jitter); clients resume"),
    Setting("SSE_PUBLISH_TOKEN", None, _optional_str,
            "bearer token for `POST /publish`", secret=True, scope="standalone"),
    Setting("SSE_MAX_PUBLISH_BYTES", 1048576, _positive_int,
            "largest `POST /publish` body", scope="standalone"),
    Setting("SSE_CORS_ORIGINS", None, _origins,
            "origins whose pages may subscribe and publish",
            show=lambda origins: ",".join(origins)),
    Setting("SSE_JWT_SECRET", None, _jwt_secret,
            "HS256 key: subscribers and publishers need a JWT", secret=True),
    Setting("SSE_JWT_PUBLIC_KEY", None, _public_key,
            "PEM public key (or its file's path) for RS/ES/EdDSA tokens",
            show=lambda _key: "(set)"),
    Setting("SSE_JWT_AUDIENCE", None, _optional_str, "required `aud` of tokens"),
    Setting("SSE_JWT_ISSUER", None, _optional_str, "required `iss` of tokens"),
    Setting("SSE_JWT_COOKIE", "sse_token", _cookie_name,
            "cookie a subscriber's token may come in"),
    Setting("SSE_MAX_CONNECTIONS_PER_IP", None, _optional(_positive_int),
            "open streams per client address and worker (429 beyond)"),
    Setting("SSE_PROXY_HOPS", 0, _count,
            "trusted reverse proxies in front (their `X-Forwarded-*` headers are believed)",
            scope="standalone"),
    Setting("SSE_REDIS_TIMEOUT", 2.0, _positive_float,
            "seconds within which a Redis call answers or fails"),
    Setting("SSE_REDIS_SENTINELS", None, _sentinels,
            "`host:port,host:port`: find the Redis master through Sentinel",
            show=lambda found: ",".join(f"{host}:{port}" for host, port in found)),
    Setting("SSE_REDIS_SENTINEL_MASTER", "mymaster", _master_name,
            "the master name the Sentinels monitor"),
    Setting("SSE_REDIS_MIN_REPLICAS", 0, _count,
            "replicas that must have an event before a publish answers 202 (`WAIT`)"),
    Setting("SSE_MAX_STREAMS", None, _optional(_positive_int),
            "streams per worker (default: 90 % of its connection limit)"),
    Setting("SSE_DEAD_CLIENT_SECONDS", 60.0, _positive_float,
            "a client that vanished without closing is dropped within this"),
    Setting("SSE_MAX_BATCH", 1000, _positive_int,
            "events in one `POST /publish` batch (413 beyond)", scope="standalone"),
    Setting("SSE_PUBLISH_BODY_SECONDS", 10.0, _positive_float,
            "a `POST /publish` body must arrive within this (408)", scope="standalone"),
    Setting("SSE_PRESENCE_GRACE_SECONDS", 2.5, _positive_float,
            "a stream that ends stays present this long (a reconnect is no leave)"),
    Setting("SSE_IDEMPOTENCY_SECONDS", 300.0, _positive_float,
            "an `Idempotency-Key` of `POST /publish` answers its first result this long",
            scope="standalone"),
    Setting("SSE_STATS_TOKEN", None, _optional_str,
            "bearer token for `/stats`, `/metrics`, `/presence` from clients not on loopback",
            secret=True),
)

#: Every setting's default, by key.
DEFAULTS: dict[str, Any] = {setting.key: setting.default for setting in SETTINGS}
#: Settings whose values are never logged.
SECRETS = frozenset(setting.key for setting in SETTINGS if setting.secret)


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
    cors_origins: tuple[str, ...]
    jwt_secret: str | None
    jwt_public_key: PublicKey | None
    jwt_audience: str | None
    jwt_issuer: str | None
    jwt_cookie: str
    max_connections_per_ip: int | None
    redis_timeout: float
    redis_sentinels: tuple[tuple[str, int], ...]
    redis_sentinel_master: str
    redis_min_replicas: int
    max_streams: int | None
    dead_client_seconds: float
    presence_grace_seconds: float
    stats_token: str | None

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> HubConfig:
        """Read the ``SSE_*`` keys of ``config`` (a Flask config), defaults for missing ones."""
        return cls(**_parsed(config, "hub"))

    def summary(self) -> str:
        """One log line of the settings, with secrets masked."""
        return _summary(self, "hub")


@dataclass(frozen=True)
class ServerConfig:
    """The standalone hub's own settings (scope ``standalone``), parsed and range-checked."""

    publish_token: str | None
    max_publish_bytes: int
    proxy_hops: int
    max_batch: int
    publish_body_seconds: float
    idempotency_seconds: float

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> ServerConfig:
        """Read the standalone ``SSE_*`` keys of ``config``, defaults for missing ones."""
        return cls(**_parsed(config, "standalone"))

    def summary(self) -> str:
        """One log line of the settings, with secrets masked."""
        return _summary(self, "standalone")


def _parsed(config: Mapping[str, Any], scope: str) -> dict[str, Any]:
    return {
        setting.field: setting.parse(setting.key, config.get(setting.key, setting.default))
        for setting in SETTINGS if setting.scope == scope
    }


def _summary(parsed: HubConfig | ServerConfig, scope: str) -> str:
    shown = []
    for setting in SETTINGS:
        if setting.scope != scope:
            continue
        value = getattr(parsed, setting.field)
        if value in (None, (), ""):
            text = "None"
        elif setting.secret:
            text = "***"
        else:
            text = setting.show(value) if setting.show is not None else str(value)
        shown.append(f"{setting.key}={text}")
    return " ".join(shown)


for _class, _scope in ((HubConfig, "hub"), (ServerConfig, "standalone")):
    if {field.name for field in fields(_class)} != {
        setting.field for setting in SETTINGS if setting.scope == _scope
    }:  # caught by every test run
        raise RuntimeError(f"{_class.__name__}'s fields and the {_scope} SETTINGS differ")


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


def set_defaults(config: MutableMapping[str, Any], scope: str = "hub") -> None:
    """Give ``config`` every ``SSE_*`` key of ``scope`` it does not have yet."""
    for setting in SETTINGS:
        if setting.scope == scope:
            config.setdefault(setting.key, setting.default)


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``SSE_*`` keys found in the environment, as strings (parsed by :class:`HubConfig`)."""
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in DEFAULTS if key in environ}
