"""The wire format (docs/protocol.md#wire-format): exact bytes, WHATWG round trips, refusals.

Every encoding is checked twice: against the exact bytes (table-driven) and
through ``tests/support/sse_parser.py``, which implements the browser's
"Interpreting an event stream" algorithm, so "round-trips" means "a browser's
``EventSource`` sees exactly this".
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_sse_hub import errors
from flask_sse_hub.backends.memory import MemoryBackend
from flask_sse_hub.broker import Broker
from flask_sse_hub.wire import (
    EVENT_ID_PATTERN,
    GAP_EVENT_TYPE,
    HEARTBEAT,
    MAX_ID_LINE_BYTES,
    encode_gap,
    encode_ping,
    encode_preamble,
    frame,
    is_event_id,
    make_event,
    validate_channel,
    validate_event_type,
)
from tests.support.sse_parser import Event, EventStreamParser, parse_stream

#: What an id may be: short, CORS-safelisted characters only (docs/protocol.md#id-shape).
CORS_SAFE_ID = r"[A-Za-z0-9._\-]{1,64}"


def normalise_line_breaks(text: str) -> str:
    """What any SSE client reads back: the wire cannot carry CR, every line break becomes LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- exact bytes ----------------------------------------------------------------

ENCODING_EXAMPLES = [
    pytest.param("hello", {}, b"data: hello\n\n", id="simple-text"),
    pytest.param("a\nb", {}, b"data: a\ndata: b\n\n", id="multi-line-LF"),
    pytest.param("a\rb", {}, b"data: a\ndata: b\n\n", id="multi-line-CR"),
    pytest.param("a\r\nb", {}, b"data: a\ndata: b\n\n", id="multi-line-CRLF"),
    pytest.param("a\r\n\r\nb", {}, b"data: a\ndata: \ndata: b\n\n", id="blank-line-inside"),
    pytest.param("a\n", {}, b"data: a\ndata: \n\n", id="trailing-LF"),
    pytest.param("\r\n", {}, b"data: \ndata: \n\n", id="only-CRLF"),
    pytest.param("\n\r", {}, b"data: \ndata: \ndata: \n\n", id="LF-then-CR-is-two-breaks"),
    pytest.param(" leading", {}, b"data:  leading\n\n", id="leading-space"),
    pytest.param("  two", {}, b"data:   two\n\n", id="two-leading-spaces"),
    pytest.param("", {}, b"data: \n\n", id="empty-string"),
    pytest.param(":colon", {}, b"data: :colon\n\n", id="leading-colon"),
    pytest.param(
        {"order": 42, "name": "café ☕"}, {},
        'data: {"order":42,"name":"café ☕"}\n\n'.encode(), id="json-dict-compact-utf8",
    ),
    pytest.param(
        {"text": "line1\nline2"}, {}, b'data: {"text":"line1\\nline2"}\n\n',
        id="json-escapes-line-breaks",
    ),
    pytest.param([1, "two", None], {}, b'data: [1,"two",null]\n\n', id="json-list"),
    pytest.param(None, {}, b"data: null\n\n", id="json-null"),
    pytest.param(True, {}, b"data: true\n\n", id="json-bool"),
    pytest.param(-1.5, {}, b"data: -1.5\n\n", id="json-float"),
    pytest.param("x", {"event": "created"}, b"event: created\ndata: x\n\n", id="event-type"),
    pytest.param("x", {"retry": 5000}, b"retry: 5000\ndata: x\n\n", id="retry"),
    pytest.param("x", {"retry": 0}, b"retry: 0\ndata: x\n\n", id="retry-zero"),
    pytest.param(
        "x", {"event": "e", "retry": 10}, b"event: e\nretry: 10\ndata: x\n\n",
        id="event-type-and-retry",
    ),
]


@pytest.mark.parametrize(("data", "options", "body"), ENCODING_EXAMPLES)
def test_event_body_is_encoded_to_exact_bytes(
    data: Any, options: dict[str, Any], body: bytes
) -> None:
    assert make_event(data, channel="orders", **options).body == body


