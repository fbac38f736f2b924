"""Publish over HTTP, receive over a real stream: what arrives, and in which order.

``POST /publish`` answers 202 ``{"id"}`` for one event and ``{"ids"}`` for a
batch (docs/protocol.md#publish); ids use the CORS-safe alphabet
(docs/protocol.md#id-shape); the wire carries the ``event:`` type, one
``data:`` line per line of the data whatever its line ends, the space after
the colon, compact JSON for non-string data (docs/protocol.md#wire-format);
events arrive in publish order within a channel, in id order across the
channels of one stream, and every subscriber sees the same order under load
(docs/protocol.md#order).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.threads import run_in_thread

from .conftest import EVENT_ID_RE, HubLauncher, HubServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_HEARTBEAT_SECONDS=5)


@pytest.fixture(autouse=True)
def _close_streams_after_each_test(hub: HubServer) -> Iterator[None]:
    yield
    hub.close_streams()


def sse_text(data: str) -> str:
    """What an EventSource hands to the page: SSE has no way to carry CR, lines end in LF."""
    return data.replace("\r\n", "\n").replace("\r", "\n")


TRICKY_TEXT = [
    pytest.param("hello", id="plain"),
    pytest.param("", id="empty"),
    pytest.param("line one\nline two\nline three", id="lf"),
    pytest.param("line one\rline two", id="lone-cr"),
    pytest.param("line one\r\nline two", id="crlf"),
    pytest.param("a\r\n\r\nb\n\rc\r\rd", id="mixed-line-ends-and-blank-lines"),
    pytest.param("\n", id="only-a-newline"),
    pytest.param("trailing newline\n", id="trailing-newline"),
    pytest.param("\nleading newline", id="leading-newline"),
    pytest.param("  two leading spaces", id="leading-spaces"),
    pytest.param(" one leading space\n  and another line", id="leading-space-every-line"),
    pytest.param("\ttab", id="leading-tab"),
    pytest.param(": looks like a comment", id="comment-lookalike"),
    pytest.param("data: nested field\n\nid: 123\nevent: fake", id="field-lookalikes"),
    pytest.param("grüße, 東京, emoji 🎉, rtl עברית", id="non-ascii"),
    pytest.param("\ufeffbom at start", id="bom"),
    pytest.param("x" * 20000, id="long-line"),
]


@pytest.mark.parametrize("text", TRICKY_TEXT)
def test_string_data_arrives_intact(hub: HubServer, text: str) -> None:
    stream = hub.subscribe("text")
    event_id = hub.publish(text, channel="text")
    event = stream.next_event(timeout=5)
    assert event.last_event_id == event_id
    assert event.type == "message"
    assert event.data == sse_text(text)


JSON_VALUES = [
    pytest.param({"order": 42, "items": [1, 2, 3], "note": "a b"}, id="object"),
    pytest.param({"text": "multi\nline\r\nvalue", "nested": {"deep": [None, True]}},
                 id="object-with-newlines-in-strings"),
    pytest.param([1, "two", {"three": 3}], id="array"),
    pytest.param(42, id="integer"),
    pytest.param(-1.5, id="float"),
    pytest.param(None, id="null"),
    pytest.param(True, id="true"),
    pytest.param({}, id="empty-object"),
]


@pytest.mark.parametrize("value", JSON_VALUES)
def test_json_data_is_sent_compactly_encoded_on_one_line(hub: HubServer, value: Any) -> None:
    stream = hub.subscribe("json")
    event_id = hub.publish(value, channel="json")
    event = stream.next_event(timeout=5)
    assert event.last_event_id == event_id
    assert json.loads(event.data) == value
    assert event.data == json.dumps(value, separators=(",", ":"))
    assert "\n" not in event.data


def test_non_ascii_json_survives_as_text(hub: HubServer) -> None:
    value = {"city": "Zürich", "greeting": "こんにちは 👋"}
    stream = hub.subscribe("json-utf8")
    hub.publish(value, channel="json-utf8")
    assert json.loads(stream.next_event(timeout=5).data) == value


def test_single_publish_answers_202_with_an_id_in_the_spec_alphabet(hub: HubServer) -> None:
    status, answer = hub.post_json("/publish", {"channel": "ids", "data": "x"})
    assert status == 202
    assert set(answer) == {"id"}
    assert EVENT_ID_RE.fullmatch(answer["id"]), answer


def test_batch_publish_answers_202_with_ids_in_order_and_delivers_in_order(
    hub: HubServer,
) -> None:
    stream = hub.subscribe("batch")
    items = [{"channel": "batch", "data": f"item {n}", "event": "numbered"} for n in range(5)]
    status, answer = hub.post_json("/publish", items)
    assert status == 202
    assert set(answer) == {"ids"}
    ids = answer["ids"]
    assert len(ids) == len(set(ids)) == 5
    assert all(EVENT_ID_RE.fullmatch(event_id) for event_id in ids), ids
    events = stream.events(5, timeout=5)
    assert [e.last_event_id for e in events] == ids
    assert [e.data for e in events] == [f"item {n}" for n in range(5)]
    assert {e.type for e in events} == {"numbered"}


@pytest.mark.parametrize(
    "event_type", ["order-created", "update", "a", "ünïcödé-type", "x" * 128, "with space"]
)
def test_named_event_arrives_with_its_type(hub: HubServer, event_type: str) -> None:
    stream = hub.subscribe("named")
    event_id = hub.publish({"n": 1}, channel="named", event=event_type)
    event = stream.next_event(timeout=5)
    assert (event.type, event.last_event_id, event.data) == (event_type, event_id, '{"n":1}')


def test_event_without_type_is_a_message_event(hub: HubServer) -> None:
    stream = hub.subscribe("untyped")
    event_id = hub.publish("x", channel="untyped")
    assert stream.next_event(timeout=5).type == "message"
    # Its frame has no event: line (the stream's position block before it has one).
    assert stream.body.endswith(f"\n\nid: {event_id}\ndata: x\n\n".encode())


def test_retry_field_reaches_the_client(hub: HubServer) -> None:
    stream = hub.subscribe("retry")
    hub.publish("slow down", channel="retry", retry=12345)
    assert stream.next_event(timeout=5).data == "slow down"
    assert stream.retry == 12345


def test_events_go_only_to_subscribers_of_their_channel(hub: HubServer) -> None:
    orders = hub.subscribe("orders")
    other = hub.subscribe("other")
    hub.publish("for orders", channel="orders")
    hub.publish("end", channel="other")
    assert [e.data for e in other.until_data("end", timeout=5)] == ["end"]
    hub.publish("end", channel="orders")
    assert [e.data for e in orders.until_data("end", timeout=5)] == ["for orders", "end"]


def test_default_channel_when_none_is_named(hub: HubServer) -> None:
    stream = hub.subscribe()  # no ?channel=: the "default" channel
    status, answer = hub.post_json("/publish", {"data": "to default"})  # no "channel"
    assert status == 202
    event = stream.next_event(timeout=5)
    assert (event.data, event.last_event_id) == ("to default", answer["id"])


def test_multi_channel_stream_sees_its_channels_events_in_id_order(hub: HubServer) -> None:
    multi = hub.subscribe("mc-a", "mc-b", "mc-c")
    plan = ["mc-a", "mc-b", "mc-x", "mc-a", "mc-c", "mc-c", "mc-x", "mc-b", "mc-a"]
    published: list[tuple[str, str]] = []
    for n, channel in enumerate(plan):
        published.append((channel, hub.publish(f"{channel}:{n}", channel=channel)))
    # A batch mixing channels is one block of consecutive ids.
    batch = [{"channel": c, "data": f"{c}:batch"} for c in ("mc-c", "mc-x", "mc-b", "mc-a")]
    published += zip([b["channel"] for b in batch], hub.publish_batch(batch), strict=True)
    expected = [event_id for channel, event_id in published if channel != "mc-x"]
    events = multi.until_id(expected[-1], timeout=5)
    assert [e.last_event_id for e in events] == expected


def test_order_preserved_under_500_quick_publishes(hub: HubServer) -> None:
    single = hub.subscribe("burst")
    multi = hub.subscribe("burst", "burst-other")
    with hub.publisher() as publish:
        ids = [publish({"channel": "burst", "data": f"n={n}"}) for n in range(500)]
    assert len(set(ids)) == 500
    for stream in (single, multi):
        events = stream.events(500, timeout=20)
        assert [e.last_event_id for e in events] == ids
        assert [e.data for e in events] == [f"n={n}" for n in range(500)]


def test_concurrent_publishers_every_subscriber_sees_the_same_order(hub: HubServer) -> None:
    """Four publishers at once: each one's events stay in its order, all subscribers agree."""
    streams = [hub.subscribe("race"), hub.subscribe("race"), hub.subscribe("race", "race-b")]
    per_publisher = 100
    ids: dict[int, list[str]] = {}

    def run(worker: int) -> None:
        with hub.publisher() as publish:
            ids[worker] = [
                publish({"channel": "race", "data": f"{worker}:{n}"}) for n in range(per_publisher)
            ]

    for thread in [run_in_thread(run, worker) for worker in range(4)]:
        thread.join(60)
    total = 4 * per_publisher
    seen = [[e.last_event_id for e in s.events(total, timeout=20)] for s in streams]
    assert seen[0] == seen[1] == seen[2]
    assert sorted(seen[0]) == sorted(i for worker_ids in ids.values() for i in worker_ids)
    position = {event_id: index for index, event_id in enumerate(seen[0])}
    for worker_ids in ids.values():
        order = [position[event_id] for event_id in worker_ids]
        assert order == sorted(order), "a publisher's events arrived out of its order"
