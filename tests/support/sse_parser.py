"""Incremental ``text/event-stream`` parser for tests.

Implements exactly the WHATWG HTML algorithm "Interpreting an event stream"
(section 9.2.6 of the "Server-sent events" chapter,
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation),
i.e. what a browser's ``EventSource`` sees. Pure Python, standard library only.

Byte chunks may be split anywhere (inside a CRLF pair, inside a multi-byte
UTF-8 sequence, inside a line): feeding a stream in any number of pieces
yields exactly the same events as feeding it at once.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from dataclasses import dataclass

__all__ = ["Event", "EventStreamParser", "parse_stream"]

_LINE_END = re.compile(r"[\r\n]")


@dataclass(frozen=True)
class Event:
    """A dispatched event, as a browser would expose it on a ``MessageEvent``.

    ``last_event_id`` is the last event ID buffer at dispatch time (the
    browser's ``event.lastEventId``): it persists across events until an
    ``id`` field changes it.
    """

    type: str
    data: str
    last_event_id: str


class EventStreamParser:
    """Incremental parser; call :meth:`feed` with raw body bytes as they arrive.

    Attributes:
        comments: every comment line seen so far, in order, without the leading
            ``:`` and with one leading U+0020 SPACE removed (``": ping"`` is
            recorded as ``"ping"``). The spec ignores comments; they are kept
            here so tests can observe heartbeats.
        retry: the last valid ``retry`` field value (the reconnection time in
            milliseconds), or ``None`` if none was seen.
    """

    def __init__(self) -> None:
        # "Streams must be decoded using the UTF-8 decode algorithm": invalid
        # sequences become U+FFFD. The incremental decoder keeps incomplete
        # multi-byte sequences until the next chunk.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._seen_text = False  # has any character been decoded yet (BOM)
        self._skip_lf = False  # previous chunk ended with CR: swallow one LF
        self._line_parts: list[str] = []  # incomplete line (no line end yet)
        self._data: list[str] = []  # data buffer, as pieces ("" iff empty)
        self._event_type = ""  # event type buffer
        self._last_event_id = ""  # last event ID buffer
        self.comments: list[str] = []
        self.retry: int | None = None

    @property
    def last_event_id(self) -> str:
        """The current last event ID buffer (may be ahead of the last event)."""
        return self._last_event_id

    @property
    def has_pending(self) -> bool:
        """True if a partial line or an undispatched event is buffered.

        Per spec, such pending data is discarded if the stream ends now.
        """
        return bool(self._line_parts or self._data or self._event_type)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume the next chunk of the stream; return the events it completed."""
        text = self._decoder.decode(bytes(data))
        if text and not self._seen_text:
            # "The UTF-8 decode algorithm strips one leading UTF-8 Byte Order
            # Mark (BOM), if any." -- only at the very start of the stream.
            self._seen_text = True
            if text[0] == "\ufeff":
                text = text[1:]
        events: list[Event] = []
        self._scan(text, events)
        return events

    def _scan(self, text: str, events: list[Event]) -> None:
        """Split ``text`` into lines and process each complete one.

        "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE
        FEED (CRLF) character pair, a single U+000A LINE FEED (LF) character,
        or a single U+000D CARRIAGE RETURN (CR) character." A CR always ends a
        line at once; if the next character (possibly in the next chunk) is LF,
        that LF belongs to the same line end and is skipped.
        """
        if not text:
            return
        start = 0
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                start = 1
        n = len(text)
        while True:
            m = _LINE_END.search(text, start)
            if m is None:
                if start < n:
                    self._line_parts.append(text[start:])
                return
            end = m.start()
            if self._line_parts:
                self._line_parts.append(text[start:end])
                line = "".join(self._line_parts)
                self._line_parts.clear()
            else:
                line = text[start:end]
            if text[end] == "\r":
                if end + 1 < n:
                    start = end + 2 if text[end + 1] == "\n" else end + 1
                else:
                    start = n
                    self._skip_lf = True
            else:
                start = end + 1
            self._process_line(line, events)

    def _process_line(self, line: str, events: list[Event]) -> None:
        """Apply the per-line rules of the spec."""
        if not line:
            # "If the line is empty (a blank line): Dispatch the event."
            self._dispatch(events)
            return
        if line[0] == ":":
            # "If the line starts with a U+003A COLON character (:): Ignore the line."
            comment = line[1:]
            if comment.startswith(" "):
                comment = comment[1:]
            self.comments.append(comment)
            return
        # "If the line contains a U+003A COLON character (:): Collect the
        # characters on the line before the first U+003A COLON character (:),
        # and let field be that string. Collect the characters on the line after
        # the first U+003A COLON character (:), and let value be that string.
        # If value starts with a U+0020 SPACE character, remove it from value."
        # "Otherwise, [...] Process the field using the whole line as the field
        # name, and the empty string as the field value."
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._process_field(field, value)

    def _process_field(self, field: str, value: str) -> None:
        """Field names are case-sensitive; unknown fields are ignored."""
        if field == "event":
            self._event_type = value
        elif field == "data":
            # "Append the field value to the data buffer, then append a single
            # U+000A LINE FEED (LF) character to the data buffer."
            self._data.append(value)
            self._data.append("\n")
        elif field == "id":
            # "If the field value does not contain U+0000 NULL, then set the
            # last event ID buffer to the field value. Otherwise, ignore the field."
            if "\x00" not in value:
                self._last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            # "If the field value consists of only ASCII digits, then interpret
            # the field value as an integer in base ten, and set the event
            # stream's reconnection time to that integer. Otherwise, ignore the
            # field." (str.isdigit alone would accept non-ASCII digits; it is
            # False for "".) A value too long for int() is ignored as well.
            with contextlib.suppress(ValueError):
                self.retry = int(value)

    def _dispatch(self, events: list[Event]) -> None:
        """Dispatch the event, following the spec's steps in order."""
        # 1. "Set the last event ID string of the event source to the value of
        #    the last event ID buffer." (the buffer is NOT reset)
        last_event_id = self._last_event_id
        # 2. "If the data buffer is an empty string, set the data buffer and the
        #    event type buffer to the empty string and return."
        if not self._data:
            self._event_type = ""
            return
        # 3. "If the data buffer's last character is a U+000A LINE FEED (LF)
        #    character, then remove the last character from the data buffer."
        data = "".join(self._data)
        if data.endswith("\n"):
            data = data[:-1]
        # 5. type: "the value of the event type buffer" if not empty, else "message".
        event_type = self._event_type or "message"
        # 6. "Set the data buffer and the event type buffer to the empty string."
        self._data = []
        self._event_type = ""
        events.append(Event(type=event_type, data=data, last_event_id=last_event_id))


def parse_stream(data: bytes | bytearray | memoryview) -> list[Event]:
    """Parse a complete stream at once.

    "If the file ends in the middle of an event, before the final empty line,
    the incomplete event is not dispatched."
    """
    return EventStreamParser().feed(data)
