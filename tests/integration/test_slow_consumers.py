"""A subscriber that stops reading is dropped; nobody else notices; it catches up later.

Each subscriber's queue is bounded by ``SSE_QUEUE_SIZE``; one that overflows
is disconnected and catches up from history (``SSE_HISTORY_SIZE``) on
reconnect; the broadcaster never blocks on it and no other subscriber loses
or reorders anything; resume after the drop has no gap and no duplicate; the
drop counts in ``/stats`` as ``subscribers_dropped_slow``
(docs/protocol.md#slow-consumers).

The stalled client is a raw socket with a small ``SO_RCVBUF`` set before it
connects, so the TCP window is small from the start: it reads the first
events, then nothing until the hub has dropped it.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.sse_parser import Event, parse_stream
from tests.support.threads import Worker, run_in_thread

from .conftest import GAP_EVENT, HOST, HubLauncher, HubServer, HubStream, wait_until

pytestmark = pytest.mark.integration

QUEUE_SIZE = 50
BATCH = 20  # events per POST /publish: fewer than a queue's worth
EVENT_DATA_BYTES = 30_000
MAX_BATCHES = 150  # the drop must come long before ~90 MB went by


def dechunk(body: bytes) -> bytes:
    """The payload of a (possibly truncated) chunked body."""
    out: list[bytes] = []
    pos = 0
    while True:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            break
        size = int(body[pos:line_end].split(b";")[0], 16)
        if size == 0:
            break
        start = line_end + 2
        out.append(body[start : start + size])
        if start + size + 2 > len(body):
            break
        pos = start + size + 2
    return b"".join(out)


class StalledClient:
    """A stream client with a tiny receive buffer that reads only when told to."""

    def __init__(self, port: int, path: str, rcvbuf: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((HOST, port))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n"
            .encode()
        )
        self.raw = bytearray()
        self.eof = False

    def events(self) -> list[Event]:
        """Every complete event received so far (a partial last one is not dispatched)."""
        head, sep, body = bytes(self.raw).partition(b"\r\n\r\n")
        if not sep:
            return []
        assert head.startswith(b"HTTP/1.1 200"), head
        return parse_stream(dechunk(body))

    def read_until_events(self, count: int, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        while len(events := self.events()) < count:
            self._read(deadline)
            assert not self.eof, f"stream ended after {len(self.events())} events"
        return events

    def read_to_eof(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._read(deadline)
        return self.events()

    def _read(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no end of stream; {len(self.raw)} bytes read")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.raw += data

    def close(self) -> None:
        self.sock.close()


def read_until_end(stream: HubStream, received: list[Event]) -> None:
    """Read ``stream`` into ``received`` up to the event whose data is ``end``."""
    while not received or received[-1].data != "end":
        received.append(stream.next_event(timeout=30))


def publish_until_one_is_dropped(
    hub: HubServer, ids: list[str], received: list[Event], reader: Worker
) -> None:
    """Publish batches (their ids onto ``ids``) until the hub drops a slow subscriber.

    After each batch the normal client (``reader``) must have caught up: it
    is never more than one batch behind.
    """
    payload = "x" * EVENT_DATA_BYTES
    for _ in range(MAX_BATCHES):
        ids += hub.publish_batch(
            [{"channel": "firehose", "data": f"{len(ids) + n} {payload}"} for n in range(BATCH)]
        )

        def caught_up(count: int, target: int = len(ids)) -> bool:
            return count >= target or reader.failed

        wait_until(received.__len__, caught_up, timeout=20,
                   what=f"the normal client to read {len(ids)} events")
        reader.check()
        if hub.stats()["subscribers_dropped_slow"] >= 1:
            return
    pytest.fail(f"the stalled subscriber was not dropped after {len(ids)} events\n"
                f"{hub.stats()}")


def read_what_was_in_flight(stalled: StalledClient, ids: list[str]) -> list[str]:
    """The dropped connection has ended: what was in flight, in order, then EOF."""
    seen_ids = [e.last_event_id for e in stalled.read_to_eof(timeout=30)]
    assert seen_ids == ids[: len(seen_ids)], "the stalled client got events out of order"
    assert len(seen_ids) < len(ids)
    return seen_ids


def test_slow_consumer_is_dropped_while_others_get_everything_and_it_resumes_losslessly(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(
        SSE_QUEUE_SIZE=QUEUE_SIZE, SSE_HISTORY_SIZE=MAX_BATCHES * BATCH + 1000,
        SSE_HEARTBEAT_SECONDS=5, SSE_MAX_PUBLISH_BYTES=4 * BATCH * EVENT_DATA_BYTES,
    )
    normal = hub.subscribe("firehose")
    stalled = StalledClient(hub.port, "/stream?channel=firehose")
    try:
        hub.wait_subscribers("firehose", 2)
        ids = [hub.publish(f"warm-up {n}", channel="firehose") for n in range(3)]
        stalled.read_until_events(3, timeout=5)  # ... and from now on it reads nothing
        received: list[Event] = []
        reader = run_in_thread(read_until_end, normal, received)
        publish_until_one_is_dropped(hub, ids, received, reader)

        stats = hub.stats()
        assert stats["subscribers_dropped_slow"] == 1, stats
        hub.wait_subscribers("firehose", 1)
        # Published while the dropped client is away.
        ids += hub.publish_batch([{"channel": "firehose", "data": f"after drop {n}"}
                                  for n in range(BATCH)])
        seen_ids = read_what_was_in_flight(stalled, ids)

        resumed = hub.subscribe("firehose", headers={"Last-Event-ID": seen_ids[-1]})
        end_id = hub.publish("end", channel="firehose")
        rest = resumed.until_id(end_id, timeout=30)
        assert GAP_EVENT not in {e.type for e in rest}
        assert seen_ids + [e.last_event_id for e in rest] == [*ids, end_id]

        reader.join(30)
        assert [e.last_event_id for e in received] == [*ids, end_id]
        assert not normal.stream_ended
        assert hub.stats()["subscribers_dropped_slow"] == 1, "the normal client was dropped too"
    finally:
        stalled.close()
