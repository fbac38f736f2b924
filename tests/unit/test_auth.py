"""JWT grants and CORS, through Flask's test client and the auth module itself.

Tokens: ``{"sse": {"subscribe": [...], "publish": [...]}, "exp": ...}``; an
entry is an exact channel name or a prefix ending in ``*`` (``*`` alone: every
channel); ``exp`` is required, with 10 s of leeway; HS256 with
``SSE_JWT_SECRET``; RS*/ES*/EdDSA with ``SSE_JWT_PUBLIC_KEY``, each algorithm
bound to its own key. Subscribers present a token as ``Authorization: Bearer``,
``?token=`` or a cookie (in that order of precedence); publishers in the header
only. A missing or bad token is a 401 with a ``WWW-Authenticate: Bearer``
challenge, a channel the token does not grant a 403 for the whole request.

CORS (``SSE_CORS_ORIGINS``): listed origins are echoed with credentials and
``Vary: Origin``; ``*`` alone never sends credentials; unlisted origins get no
CORS headers; preflights get methods, headers and a max age — on every route,
success or error.

Keys are generated here with ``cryptography``; nothing is read from disk
except a key file the test writes itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask, Response, request
from werkzeug.test import TestResponse

import flask_sse_hub
from flask_sse_hub import Forbidden, SSEBlueprint, Unauthorized
from flask_sse_hub.auth import LEEWAY_SECONDS, CorsPolicy, Grants, TokenVerifier
from flask_sse_hub.config import HubConfig
from tests.support.flask_stream import WAIT, OpenStream
from tests.support.hub_http import (
    get_stream,
    open_stream,
    publish,
    published,
    refused,
    subscribers,
)
from tests.support.sse_parser import Event
from tests.support.tokens import (
    ALL,
    CHALLENGE,
    INVALID_TOKEN_CHALLENGE,
    PUBLISH_TOKEN,
    SECRET,
    bearer,
    mint,
)

OTHER_SECRET = "another-hs256-secret-0123456789abcdef!!"
HEARTBEAT = 0.2  # SSE_HEARTBEAT_SECONDS of these apps: how long one read may block
ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "http://localhost:3000"


# -- keys and tokens ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private: Any
    public_pem: str


def _pair(private: Any) -> KeyPair:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return KeyPair(private, pem)


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return _pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def other_rsa_key() -> KeyPair:
    return _pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec256_key() -> KeyPair:
    return _pair(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def ec384_key() -> KeyPair:
    return _pair(ec.generate_private_key(ec.SECP384R1()))


@pytest.fixture(scope="module")
def ed_key() -> KeyPair:
    return _pair(ed25519.Ed25519PrivateKey.generate())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: Any, hmac_key: bytes | None) -> str:
    """A token built by hand (PyJWT refuses to make the dangerous ones)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def verifier(**config: Any) -> TokenVerifier:
    return TokenVerifier(HubConfig.from_mapping(config))


# -- apps ----------------------------------------------------------------------------


# == grants: which channels an entry matches ===========================================


@pytest.mark.parametrize(
    ("patterns", "channel", "granted"),
    [
        (["orders"], "orders", True),
        (["orders"], "orders2", False),  # exact means exact: no prefix match
        (["orders"], "ord", False),  # ... and no partial match either
        (["ord"], "orders", False),
        (["orders"], "Orders", False),  # case-sensitive, like channel names
        (["orders:*"], "orders:eu", True),
        (["orders:*"], "orders:eu:paris", True),
        (["orders:*"], "orders:", True),
        (["orders:*"], "orders", False),
        (["orders:*"], "ordersX", False),
        (["orders:*"], "billing", False),
        # A '*' suffix is a plain string prefix, not a segment: user:4* covers user:42.
        (["user:4*"], "user:4", True),
        (["user:4*"], "user:42", True),
        (["user:4*"], "user:4:inbox", True),
        (["user:4*"], "user:5", False),
        (["user:4*"], "user:", False),
        (["user:4:*"], "user:42", False),
        (["*"], "anything", True),
        (["*"], "a/b.c-d_e:f", True),
        ([], "orders", False),
        (["a", "b", "c:*"], "c:1", True),
        (["a", "b", "c:*"], "d", False),
    ],
)
def test_grant_matching(patterns: list[str], channel: str, granted: bool) -> None:
    grants = Grants(subscribe=tuple(patterns), publish=tuple(patterns), expires_at=0.0)
    for check in (grants.check_subscribe, grants.check_publish):
        if granted:
            check([channel])
        else:
            with pytest.raises(Forbidden, match=repr(channel)) as caught:
                check([channel])
            assert caught.value.status == 403


