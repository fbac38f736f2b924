"""``POST /publish`` with ``application/x-ndjson``: one long request, one event per line.

Each line is published as it arrives and answered with a result line
(``{"id": ...}`` or ``{"error": ..., "status": ...}``); a bad line is
refused on its own and the stream goes on. The tests talk raw HTTP/1.1 with
a chunked body, so that a line can be sent, its result read, and only then
the next line sent: the proof that nothing waits for the body's end.
gunicorn hands a body on in pieces of 1 KiB (or at its end), so the lines
that must arrive alone are padded to that.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .conftest import HOST, HubLauncher, HubServer

pytestmark = pytest.mark.integration


class StreamingPublish:
    """One ``POST /publish`` with a chunked NDJSON body, written and read line by line."""

    def __init__(self, hub: HubServer, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection((HOST, hub.port), timeout=10)
        lines = [
            "POST /publish HTTP/1.1", f"Host: {HOST}:{hub.port}",
            "Content-Type: application/x-ndjson", "Transfer-Encoding: chunked",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.reader = self.sock.makefile("rb")
        self.status: int | None = None
        self.pending = b""  # result bytes read, not yet returned

    def send(self, *items: Any) -> None:
        data = b"".join(
            (item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n"
            for item in items
        )
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def head(self) -> int:
        """The status line and headers of the answer; the status."""
        status = int(self.reader.readline().split()[1])
        while self.reader.readline() not in (b"\r\n", b""):
            pass
        self.status = status
        return status

    def result(self) -> dict[str, Any]:
        """The next result line (a chunk holds the results of one or more lines)."""
        while b"\n" not in self.pending:
            size = int(self.reader.readline().strip(), 16)
            assert size, "the answer ended before this result line"
            self.pending += self.reader.read(size)
            self.reader.readline()  # the CRLF after the chunk
        line, self.pending = self.pending.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def rest(self) -> bytes:
        return self.reader.read()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@contextmanager
def streaming_publish(
    hub: HubServer, headers: dict[str, str] | None = None,
) -> Iterator[StreamingPublish]:
    publisher = StreamingPublish(hub, headers)
    try:
        yield publisher
    finally:
        publisher.close()


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_MAX_PUBLISH_BYTES=2000)  # per line of a stream


#: gunicorn's body reader hands on 1 KiB at a time (or what is left at the end).
PIECE = 1024


def a_piece(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` with its data padded so that its line (newline included) is one piece."""
    line = len(json.dumps(item)) + 1
    return {**item, "data": item["data"] + "." * (PIECE - line)}


def test_each_line_is_published_and_answered_before_the_next_is_sent(hub: HubServer) -> None:
    stream = hub.subscribe("nd")
    one, two = (a_piece({"channel": "nd", "data": word}) for word in ("one", "two"))
    with streaming_publish(hub) as publisher:
        publisher.send(one)
        assert publisher.head() == 200
        first = publisher.result()["id"]
        assert stream.until_data(one["data"])[-1].last_event_id == first  # delivered already
        publisher.send(two)
        second = publisher.result()["id"]
        publisher.finish()
    assert stream.until_data(two["data"])[-1].last_event_id == second


def test_a_bad_line_is_refused_alone_and_the_stream_goes_on(hub: HubServer) -> None:
    stream = hub.subscribe("nd-bad")
    with streaming_publish(hub) as publisher:
        publisher.send({"channel": "nd-bad", "data": 1}, b"{not json", {"channel": "bad name",
                       "data": 2}, {"data": 3, "colour": "red"}, {"channel": "nd-bad", "data": 4})
        publisher.finish()
        assert publisher.head() == 200
        results = [publisher.result() for _ in range(5)]
    assert [result.get("status") for result in results] == [None, 400, 400, 400, None]
    assert "not valid JSON" in results[1]["error"] and "channel" in results[2]["error"]
    events = stream.until_data("4")
    assert [event.data for event in events if event.type == "message"] == ["1", "4"]


def test_a_line_over_the_limit_ends_the_stream_with_413(hub: HubServer) -> None:
    with streaming_publish(hub) as publisher:
        publisher.send({"channel": "nd", "data": "x" * 3000})
        publisher.finish()
        assert publisher.head() == 200
        assert publisher.result()["status"] == 413
        publisher.sock.settimeout(10)
        assert publisher.rest().endswith(b"0\r\n\r\n")  # the answer ended, and the connection


def test_credentials_are_checked_before_any_line_is_read(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_PUBLISH_TOKEN="nd-token")
    with streaming_publish(hub) as publisher:
        assert publisher.head() == 401  # answered without a single line sent
    with streaming_publish(hub, {"Authorization": "Bearer nd-token"}) as publisher:
        publisher.send({"channel": "nd", "data": "ok"})
        publisher.finish()
        assert publisher.head() == 200
        assert "id" in publisher.result()


