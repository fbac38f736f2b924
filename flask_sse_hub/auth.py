"""Who may read and publish what: JWT channel grants, and the CORS policy.

Tokens are verified with PyJWT. A token grants channels in its ``sse`` claim::

    {"sse": {"subscribe": ["orders", "user:42:*"], "publish": ["orders"]},
     "exp": 1767225600}

An entry is an exact channel name or a prefix ending in ``*`` (``*`` alone:
every channel). ``exp`` is required: a stream does not outlive its token
(plus the ``LEEWAY_SECONDS`` of clock skew tolerated when checking it).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from flask import Response, request
from werkzeug.wrappers import Request

from .config import HubConfig
from .errors import Forbidden, RequestRefused, Unauthorized
from .wire import GRANT_PATTERN

#: Clock skew tolerated between the service minting tokens and the hub.
LEEWAY_SECONDS = 10
#: Year 10000: later expiries are treated as this one.
MAX_EXP = 253402300800


def _matches(patterns: tuple[str, ...], channel: str) -> bool:
    for pattern in patterns:
        if pattern.endswith("*"):
            if channel.startswith(pattern[:-1]):
                return True
        elif channel == pattern:
            return True
    return False


@dataclass(frozen=True)
class Grants:
    """What one verified token allows, and until when (Unix time).

    ``expires_at`` is ``exp`` plus the tolerated clock skew: the moment the
    same token stops being accepted, so a stream ended then is not reopened
    with it.
    """

    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    expires_at: float
    #: The token's ``sub`` claim: who the stream is, for presence and disconnect.
    subject: str | None = None

    def check_subscribe(self, channels: Iterable[str]) -> None:
        for channel in channels:
            if not _matches(self.subscribe, channel):
                raise Forbidden(f"token does not grant subscribing to channel {channel!r}")

    def check_publish(self, channels: Iterable[str]) -> None:
        for channel in channels:
            if not _matches(self.publish, channel):
                raise Forbidden(f"token does not grant publishing to channel {channel!r}")


class TokenVerifier:
    """Verifies tokens signed with ``SSE_JWT_SECRET`` (HS256) or ``SSE_JWT_PUBLIC_KEY``.

    Each algorithm is bound to its own key (HS256 → the secret; RS256/ES256/
    EdDSA → the public key, by its type), so a token cannot pick its key by
    naming another algorithm.
    """

    def __init__(self, config: HubConfig) -> None:
        self._keys: dict[str, Any] = {}
        if config.jwt_secret is not None:
            self._keys["HS256"] = config.jwt_secret
        if config.jwt_public_key is not None:
            public = config.jwt_public_key
            self._keys.update(dict.fromkeys(public.algorithms, public.key))
        self._audience = config.jwt_audience
        self._issuer = config.jwt_issuer

    @classmethod
    def from_config(cls, config: HubConfig) -> TokenVerifier | None:
        """A verifier when a JWT key is configured, else ``None`` (no token checks)."""
        if config.jwt_secret is None and config.jwt_public_key is None:
            return None
        return cls(config)

    def grants(self, token: str | None) -> Grants:
        """The grants of ``token``; ``Unauthorized`` when it is missing or not valid."""
        if token is None:
            raise Unauthorized("a token is required", token_given=False)
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
            if key is None:
                raise Unauthorized(
                    f"token algorithm {algorithm!r} not accepted "
                    f"(accepted: {', '.join(sorted(self._keys))})"
                )
            claims = jwt.decode(
                token, key, algorithms=[str(algorithm)], audience=self._audience,
                issuer=self._issuer, leeway=LEEWAY_SECONDS,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return _grants_from_claims(claims)


def _grants_from_claims(claims: dict[str, Any]) -> Grants:
    sse = claims.get("sse", {})
    if not isinstance(sse, dict):
        raise Unauthorized("invalid token: claim 'sse' must be an object")
    lists = {}
    for action in ("subscribe", "publish"):
        entries = sse.get(action, [])
        if not isinstance(entries, list) or not all(
            isinstance(entry, str) and GRANT_PATTERN.fullmatch(entry) for entry in entries
        ):
            raise Unauthorized(
                f"invalid token: claim 'sse.{action}' must be a list of channel names "
                "or prefixes ending in '*'"
            )
        lists[action] = tuple(entries)
    # PyJWT compared int(exp); clamped so that an absurd (but signed) exp stays a float.
    expires_at = min(int(claims["exp"]), MAX_EXP) + LEEWAY_SECONDS
    subject = claims.get("sub")
    if subject is not None and not isinstance(subject, str):
        raise Unauthorized("invalid token: claim 'sub' must be a string")
    return Grants(lists["subscribe"], lists["publish"], float(expires_at), subject)


def mint_token(
    secret: str, *, subscribe: Iterable[str] = (), publish: Iterable[str] = (),
    ttl: float = 3600, subject: str | None = None, audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """A token (HS256, ``secret``) granting the given channels for ``ttl`` seconds.

    For Flask apps that share ``SSE_JWT_SECRET`` with the hub; others mint the
    same claims with any JWT library (README)::

        token = mint_token(app.config["SSE_JWT_SECRET"], subscribe=["orders", "user:42:*"])
    """
    grants = {"subscribe": list(subscribe), "publish": list(publish)}
    for action, entries in grants.items():
        for entry in entries:
            if not isinstance(entry, str) or not GRANT_PATTERN.fullmatch(entry):
                raise ValueError(
                    f"{action}: {entry!r} is neither a channel name nor a prefix ending in '*'"
                )
    if not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    claims: dict[str, Any] = {"sse": grants, "exp": int(time.time() + ttl)}
    for claim, value in (("sub", subject), ("aud", audience), ("iss", issuer)):
        if value is not None:
            claims[claim] = value
    return jwt.encode(claims, secret, algorithm="HS256")


def request_token(request: Request, cookie: str | None = None, *, query: bool = False) -> (
    str | None
):
    """The token a request presents: ``Authorization: Bearer``, then ``?token=``, then a cookie.

    ``query`` and ``cookie`` are for subscribing: ``EventSource`` cannot set
    headers. A publisher must use the header (a cookie would let any page the
    user visits publish in their name).
    """
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        # Another scheme on a subscribe is someone else's credentials (a site
        # behind HTTP Basic auth: the browser sends it on every request), not
        # a try at ours: the token may still come in the query or a cookie.
        other_scheme = scheme.lower() not in ("", "bearer")
        if not (other_scheme and (query or cookie is not None)):
            raise Unauthorized(
                "the Authorization header must be 'Bearer <token>'", token_given=False
            )
    if query and "token" in request.args:
        return request.args["token"]
    if cookie is not None:
        return request.cookies.get(cookie)
    return None


class CorsPolicy:
    """``SSE_CORS_ORIGINS``: which other origins' pages may read the hub's answers.

    Listed origins are echoed with ``Access-Control-Allow-Credentials: true``
    (cookies and ``withCredentials`` work); ``*`` allows every origin but never
    with credentials. Origins not listed get no CORS headers: the browser then
    withholds the answer from the page.
    """

    #: Request headers a cross-origin page may send (preflight answer).
    ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
    MAX_AGE = "600"

    def __init__(self, origins: tuple[str, ...]) -> None:
        self._any = origins == ("*",)
        self._origins = frozenset(origins)

    def apply(self, request: Request, response: Response) -> Response:
        """Add the CORS headers ``request`` earns to ``response`` (twice changes nothing)."""
        if not self._any:
            response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is None or not (self._any or origin in self._origins):
            return response
        headers = response.headers
        if self._any:
            headers["Access-Control-Allow-Origin"] = "*"
        else:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Allow-Credentials"] = "true"
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            allowed = headers.get("Allow", "GET, HEAD, OPTIONS")
            headers["Access-Control-Allow-Methods"] = allowed
            headers["Access-Control-Allow-Headers"] = self.ALLOW_HEADERS
            headers["Access-Control-Max-Age"] = self.MAX_AGE
        return response


def check_operator(secret: str | None) -> None:
    """``/stats``, ``/metrics``, ``/presence``: loopback clients (not relayed), or ``secret``.

    ``secret`` is ``SSE_STATS_TOKEN``: 401 when a wrong one is given, 403 for
    a client that is not on loopback while it is unset.
    """
    if secret is None:
        if not is_local_request(request):
            raise RequestRefused(403, "only loopback clients may read this; set SSE_STATS_TOKEN")
        return
    token = request_token(request)
    if token is not None and hmac.compare_digest(token.encode(), secret.encode()):
        return
    if token is None and is_local_request(request):
        return
    raise Unauthorized(
        "wrong bearer token" if token else "missing bearer token (SSE_STATS_TOKEN)",
        token_given=token is not None,
    )


_FORWARDING_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")


def is_local_request(req: Request) -> bool:
    """From loopback, and not relayed by a proxy on this host (forwarding headers)."""
    environ = req.environ
    forwarded = any(key in environ for key in _FORWARDING_HEADERS)
    return not forwarded and is_loopback(req.remote_addr)


@functools.lru_cache(maxsize=1024)
def is_loopback(address: str | None) -> bool:
    """A loopback IP address (``127.0.0.0/8``, ``::1``)."""
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
