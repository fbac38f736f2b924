"""The hub's exceptions, each with the HTTP status it maps to.

Validation errors subclass :class:`ValueError` (and a data that is not JSON
serialisable raises the plain :class:`TypeError` from :mod:`json`), so callers
can catch them the ordinary Python way; :attr:`HubError.status` is what the
HTTP layer answers with, in one place (:func:`flask_sse_hub.blueprint.error_response`).
"""

from __future__ import annotations


class HubError(Exception):
    """Base class of every error the hub raises on purpose."""

    #: HTTP status answered when this error ends a request.
    status: int = 500
    #: Extra headers of that answer (e.g. ``WWW-Authenticate`` on 401). Never mutated.
    headers: dict[str, str] = {}  # noqa: RUF012 - read-only class default


class InvalidChannel(HubError, ValueError):
    """A channel name is not 1-128 characters from ``A-Z a-z 0-9 _ - . : /``."""

    status = 400


class TooManyChannels(HubError, ValueError):
    """A subscribe request names more channels than ``SSE_MAX_CHANNELS``."""

    status = 400


class InvalidEventType(HubError, ValueError):
    """An event type is empty, over 128 characters, has CR/LF/NUL, or starts with ``sse-hub-``."""

    status = 400


class InvalidData(HubError, ValueError):
    """Event data cannot be encoded: lone surrogates, NaN/Infinity in JSON, bad ``retry``."""

    status = 400


class EventTooLarge(HubError, ValueError):
    """The encoded event is larger than ``SSE_MAX_EVENT_BYTES``."""

    status = 413


class BatchTooLarge(HubError, ValueError):
    """A publish batch holds more events than the history can retain: nothing was published."""

    status = 413


class Unauthorized(HubError):
    """A request needs a valid token (``SSE_JWT_*``): none, malformed, expired or wrongly signed."""

    status = 401

    def __init__(self, reason: str, *, token_given: bool = True) -> None:
        super().__init__(reason)
        # RFC 6750 §3: say how to authenticate, and why a given token failed.
        challenge = 'Bearer realm="flask-sse-hub"'
        if token_given:
            challenge += ', error="invalid_token"'
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(HubError):
    """A valid token (or ``@authorize``) does not grant this channel."""

    status = 403


class TooManyConnections(HubError):
    """A client address already holds ``SSE_MAX_CONNECTIONS_PER_IP`` streams on this worker."""

    status = 429


class AtCapacity(HubError):
    """This worker already holds ``SSE_MAX_STREAMS`` streams.

    Not answered as an error: the stream view answers 200 with a long
    ``retry:`` and ends, since an ``EventSource`` gives up for good on a 5xx.
    """

    status = 503


class BackendUnavailable(HubError):
    """The backplane (Redis) cannot be reached; nothing was published."""

    status = 503


class WrongServer(HubError):
    """The app is served in a way a stream cannot work in; the reason says what to change.

    A server that runs one request per process at a time (gunicorn's sync
    worker) would be blocked by one stream; several processes with the
    memory backend would each see only their own subscribers.
    """

    status = 500


class IdempotencyConflict(HubError, ValueError):
    """An ``Idempotency-Key`` reused for a different publish within its time."""

    status = 422


class RequestRefused(HubError):
    """An HTTP request to the standalone hub that is malformed or not allowed.

    ``status`` says which (400, 403, 408, 413, 415); the reason is the JSON ``error``.
    """

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or {}


class ConfigError(HubError, ValueError):
    """An ``SSE_*`` setting has a value of the wrong type or range."""
