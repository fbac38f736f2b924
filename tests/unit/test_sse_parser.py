"""The test-support SSE parser against the WHATWG "Interpreting an event stream" rules."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.sse_parser import Event, EventStreamParser, parse_stream


def ev(data: str, type: str = "message", last_event_id: str = "") -> Event:
    return Event(type=type, data=data, last_event_id=last_event_id)


def feed_pieces(pieces: list[bytes]) -> tuple[list[Event], EventStreamParser]:
    parser = EventStreamParser()
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events, parser


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --------------------------------------------------------------------------
# The WHATWG standard's own examples (HTML, 9.2.6 "Interpreting an event stream",
# https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).

SPEC_EXAMPLES: list[tuple[str, bytes, list[Event]]] = [
    (
        "stock-ticker: data lines joined with LF",
        b"data: YHOO\ndata: +2\ndata: 10\n\n",
        [ev("YHOO\n+2\n10")],
    ),
    (
        "four blocks: comment, id 1, id reset, leading space kept",
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n",
        [ev("first event", last_event_id="1"), ev("second event"), ev(" third event")],
    ),
    (
        "empty data, single newline, last block not dispatched",
        b"data\n\ndata\ndata\n\ndata:",
        [ev(""), ev("\n")],
    ),
    (
        "space after colon is optional",
        b"data:test\n\ndata: test\n\n",
        [ev("test"), ev("test")],
    ),
    (
        "named events",
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
        [ev("73857293", "add"), ev("2153", "remove"), ev("113411", "add")],
    ),
]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [(s, e) for _, s, e in SPEC_EXAMPLES],
    ids=[name for name, _, _ in SPEC_EXAMPLES],
)
def test_spec_examples(stream: bytes, expected: list[Event]) -> None:
    assert parse_stream(stream) == expected


def test_spec_example_comment_is_recorded() -> None:
    parser = EventStreamParser()
    parser.feed(b": test stream\n\ndata: first event\nid: 1\n\n")
    assert parser.comments == ["test stream"]


# --------------------------------------------------------------------------
# Field and dispatch rules.

FIELD_CASES: list[tuple[str, bytes, list[Event]]] = [
    ("only one leading space stripped", b"data:  two\n\n", [ev(" two")]),
    ("colons in the value are kept", b"data: a:b: c\n\n", [ev("a:b: c")]),
    ("field without colon has empty value", b"data\n\n", [ev("")]),
    ("data with empty value", b"data:\n\n", [ev("")]),
    ("trailing empty data line", b"data: a\ndata:\n\n", [ev("a\n")]),
    ("only ONE trailing LF removed", b"data\ndata\ndata\n\n", [ev("\n\n")]),
    ("tab is not stripped", b"data:\tx\n\n", [ev("\tx")]),
    ("NUL in data is kept", b"data: a\x00b\n\n", [ev("a\x00b")]),
    (
        "event type resets after dispatch",
        b"event: foo\ndata: a\n\ndata: b\n\n",
        [ev("a", "foo"), ev("b")],
    ),
    ("empty event field means message", b"event:\ndata: x\n\n", [ev("x")]),
    ("last event field wins", b"event: a\nevent: b\ndata: x\n\n", [ev("x", "b")]),
    ("event without data is not dispatched, type reset", b"event: foo\n\ndata: x\n\n", [ev("x")]),
    ("blank lines alone dispatch nothing", b"\n\n\n\r\n\r", []),
    ("comment lines do not dispatch", b": a\n:\n\n", []),
    ("comment inside an event", b"data: a\n: c\ndata: b\n\n", [ev("a\nb")]),
    ("unknown fields ignored", b"foo: bar\ndata: x\nx: y\n\n", [ev("x")]),
    (
        "field names are case-sensitive",
        b"data: x\nDATA: y\nData: z\nEvent: e\nID: 9\n\n",
        [ev("x")],
    ),
    ("field name with a space is unknown", b"data : x\n data: y\ndata: z\n\n", [ev("z")]),
    (
        "id persists across events",
        b"id: 1\ndata: a\n\ndata: b\n\n",
        [ev("a", last_event_id="1"), ev("b", last_event_id="1")],
    ),
    ("id after data applies to that event", b"data: a\nid: 7\n\n", [ev("a", last_event_id="7")]),
    (
        "id-only block sets the id for later events",
        b"id: 5\n\ndata: x\n\n",
        [ev("x", last_event_id="5")],
    ),
    (
        "empty id resets",
        b"id: 1\ndata: a\n\nid:\ndata: b\n\n",
        [ev("a", last_event_id="1"), ev("b")],
    ),
    ("bare id resets", b"id: 1\ndata: a\n\nid\ndata: b\n\n", [ev("a", last_event_id="1"), ev("b")]),
    ("id with NUL ignored", b"id: 1\n\nid: a\x00b\ndata: x\n\n", [ev("x", last_event_id="1")]),
    ("id with only NUL ignored", b"id: 1\nid: \x00\ndata: x\n\n", [ev("x", last_event_id="1")]),
    ("id keeps inner spaces", b"id:  a b \ndata: x\n\n", [ev("x", last_event_id=" a b ")]),
    ("incomplete last event not dispatched", b"data: a\n\ndata: b\n", [ev("a")]),
    ("unterminated line not dispatched", b"data: a\n\ndata: b", [ev("a")]),
    ("retry does not dispatch", b"retry: 100\n\n", []),
]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [(s, e) for _, s, e in FIELD_CASES],
    ids=[name for name, _, _ in FIELD_CASES],
)
def test_fields_and_dispatch(stream: bytes, expected: list[Event]) -> None:
    assert parse_stream(stream) == expected


RETRY_CASES: list[tuple[bytes, int | None]] = [
    (b"retry: 1000\n", 1000),
    (b"retry:0\n", 0),
    (b"retry: 0042\n", 42),
    (b"retry: 10a0\n", None),
    (b"retry: -1\n", None),
    (b"retry: +5\n", None),
    (b"retry: 1.5\n", None),
    (b"retry: 1e3\n", None),
    (b"retry:  100\n", None),  # value " 100": a space is not a digit
    (b"retry: 100 \n", None),
    (b"retry:\n", None),
    (b"retry\n", None),
    ("retry: \u0661\u0662\n".encode(), None),  # Arabic-Indic digits are not ASCII digits
    ("retry: \uff11\n".encode(), None),  # fullwidth digit one
    (b"retry: 500\nretry: x\n", 500),  # an invalid value keeps the previous one
    (b"retry: 500\nretry: 20\n", 20),
    (b"Retry: 500\n", None),
    (b"retry: 500", None),  # line not terminated yet
]


@pytest.mark.parametrize(("stream", "expected"), RETRY_CASES)
def test_retry(stream: bytes, expected: int | None) -> None:
    parser = EventStreamParser()
    assert parser.feed(stream) == []
    assert parser.retry == expected


def test_comments_collected() -> None:
    parser = EventStreamParser()
    parser.feed(b": hi\n:\n:no-space\n:  two spaces\n: a: b\r\n:cr\rdata: x\n\n")
    assert parser.comments == ["hi", "", "no-space", " two spaces", "a: b", "cr"]


def test_comment_split_across_feeds() -> None:
    parser = EventStreamParser()
    assert parser.feed(b": keep") == []
    assert parser.comments == []
    parser.feed(b"alive\r")
    assert parser.comments == ["keepalive"]
    parser.feed(b"\n: ping\n")
    assert parser.comments == ["keepalive", "ping"]


def test_last_event_id_property_and_pending() -> None:
    parser = EventStreamParser()
    assert not parser.has_pending
    parser.feed(b"id: 3\n")
    assert parser.last_event_id == "3"
    assert not parser.has_pending
    parser.feed(b"data: x\n")
    assert parser.has_pending
    assert parser.feed(b"\n") == [ev("x", last_event_id="3")]
    assert not parser.has_pending
    parser.feed(b"da")
    assert parser.has_pending


# --------------------------------------------------------------------------
# Line ends.

LINE_END_CASES: list[tuple[str, bytes, list[Event]]] = [
    ("LF", b"data: a\ndata: b\n\n", [ev("a\nb")]),
    ("CRLF", b"data: a\r\ndata: b\r\n\r\n", [ev("a\nb")]),
    ("CR", b"data: a\rdata: b\r\r", [ev("a\nb")]),
    ("mixed", b"data: a\r\ndata: b\rdata: c\n\r\n", [ev("a\nb\nc")]),
    ("CRLF is one line end, not two", b"data: a\r\n", []),
    ("LF CR is two line ends", b"data: a\n\r", [ev("a")]),
    ("CR CR is two line ends", b"data: a\r\r", [ev("a")]),
    ("CR LF LF", b"data: a\r\n\n", [ev("a")]),
    ("CR then CRLF", b"data: a\r\r\n", [ev("a")]),
    ("LF LF", b"data: a\n\n", [ev("a")]),
    ("CR LF CR LF events", b"data: 1\r\n\r\ndata: 2\r\n\r\n", [ev("1"), ev("2")]),
    ("CR events", b"data: 1\r\rdata: 2\r\r", [ev("1"), ev("2")]),
    (
        "U+2028 and NEL are not line ends",
        "data: a\u2028b\x85c\x0bd\x0ce\n\n".encode(),
        [ev("a\u2028b\x85c\x0bd\x0ce")],
    ),
]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [(s, e) for _, s, e in LINE_END_CASES],
    ids=[name for name, _, _ in LINE_END_CASES],
)
def test_line_ends(stream: bytes, expected: list[Event]) -> None:
    assert parse_stream(stream) == expected


def test_cr_lf_split_across_feeds_is_one_line_end() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the LF completes the CRLF; no blank line yet
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"") == []  # an empty feed between CR and LF changes nothing
    assert parser.feed(b"\n\r") == [ev("a\nb")]  # the CR is a blank line: dispatch at once
    assert parser.feed(b"\n") == []  # ...and this LF belongs to that CR
    assert parser.feed(b"data: c\n\n") == [ev("c")]


def test_cr_at_chunk_end_dispatches_immediately() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r\n\r") == [ev("a")]
    assert parser.feed(b"\ndata: b\r\n\r\n") == [ev("b")]


def test_cr_followed_by_non_lf_in_next_feed() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [ev("a")]
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"data: c\r\r") == [ev("b\nc")]


SAMPLE_STREAM = (
    "\ufeff: hello\r\nretry: 2500\r\n\r\n"
    "id: 1\nevent: caf\u00e9\ndata: \u20ac 1\ndata:  2\n\n"
    "data: a\rdata: b\r\r"
    "id\r\ndata: \U0001f600\r\n\r\n"
    ": ping\n"
    "id: x\x00y\ndata: last\r\n\n"
    "data: incomplete"
).encode()
SAMPLE_EVENTS = [
    ev("\u20ac 1\n 2", "caf\u00e9", "1"),
    ev("a\nb", last_event_id="1"),
    ev("\U0001f600"),
    ev("last"),
]


def test_sample_stream_in_one_feed() -> None:
    events, parser = feed_pieces([SAMPLE_STREAM])
    assert events == SAMPLE_EVENTS
    assert parser.comments == ["hello", "ping"]
    assert parser.retry == 2500


@pytest.mark.parametrize("cut", range(len(SAMPLE_STREAM) + 1))
def test_every_two_way_split_gives_same_events(cut: int) -> None:
    events, parser = feed_pieces([SAMPLE_STREAM[:cut], SAMPLE_STREAM[cut:]])
    assert events == SAMPLE_EVENTS
    assert parser.comments == ["hello", "ping"]
    assert parser.retry == 2500


def test_byte_by_byte_gives_same_events() -> None:
    events, parser = feed_pieces([SAMPLE_STREAM[i : i + 1] for i in range(len(SAMPLE_STREAM))])
    assert events == SAMPLE_EVENTS
    assert parser.comments == ["hello", "ping"]


def test_events_are_returned_by_the_feed_that_completes_them() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b\n\ndata: c\n\nda") == [ev("a"), ev("b"), ev("c")]
    assert parser.feed(b"ta: d\n") == []
    assert parser.feed(b"\n") == [ev("d")]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    parser = EventStreamParser()
    assert parser.feed(bytearray(b"data: a\n")) == []
    assert parser.feed(memoryview(b"\n")) == [ev("a")]


# --------------------------------------------------------------------------
# Encoding: UTF-8, replacement of invalid sequences, BOM.

ENCODING_CASES: list[tuple[str, bytes, list[Event]]] = [
    ("BOM stripped", b"\xef\xbb\xbfdata: x\n\n", [ev("x")]),
    # A second BOM is part of the first line's field name: "\ufeffdata" is unknown.
    ("only one BOM stripped", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", []),
    (
        "BOM later in the stream is kept",
        "data: a\n\n\ufeffdata: b\n\ndata: \ufeffc\n\n".encode(),
        [ev("a"), ev("\ufeffc")],
    ),
    ("invalid bytes replaced", b"data: \xff\xfe\n\n", [ev("\ufffd\ufffd")]),
    ("truncated sequence before LF", b"data: a\xc3\n\n", [ev("a\ufffd")]),
    (
        "maximal subpart: truncated 3-byte sequence is one U+FFFD",
        b"data: \xe2\x82\n\n",
        [ev("\ufffd")],
    ),
    ("encoded surrogate is three U+FFFD", b"data: \xed\xa0\x80\n\n", [ev("\ufffd" * 3)]),
    ("overlong encoding replaced", b"data: \xc0\xaf\n\n", [ev("\ufffd\ufffd")]),
    ("invalid byte in a field name", b"da\xffta: x\ndata: y\n\n", [ev("y")]),
    ("truncated BOM is not a BOM", b"\xef\xbbdata: x\n\ndata: y\n\n", [ev("y")]),
    (
        "multi-byte text",
        "event: \u00e9\u20ac\ndata: \u65e5\u672c\U0001f600\n\n".encode(),
        [ev("\u65e5\u672c\U0001f600", "\u00e9\u20ac")],
    ),
]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [(s, e) for _, s, e in ENCODING_CASES],
    ids=[name for name, _, _ in ENCODING_CASES],
)
def test_encoding(stream: bytes, expected: list[Event]) -> None:
    assert parse_stream(stream) == expected
    # Byte by byte must not change anything either.
    assert feed_pieces([stream[i : i + 1] for i in range(len(stream))])[0] == expected


@pytest.mark.parametrize(
    "pieces",
    [
        [b"\xef", b"\xbb", b"\xbf", b"data: x\n\n"],
        [b"", b"\xef\xbb", b"\xbfdata: x\n\n"],
        [b"\xef\xbb\xbf", b"data: x\n\n"],
    ],
)
def test_bom_split_across_feeds(pieces: list[bytes]) -> None:
    assert feed_pieces(pieces)[0] == [ev("x")]


def test_bom_only_at_very_start_even_after_split() -> None:
    # The first feed already produced a character, so a later BOM is data.
    assert feed_pieces([b"d", b"ata: a\n\n\xef\xbb\xbfdata: b\n\n"])[0] == [ev("a")]


def test_multibyte_char_split_across_feeds() -> None:
    stream = "data: \u00e9\u20ac\U0001f600\n\n".encode()
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            pieces = [stream[:i], stream[i:j], stream[j:]]
            assert feed_pieces(pieces)[0] == [ev("\u00e9\u20ac\U0001f600")], pieces


# --------------------------------------------------------------------------
# Property tests: splitting never matters; an independent whole-stream oracle.


def reference_parse(stream: bytes) -> tuple[list[Event], list[str], int | None]:
    """A deliberately naive, whole-stream reading of the same spec text."""
    text = stream.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    *lines, _incomplete = re.split(r"\r\n|\r|\n", text)
    events: list[Event] = []
    comments: list[str] = []
    data, etype, last_id, retry = "", "", "", None
    for line in lines:
        if line == "":
            if data == "":
                etype = ""
                continue
            events.append(Event(etype or "message", data.removesuffix("\n"), last_id))
            data, etype = "", ""
        elif line.startswith(":"):
            comments.append(line[2:] if line.startswith(": ") else line[1:])
        else:
            field, _, value = line.partition(":")
            if ":" in line and value.startswith(" "):
                value = value[1:]
            if field == "event":
                etype = value
            elif field == "data":
                data += value + "\n"
            elif field == "id" and "\x00" not in value:
                last_id = value
            elif field == "retry" and re.fullmatch(r"[0-9]+", value):
                retry = int(value)
    return events, comments, retry


TOKENS = [
    b"data", b"data:", b"data: ", b"event:", b"event: t", b"id:", b"id: 7", b"id", b"retry:",
    b"retry: 12", b":", b": c", b" ", b"x", b"9", b"\x00", b"\r", b"\n", b"\r\n", b"\n\n",
    b"\r\r", b"\xef\xbb\xbf", "\u00e9".encode(), "\u20ac".encode(), "\U0001f600".encode(),
    b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f",
]  # fmt: skip

streams = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join),
    st.binary(max_size=200),
)


@settings(max_examples=400, deadline=None)
@given(stream=streams, data=st.data())
def test_random_splits_never_change_the_result(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    whole, whole_parser = feed_pieces([stream])
    split, split_parser = feed_pieces(split_at(stream, cuts))
    assert split == whole
    assert split_parser.comments == whole_parser.comments
    assert split_parser.retry == whole_parser.retry
    assert split_parser.last_event_id == whole_parser.last_event_id


@settings(max_examples=400, deadline=None)
@given(stream=streams)
def test_matches_naive_whole_stream_reading(stream: bytes) -> None:
    events, parser = feed_pieces([stream[i : i + 1] for i in range(len(stream))])
    assert (events, parser.comments, parser.retry) == reference_parse(stream)


chars = st.characters(exclude_categories=["Cs"])  # anything UTF-8 can encode
line_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00"), max_size=20
)


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(
        st.tuples(
            st.lists(st.text(alphabet=chars, max_size=20), max_size=4),
            st.one_of(st.none(), line_text.filter(bool)),
        ),
        min_size=1,
        max_size=5,
    ),
    data=st.data(),
)
def test_encoded_events_round_trip(
    payloads: list[tuple[list[str], str | None]], data: st.DataObject
) -> None:
    """Encoding as docs/protocol.md#wire-format describes, then parsing, gives the data back.

    Line ends inside the data (CRLF, CR, LF) come back as LF.
    """
    out: list[str] = []
    expected: list[Event] = []
    for n, (parts, etype) in enumerate(payloads):
        value = "".join(parts)
        out.append(f"id: {n}\n")
        if etype is not None:
            out.append(f"event: {etype}\n")
        for line in re.split(r"\r\n|\r|\n", value):
            out.append(f"data: {line}\n")
        out.append("\n")
        expected.append(Event(etype or "message", re.sub(r"\r\n|\r", "\n", value), str(n)))
    stream = "".join(out).encode()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
    assert feed_pieces(split_at(stream, cuts))[0] == expected