@pytest.mark.parametrize(("data", "options", "body"), ENCODING_EXAMPLES)
def test_encoded_example_is_read_back_by_a_whatwg_client(
    data: Any, options: dict[str, Any], body: bytes
) -> None:
    encoded = frame("ep-7", make_event(data, **options).body)
    expected_data = normalise_line_breaks(data) if isinstance(data, str) else data
    (event,) = parse_stream(encoded)
    assert event.type == options.get("event", "message")
    assert event.last_event_id == "ep-7"
    if isinstance(data, str):
        assert event.data == expected_data
    else:
        assert json.loads(event.data) == expected_data


def test_frame_puts_the_id_line_first() -> None:
    body = make_event("hi", event="greeting").body
    assert frame("0a1b2c3d-12", body) == b"id: 0a1b2c3d-12\nevent: greeting\ndata: hi\n\n"


def test_event_remembers_its_channel_and_body_is_bytes() -> None:
    event = make_event({"a": 1}, channel="a.b:c/d-e_f")
    assert event.channel == "a.b:c/d-e_f"
    assert isinstance(event.body, bytes)


def test_event_is_encoded_once_and_frame_shares_the_body() -> None:
    """An event is encoded once per publish; framing only prepends the id line."""
    event = make_event("payload")
    framed = frame("x-1", event.body)
    assert framed.endswith(event.body)
    assert framed[: -len(event.body)] == b"id: x-1\n"


# -- round trips (hypothesis) ---------------------------------------------------------

event_ids = st.from_regex(CORS_SAFE_ID, fullmatch=True)
event_types = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
    min_size=1, max_size=128,
).filter(lambda name: not name.startswith("sse-hub-"))
#: Any text (no lone surrogates: they have no UTF-8 form), rich in line breaks
#: of every kind, leading spaces, empty lines and non-ASCII.
text_data = st.lists(
    st.text(max_size=8)
    | st.sampled_from(["\r", "\n", "\r\n", " ", "  ", "\ufeff", "\x00", "é", "☕", "\U0001f600"]),
    max_size=12,
).map("".join)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(event_id=event_ids, data=text_data, event_type=st.none() | event_types)
def test_text_event_round_trips_through_a_whatwg_parser(
    event_id: str, data: str, event_type: str | None
) -> None:
    encoded = frame(event_id, make_event(data, event=event_type).body)
    assert parse_stream(encoded) == [
        Event(
            type=event_type or "message",
            data=normalise_line_breaks(data),
            last_event_id=event_id,
        )
    ]


@settings(max_examples=300, deadline=None)
@given(
    event_id=event_ids,
    data=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r")),
)
def test_text_without_cr_round_trips_exactly(event_id: str, data: str) -> None:
    (event,) = parse_stream(frame(event_id, make_event(data).body))
    assert event.data == data


@settings(max_examples=200, deadline=None)
@given(
    event_id=event_ids,
    data=json_values.filter(lambda value: not isinstance(value, str)),
    event_type=st.none() | event_types,
)
def test_json_event_round_trips_through_a_whatwg_parser(
    event_id: str, data: Any, event_type: str | None
) -> None:
    encoded = frame(event_id, make_event(data, event=event_type).body)
    (event,) = parse_stream(encoded)
    assert json.loads(event.data) == data
    assert event.type == (event_type or "message")
    assert event.last_event_id == event_id


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(event_ids, text_data), min_size=1, max_size=10))
def test_consecutive_frames_are_separate_events(items: list[tuple[str, str]]) -> None:
    """Joined frames (how fan-out batches them) still dispatch one event each."""
    stream = b"".join(frame(event_id, make_event(data).body) for event_id, data in items)
    events = parse_stream(stream)
    assert [(event.last_event_id, event.data) for event in events] == [
        (event_id, normalise_line_breaks(data)) for event_id, data in items
    ]


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "x" * 128, "orders", "A-Z_a-z.0-9:/", "tenant:42/orders", "...", "/"],
)
def test_valid_channel_names_are_accepted(name: str) -> None:
    assert validate_channel(name) == name
    assert make_event("x", channel=name).channel == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param("a b", id="space"),
        pytest.param("café", id="non-ascii"),
        pytest.param("a\n", id="trailing-LF"),
        pytest.param("a\x00", id="NUL"),
        pytest.param("a?b", id="question-mark"),
        pytest.param(42, id="int"),
        pytest.param(None, id="None"),
        pytest.param(b"orders", id="bytes"),
    ],
)
def test_invalid_channel_names_raise_invalid_channel(name: Any) -> None:
    with pytest.raises(errors.InvalidChannel):
        validate_channel(name)
    with pytest.raises(errors.InvalidChannel) as caught:
        make_event("x", channel=name)
    assert isinstance(caught.value, ValueError)
    assert caught.value.status == 400