def test_subscribe_and_publish_grants_are_separate() -> None:
    grants = verifier(SSE_JWT_SECRET=SECRET).grants(
        mint({"subscribe": ["news"], "publish": ["orders"]})
    )
    assert grants.subscribe == ("news",)
    assert grants.publish == ("orders",)
    grants.check_subscribe(["news"])
    grants.check_publish(["orders"])
    with pytest.raises(Forbidden):
        grants.check_publish(["news"])
    with pytest.raises(Forbidden):
        grants.check_subscribe(["orders"])


def test_every_channel_must_be_granted() -> None:
    grants = Grants(subscribe=("a", "b:*"), publish=(), expires_at=0.0)
    grants.check_subscribe(["a", "b:1", "b:2"])
    with pytest.raises(Forbidden, match="'c'"):
        grants.check_subscribe(["a", "c", "b:1"])


def test_a_token_without_the_sse_claim_grants_nothing() -> None:
    grants = verifier(SSE_JWT_SECRET=SECRET).grants(mint(None, sub="user-1"))
    assert grants.subscribe == () and grants.publish == ()
    with pytest.raises(Forbidden):
        grants.check_subscribe(["default"])


# == tokens: what is accepted ==============================================================


def test_hs256_token_is_accepted_and_expiry_includes_the_leeway() -> None:
    exp = int(time.time()) + 120
    token = jwt.encode({"sse": {"subscribe": ["a"]}, "exp": exp}, SECRET, algorithm="HS256")
    grants = verifier(SSE_JWT_SECRET=SECRET).grants(token)
    assert grants.subscribe == ("a",)
    # The stream ends when the same token stops being accepted: exp + leeway.
    assert LEEWAY_SECONDS == 10
    assert grants.expires_at == exp + LEEWAY_SECONDS


def test_expired_within_the_leeway_is_accepted() -> None:
    grants = verifier(SSE_JWT_SECRET=SECRET).grants(mint(ALL, exp_in=-(LEEWAY_SECONDS - 3)))
    assert grants.subscribe == ("*",)


@pytest.mark.parametrize(
    ("name", "alg", "key_fixture"),
    [
        ("rs256", "RS256", "rsa_key"),
        ("rs384", "RS384", "rsa_key"),
        ("rs512", "RS512", "rsa_key"),
        ("es256", "ES256", "ec256_key"),
        ("es384", "ES384", "ec384_key"),
        ("eddsa", "EdDSA", "ed_key"),
    ],
)
def test_public_key_tokens_are_accepted(
    name: str, alg: str, key_fixture: str, request: pytest.FixtureRequest
) -> None:
    pair: KeyPair = request.getfixturevalue(key_fixture)
    check = verifier(SSE_JWT_PUBLIC_KEY=pair.public_pem)
    grants = check.grants(mint({"subscribe": [name]}, key=pair.private, alg=alg))
    assert grants.subscribe == (name,)
    # The same key with the secret configured too: both kinds are accepted.
    both = verifier(SSE_JWT_PUBLIC_KEY=pair.public_pem, SSE_JWT_SECRET=SECRET)
    assert both.grants(mint({"subscribe": [name]}, key=pair.private, alg=alg)).subscribe
    assert both.grants(mint({"subscribe": ["hs"]})).subscribe == ("hs",)


def test_audience_and_issuer_when_configured() -> None:
    check = verifier(SSE_JWT_SECRET=SECRET, SSE_JWT_AUDIENCE="sse-hub",
                     SSE_JWT_ISSUER="https://auth.example.com")
    issuer = "https://auth.example.com"
    assert check.grants(mint(ALL, aud="sse-hub", iss=issuer)).subscribe == ("*",)
    assert check.grants(mint(ALL, aud=["other", "sse-hub"], iss=issuer)).subscribe


# == tokens: every bad kind is a 401 ===========================================================


