"""JWTs for the unit tests: the hub's HS256 secret, minting, bearer headers."""

from __future__ import annotations

import time
from typing import Any

import jwt

SECRET = "unit-test-hs256-secret-0123456789abcdef"  # 39 bytes
PUBLISH_TOKEN = "static-publish-token-for-unit-tests"
CHALLENGE = 'Bearer realm="flask-sse-hub"'
INVALID_TOKEN_CHALLENGE = 'Bearer realm="flask-sse-hub", error="invalid_token"'
ALL = {"subscribe": ["*"], "publish": ["*"]}


def mint(
    sse: Any = None, *, exp_in: float | None = 60.0, key: Any = SECRET, alg: str = "HS256",
    **claims: Any,
) -> str:
    """A signed token; ``sse=None`` leaves the claim out, ``exp_in=None`` leaves out ``exp``."""
    payload: dict[str, Any] = dict(claims)
    if exp_in is not None:
        payload["exp"] = time.time() + exp_in
    if sse is not None:
        payload["sse"] = sse
    return jwt.encode(payload, key, algorithm=alg)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