def test_event_type_with_a_lone_surrogate_raises_invalid_event_type() -> None:
    """The error names what is wrong: the type, not the data (which is fine here)."""
    with pytest.raises(errors.InvalidEventType):
        make_event("fine data", event="bad\ud800type")


@pytest.mark.parametrize("event_type", ["x", "x" * 128, "order-created", " spaced", "ünï"])
def test_valid_event_types_are_accepted(event_type: str) -> None:
    assert validate_event_type(event_type) == event_type


@pytest.mark.parametrize(
    "event_type",
    [
        pytest.param("", id="empty"),
        pytest.param("a\rb", id="CR"),
        pytest.param("a\nb", id="LF"),
        pytest.param("a\x00b", id="NUL"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param(GAP_EVENT_TYPE, id="reserved-gap"),
        pytest.param("sse-hub-anything", id="reserved-prefix"),
        pytest.param(42, id="int"),
        pytest.param(b"created", id="bytes"),
    ],
)
def test_invalid_event_types_raise_invalid_event_type(event_type: Any) -> None:
    with pytest.raises(errors.InvalidEventType):
        validate_event_type(event_type)
    with pytest.raises(errors.InvalidEventType) as caught:
        make_event("x", event=event_type)
    assert isinstance(caught.value, ValueError)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("\ud800", id="lone-high-surrogate"),
        pytest.param("ok \udc00 then", id="lone-low-surrogate"),
        pytest.param({"key": "\ud83d"}, id="surrogate-in-json-value"),
        pytest.param({"\udfff": 1}, id="surrogate-in-json-key"),
    ],
)
def test_lone_surrogates_raise_invalid_data(data: Any) -> None:
    with pytest.raises(errors.InvalidData) as caught:
        make_event(data)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "data",
    [math.nan, math.inf, -math.inf, [1.0, math.nan], {"x": {"y": math.inf}}],
    ids=["nan", "inf", "-inf", "nan-in-list", "inf-nested"],
)
def test_nan_and_infinity_raise_invalid_data(data: Any) -> None:
    """JSON.parse in the browser rejects NaN/Infinity, so the hub does not send them."""
    with pytest.raises(errors.InvalidData):
        make_event(data)


def test_circular_data_raises_invalid_data() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(errors.InvalidData):
        make_event(loop)


@pytest.mark.parametrize(
    "data",
    [{1, 2}, object(), b"bytes", {"nested": {1, 2}}, {(1, 2): "tuple key"}],
    ids=["set", "object", "bytes", "nested-set", "tuple-key"],
)
def test_data_json_cannot_encode_raises_type_error(data: Any) -> None:
    with pytest.raises(TypeError) as caught:
        make_event(data)
    assert not isinstance(caught.value, ValueError)


@pytest.mark.parametrize("retry", [-1, True, False, "10", 1.5])
def test_invalid_retry_raises_invalid_data(retry: Any) -> None:
    with pytest.raises(errors.InvalidData):
        make_event("x", retry=retry)


def largest_text_for(max_bytes: int) -> str:
    """The longest ASCII data whose event still fits ``max_bytes`` once it has an id."""
    overhead = len(make_event("").body) + MAX_ID_LINE_BYTES
    return "x" * (max_bytes - overhead)


@pytest.mark.parametrize("max_bytes", [65536, 1000, 200])
def test_event_too_large_at_exactly_the_max_event_bytes_boundary(max_bytes: int) -> None:
    """SSE_MAX_EVENT_BYTES: the largest encoded event, id line included.

    The id is not known at validation time, so the bound counts the longest id
    line an id may take (at most 64 characters: docs/protocol.md#event-size).
    """
    fits = largest_text_for(max_bytes)
    event = make_event(fits, max_bytes=max_bytes)
    assert len(frame("x" * 64, event.body)) == max_bytes
    with pytest.raises(errors.EventTooLarge) as caught:
        make_event(fits + "x", max_bytes=max_bytes)
    assert isinstance(caught.value, ValueError)
    assert caught.value.status == 413