def _bad_tokens(keys: dict[str, KeyPair]) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """name -> (token, hub config) for every token the hub must refuse with 401."""
    rsa_pem = keys["rsa"].public_pem
    hs = {"SSE_JWT_SECRET": SECRET}
    both = {"SSE_JWT_SECRET": SECRET, "SSE_JWT_PUBLIC_KEY": rsa_pem}
    pk = {"SSE_JWT_PUBLIC_KEY": rsa_pem}
    aud_iss = {**hs, "SSE_JWT_AUDIENCE": "sse-hub", "SSE_JWT_ISSUER": "auth"}
    exp = int(time.time()) + 60
    good = mint(ALL)
    head, body, signature = good.split(".")
    tampered_body = b64url(json.dumps({"sse": ALL, "exp": exp + 1}).encode())
    return {
        "missing": (None, hs),
        "empty": ("", hs),
        "not-a-jwt": ("not-a-jwt", hs),
        "three-garbage-parts": ("a.b.c", hs),
        "two-parts": (f"{head}.{body}", hs),
        "header-not-json": (f"{b64url(b'{oops')}.{body}.{signature}", hs),
        "payload-not-an-object": (forge({"alg": "HS256"}, [1], SECRET.encode()), hs),
        "bad-signature": (mint(ALL, key=OTHER_SECRET), hs),
        "tampered-payload": (f"{head}.{tampered_body}.{signature}", hs),
        "signature-stripped": (f"{head}.{body}.", hs),
        "expired-beyond-leeway": (mint(ALL, exp_in=-(LEEWAY_SECONDS + 20)), hs),
        "missing-exp": (mint(ALL, exp_in=None), hs),
        "exp-not-a-number": (forge({"alg": "HS256"}, {"sse": ALL, "exp": "tomorrow"},
                                   SECRET.encode()), hs),
        "not-yet-valid": (mint(ALL, nbf=int(time.time()) + 3600), hs),
        "wrong-audience": (mint(ALL, aud="other", iss="auth"), aud_iss),
        "missing-audience": (mint(ALL, iss="auth"), aud_iss),
        "wrong-issuer": (mint(ALL, aud="sse-hub", iss="evil"), aud_iss),
        "missing-issuer": (mint(ALL, aud="sse-hub"), aud_iss),
        "alg-none": (forge({"alg": "none", "typ": "JWT"}, {"sse": ALL, "exp": exp}, None), both),
        "alg-none-pyjwt": (jwt.encode({"sse": ALL, "exp": exp}, "", algorithm="none"), hs),
        # Algorithm confusion: HS256 keyed with the public key's PEM text.
        "hs256-with-public-pem-pk-only": (
            forge({"alg": "HS256", "typ": "JWT"}, {"sse": ALL, "exp": exp}, rsa_pem.encode()), pk
        ),
        "hs256-with-public-pem-both": (
            forge({"alg": "HS256", "typ": "JWT"}, {"sse": ALL, "exp": exp}, rsa_pem.encode()), both
        ),
        "unknown-alg-hs512": (mint(ALL, key=SECRET * 2, alg="HS512"), hs),
        "unknown-alg-name": (forge({"alg": "XS256"}, {"sse": ALL, "exp": exp}, SECRET.encode()),
                             hs),
        "alg-not-a-string": (forge({"alg": 256}, {"sse": ALL, "exp": exp}, SECRET.encode()), hs),
        "alg-missing": (forge({"typ": "JWT"}, {"sse": ALL, "exp": exp}, SECRET.encode()), hs),
        "rs256-without-public-key": (mint(ALL, key=keys["rsa"].private, alg="RS256"), hs),
        "rs256-other-key": (mint(ALL, key=keys["other_rsa"].private, alg="RS256"), both),
        "es256-for-an-rsa-key": (mint(ALL, key=keys["ec256"].private, alg="ES256"), pk),
        "eddsa-for-an-rsa-key": (mint(ALL, key=keys["ed"].private, alg="EdDSA"), pk),
        "hs256-when-only-public-key": (mint(ALL), pk),
        "sse-not-an-object": (mint(["orders"]), hs),
        "sse-null": (forge({"alg": "HS256"}, {"sse": None, "exp": exp}, SECRET.encode()), hs),
        "sse-subscribe-a-string": (mint({"subscribe": "orders"}), hs),
        "sse-publish-a-dict": (mint({"publish": {"orders": True}}), hs),
        "sse-entry-not-a-string": (mint({"subscribe": [5]}), hs),
        "sse-entry-empty": (mint({"subscribe": [""]}), hs),
        "sse-entry-bad-char": (mint({"subscribe": ["a b"]}), hs),
        "sse-entry-star-inside": (mint({"subscribe": ["or*ders"]}), hs),
        "sse-entry-double-star": (mint({"subscribe": ["**"]}), hs),
        "sse-entry-too-long": (mint({"subscribe": ["x" * 129]}), hs),
    }


@pytest.fixture(scope="module")
def keys(
    rsa_key: KeyPair, other_rsa_key: KeyPair, ec256_key: KeyPair, ed_key: KeyPair
) -> dict[str, KeyPair]:
    return {"rsa": rsa_key, "other_rsa": other_rsa_key, "ec256": ec256_key, "ed": ed_key}


