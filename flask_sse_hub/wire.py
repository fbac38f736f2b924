"""The Server-Sent Events wire format (WHATWG HTML, "Server-sent events").

https://html.spec.whatwg.org/multipage/server-sent-events.html; what the hub
writes, byte by byte: docs/protocol.md#wire-format.

Pure functions, no I/O: validating channel names, event types and ids, and
encoding events to the bytes written on the socket. An event is encoded once
per publish; the resulting ``bytes`` object is shared by every subscriber.

An encoded event is split in two so that the backend can assign the id after
validation: :func:`encode_body` makes the ``event:``/``retry:``/``data:`` lines
and the blank line that dispatches it, and :func:`frame` puts the ``id:`` line
in front once the hub knows the id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import EventTooLarge, HubError, InvalidChannel, InvalidData, InvalidEventType

_CHANNEL = r"[A-Za-z0-9_\-.:/]{1,128}"
CHANNEL_PATTERN = re.compile(_CHANNEL)
#: What a token may grant: a channel, a channel prefix ending in ``*``, or ``*`` (all).
GRANT_PATTERN = re.compile(rf"\*|{_CHANNEL}\*?")
# Ids are short and CORS-safelisted, so a browser's cross-origin reconnect (which sends
# Last-Event-ID) needs no preflight: docs/protocol.md#id-shape.
EVENT_ID_PATTERN = re.compile(r"[A-Za-z0-9._\-]{1,64}")
MAX_EVENT_TYPE_LENGTH = 128
#: Event types the hub itself sends; publishers may not use this prefix.
RESERVED_TYPE_PREFIX = "sse-hub-"
GAP_EVENT_TYPE = "sse-hub-gap"
POSITION_EVENT_TYPE = "sse-hub-position"
DISCONNECT_EVENT_TYPE = "sse-hub-disconnect"
#: The fields of an event as a publisher gives it (``POST /publish``, ``publish_many``).
EVENT_FIELDS = frozenset({"channel", "event", "data", "retry"})
#: ``id: `` + the longest id + LF: the room an id line can take in a frame.
MAX_ID_LINE_BYTES = len(b"id: \n") + 64

_FORBIDDEN_IN_TYPE = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event, encoded once, waiting for its id.

    ``body`` holds every line of the event but the ``id:`` line, ending in the
    blank line that makes a client dispatch it.
    """

    channel: str
    body: bytes