def test_event_too_large_counts_utf8_bytes_not_characters() -> None:
    fits = largest_text_for(1000)
    multibyte = "é" * (len(fits) // 2)  # 2 bytes each: same size in bytes
    make_event(multibyte, max_bytes=1000)
    with pytest.raises(errors.EventTooLarge):
        make_event(multibyte + "é", max_bytes=1000)


def test_default_limit_is_the_spec_default() -> None:
    make_event(largest_text_for(65536))
    with pytest.raises(errors.EventTooLarge):
        make_event(largest_text_for(65536) + "x")


# -- ids --------------------------------------------------------------------------------


def test_hub_ids_are_short_and_cors_safe() -> None:
    """Ids the hub hands out (and its gap positions) use only A-Z a-z 0-9 . _ -."""
    broker = Broker(MemoryBackend(history_size=3), queue_size=1000)
    try:
        ids = broker.publish([make_event(str(n), channel="c") for n in range(20)])
        ids += [broker.publish([make_event("x", channel="d")])[0] for _ in range(5)]
        sub, replay = broker.subscribe(["c"], last_id="garbage")
        assert replay.gap and replay.gap_position is not None
        ids.append(replay.gap_position)
        broker.unsubscribe(sub)
    finally:
        broker.stop()
    assert len(set(ids)) == len(ids) - 1  # the gap position is the id before "c"'s oldest
    for event_id in ids:
        assert EVENT_ID_PATTERN.fullmatch(event_id)
        assert is_event_id(event_id)
        assert len(event_id) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in event_id)


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a:b", "é", "a\nb", "a/b"])
def test_is_event_id_rejects_what_is_not_cors_safe(value: str) -> None:
    assert not is_event_id(value)


# -- stream-level pieces ----------------------------------------------------------------


def test_preamble_sets_retry_and_opens_with_a_comment() -> None:
    preamble = encode_preamble(2500)
    # No blank line: it is no event, and lenient parsers make one of every blank line.
    assert preamble == b"retry: 2500\n: flask-sse-hub stream open\n"
    parser = EventStreamParser()
    assert parser.feed(preamble) == []
    assert parser.retry == 2500
    assert len(parser.comments) == 1


def test_heartbeat_is_a_comment_that_dispatches_nothing() -> None:
    assert HEARTBEAT == b": heartbeat\n"
    parser = EventStreamParser()
    parser.feed(frame("ep-1", make_event("x").body))
    assert parser.feed(HEARTBEAT) == []
    assert parser.comments == ["heartbeat"]
    assert parser.last_event_id == "ep-1"


def test_ping_dispatches_a_named_event_with_empty_data_and_no_id() -> None:
    ping = encode_ping("keepalive")
    assert ping == b"event: keepalive\ndata: \n\n"
    parser = EventStreamParser()
    parser.feed(frame("ep-3", make_event("x").body))
    assert parser.feed(ping) == [Event(type="keepalive", data="", last_event_id="ep-3")]
    assert b"id:" not in ping


def test_gap_event_carries_requested_id_and_position() -> None:
    gap = encode_gap("stale-41", "ep-7")
    assert gap == b'id: ep-7\nevent: sse-hub-gap\ndata: {"last_event_id": "stale-41"}\n\n'
    (event,) = parse_stream(gap)
    assert event.type == GAP_EVENT_TYPE == "sse-hub-gap"
    assert json.loads(event.data) == {"last_event_id": "stale-41"}
    assert event.last_event_id == "ep-7"


def test_gap_event_without_position_has_no_id_line() -> None:
    gap = encode_gap("stale-41", None)
    assert b"id:" not in gap
    parser = EventStreamParser()
    parser.feed(frame("before-1", make_event("x").body))
    (event,) = parser.feed(gap)
    assert event.type == GAP_EVENT_TYPE
    assert event.last_event_id == "before-1"


@settings(max_examples=200, deadline=None)
@given(requested=st.text(), position=event_ids)
def test_gap_event_round_trips_any_requested_id(requested: str, position: str) -> None:
    """The requested id comes from the client (header or query): it must not break framing."""
    (event,) = parse_stream(encode_gap(requested, position))
    assert event.type == GAP_EVENT_TYPE
    assert json.loads(event.data) == {"last_event_id": requested}
    assert event.last_event_id == position


def test_data_nested_too_deeply_to_encode_is_invalid_data_not_a_recursion_error() -> None:
    # ~1000 nested lists parse (C decoder) but do not encode.
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(errors.InvalidData, match="nested too deeply"):
        make_event(deep)