BAD_TOKEN_NAMES = [
    "missing", "empty", "not-a-jwt", "three-garbage-parts", "two-parts", "header-not-json",
    "payload-not-an-object", "bad-signature", "tampered-payload", "signature-stripped",
    "expired-beyond-leeway", "missing-exp", "exp-not-a-number", "not-yet-valid",
    "wrong-audience", "missing-audience", "wrong-issuer", "missing-issuer", "alg-none",
    "alg-none-pyjwt", "hs256-with-public-pem-pk-only", "hs256-with-public-pem-both",
    "unknown-alg-hs512", "unknown-alg-name", "alg-not-a-string", "alg-missing",
    "rs256-without-public-key", "rs256-other-key", "es256-for-an-rsa-key", "eddsa-for-an-rsa-key",
    "hs256-when-only-public-key", "sse-not-an-object", "sse-null", "sse-subscribe-a-string",
    "sse-publish-a-dict", "sse-entry-not-a-string", "sse-entry-empty", "sse-entry-bad-char",
    "sse-entry-star-inside", "sse-entry-double-star", "sse-entry-too-long",
]


def test_the_bad_token_table_is_complete(keys: dict[str, KeyPair]) -> None:
    assert sorted(_bad_tokens(keys)) == sorted(BAD_TOKEN_NAMES)


@pytest.mark.parametrize("name", BAD_TOKEN_NAMES)
def test_bad_token_is_unauthorized(name: str, keys: dict[str, KeyPair]) -> None:
    token, config = _bad_tokens(keys)[name]
    with pytest.raises(Unauthorized) as caught:
        verifier(**config).grants(token)
    error = caught.value
    assert error.status == 401
    expected = CHALLENGE if token is None else INVALID_TOKEN_CHALLENGE
    assert error.headers == {"WWW-Authenticate": expected}
    if token:
        assert token not in str(error)  # the reason never quotes the token


def test_an_absurd_exp_is_not_a_server_error() -> None:
    token = forge({"alg": "HS256"}, {"sse": ALL, "exp": 10**400}, SECRET.encode())
    try:
        grants = verifier(SSE_JWT_SECRET=SECRET).grants(token)
    except Unauthorized:
        return  # refusing it is fine
    assert grants.expires_at > time.time()  # so is treating it as "far in the future"


@pytest.mark.parametrize("name", BAD_TOKEN_NAMES)
def test_bad_token_refuses_the_stream_with_401(
    name: str, keys: dict[str, KeyPair], make_app: Callable[..., Flask]
) -> None:
    token, config = _bad_tokens(keys)[name]
    app = make_app(standalone=True, **config)
    headers = {} if token is None else bearer(token) if token else {}
    query = "?channel=orders" + ("&token=" if token == "" else "")
    response = get_stream(app, query, headers=headers)
    expected = CHALLENGE if token is None else INVALID_TOKEN_CHALLENGE
    assert response.headers.get("WWW-Authenticate") == expected
    refused(response, 401)
    assert subscribers(app) == 0


@pytest.mark.parametrize("name", ["missing", "bad-signature", "expired-beyond-leeway",
                                  "alg-none", "hs256-with-public-pem-both", "sse-not-an-object"])
def test_bad_token_refuses_publish_with_401(
    name: str, keys: dict[str, KeyPair], make_app: Callable[..., Flask]
) -> None:
    token, config = _bad_tokens(keys)[name]
    app = make_app(standalone=True, **config)
    response = publish(app, {"channel": "orders", "data": 1},
                       bearer(token) if token is not None else None)
    expected = CHALLENGE if token is None else INVALID_TOKEN_CHALLENGE
    assert response.headers.get("WWW-Authenticate") == expected
    refused(response, 401)
    assert published(app) == 0


# == subscribing over HTTP ====================================================================


def test_token_from_header_query_or_cookie(jwt_app: Flask) -> None:
    token = mint({"subscribe": ["orders"]})
    sources: list[tuple[str, dict[str, str], dict[str, str] | None]] = [
        ("?channel=orders", bearer(token), None),
        ("?channel=orders", {"Authorization": f"bearer   {token}  "}, None),
        (f"?channel=orders&token={token}", {}, None),
        ("?channel=orders", {}, {"sse_token": token}),
    ]
    for query, headers, cookies in sources:
        stream = open_stream(jwt_app, query, headers=headers, cookies=cookies)
        try:
            assert subscribers(jwt_app) == 1
        finally:
            stream.close()
    assert subscribers(jwt_app) == 0


def test_cookie_name_is_configurable(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True, SSE_JWT_SECRET=SECRET, SSE_JWT_COOKIE="hub_jwt")
    token = mint({"subscribe": ["orders"]})
    stream = open_stream(app, "?channel=orders", cookies={"hub_jwt": token})
    stream.close()
    # The default name is then not read.
    response = get_stream(app, "?channel=orders", cookies={"sse_token": token})
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    refused(response, 401)