def validate_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name; else raise InvalidChannel.

    Valid: 1-128 characters from ``A-Z a-z 0-9 _ - . : /`` (docs/protocol.md#channels).
    """
    if not isinstance(name, str) or CHANNEL_PATTERN.fullmatch(name) is None:
        raise InvalidChannel(
            f"invalid channel name {_preview(name)}: "
            "use 1-128 characters from A-Z a-z 0-9 _ - . : /"
        )
    return name


def validate_subject(subject: object) -> str:
    """Return ``subject`` if it may name a stream (presence, disconnect); else InvalidData."""
    if not isinstance(subject, str) or not 0 < len(subject) <= 256:
        raise InvalidData(f"subject must be a string of 1-256 characters, got {_preview(subject)}")
    return subject


def validate_event_type(event: object) -> str:
    """Return ``event`` if it may be sent as an ``event:`` field; else raise InvalidEventType."""
    if not isinstance(event, str):
        raise InvalidEventType(f"event type must be a string, not {type(event).__name__}")
    if not event or len(event) > MAX_EVENT_TYPE_LENGTH:
        raise InvalidEventType(
            f"event type must be 1-{MAX_EVENT_TYPE_LENGTH} characters, got {len(event)}"
        )
    if _FORBIDDEN_IN_TYPE.search(event):
        raise InvalidEventType(f"event type {_preview(event)} contains CR, LF or NUL")
    if not event.isascii():
        try:
            event.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventType(f"event type {_preview(event)} is not valid Unicode") from None
    if event.startswith(RESERVED_TYPE_PREFIX):
        raise InvalidEventType(f"event types starting with {RESERVED_TYPE_PREFIX!r} are reserved")
    return event


def is_event_id(value: str) -> bool:
    """True when ``value`` has the shape of an id this hub hands out (docs/protocol.md#id-shape)."""
    return EVENT_ID_PATTERN.fullmatch(value) is not None


def serialize_data(data: object) -> str:
    """The text an event carries: ``str`` as is, anything else as compact JSON.

    Raises :class:`TypeError` for values JSON cannot encode and
    :class:`InvalidData` for NaN/Infinity, which ``JSON.parse`` rejects, and
    for nesting too deep to encode.
    """
    if isinstance(data, str):
        return data
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # allow_nan=False, or a circular reference
        raise InvalidData(f"data cannot be encoded as JSON: {exc}") from None
    except RecursionError:  # e.g. ~1000 nested lists: too deep for json.dumps
        raise InvalidData("data is nested too deeply to encode as JSON") from None


def encode_body(
    data: str, *, event: str | None = None, retry: int | None = None
) -> bytes:
    """Encode everything of an event but its id line.

    Every line of ``data`` becomes one ``data: `` line; the WHATWG parser splits on CRLF,
    lone CR and lone LF alike, so all three are normalised first. The space
    after the colon is always written, so data that starts with a space
    survives (a parser strips exactly one).
    """
    parts: list[str] = []
    if event is not None:
        parts.append(f"event: {validate_event_type(event)}\n")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise InvalidData(f"retry must be a non-negative integer, got {retry!r}")
        parts.append(f"retry: {retry}\n")
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    parts.append("data: " + "\ndata: ".join(lines) + "\n\n")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
        raise InvalidData(f"data is not valid Unicode text: {exc.reason}") from None


def make_event(
    data: Any,
    *,
    channel: str = "default",
    event: str | None = None,
    retry: int | None = None,
    max_bytes: int = 65536,
) -> Event:
    """Validate and encode one event for ``channel``.

    >>> make_event({"order": 42}, channel="orders", event="created").body
    b'event: created\\ndata: {"order":42}\\n\\n'
    """
    validate_channel(channel)
    body = encode_body(serialize_data(data), event=event, retry=retry)
    size = len(body) + MAX_ID_LINE_BYTES
    if size > max_bytes:
        raise EventTooLarge(f"encoded event is {size} bytes, over the limit of {max_bytes}")
    return Event(channel=channel, body=body)


def events_from_items(
    items: Iterable[object], *, max_bytes: int, numbered: bool = True,
) -> list[Event]:
    """Validate and encode a batch: items with the fields of ``POST /publish``.

    Each item is a mapping with ``data`` (required), ``channel``, ``event``,
    ``retry``. Every item is checked before anything is published; an error
    names the bad item's index (``numbered``) and keeps its type.
    """
    events = []
    for index, item in enumerate(items):
        where = f"events[{index}]: " if numbered else ""
        if not isinstance(item, Mapping):
            raise InvalidData(f"{where}an event must be a JSON object, not {type(item).__name__}")
        unknown = set(item) - EVENT_FIELDS
        if unknown:
            raise InvalidData(f"{where}unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        if "data" not in item:
            raise InvalidData(f"{where}missing field 'data'")
        try:
            events.append(make_event(
                item["data"], channel=item.get("channel", "default"), event=item.get("event"),
                retry=item.get("retry"), max_bytes=max_bytes,
            ))
        except (HubError, TypeError) as exc:
            raise type(exc)(where + str(exc)) from None
    return events


def frame(event_id: str, body: bytes) -> bytes:
    """The complete bytes of an event: its ``id:`` line, then its body."""
    return b"id: " + event_id.encode("ascii") + b"\n" + body


def encode_preamble(retry_ms: int) -> bytes:
    """The first chunk of every stream: the reconnect delay and a comment.

    Written right after the headers so that clients, proxies and load
    balancers see the stream open at once. No blank line ends it: it is not
    an event (a WHATWG parser dispatches nothing either way, but parsers like
    httpx-sse 0.4 turn every blank line into an empty ``message``).
    """
    return f"retry: {retry_ms}\n: flask-sse-hub stream open\n".encode("ascii")


#: A comment line alone, for the same reason as the preamble: no blank line.
HEARTBEAT = b": heartbeat\n"


def encode_ping(event_type: str) -> bytes:
    """A heartbeat as a named event without id, for watchdogs that cannot see comments.

    The empty ``data:`` line is needed: a client dispatches nothing when the
    data buffer is empty.
    """
    return f"event: {event_type}\ndata: \n\n".encode()


def encode_gap(requested_id: str, position_id: str | None) -> bytes:
    """The ``sse-hub-gap`` event that starts a stream whose resume id is unknown or trimmed.

    Its id (when given) is the position just before the history that follows,
    so a client that disconnects right after it resumes from there instead of
    from the stale id and does not get told about the same gap twice.
    """
    body = encode_body(json.dumps({"last_event_id": requested_id}), event=None)
    body = f"event: {GAP_EVENT_TYPE}\n".encode() + body
    return frame(position_id, body) if position_id is not None else body


def encode_disconnect(channel: str | None, subject: str | None) -> bytes:
    """The last event of a stream the hub ends on demand (``disconnect()``); no id.

    Without an id the client keeps the id of the last event it got, so if it
    comes back (and is let in) it resumes exactly where it was.
    """
    data = json.dumps({"channel": channel, "subject": subject})
    return f"event: {DISCONNECT_EVENT_TYPE}\ndata: {data}\n\n".encode()


#: The channel of the hub's control entries (a disconnect travelling to every
#: worker with the events): not a valid channel name, so no stream has it and
#: no replay returns it.
CONTROL_CHANNEL = "\x00control"


def control_event(**fields: Any) -> Event:
    """A control entry for every worker's broadcaster, in order with the events."""
    return Event(channel=CONTROL_CHANNEL, body=json.dumps(fields).encode() + b"\n\n")


def control_fields(event_frame: bytes) -> dict[str, Any]:
    """The fields of a control entry from its frame (``id:`` line, then the JSON)."""
    fields = json.loads(event_frame.split(b"\n", 1)[1])
    if not isinstance(fields, dict):
        raise ValueError("a control entry is a JSON object")
    return fields


def encode_position(position_id: str) -> bytes:
    """Where a new stream starts, as the client's last event id; dispatches no event.

    A block with an id and no data sets a WHATWG client's last event id and
    fires nothing. Without it, a stream the hub ends before its first event
    (slow, max age, shutdown) would reconnect with no ``Last-Event-ID`` and
    miss what was published meanwhile. The type is for lenient parsers that
    report data-less blocks anyway (httpx-sse): they see a hub event, not an
    empty ``message``.
    """
    return f"id: {position_id}\nevent: {POSITION_EVENT_TYPE}\n\n".encode("ascii")


def _preview(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
