"""The ``SSE_*`` settings — defaults, strings from the environment, refusals, masking."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import flask_sse_hub
from flask_sse_hub import ConfigError, SSEBlueprint
from flask_sse_hub.config import (
    DEFAULTS,
    SETTINGS,
    HubConfig,
    ServerConfig,
    from_environ,
    set_defaults,
)

DOCUMENTED_DEFAULTS = {
    "SSE_REDIS_URL": None,
    "SSE_HEARTBEAT_SECONDS": 15,
    "SSE_RETRY_MS": 2000,
    "SSE_HISTORY_SIZE": 1000,
    "SSE_QUEUE_SIZE": 1000,
    "SSE_MAX_EVENT_BYTES": 65536,
    "SSE_MAX_CHANNELS": 32,
    "SSE_PING_EVENT": None,
    "SSE_MAX_CONNECTION_SECONDS": None,
    "SSE_PUBLISH_TOKEN": None,
}


SCOPES = {setting.key: setting.scope for setting in SETTINGS}


def attribute(key: str) -> str:
    """``SSE_QUEUE_SIZE`` -> ``queue_size``."""
    return key.removeprefix("SSE_").lower()


def parsed(key: str, mapping: dict[str, Any]) -> Any:
    """The parsed value of ``key`` from ``mapping``, by the config object of its scope."""
    kind = HubConfig if SCOPES[key] == "hub" else ServerConfig
    return getattr(kind.from_mapping(mapping), attribute(key))


def test_the_defaults_are_the_documented_ones() -> None:
    for key, value in DOCUMENTED_DEFAULTS.items():
        assert parsed(key, {}) == value, key
    assert {key: DEFAULTS[key] for key in DOCUMENTED_DEFAULTS} == DOCUMENTED_DEFAULTS


def test_registering_a_blueprint_sets_every_library_default_and_no_standalone_one() -> None:
    app = Flask(__name__)
    app.config["SSE_QUEUE_SIZE"] = 7
    app.register_blueprint(SSEBlueprint("sse", __name__))
    try:
        for key, scope in SCOPES.items():
            assert (key in app.config) == (scope == "hub"), key
        assert app.config["SSE_QUEUE_SIZE"] == 7  # what the app set is kept
        assert flask_sse_hub.hubs(app)["sse"].config.queue_size == 7
    finally:
        flask_sse_hub.hubs(app)["sse"].broker.stop()


def test_set_defaults_keeps_existing_values() -> None:
    config: dict[str, Any] = {"SSE_RETRY_MS": 5}
    set_defaults(config)
    assert config["SSE_RETRY_MS"] == 5
    assert config["SSE_HISTORY_SIZE"] == 1000


def test_environment_strings_are_parsed() -> None:
    environ = {
        "SSE_REDIS_URL": "redis://localhost:6379/2",
        "SSE_HEARTBEAT_SECONDS": "2.5",
        "SSE_RETRY_MS": "3000",
        "SSE_HISTORY_SIZE": "50",
        "SSE_QUEUE_SIZE": "64",
        "SSE_MAX_EVENT_BYTES": "1024",
        "SSE_MAX_CHANNELS": "4",
        "SSE_PING_EVENT": "ping",
        "SSE_MAX_CONNECTION_SECONDS": "600",
        "SSE_PUBLISH_TOKEN": "s3cret",
        "PATH": "/usr/bin",  # not ours: ignored
        "SSE_UNKNOWN": "1",
    }
    picked = from_environ(environ)
    assert "PATH" not in picked and "SSE_UNKNOWN" not in picked
    config = HubConfig.from_mapping(picked)
    assert ServerConfig.from_mapping(picked).publish_token == "s3cret"
    assert config.redis_url == "redis://localhost:6379/2"
    assert config.heartbeat_seconds == 2.5
    assert config.retry_ms == 3000 and isinstance(config.retry_ms, int)
    assert config.history_size == 50
    assert config.queue_size == 64
    assert config.max_event_bytes == 1024
    assert config.max_channels == 4
    assert config.ping_event == "ping"
    assert config.max_connection_seconds == 600.0


@pytest.mark.parametrize(
    "key", ["SSE_REDIS_URL", "SSE_PING_EVENT", "SSE_MAX_CONNECTION_SECONDS", "SSE_PUBLISH_TOKEN"]
)
def test_empty_environment_string_means_unset(key: str) -> None:
    assert parsed(key, {key: ""}) is None


def test_numbers_given_as_numbers_are_kept() -> None:
    config = HubConfig.from_mapping({"SSE_HEARTBEAT_SECONDS": 1, "SSE_QUEUE_SIZE": 8.0})
    assert config.heartbeat_seconds == 1.0
    assert config.queue_size == 8


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SSE_QUEUE_SIZE", "abc"),
        ("SSE_QUEUE_SIZE", 0),
        ("SSE_QUEUE_SIZE", -1),
        ("SSE_QUEUE_SIZE", "0"),
        ("SSE_QUEUE_SIZE", "1.5"),
        ("SSE_QUEUE_SIZE", 1.5),
        ("SSE_QUEUE_SIZE", True),
        ("SSE_QUEUE_SIZE", None),
        ("SSE_HISTORY_SIZE", 0),
        ("SSE_RETRY_MS", "-5"),
        ("SSE_MAX_EVENT_BYTES", "64k"),
        ("SSE_MAX_CHANNELS", "0"),
        ("SSE_HEARTBEAT_SECONDS", "0"),
        ("SSE_HEARTBEAT_SECONDS", 0),
        ("SSE_HEARTBEAT_SECONDS", "-1"),
        ("SSE_HEARTBEAT_SECONDS", "abc"),
        ("SSE_HEARTBEAT_SECONDS", "inf"),
        ("SSE_HEARTBEAT_SECONDS", "nan"),
        ("SSE_HEARTBEAT_SECONDS", ""),
        ("SSE_MAX_CONNECTION_SECONDS", "0"),
        ("SSE_MAX_CONNECTION_SECONDS", "-3"),
        ("SSE_MAX_CONNECTION_SECONDS", "soon"),
        ("SSE_REDIS_URL", 6379),
        ("SSE_PUBLISH_TOKEN", 12345),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key) as caught:
        parsed(key, {key: value})
    assert isinstance(caught.value, ValueError)


def test_bad_value_in_app_config_fails_at_registration() -> None:
    app = Flask(__name__)
    app.config["SSE_QUEUE_SIZE"] = "abc"
    with pytest.raises(ConfigError, match="SSE_QUEUE_SIZE"):
        app.register_blueprint(SSEBlueprint("sse", __name__))


def test_summary_masks_the_publish_token() -> None:
    summary = ServerConfig.from_mapping({"SSE_PUBLISH_TOKEN": "s3cret-token-value"}).summary()
    assert "s3cret-token-value" not in summary
    assert "SSE_PUBLISH_TOKEN=***" in summary
    assert "SSE_MAX_BATCH=1000" in summary


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p4ssw0rd@redis.internal:6379/0", "redis.internal:6379/0"),
        ("redis://hub:p4ssw0rd@redis.internal:6379/0", "redis.internal:6379/0"),
        ("rediss://hub:p4ss@w0rd@redis.internal:6380", "redis.internal:6380"),
        ("redis://redis.internal:6379/0?password=p4ssw0rd", "redis.internal:6379/0"),
    ],
    ids=["password-only", "user-and-password", "at-sign-in-password", "password-in-query"],
)
def test_summary_masks_a_redis_password(url: str, shown: str) -> None:
    summary = HubConfig.from_mapping({"SSE_REDIS_URL": url}).summary()
    assert "p4ss" not in summary
    assert "w0rd" not in summary
    assert shown in summary


def test_summary_shows_a_redis_url_without_password() -> None:
    summary = HubConfig.from_mapping({"SSE_REDIS_URL": "redis://localhost:6379/1"}).summary()
    assert "SSE_REDIS_URL=redis://localhost:6379/1" in summary


def documented_settings_table() -> dict[str, str]:
    """docs/configuration.md's table: each key in a row's first cell -> its default."""
    section = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`SSE_"):
            for key in re.findall(r"`(SSE_[A-Z_]+)`", cells[0]):
                rows[key] = cells[1].strip("`")
    return rows


def test_the_documented_settings_are_the_settings_table_with_its_defaults() -> None:
    documented = documented_settings_table()
    assert set(documented) == {setting.key for setting in SETTINGS}
    for setting in SETTINGS:
        shown = documented[setting.key]
        if setting.default is None:
            assert shown == "unset" or setting.key == "SSE_MAX_STREAMS", (setting.key, shown)
        elif isinstance(setting.default, (int, float)):
            assert float(shown) == setting.default, (setting.key, shown)
        else:
            assert shown == setting.default, (setting.key, shown)


def test_every_setting_is_a_field_of_its_scope_and_secrets_are_masked_in_the_summary() -> None:
    for kind, scope in ((HubConfig, "hub"), (ServerConfig, "standalone")):
        listed = [setting.field for setting in SETTINGS if setting.scope == scope]
        assert listed == [f.name for f in fields(kind)]
    values = {setting.key: "s3cret-value-" + "x" * 32 for setting in SETTINGS if setting.secret}
    summary = HubConfig.from_mapping(values).summary() + ServerConfig.from_mapping(values).summary()
    assert "s3cret-value" not in summary
    assert all(f"{key}=***" in summary for key in values)


@pytest.mark.parametrize("value", ["two\nlines", "nul\x00", "x" * 129])
def test_a_bad_ping_event_type_is_a_config_error_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match="SSE_PING_EVENT"):
        HubConfig.from_mapping({"SSE_PING_EVENT": value})