def test_header_wins_over_query_and_query_over_cookie(jwt_app: Flask) -> None:
    for_a, for_b, for_c = (mint({"subscribe": [name]}) for name in "abc")
    cookie = {"sse_token": for_c}
    open_stream(jwt_app, f"?channel=a&token={for_b}", headers=bearer(for_a), cookies=cookie).close()
    refused(get_stream(jwt_app, f"?channel=b&token={for_b}", headers=bearer(for_a),
                       cookies=cookie), 403)
    open_stream(jwt_app, f"?channel=b&token={for_b}", cookies=cookie).close()
    refused(get_stream(jwt_app, f"?channel=c&token={for_b}", cookies=cookie), 403)
    open_stream(jwt_app, "?channel=c", cookies=cookie).close()


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Token abc"])
def test_another_schemes_authorization_does_not_hide_the_query_or_cookie_token(
    authorization: str, jwt_app: Flask
) -> None:
    # A site behind HTTP Basic auth: the browser sends that header on every
    # request, the EventSource's token comes in the query or the cookie.
    token = mint({"subscribe": ["orders"]})
    for query, cookies in ((f"&token={token}", {}), ("", {"sse_token": token})):
        stream = open_stream(jwt_app, f"?channel=orders{query}",
                             headers={"Authorization": authorization}, cookies=cookies)
        stream.close()
    # Without one it is still a 401 (no token at all).
    response = get_stream(jwt_app, "?channel=orders", headers={"Authorization": authorization})
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    refused(response, 401)


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer    ", ""])
def test_a_malformed_authorization_header_is_401_even_with_another_valid_source(
    authorization: str, jwt_app: Flask
) -> None:
    token = mint({"subscribe": ["orders"]})
    response = get_stream(jwt_app, f"?channel=orders&token={token}",
                          headers={"Authorization": authorization},
                          cookies={"sse_token": token})
    assert response.headers["WWW-Authenticate"].startswith(CHALLENGE)
    refused(response, 401)


def test_ungranted_channel_is_403_before_the_stream_starts(jwt_app: Flask) -> None:
    token = mint({"subscribe": ["orders", "user:42:*"]})
    reason = refused(get_stream(jwt_app, "?channel=billing", headers=bearer(token)), 403)
    assert "billing" in reason
    # One ungranted channel among granted ones refuses the whole stream.
    refused(get_stream(jwt_app, "?channel=orders&channel=user:42:inbox&channel=user:43:inbox",
                       headers=bearer(token)), 403)
    # No channel given means "default", which must be granted too.
    refused(get_stream(jwt_app, "", headers=bearer(token)), 403)
    # A publish grant is not a subscribe grant.
    refused(get_stream(jwt_app, "?channel=orders", headers=bearer(mint({"publish": ["*"]}))), 403)
    # A valid token without the claim grants nothing.
    refused(get_stream(jwt_app, "?channel=orders", headers=bearer(mint(None))), 403)
    assert subscribers(jwt_app) == 0
    stream = open_stream(jwt_app, "?channel=orders&channel=user:42:inbox", headers=bearer(token))
    stream.close()


def test_bad_channel_is_still_400_with_a_token(jwt_app: Flask) -> None:
    refused(get_stream(jwt_app, "?channel=a%20b", headers=bearer(mint(ALL))), 400)


def test_head_needs_a_token_too_and_is_not_a_subscription(jwt_app: Flask) -> None:
    client = jwt_app.test_client()
    response = client.head("/stream?channel=orders")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    response = client.head("/stream?channel=orders", headers=bearer(mint({"subscribe": ["x"]})))
    assert response.status_code == 403
    response = client.head("/stream?channel=orders", headers=bearer(mint({"subscribe": ["*"]})))
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert subscribers(jwt_app) == 0


def test_without_jwt_settings_tokens_are_ignored(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True)
    open_stream(app, "?channel=orders&token=garbage", cookies={"sse_token": "garbage"}).close()
    open_stream(app, "?channel=orders", headers=bearer("garbage")).close()


def test_stream_ends_when_its_token_stops_being_accepted(jwt_app: Flask) -> None:
    # Expired 8-9 s ago: accepted for 1-2 s more (the 10 s leeway), then the stream ends.
    # (A whole number: PyJWT checks int(exp).)
    token = mint({"subscribe": ["orders"]}, exp_in=None,
                 exp=math.ceil(time.time()) + 1 - LEEWAY_SECONDS)
    stream = open_stream(jwt_app, "?channel=orders", headers=bearer(token))
    try:
        assert subscribers(jwt_app) == 1
        took = stream.wait_end(timeout=WAIT)
    finally:
        stream.close()
    assert took < 5.0
    assert subscribers(jwt_app) == 0
    # The same token is now refused: no reopen-and-end-at-once loop.
    refused(get_stream(jwt_app, "?channel=orders", headers=bearer(token)), 401)