def test_an_idempotency_key_is_refused_for_a_stream(hub: HubServer) -> None:
    with streaming_publish(hub, {"Idempotency-Key": "k-1"}) as publisher:
        assert publisher.head() == 400


def test_a_burst_of_lines_is_published_in_order_each_line_answered_once(hub: HubServer) -> None:
    """1 000 lines in one chunk: the hub publishes them in groups (what arrived while
    the last group was published), yet each line gets its own result, in order, a
    bad line refuses only itself, and the stream gets every good line once, in order."""
    stream = hub.subscribe("nd-burst")
    items: list[Any] = []
    for n in range(1000):
        if n % 97 == 13:
            items.append(b"{not json %d" % n)
        elif n % 89 == 7:
            items.append({"channel": "bad name", "data": n})
        else:
            items.append({"channel": "nd-burst", "data": f"burst {n}"})
    good = [item["data"] for item in items
            if isinstance(item, dict) and item["channel"] == "nd-burst"]
    with streaming_publish(hub) as publisher:
        publisher.send(*items)
        publisher.finish()
        assert publisher.head() == 200
        results = [publisher.result() for _ in items]
        assert publisher.rest() == b"0\r\n\r\n", "more results than lines"
    for n, (item, result) in enumerate(zip(items, results, strict=True)):
        if isinstance(item, bytes) or item["channel"] == "bad name":
            assert result["status"] == 400 and "id" not in result, (n, result)
        else:
            assert set(result) == {"id"}, (n, result)
    ids = [result["id"] for result in results if "id" in result]
    assert len(ids) == len(good) == len(set(ids))
    events = [e for e in stream.until_id(ids[-1], timeout=15) if e.type == "message"]
    assert [e.data for e in events] == good
    assert [e.last_event_id for e in events] == ids


def test_a_publisher_gone_mid_line_leaves_its_whole_lines_published_and_the_hub_serving(
    hub: HubServer,
) -> None:
    stream = hub.subscribe("nd-gone")
    with streaming_publish(hub) as publisher:
        publisher.send(*(a_piece({"channel": "nd-gone", "data": f"whole {n}"}) for n in range(10)))
        assert publisher.head() == 200
        last = [publisher.result() for _ in range(10)][-1]["id"]
        publisher.sock.sendall(b'40\r\n{"channel": "nd-gone", "data": "cut')  # then gone
    assert [e.data.rstrip(".") for e in stream.until_id(last)] == [f"whole {n}" for n in range(10)]
    after = hub.publish("after", channel="nd-gone")
    assert [e.data for e in stream.until_id(after)] == ["after"]  # the cut line never came


def test_a_malformed_chunk_ends_the_answer_with_400_and_the_hub_keeps_serving(
    hub: HubServer,
) -> None:
    stream = hub.subscribe("nd-malformed")
    with streaming_publish(hub) as publisher:
        publisher.send(a_piece({"channel": "nd-malformed", "data": "before"}))
        assert publisher.head() == 200
        first = publisher.result()["id"]
        publisher.sock.sendall(b"zz\r\nnot a chunk\r\n")
        publisher.sock.settimeout(10)
        refused = publisher.result()  # a last result line says why, then the answer ends
        assert refused["status"] == 400 and "could not be read" in refused["error"], refused
        rest = publisher.rest()  # ... and the connection (nothing more is read from it)
        assert b'"id"' not in rest, rest
        assert rest.endswith(b"0\r\n\r\n"), rest
    assert [e.data.rstrip(".") for e in stream.until_id(first)] == ["before"]
    after = hub.publish("after", channel="nd-malformed")
    assert [e.data for e in stream.until_id(after)] == ["after"]


def test_a_line_that_does_not_come_in_time_ends_the_answer_with_408(
    start_hub: HubLauncher,
) -> None:
    """Each line must arrive within ``SSE_PUBLISH_BODY_SECONDS`` of the one before."""
    hub = start_hub(SSE_PUBLISH_BODY_SECONDS=1)
    with streaming_publish(hub) as publisher:
        publisher.send(a_piece({"channel": "nd-late", "data": "in time"}))
        assert publisher.head() == 200
        assert "id" in publisher.result()
        started = time.monotonic()
        late = publisher.result()  # nothing more is sent
        took = time.monotonic() - started
        assert late["status"] == 408 and "SSE_PUBLISH_BODY_SECONDS" in late["error"], late
        assert 0.9 <= took < 3, f"408 after {took:.2f}s (SSE_PUBLISH_BODY_SECONDS=1)"
        assert publisher.rest().endswith(b"0\r\n\r\n")  # the answer ended, and the connection
    assert hub.publish("after", channel="nd-late")
