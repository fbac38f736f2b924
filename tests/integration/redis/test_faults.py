"""Redis faults: a Redis that hangs or restarts empty, foreign entries, shared settings.

The rules: docs/protocol.md#redis-never-silent, docs/protocol.md#redis-outage,
docs/protocol.md#redis-timeouts and docs/protocol.md#redis-window.

* Redis frozen (SIGSTOP): a publish answers 503 within ``SSE_REDIS_TIMEOUT``,
  ``/healthz`` 503 within 1 s, open streams keep their heartbeats; after
  SIGCONT every acknowledged event arrives exactly once, in order, and an
  event answered 503 at most once.
* Redis killed and restarted empty: publishes answer 503 at once while it is
  down; afterwards live streams get an ``sse-hub-gap`` (Redis lost what they
  might have missed), then the new events; a resume with an id from before
  the restart gets a gap too.
* An entry the hub did not write (foreign fields, garbage values, bytes that
  are not UTF-8) does not stop the broadcaster: it is skipped and reported
  to every live stream as a gap; ``/healthz`` stays 200.
* ``?decode_responses=true`` in ``SSE_REDIS_URL`` changes nothing (a warning
  in the log says it is ignored).
* Two hubs with different ``SSE_HISTORY_SIZE`` on one stream key: the larger
  window wins, and the log says so.
* ``/healthz`` answers 503 within 1 s while Redis is down.
* Concurrent publishes to a frozen Redis each answer in time, and none
  answered "nothing was published" is ever delivered.
* Scripts flushed from Redis are loaded again (NOSCRIPT) by publishes and replays.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.conftest import GAP_EVENT, HubLauncher, HubServer, HubStream, wait_until
from tests.support.sse_parser import Event

from .conftest import HUB_STREAM, RedisServer, gap_ids_on_the_wire, stopped

pytestmark = pytest.mark.integration

#: What an HTTP round trip to the local hub may add to a bound the hub keeps.
MARGIN = 0.25
#: /healthz answers within 1 s, whatever Redis does (docs/protocol.md#healthz).
HEALTHZ_SECONDS = 1.0


def publish_timed(hub: HubServer, payload: Any) -> tuple[int, Any, float]:
    """``POST /publish``: the status, the JSON answer and how long it took (at most 5 s)."""
    started = time.monotonic()
    try:
        status, _, body = hub.request("POST", "/publish", json.dumps(payload).encode(),
                                      {"Content-Type": "application/json"}, timeout=5)
    except TimeoutError:
        pytest.fail(f"POST /publish {payload!r}: no answer within 5 s")
    return status, json.loads(body) if body else None, time.monotonic() - started


def healthz(hub: HubServer) -> tuple[int, dict[str, Any], float]:
    """``GET /healthz``: the status, the JSON answer and how long it took."""
    started = time.monotonic()
    try:
        status, headers, body = hub.request("GET", "/healthz", timeout=5)
    except TimeoutError:
        pytest.fail("GET /healthz: no answer within 5 s")
    took = time.monotonic() - started
    assert headers.get("content-type", "").startswith("application/json"), (status, headers)
    answer: dict[str, Any] = json.loads(body)
    return status, answer, took


def wait_healthy(hub: HubServer) -> None:
    wait_until(lambda: hub.request("GET", "/healthz")[0], lambda status: status == 200,
               timeout=15, what="/healthz 200 once Redis is back", log=hub.log_text)


def received(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.last_event_id, e.data) for e in events]


def assert_refused_in_time_while_frozen(hub: HubServer, streams: list[HubStream]) -> list[str]:
    """Publishes answer 503 in time, /healthz 503, streams keep their heartbeats.

    Returns the data of the refused publishes ("may have been published").
    """
    refused: list[str] = []
    for payload in ({"channel": "frozen", "data": "during 0"},
                    [{"channel": "frozen", "data": "during 1"},
                     {"channel": "frozen", "data": "during 2"}]):
        status, answer, took = publish_timed(hub, payload)
        assert status == 503, f"publish while Redis is frozen: {status} {answer!r}"
        assert isinstance(answer, dict) and answer.get("error"), answer
        assert took < 1 + 0.5, f"publish answered 503 after {took:.2f}s (SSE_REDIS_TIMEOUT=1)"
        refused += [item["data"] for item in (payload if isinstance(payload, list)
                                              else [payload])]
    status, answer, took = healthz(hub)
    assert status == 503, f"/healthz while Redis is frozen: {status} {answer!r}"
    assert answer.get("status") != "ok", answer
    assert took < HEALTHZ_SECONDS + MARGIN, f"/healthz answered after {took:.2f}s"
    for number, stream in enumerate(streams):  # two heartbeats each (every 0.5 s)
        for _ in range(2):
            try:
                stream.wait_comment(timeout=2, new_only=True)
            except TimeoutError as exc:
                pytest.fail(f"stream {number}: no heartbeat while Redis is frozen: {exc}")
        assert not stream.stream_ended, f"stream {number} ended during the freeze"
    return refused


def assert_every_acknowledged_event_once(
    number: int, stream: HubStream, acknowledged: list[tuple[str, str]], refused: list[str],
) -> None:
    """No gap; what was acknowledged after the freeze, in order; a refused one at most once."""
    events = stream.until_id(acknowledged[-1][0], timeout=15)
    assert GAP_EVENT not in {e.type for e in events}, (
        f"stream {number}: a gap, though Redis lost nothing: {received(events)}"
    )
    got = received(events)
    assert [item for item in got if item[1] not in refused] == acknowledged[3:], (
        f"stream {number}: acknowledged events missing, repeated or out of order: {got}"
    )
    assert len({event_id for event_id, _ in got}) == len(got), f"stream {number}: {got}"
    counts = Counter(data for _, data in got)
    assert all(counts[data] <= 1 for data in refused), f"stream {number}: {got}"


def test_a_frozen_redis_gets_503s_in_time_keeps_heartbeats_and_loses_no_acknowledged_event(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_REDIS_TIMEOUT=1, SSE_HEARTBEAT_SECONDS=0.5)
    streams = [hub.subscribe("frozen") for _ in range(3)]
    acknowledged = [(hub.publish(f"before {n}", channel="frozen"), f"before {n}")
                    for n in range(3)]
    for stream in streams:
        assert received(stream.until_id(acknowledged[-1][0], timeout=5)) == acknowledged

    assert redis_server.process is not None
    with stopped(redis_server.process.pid):
        refused = assert_refused_in_time_while_frozen(hub, streams)

    wait_healthy(hub)
    for n in range(3):
        acknowledged.append((hub.publish(f"after {n}", channel="frozen"), f"after {n}"))
    for number, stream in enumerate(streams):
        assert_every_acknowledged_event_once(number, stream, acknowledged, refused)


def test_redis_restarted_empty_is_a_gap_for_live_streams_and_for_older_resumes(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_REDIS_TIMEOUT=1, SSE_HEARTBEAT_SECONDS=1)
    streams = [hub.subscribe("reborn") for _ in range(3)]
    before = [hub.publish(f"before {n}", channel="reborn") for n in range(2)]
    for stream in streams:
        assert [e.last_event_id for e in stream.until_id(before[-1], timeout=5)] == before

    redis_server.kill()
    try:
        for payload in ({"channel": "reborn", "data": "down"},
                        [{"channel": "reborn", "data": "down batch"}]):
            status, answer, took = publish_timed(hub, payload)
            assert status == 503, f"publish while Redis is down: {status} {answer!r}"
            assert took < 1 + 0.5, f"publish answered 503 after {took:.2f}s (SSE_REDIS_TIMEOUT=1)"
    finally:
        redis_server.start()  # the same port, EMPTY

    wait_healthy(hub)
    after = hub.publish("after", channel="reborn")
    positions = set()
    for number, stream in enumerate(streams):
        events = stream.until_id(after, timeout=15)
        assert [e.type for e in events] == [GAP_EVENT, "message"], (
            f"stream {number}: Redis restarted empty, the stream must hear of it: "
            f"{[(e.type, e.last_event_id, e.data) for e in events]}"
        )
        gap, last = events
        assert json.loads(gap.data) == {"last_event_id": before[-1]}, f"stream {number}"
        assert (last.last_event_id, last.data) == (after, "after")
        assert gap_ids_on_the_wire(stream) == [gap.last_event_id], f"stream {number}"
        positions.add(gap.last_event_id)

    old = hub.subscribe("reborn", headers={"Last-Event-ID": before[0]})
    gap, last = old.until_id(after, timeout=10)
    assert gap.type == GAP_EVENT, f"resume with {before[0]} from before the restart: {gap}"
    assert json.loads(gap.data) == {"last_event_id": before[0]}
    assert (last.type, last.last_event_id, last.data) == ("message", after, "after")

    (position,) = positions
    again = hub.subscribe("reborn", headers={"Last-Event-ID": position})
    events = again.until_id(after, timeout=10)
    assert received(events) == [(after, "after")], f"resume from the gap's id {position}"


FOREIGN_ENTRIES: dict[str, dict[str, str | bytes]] = {
    "foreign-fields": {"foo": "bar"},
    "garbage-channel": {"c": "no such\nchannel", "b": "x"},
    "not-utf8": {"c": b"\xff\xfe", "b": b"\xc3("},
}


@pytest.mark.parametrize("entry", FOREIGN_ENTRIES.values(), ids=FOREIGN_ENTRIES.keys())
def test_an_entry_the_hub_did_not_write_is_skipped_and_reported_as_a_gap(
    start_hub: HubLauncher, redis_url: str, redis_client: Any, entry: dict[str, str | bytes],
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=1)
    streams = [hub.subscribe("foreign") for _ in range(2)]
    elsewhere = hub.subscribe("elsewhere")
    first = hub.publish("first", channel="foreign")
    for stream in streams:
        assert [e.last_event_id for e in stream.until_id(first, timeout=5)] == [first]

    redis_client.xadd(HUB_STREAM, entry)
    later = hub.publish("later", channel="foreign")
    for number, stream in enumerate(streams):
        try:
            events = stream.until_id(later, timeout=10)
        except TimeoutError as exc:
            pytest.fail(f"stream {number}: the broadcaster stopped after {entry!r}: {exc}\n"
                        f"--- server log ---\n{hub.log_text()}")
        assert [e.type for e in events] == [GAP_EVENT, "message"], (
            f"stream {number}: {[(e.type, e.last_event_id, e.data) for e in events]}"
        )
        assert json.loads(events[0].data) == {"last_event_id": first}
        assert received(events[1:]) == [(later, "later")]
        assert gap_ids_on_the_wire(stream) == [events[0].last_event_id]
    gap = elsewhere.next_event(timeout=5)  # every live stream of the worker is told
    assert gap.type == GAP_EVENT, gap
    status, answer, _ = healthz(hub)
    assert status == 200, f"/healthz after {entry!r}: {status} {answer!r}"

    again = hub.subscribe("foreign", headers={"Last-Event-ID": events[0].last_event_id})
    final = hub.publish("final", channel="foreign")
    assert received(again.until_id(final, timeout=10)) == [(later, "later"), (final, "final")]
    for stream in streams:
        assert received(stream.until_id(final, timeout=10)) == [(final, "final")]


def test_decode_responses_in_the_redis_url_changes_nothing(
    start_hub: HubLauncher, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=f"{redis_url}?decode_responses=true", SSE_HEARTBEAT_SECONDS=1)
    stream = hub.subscribe("decoded")
    texts = ["plain", "é ✓ 😀", "two\nlines", "  leading space"]
    ids = [hub.publish(text, channel="decoded") for text in texts[:2]]
    ids += hub.publish_batch([{"channel": "decoded", "data": text} for text in texts[2:]])
    try:
        events = stream.until_id(ids[-1], timeout=10)
    except TimeoutError as exc:
        pytest.fail(f"live delivery with decode_responses=true: {exc}\n{hub.log_text()}")
    assert [(e.type, e.last_event_id, e.data) for e in events] == [
        ("message", event_id, text) for event_id, text in zip(ids, texts, strict=True)
    ]

    resumed = hub.subscribe("decoded", headers={"Last-Event-ID": ids[1]})
    live = hub.publish("live", channel="decoded")
    events = resumed.until_id(live, timeout=10)
    assert [(e.type, e.last_event_id, e.data) for e in events] == [
        ("message", event_id, text) for event_id, text in zip(ids[2:], texts[2:], strict=True)
    ] + [("message", live, "live")]
    assert received(stream.until_id(live, timeout=10)) == [(live, "live")]
    wait_until(hub.log_text, warns_of_decode_responses, timeout=5,
               what="a warning saying decode_responses is ignored", log=hub.log_text)


def warns_of_decode_responses(log: str) -> bool:
    """A WARNING line naming decode_responses, not only inside an echoed Redis URL."""
    return any("WARNING" in line and "decode_responses" in re.sub(r"rediss?://\S*", "", line)
               for line in log.splitlines())


def says_the_stream_keeps(window: int, log: str) -> bool:
    """A log line naming ``window`` (as a number of its own) and the history or window."""
    number = re.compile(rf"(?<![\w.:\[-]){window}(?![\w.:\]-])")
    words = ("histor", "window", "retain", "keep")
    return any(number.search(line) and any(word in line.lower() for word in words)
               for line in log.splitlines())


def test_hubs_with_different_history_sizes_on_one_stream_keep_the_larger_window(
    start_hub: HubLauncher, redis_url: str, redis_client: Any,
) -> None:
    hub_a = start_hub(SSE_REDIS_URL=redis_url, SSE_HISTORY_SIZE=2000, SSE_HEARTBEAT_SECONDS=1)
    hub_a.publish("from A", channel="shared")
    # SSE_RETRY_MS=1500: no other 2000 (the default retry) in B's log of its settings.
    hub_b = start_hub(SSE_REDIS_URL=redis_url, SSE_HISTORY_SIZE=100, SSE_HEARTBEAT_SECONDS=1,
                      SSE_RETRY_MS=1500)

    ids: list[str] = []
    for first in range(0, 1500, 100):
        ids += hub_b.publish_batch(
            [{"channel": "shared", "data": f"b{n}"} for n in range(first, first + 100)]
        )
    length = redis_client.xlen(HUB_STREAM)
    assert length >= 1 + 1500, (
        f"XLEN {length} after 1501 events: hub B (SSE_HISTORY_SIZE=100) trimmed hub A's "
        "window of 2000"
    )

    stream = hub_a.subscribe("shared", headers={"Last-Event-ID": ids[0]})
    events = stream.until_id(ids[-1], timeout=20)
    assert GAP_EVENT not in {e.type for e in events}, "hub A's window was shortened"
    assert received(events) == [(event_id, f"b{n}") for n, event_id in enumerate(ids)][1:]
    wait_until(hub_b.log_text, lambda log: says_the_stream_keeps(2000, log), timeout=5,
               what="hub B's log saying the stream keeps the larger window (2000)",
               log=hub_b.log_text)


def test_healthz_answers_503_within_a_second_while_redis_is_down(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=1)
    stream: HubStream = hub.subscribe("down")  # a running broadcaster
    redis_server.kill()
    try:
        deadline = time.monotonic() + 2.5  # before and after the broadcaster notices
        answers = 0
        while time.monotonic() < deadline or answers < 3:
            status, answer, took = healthz(hub)
            assert status == 503, f"/healthz while Redis is down: {status} {answer!r}"
            assert answer.get("status") != "ok", answer
            assert took < HEALTHZ_SECONDS, f"/healthz answered after {took:.2f}s"
            answers += 1
            time.sleep(0.2)
        assert not stream.stream_ended
    finally:
        redis_server.start()
    wait_healthy(hub)


def test_concurrent_publishes_to_a_frozen_redis_answer_in_time_and_none_said_unpublished_arrives(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    """Concurrent publishes share pipelines on one connection (docs/protocol.md#redis-timeouts).

    Frozen Redis, 24 publishes in three waves 0.3 s apart (the later ones
    queue behind a pipeline already stuck on the frozen Redis): every one
    answers 503 within ``SSE_REDIS_TIMEOUT``, saying either "may have been
    published" (sent: it runs when Redis thaws, and then at most once) or
    "nothing was published" (never sent: it must never reach a stream).
    """
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_REDIS_TIMEOUT=1, SSE_HEARTBEAT_SECONDS=0.5)
    stream = hub.subscribe("frozen-many")
    first = hub.publish("before", channel="frozen-many")
    stream.until_id(first, timeout=5)

    assert redis_server.process is not None

    def publish_in_wave(n: int) -> tuple[str, tuple[int, Any, float]]:
        time.sleep(n // 8 * 0.3)  # the wave's start, not an assertion
        return f"during {n}", publish_timed(hub, {"channel": "frozen-many", "data": f"during {n}"})

    with stopped(redis_server.process.pid), ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(publish_in_wave, range(24)))
    unpublished: list[str] = []
    maybe: list[str] = []
    for data, (status, answer, took) in answers:
        assert status == 503, f"{data}: {status} {answer!r}"
        assert took < 1 + 0.5, f"{data}: answered 503 after {took:.2f}s (SSE_REDIS_TIMEOUT=1)"
        error = answer["error"]
        assert "nothing was published" in error or "may have been published" in error, error
        (unpublished if "nothing was published" in error else maybe).append(data)

    wait_healthy(hub)
    last = hub.publish("after", channel="frozen-many")
    got = [e.data for e in stream.until_id(last, timeout=15)]
    assert got[-1] == "after", got
    assert not set(got) & set(unpublished), f"said 'nothing was published', yet delivered: {got}"
    counts = Counter(got)
    assert all(counts[data] <= 1 for data in maybe), got


def test_scripts_flushed_from_redis_are_loaded_again_for_publishes_and_replays(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    """``SCRIPT FLUSH`` (or a Redis restarted from a snapshot) forgets the hub's Lua
    scripts: the next publish and the next replay load them again (NOSCRIPT), nothing fails."""
    hub = start_hub(SSE_REDIS_URL=redis_url)
    stream = hub.subscribe("flushed")
    ids = [hub.publish(f"event {n}", channel="flushed") for n in range(2)]
    stream.until_id(ids[-1], timeout=5)

    redis_server.command("SCRIPT", "FLUSH")
    ids.append(hub.publish("event 2", channel="flushed"))
    assert [e.data for e in stream.until_id(ids[-1], timeout=5)] == ["event 2"]

    redis_server.command("SCRIPT", "FLUSH")
    resumed = hub.subscribe("flushed", headers={"Last-Event-ID": ids[0]})
    assert [(e.last_event_id, e.data) for e in resumed.until_id(ids[-1], timeout=5)] == [
        (ids[1], "event 1"), (ids[2], "event 2"),
    ]
