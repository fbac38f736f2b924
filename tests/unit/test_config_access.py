"""The settings of CORS, tokens and per-client limits: SSE_CORS_ORIGINS, SSE_JWT_*,
SSE_MAX_CONNECTIONS_PER_IP.

Parsing (strings from the environment, Python values from ``app.config``),
normalisation of origins to what browsers send, every refusal naming its key,
the checks that run when the hub is built (secret length, the public key's
PEM, its type), and the one-line summary that must never show a secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from flask import Flask

import flask_sse_hub
from flask_sse_hub import ConfigError, SSEBlueprint
from flask_sse_hub.auth import TokenVerifier
from flask_sse_hub.config import (
    DEFAULTS,
    MIN_SECRET_BYTES,
    SECRETS,
    HubConfig,
    ServerConfig,
    from_environ,
)

SECRET = "0123456789abcdef0123456789abcdef-secret"  # 39 bytes

#: The CORS, token and per-client settings with their defaults: all off.
ACCESS_DEFAULTS = {
    "SSE_CORS_ORIGINS": None,
    "SSE_JWT_SECRET": None,
    "SSE_JWT_PUBLIC_KEY": None,
    "SSE_JWT_AUDIENCE": None,
    "SSE_JWT_ISSUER": None,
    "SSE_JWT_COOKIE": "sse_token",
    "SSE_MAX_CONNECTIONS_PER_IP": None,
}


def public_pem(key: Any) -> str:
    text: str = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return text


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture
def registered() -> Iterator[list[Flask]]:
    """Apps whose hubs are stopped after the test."""
    apps: list[Flask] = []
    yield apps
    for app in apps:
        for hub in flask_sse_hub.hubs(app).values():
            hub.broker.stop()


def register(apps: list[Flask], **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    apps.append(app)
    app.register_blueprint(SSEBlueprint("sse", __name__), url_prefix="/stream")
    return app


# -- defaults and the environment ------------------------------------------------------


def test_access_settings_default_to_off() -> None:
    assert {key: DEFAULTS[key] for key in ACCESS_DEFAULTS} == ACCESS_DEFAULTS
    config = HubConfig.from_mapping({})
    assert config.cors_origins == ()
    assert config.jwt_secret is None
    assert config.jwt_public_key is None
    assert config.jwt_audience is None
    assert config.jwt_issuer is None
    assert config.jwt_cookie == "sse_token"
    assert config.max_connections_per_ip is None
    # Nothing configured: no token checks at all.
    assert TokenVerifier.from_config(config) is None


def test_access_settings_from_environment_strings_are_parsed() -> None:
    environ = {
        "SSE_CORS_ORIGINS": "https://app.example.com, http://localhost:3000",
        "SSE_JWT_SECRET": SECRET,
        "SSE_JWT_AUDIENCE": "sse-hub",
        "SSE_JWT_ISSUER": "https://auth.example.com",
        "SSE_JWT_COOKIE": "hub_jwt",
        "SSE_MAX_CONNECTIONS_PER_IP": "12",
    }
    picked = from_environ({**environ, "JWT_SECRET": "not ours"})
    assert picked == environ
    config = HubConfig.from_mapping(picked)
    assert config.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert config.jwt_secret == SECRET
    assert config.jwt_audience == "sse-hub"
    assert config.jwt_issuer == "https://auth.example.com"
    assert config.jwt_cookie == "hub_jwt"
    assert config.max_connections_per_ip == 12


@pytest.mark.parametrize(
    "key",
    ["SSE_CORS_ORIGINS", "SSE_JWT_SECRET", "SSE_JWT_PUBLIC_KEY", "SSE_JWT_AUDIENCE",
     "SSE_JWT_ISSUER", "SSE_MAX_CONNECTIONS_PER_IP"],
)
def test_an_empty_environment_string_unsets_an_access_setting(key: str) -> None:
    config = HubConfig.from_mapping({key: ""})
    value = getattr(config, key.removeprefix("SSE_").lower())
    assert value in (None, ())
    assert TokenVerifier.from_config(config) is None


# -- SSE_CORS_ORIGINS --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("https://app.example.com", ("https://app.example.com",)),
        ("HTTPS://App.Example.COM", ("https://app.example.com",)),
        ("https://app.example.com/", ("https://app.example.com",)),
        ("https://app.example.com:443", ("https://app.example.com",)),
        ("http://app.example.com:80/", ("http://app.example.com",)),
        ("https://app.example.com:80", ("https://app.example.com:80",)),
        ("http://app.example.com:443", ("http://app.example.com:443",)),
        ("http://localhost:3000", ("http://localhost:3000",)),
        ("http://[::1]:3000", ("http://[::1]:3000",)),
        ("http://127.0.0.1:8000", ("http://127.0.0.1:8000",)),
        ("https://a.example,https://b.example", ("https://a.example", "https://b.example")),
        ("  https://a.example ,\thttps://b.example  ", ("https://a.example", "https://b.example")),
        ("https://a.example https://b.example", ("https://a.example", "https://b.example")),
        ("https://a.example, HTTPS://A.example:443/", ("https://a.example",)),
        (["https://a.example", "http://b.example:81"], ("https://a.example", "http://b.example:81")),
        (("https://a.example",), ("https://a.example",)),
        ("*", ("*",)),
        (" * ", ("*",)),
        (["*"], ("*",)),
        ("", ()),
        (None, ()),
    ],
)
def test_origins_are_normalised_to_what_browsers_send(value: Any, origins: tuple[str, ...]) -> None:
    assert HubConfig.from_mapping({"SSE_CORS_ORIGINS": value}).cors_origins == origins


@pytest.mark.parametrize(
    "value",
    [
        "https://app.example.com/path",
        "https://app.example.com/app/",
        "https://app.example.com?x=1",
        "https://app.example.com/#top",
        "https://user@app.example.com",
        "https://user:pw@app.example.com",
        "app.example.com",
        "//app.example.com",
        "https://",
        "https://:443",
        "http://app.example.com:99999",
        "http://app.example.com:port",
        "null",
        "*, https://app.example.com",
        "https://app.example.com *",
        ["*", "https://app.example.com"],
        ["https://ok.example", 5],
        5,
        {"https://app.example.com": True},
    ],
)
def test_bad_origins_are_refused_naming_the_key(value: Any) -> None:
    with pytest.raises(ConfigError, match="SSE_CORS_ORIGINS"):
        HubConfig.from_mapping({"SSE_CORS_ORIGINS": value})


def test_a_bad_origin_fails_at_registration(registered: list[Flask]) -> None:
    with pytest.raises(ConfigError, match="SSE_CORS_ORIGINS"):
        register(registered, SSE_CORS_ORIGINS="https://app.example.com/page")


# -- SSE_JWT_SECRET ------------------------------------------------------------------


def test_secret_shorter_than_32_bytes_is_refused_when_parsed_and_at_registration(
    registered: list[Flask],
) -> None:
    assert MIN_SECRET_BYTES == 32
    short = "s" * 31
    with pytest.raises(ConfigError, match="SSE_JWT_SECRET") as caught:
        HubConfig.from_mapping({"SSE_JWT_SECRET": short})
    assert short not in str(caught.value)  # the error never echoes the secret
    with pytest.raises(ConfigError, match="SSE_JWT_SECRET"):
        register(registered, SSE_JWT_SECRET=short)


def test_secret_length_is_counted_in_bytes() -> None:
    assert TokenVerifier(HubConfig.from_mapping({"SSE_JWT_SECRET": "s" * 32})) is not None
    # 16 characters, 32 bytes of UTF-8: enough.
    assert TokenVerifier(HubConfig.from_mapping({"SSE_JWT_SECRET": "é" * 16})) is not None
    with pytest.raises(ConfigError, match="SSE_JWT_SECRET"):
        TokenVerifier(HubConfig.from_mapping({"SSE_JWT_SECRET": "é" * 15 + "s"}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SSE_JWT_SECRET", b"0123456789abcdef0123456789abcdef"),
        ("SSE_JWT_SECRET", 12345),
        ("SSE_JWT_PUBLIC_KEY", b"-----BEGIN PUBLIC KEY-----"),
        ("SSE_JWT_AUDIENCE", ["a", "b"]),
        ("SSE_JWT_ISSUER", 7),
        ("SSE_MAX_CONNECTIONS_PER_IP", "0"),
        ("SSE_MAX_CONNECTIONS_PER_IP", 0),
        ("SSE_MAX_CONNECTIONS_PER_IP", -1),
        ("SSE_MAX_CONNECTIONS_PER_IP", "many"),
        ("SSE_MAX_CONNECTIONS_PER_IP", "2.5"),
        ("SSE_MAX_CONNECTIONS_PER_IP", 2.5),
        ("SSE_MAX_CONNECTIONS_PER_IP", True),
    ],
)
def test_bad_access_settings_raise_config_error_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        HubConfig.from_mapping({key: value})


@pytest.mark.parametrize(("value", "limit"), [("3", 3), (3, 3), (1, 1), ("1000", 1000),
                                              (None, None), ("", None)])
def test_max_connections_per_ip(value: Any, limit: int | None) -> None:
    assert HubConfig.from_mapping({"SSE_MAX_CONNECTIONS_PER_IP": value}).max_connections_per_ip \
        == limit


# -- SSE_JWT_PUBLIC_KEY --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
        "-----BEGIN PUBLIC KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    ],
    ids=["garbage-body", "truncated", "not-a-public-key"],
)
def test_bad_pem_is_refused(value: str, registered: list[Flask]) -> None:
    with pytest.raises(ConfigError, match="SSE_JWT_PUBLIC_KEY"):
        TokenVerifier(HubConfig.from_mapping({"SSE_JWT_PUBLIC_KEY": value}))
    with pytest.raises(ConfigError, match="SSE_JWT_PUBLIC_KEY"):
        register(registered, SSE_JWT_PUBLIC_KEY=value)


def test_a_private_key_pem_is_not_a_public_key() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ConfigError, match="SSE_JWT_PUBLIC_KEY"):
        TokenVerifier(HubConfig.from_mapping({"SSE_JWT_PUBLIC_KEY": pem}))


def test_unsupported_key_type_is_refused() -> None:
    pem = public_pem(x25519.X25519PrivateKey.generate())  # a key-agreement key, not a signer
    with pytest.raises(ConfigError, match="SSE_JWT_PUBLIC_KEY"):
        TokenVerifier(HubConfig.from_mapping({"SSE_JWT_PUBLIC_KEY": pem}))


def test_public_key_from_a_file_path(tmp_path: Path, rsa_pem: str) -> None:
    path = tmp_path / "hub.pub.pem"
    path.write_text(rsa_pem)
    verifier = TokenVerifier(HubConfig.from_mapping({"SSE_JWT_PUBLIC_KEY": str(path)}))
    assert verifier is not None
    with pytest.raises(ConfigError, match="SSE_JWT_PUBLIC_KEY"):
        TokenVerifier(HubConfig.from_mapping({"SSE_JWT_PUBLIC_KEY": str(tmp_path / "missing")}))
    path.write_bytes(b"\xff\xfe not text")
    with pytest.raises(ConfigError, match="SSE_JWT_PUBLIC_KEY"):
        TokenVerifier(HubConfig.from_mapping({"SSE_JWT_PUBLIC_KEY": str(path)}))
    path.write_text("not a pem at all\n")
    with pytest.raises(ConfigError, match="SSE_JWT_PUBLIC_KEY"):
        TokenVerifier(HubConfig.from_mapping({"SSE_JWT_PUBLIC_KEY": str(path)}))


def test_pem_text_with_leading_whitespace_is_text_not_a_path(rsa_pem: str) -> None:
    assert TokenVerifier(HubConfig.from_mapping({"SSE_JWT_PUBLIC_KEY": "\n  " + rsa_pem}))


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["rsa", "ec", "ed25519"],
)
def test_each_supported_key_type_builds_a_hub(make_key: Any, registered: list[Flask]) -> None:
    app = register(registered, SSE_JWT_PUBLIC_KEY=public_pem(make_key()))
    assert flask_sse_hub.hubs(app)["sse"].verifier is not None


# -- SSE_JWT_COOKIE ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sse_token", "hub-jwt", "__Host-sse", "a", "x.y~z!#$%&'*+^`|"])
def test_cookie_names_that_are_http_tokens_are_kept(name: str) -> None:
    assert HubConfig.from_mapping({"SSE_JWT_COOKIE": name}).jwt_cookie == name


@pytest.mark.parametrize(
    "name", ["", "a b", "a;b", "a=b", "a,b", 'a"b', "a\tb", "sés", "a(b)", "a/b", 5, None],
)
def test_cookie_names_that_are_not_http_tokens_are_refused(name: Any) -> None:
    with pytest.raises(ConfigError, match="SSE_JWT_COOKIE"):
        HubConfig.from_mapping({"SSE_JWT_COOKIE": name})


# -- the summary line ------------------------------------------------------------------


def test_summary_masks_the_jwt_secret_and_shows_the_rest(rsa_pem: str) -> None:
    assert {"SSE_JWT_SECRET", "SSE_PUBLISH_TOKEN"} <= SECRETS
    config = HubConfig.from_mapping({
        "SSE_JWT_SECRET": SECRET,
        "SSE_JWT_PUBLIC_KEY": rsa_pem,
        "SSE_JWT_AUDIENCE": "sse-hub",
        "SSE_JWT_ISSUER": "auth",
        "SSE_CORS_ORIGINS": "https://a.example, http://localhost:3000",
        "SSE_MAX_CONNECTIONS_PER_IP": 9,
    })
    summary = config.summary()
    assert SECRET not in summary
    assert SECRET[:12] not in summary
    assert "SSE_JWT_SECRET=***" in summary
    # The key is not secret but is many lines long: one word in a one-line summary.
    assert "BEGIN PUBLIC KEY" not in summary
    assert "\n" not in summary
    assert "SSE_JWT_PUBLIC_KEY=(set)" in summary
    assert "SSE_CORS_ORIGINS=https://a.example,http://localhost:3000" in summary
    assert "SSE_JWT_AUDIENCE=sse-hub" in summary
    assert "SSE_JWT_COOKIE=sse_token" in summary
    assert "SSE_MAX_CONNECTIONS_PER_IP=9" in summary


def test_summary_of_unset_keys() -> None:
    summary = HubConfig.from_mapping({}).summary()
    assert "SSE_JWT_SECRET=None" in summary
    assert "SSE_CORS_ORIGINS=None" in summary
    assert "SSE_MAX_CONNECTIONS_PER_IP=None" in summary


@pytest.mark.parametrize(
    ("value", "hops"), [(None, 0), (0, 0), ("0", 0), ("", 0), ("2", 2), (1, 1)]
)
def test_proxy_hops_counts_trusted_proxies(value: Any, hops: int) -> None:
    config = {} if value is None else {"SSE_PROXY_HOPS": value}
    assert ServerConfig.from_mapping(config).proxy_hops == hops


@pytest.mark.parametrize("value", [-1, "-1", "two", 1.5, True])
def test_proxy_hops_refuses_what_is_not_a_count(value: Any) -> None:
    with pytest.raises(ConfigError, match="SSE_PROXY_HOPS must be 0 or a positive integer"):
        ServerConfig.from_mapping({"SSE_PROXY_HOPS": value})
