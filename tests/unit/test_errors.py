"""The hub's exceptions (``errors.py``): each one's HTTP status, and the one JSON answer for all.

Validation errors are ``ValueError`` s too, so callers catch them the
ordinary way; ``error_response`` (blueprint.py) turns any of them into the
answer a client gets: the status, the error's headers, ``{"error": reason}``.
"""

from __future__ import annotations

import inspect

import pytest
from flask import Flask

from flask_sse_hub import errors
from flask_sse_hub.blueprint import error_response
from flask_sse_hub.errors import HubError

#: Every error the hub raises on purpose, as raised, and the status it answers with.
EXPECTED: list[tuple[HubError, int]] = [
    (errors.InvalidChannel("bad channel"), 400),
    (errors.TooManyChannels("too many channels"), 400),
    (errors.InvalidEventType("bad event type"), 400),
    (errors.InvalidData("bad data"), 400),
    (errors.EventTooLarge("event too large"), 413),
    (errors.BatchTooLarge("batch too large"), 413),
    (errors.Unauthorized("no token", token_given=False), 401),
    (errors.Forbidden("not granted"), 403),
    (errors.TooManyConnections("too many streams from this address"), 429),
    (errors.AtCapacity("full"), 503),
    (errors.BackendUnavailable("redis is down"), 503),
    (errors.WrongServer("sync worker"), 500),
    (errors.IdempotencyConflict("key reused for another publish"), 422),
    (errors.RequestRefused(415, "not JSON"), 415),
    (errors.ConfigError("SSE_X is wrong"), 500),
]


def test_every_hub_error_of_the_module_has_its_status_listed_here() -> None:
    defined = {
        cls for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, HubError) and cls is not HubError
    }
    assert defined == {type(exc) for exc, _ in EXPECTED}


@pytest.mark.parametrize(("exc", "status"), EXPECTED, ids=[type(e).__name__ for e, _ in EXPECTED])
def test_each_error_answers_its_status_with_its_reason_as_json(exc: HubError, status: int) -> None:
    assert exc.status == status
    with Flask(__name__).app_context():
        response = error_response(exc)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.get_json() == {"error": str(exc)}
    for name, value in exc.headers.items():
        assert response.headers[name] == value


@pytest.mark.parametrize(
    "cls", [errors.InvalidChannel, errors.TooManyChannels, errors.InvalidEventType,
            errors.InvalidData, errors.EventTooLarge, errors.BatchTooLarge,
            errors.IdempotencyConflict, errors.ConfigError],
)
def test_validation_errors_are_value_errors(cls: type[HubError]) -> None:
    assert issubclass(cls, ValueError)


def test_unauthorized_says_how_to_authenticate_and_why_a_given_token_failed() -> None:
    # RFC 6750 section 3: the challenge, with error="invalid_token" only for a token given.
    assert errors.Unauthorized("none").headers == {
        "WWW-Authenticate": 'Bearer realm="flask-sse-hub", error="invalid_token"'
    }
    assert errors.Unauthorized("none", token_given=False).headers == {
        "WWW-Authenticate": 'Bearer realm="flask-sse-hub"'
    }


def test_headers_of_one_error_never_leak_into_another() -> None:
    errors.Unauthorized("one")
    refused = errors.RequestRefused(408, "too slow", {"Connection": "close"})
    assert errors.Forbidden("x").headers == {} and HubError.headers == {}
    assert errors.RequestRefused(400, "bad").headers == {}
    assert refused.headers == {"Connection": "close"} and refused.status == 408