def test_a_long_lived_token_keeps_the_stream_open(jwt_app: Flask) -> None:
    stream = open_stream(jwt_app, "?channel=orders",
                         headers=bearer(mint({"subscribe": ["orders"]}, exp_in=3600)))
    try:
        ids = publish(jwt_app, {"channel": "orders", "data": "hello"},
                      bearer(mint({"publish": ["orders"]}))).get_json()
        assert stream.read(1) == [Event("message", "hello", ids["id"])]
    finally:
        stream.close()


def test_resume_is_checked_before_any_replay(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True, SSE_JWT_SECRET=SECRET, SSE_PUBLISH_TOKEN=PUBLISH_TOKEN)
    auth = bearer(PUBLISH_TOKEN)
    first = publish(app, {"channel": "a", "data": "a0"}, auth).get_json()["id"]
    ids = publish(app, [{"channel": "a", "data": "a1"}, {"channel": "b", "data": "b1"},
                        {"channel": "a", "data": "a2"}], auth).get_json()["ids"]
    only_a = mint({"subscribe": ["a"]})
    replays = flask_sse_hub.hubs(app)["sse"].broker.stats()["replays_served"]
    response = get_stream(app, "?channel=a&channel=b",
                          headers={**bearer(only_a), "Last-Event-ID": first})
    reason = refused(response, 403)
    assert "'b'" in reason
    assert flask_sse_hub.hubs(app)["sse"].broker.stats()["replays_served"] == replays
    stream = open_stream(app, "?channel=a", headers={**bearer(only_a), "Last-Event-ID": first})
    try:
        assert stream.read(2) == [Event("message", "a1", ids[0]), Event("message", "a2", ids[2])]
    finally:
        stream.close()


def test_refusals_log_no_token(
    jwt_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = mint(ALL, key=OTHER_SECRET)
    good_but_ungranted = mint({"publish": ["orders"]})
    refused(publish(jwt_app, {"channel": "x", "data": 1}, bearer(bad)), 401)
    refused(publish(jwt_app, {"channel": "x", "data": 1}, bearer(good_but_ungranted)), 403)
    refused(get_stream(jwt_app, f"?channel=x&token={bad}"), 401)
    refused(get_stream(jwt_app, f"?channel=x&token={good_but_ungranted}"), 403)
    for token in (bad, good_but_ungranted):
        for part in token.split("."):
            assert part not in caplog.text


def test_public_key_hub_end_to_end(
    make_app: Callable[..., Flask], rsa_key: KeyPair, ed_key: KeyPair
) -> None:
    app = make_app(standalone=True, SSE_JWT_PUBLIC_KEY=rsa_key.public_pem)
    sub = mint({"subscribe": ["orders"]}, key=rsa_key.private, alg="RS256")
    pub = mint({"publish": ["orders"]}, key=rsa_key.private, alg="RS256")
    stream = open_stream(app, "?channel=orders", headers=bearer(sub))
    try:
        answer = publish(app, {"channel": "orders", "data": "rs"}, bearer(pub))
        assert answer.status_code == 202
        assert stream.read(1) == [Event("message", "rs", answer.get_json()["id"])]
    finally:
        stream.close()
    # An HS256 token keyed with the public PEM is refused; so is a key of another type.
    forged = forge({"alg": "HS256"}, {"sse": ALL, "exp": time.time() + 60},
                   rsa_key.public_pem.encode())
    refused(get_stream(app, "?channel=orders", headers=bearer(forged)), 401)
    refused(publish(app, {"channel": "orders", "data": 1}, bearer(forged)), 401)
    refused(get_stream(app, "?channel=orders",
                       headers=bearer(mint(ALL, key=ed_key.private, alg="EdDSA"))), 401)


# == the library: SSEBlueprint with JWT and @authorize ========================================


def test_library_blueprint_checks_tokens_then_authorize() -> None:
    app = Flask(__name__)
    app.config.update(SSE_JWT_SECRET=SECRET, SSE_HEARTBEAT_SECONDS=HEARTBEAT)
    bp = SSEBlueprint("events", __name__)
    seen: list[str] = []

    @bp.authorize
    def allow(channel: str) -> bool:
        seen.append(channel)
        return channel != "secret"

    app.register_blueprint(bp, url_prefix="/events")
    try:
        client = app.test_client()
        response = client.get("/events?channel=orders")
        assert response.status_code == 401
        assert seen == []  # no token: authorize is not even asked
        token = bearer(mint({"subscribe": ["*"]}))
        response = client.get("/events?channel=secret", headers=token)
        assert response.status_code == 403 and response.is_json
        stream = OpenStream(client.get("/events?channel=orders", headers=token, buffered=False))
        stream.close()
        assert seen == ["secret", "orders"]
        assert client.get("/events?channel=nope",
                          headers=bearer(mint({"subscribe": ["orders"]}))).status_code == 403
        assert seen == ["secret", "orders"]  # refused by the token before authorize
    finally:
        for hub in flask_sse_hub.hubs(app).values():
            hub.broker.stop()


# == CORS ===================================================================================


def test_cors_policy_directly() -> None:
    app = Flask(__name__)
    policy = CorsPolicy(("https://a.example",))
    with app.test_request_context("/x", headers={"Origin": "https://a.example"}):
        response = policy.apply(request, Response("ok"))
        assert response.headers["Access-Control-Allow-Origin"] == "https://a.example"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Access-Control-Allow-Methods" not in response.headers  # not a preflight
    with app.test_request_context("/x", headers={"Origin": "https://A.example"}):
        response = policy.apply(request, Response("ok"))
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Origin" in response.vary


def cors_headers(response: TestResponse) -> dict[str, str]:
    return {name: value for name, value in response.headers.items()
            if name.lower().startswith("access-control-")}


def vary(response: TestResponse) -> set[str]:
    return {part.strip().lower() for part in response.headers.get("Vary", "").split(",")
            if part.strip()}


def assert_listed(response: TestResponse, origin: str = ORIGIN) -> None:
    headers = cors_headers(response)
    assert headers.get("Access-Control-Allow-Origin") == origin, response.headers
    assert headers.get("Access-Control-Allow-Credentials") == "true"
    assert "origin" in vary(response)


def assert_no_cors(response: TestResponse) -> None:
    assert cors_headers(response) == {}, response.headers


@pytest.fixture
def cors_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(standalone=True,
                    SSE_CORS_ORIGINS=f"HTTPS://App.Example.com:443/, {OTHER_ORIGIN}",
                    SSE_JWT_SECRET=SECRET)


def _answers(app: Flask, origin: str) -> dict[str, TestResponse]:
    """One answer of each kind the hub gives, all requested from ``origin``."""
    client = app.test_client()
    o = {"Origin": origin}
    sub = mint({"subscribe": ["orders"]})
    pub = mint({"publish": ["orders"]})
    answers = {
        "stream-200": client.get("/stream?channel=orders", headers={**o, **bearer(sub)},
                                 buffered=False),
        "stream-400": client.get("/stream?channel=a%20b", headers={**o, **bearer(sub)}),
        "stream-401": client.get("/stream?channel=orders", headers=o),
        "stream-403": client.get("/stream?channel=billing", headers={**o, **bearer(sub)}),
        "stream-head": client.head("/stream?channel=orders", headers={**o, **bearer(sub)}),
        "publish-202": client.post("/publish", json={"channel": "orders", "data": 1},
                                   headers={**o, **bearer(pub)}),
        "publish-400": client.post("/publish", data="{oops", content_type="application/json",
                                   headers={**o, **bearer(pub)}),
        "publish-401": client.post("/publish", json={"data": 1}, headers=o),
        "publish-403": client.post("/publish", json={"channel": "billing", "data": 1},
                                   headers={**o, **bearer(pub)}),
        "publish-405": client.get("/publish", headers=o),
        "stats": client.get("/stats", headers=o),
        "healthz": client.get("/healthz", headers=o),
        "not-found": client.get("/nowhere", headers=o),
    }
    expected = {"stream-200": 200, "stream-400": 400, "stream-401": 401, "stream-403": 403,
                "stream-head": 200, "publish-202": 202, "publish-400": 400, "publish-401": 401,
                "publish-403": 403, "publish-405": 405, "stats": 200, "healthz": 200,
                "not-found": 404}
    for name, response in answers.items():
        response.close()
        assert response.status_code == expected[name], (name, response.get_data())
    return answers


def test_cors_listed_origin_on_every_answer(cors_app: Flask) -> None:
    for origin in (ORIGIN, OTHER_ORIGIN):
        for name, response in _answers(cors_app, origin).items():
            try:
                assert_listed(response, origin)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None
            assert "Access-Control-Allow-Methods" not in response.headers, name


def test_cors_unlisted_origin_gets_no_cors_headers(cors_app: Flask) -> None:
    for origin in ("https://evil.example", "https://app.example.com.evil.example",
                   "http://app.example.com", "https://app.example.com:8443", "null"):
        for name, response in _answers(cors_app, origin).items():
            assert cors_headers(response) == {}, (origin, name, response.headers)
            # Caches must still key on Origin: the listed origin gets another answer.
            assert "origin" in vary(response), (origin, name)


def test_no_origin_header_gets_no_cors_headers(cors_app: Flask) -> None:
    client = cors_app.test_client()
    for response in (client.get("/stats"), client.get("/stream?channel=orders"),
                     client.post("/publish", json={"data": 1})):
        assert_no_cors(response)
        assert "origin" in vary(response)


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [("/publish", "POST", {"POST", "OPTIONS"}),
     ("/stream?channel=orders", "GET", {"GET", "HEAD", "OPTIONS"})],
)
def test_cors_preflight(cors_app: Flask, path: str, method: str, allowed: set[str]) -> None:
    client = cors_app.test_client()
    # No token on a preflight: browsers never send credentials on one.
    response = client.options(path, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, last-event-id",
    })
    assert response.status_code in (200, 204)
    assert_listed(response)
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods >= allowed
    allow_headers = {h.strip().lower()
                     for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert allow_headers >= {"authorization", "content-type", "last-event-id"}
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert subscribers(cors_app) == 0 and published(cors_app) == 0
    # An unlisted origin's preflight earns nothing.
    response = client.options(path, headers={"Origin": "https://evil.example",
                                             "Access-Control-Request-Method": method})
    assert_no_cors(response)
    # A plain OPTIONS (no Access-Control-Request-Method) is not a preflight.
    response = client.options(path, headers={"Origin": ORIGIN})
    assert_listed(response)
    assert "Access-Control-Allow-Methods" not in response.headers


def test_cors_star_allows_any_origin_never_with_credentials(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(standalone=True, SSE_CORS_ORIGINS="*", SSE_JWT_SECRET=SECRET)
    for origin in (ORIGIN, "https://anyone.example", "null"):
        for name, response in _answers(app, origin).items():
            headers = cors_headers(response)
            assert headers.get("Access-Control-Allow-Origin") == "*", (name, response.headers)
            assert "Access-Control-Allow-Credentials" not in headers, (name, response.headers)
    client = app.test_client()
    for path, method in (("/publish", "POST"), ("/stream", "GET")):
        response = client.options(path, headers={"Origin": ORIGIN,
                                                 "Access-Control-Request-Method": method})
        headers = cors_headers(response)
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in headers
        assert method in headers["Access-Control-Allow-Methods"]
        assert "Last-Event-ID" in headers["Access-Control-Allow-Headers"]


def test_cors_off_sends_nothing(make_app: Callable[..., Flask]) -> None:
    app = make_app(standalone=True)
    client = app.test_client()
    o = {"Origin": ORIGIN}
    stream = client.get("/stream?channel=orders", headers=o, buffered=False)
    stream.close()
    for response in (stream, client.post("/publish", json={"data": 1}, headers=o),
                     client.get("/stats", headers=o),
                     client.options("/publish", headers={**o,
                                                         "Access-Control-Request-Method": "POST"})):
        assert_no_cors(response)


def test_cors_on_a_library_blueprint() -> None:
    app = Flask(__name__)
    app.config.update(SSE_CORS_ORIGINS=ORIGIN, SSE_HEARTBEAT_SECONDS=HEARTBEAT)
    app.register_blueprint(SSEBlueprint("events", __name__), url_prefix="/events")
    try:
        client = app.test_client()
        stream = client.get("/events?channel=a", headers={"Origin": ORIGIN}, buffered=False)
        stream.close()
        assert_listed(stream)
        assert_listed(client.get("/events?channel=a%20b", headers={"Origin": ORIGIN}))
        assert_no_cors(client.get("/events?channel=a", headers={"Origin": "https://x.example"},
                                  buffered=False))
    finally:
        for hub in flask_sse_hub.hubs(app).values():
            hub.broker.stop()


def test_a_token_for_some_audience_is_refused_when_the_hub_names_none() -> None:
    # RFC 7519 §4.1.3: a token whose aud does not name this hub is not for it.
    token = forge({"alg": "HS256"}, {"sse": ALL, "exp": int(time.time()) + 60,
                                     "aud": "another-service"}, SECRET.encode())
    with pytest.raises(Unauthorized, match="audience"):
        verifier(SSE_JWT_SECRET=SECRET).grants(token)
    assert verifier(SSE_JWT_SECRET=SECRET, SSE_JWT_AUDIENCE="another-service").grants(token)
