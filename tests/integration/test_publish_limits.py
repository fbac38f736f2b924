"""``POST /publish`` under hostile or careless publishers, and who may read ``/stats``.

The rules (docs/protocol.md#publish, docs/protocol.md#publish-auth,
docs/protocol.md#stats): credentials are checked before the body is read; the
body arrives within ``SSE_PUBLISH_BODY_SECONDS`` or the answer is 408 and the
connection is closed; a batch holds at most ``SSE_MAX_BATCH`` events or the
answer is 413, and an accepted batch reaches every reader that keeps up;
anonymous loopback publishing needs a loopback ``Host``; ``/stats`` answers
loopback clients that are not relayed, anyone else needs ``SSE_STATS_TOKEN``.

Partial requests are written on raw sockets, so that what the hub answers —
and when — is observed before the body ever arrives.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flask_sse_hub import mint_token
from tests.support.threads import run_in_thread

from .conftest import HOST, HubLauncher, HubServer, HubStream, wait_until

pytestmark = pytest.mark.integration

BODY_SECONDS = 1.0
#: 408 must come within the body time plus this margin.
LATE_BOUND = 2.5
#: "At once": an answer that did not wait for a body.
AT_ONCE = 0.5
DECLARED_LENGTH = 100_000
PARTIAL = b'{"data": 1'  # 10 bytes of a body announced as 100 000
STALLED_PUBLISHERS = 50
JWT_SECRET = "publish-limits-hs256-secret-0123456789abcdef"


# -- raw requests -------------------------------------------------------------


class RawPublish:
    """A ``POST /publish`` written by hand: the head, then as much body as the test says."""

    def __init__(self, port: int, *, headers: dict[str, str] | None = None,
                 length: int = DECLARED_LENGTH) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [
            "POST /publish HTTP/1.1",
            f"Host: {HOST}:{port}",
            "Content-Type: application/json",
            f"Content-Length: {length}",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.received = bytearray()
        self.sent_at = 0.0
        self.answered_at: float | None = None
        self.eof = False

    def send(self, body: bytes = PARTIAL) -> RawPublish:
        self.sock.sendall(self.head + body)
        self.sent_at = time.monotonic()
        return self

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete answer yet; got {bytes(self.received)[:300]!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            raise TimeoutError(
                f"no complete answer yet; got {bytes(self.received)[:300]!r}"
            ) from None
        if not data:
            self.eof = True
        return data

    def answer(self, timeout: float) -> tuple[int, dict[str, str], bytes, float]:
        """The response (status, lower-cased headers, body) and its delay since :meth:`send`."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.received:
            data = self._recv(deadline)
            if not data:
                raise AssertionError(f"closed before an answer: {bytes(self.received)!r}")
            if self.answered_at is None:
                self.answered_at = time.monotonic()
            self.received += data
        head, _, body = bytes(self.received).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            data = self._recv(deadline)
            if not data:
                break
            body += data
        assert self.answered_at is not None
        return int(status_line.split(" ")[1]), headers, body, self.answered_at - self.sent_at

    def answered_yet(self) -> bool:
        """Whether any answer byte is readable right now (without waiting)."""
        self.sock.settimeout(0.0)
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except (BlockingIOError, TimeoutError):
            return False

    def closed_by_server(self, timeout: float) -> bool:
        """True once the server has closed the connection (EOF or reset) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            try:
                self._recv(deadline)
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def raw_publishes() -> Iterator[list[RawPublish]]:
    opened: list[RawPublish] = []
    try:
        yield opened
    finally:
        for raw in opened:
            raw.close()


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    assert status == expected, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert json.loads(body)["error"], body


class Reader(threading.Thread):
    """Reads one stream continuously, as a browser does, until it has ``count`` events."""

    def __init__(self, stream: HubStream, count: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.count = count
        self.timeout = timeout
        self.ids: list[str] = []
        self.data: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while len(self.ids) < self.count:
                event = self.stream.next_event(max(deadline - time.monotonic(), 0.0))
                self.ids.append(event.last_event_id)
                self.data.append(event.data)
        except BaseException as exc:  # reported by the test thread
            self.error = exc


def read_in_threads(hub: HubServer, channel: str, readers: int, count: int,
                    timeout: float) -> list[Reader]:
    threads = [Reader(hub.subscribe(channel), count, timeout) for _ in range(readers)]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[Reader], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.1))
    assert not any(thread.is_alive() for thread in threads), "a reader is still reading"


def post_batch(hub: HubServer, items: list[dict[str, Any]]) -> tuple[int, dict[str, str], Any]:
    status, headers, body = hub.request(
        "POST", "/publish", json.dumps(items).encode(), {"Content-Type": "application/json"},
        timeout=30,
    )
    return status, headers, json.loads(body) if body else None


# -- 1. a body that does not arrive -------------------------------------------


@pytest.fixture(scope="module")
def slow_body_hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_PUBLISH_BODY_SECONDS=BODY_SECONDS,
                                SSE_HEARTBEAT_SECONDS=60)


def test_stalled_body_gets_408_in_time_and_the_connection_is_closed(
    slow_body_hub: HubServer,
) -> None:
    with raw_publishes() as opened:
        raw = RawPublish(slow_body_hub.port).send()
        opened.append(raw)
        status, headers, body, took = raw.answer(timeout=10)
        assert_json_error(status, headers, body, 408)
        assert BODY_SECONDS * 0.9 <= took < LATE_BOUND, (
            f"408 after {took:.2f}s (SSE_PUBLISH_BODY_SECONDS={BODY_SECONDS})"
        )
        assert raw.closed_by_server(timeout=2.0), "the connection stayed open after the 408"
    assert slow_body_hub.stats()["events_published"] == 0


def test_trickling_body_gets_408_in_time(slow_body_hub: HubServer) -> None:
    """One byte every 0.3 s: each wait is short, the whole body never arrives in time."""
    stop = threading.Event()
    sent: list[int] = []

    with raw_publishes() as opened:
        raw = RawPublish(slow_body_hub.port).send(b"[")
        opened.append(raw)

        def trickle() -> None:
            with contextlib.suppress(OSError):
                while not stop.wait(0.3):  # pacing of the client, not an assertion
                    raw.sock.send(b" ")
                    sent.append(1)

        thread = run_in_thread(trickle)
        try:
            status, headers, body, took = raw.answer(timeout=10)
        finally:
            stop.set()
            thread.join(5)
        assert_json_error(status, headers, body, 408)
        assert BODY_SECONDS * 0.9 <= took < LATE_BOUND, f"408 after {took:.2f}s"
        assert len(sent) >= 2, "the body did not trickle"
        assert raw.closed_by_server(timeout=2.0), "the connection stayed open after the 408"


def test_stalled_publishers_do_not_delay_a_normal_publish_or_its_delivery(
    slow_body_hub: HubServer,
) -> None:
    hub = slow_body_hub
    stream = hub.subscribe("meanwhile")
    with raw_publishes() as opened:
        for _ in range(STALLED_PUBLISHERS):
            opened.append(RawPublish(hub.port).send())
        # Every stalled request is in the worker (its connection accepted) ...
        started = time.monotonic()
        status, _, body = hub.request(
            "POST", "/publish", json.dumps({"channel": "meanwhile", "data": "normal"}).encode(),
            {"Content-Type": "application/json"}, timeout=10,
        )
        answered = time.monotonic() - started
        assert status == 202, body
        event_id = json.loads(body)["id"]
        event = stream.next_event(timeout=AT_ONCE)
        delivered = time.monotonic() - started
        # ... and none of them was answered before the normal publish was.
        still_stalled = sum(not raw.answered_yet() for raw in opened)
        assert answered < AT_ONCE, f"the publish took {answered:.2f}s among stalled ones"
        assert (event.last_event_id, event.data) == (event_id, "normal")
        assert delivered < AT_ONCE, f"delivered {delivered:.2f}s after the publish started"
        assert still_stalled == STALLED_PUBLISHERS, (
            f"only {still_stalled} of {STALLED_PUBLISHERS} were still stalled: the test "
            "proved nothing"
        )
        # Each stalled one gets its 408 in time.
        for raw in opened:
            status, headers, body, took = raw.answer(timeout=10)
            assert_json_error(status, headers, body, 408)
            assert took < LATE_BOUND + 0.5, f"a stalled publish got its 408 after {took:.2f}s"
    assert hub.stats()["events_published"] == 1


# -- 2. credentials before the body -------------------------------------------


def test_jwt_without_publish_grant_is_refused_with_403_before_the_body(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(SSE_JWT_SECRET=JWT_SECRET)  # SSE_PUBLISH_BODY_SECONDS: default 10
    reader = mint_token(JWT_SECRET, subscribe=["*"])
    with raw_publishes() as opened:
        raw = RawPublish(hub.port, headers={"Authorization": f"Bearer {reader}"}).send()
        opened.append(raw)
        status, headers, body, took = raw.answer(timeout=10)
        assert_json_error(status, headers, body, 403)
        assert took < AT_ONCE, f"403 after {took:.2f}s: the hub waited for the body"

        missing = RawPublish(hub.port).send()
        opened.append(missing)
        status, headers, body, took = missing.answer(timeout=10)
        assert_json_error(status, headers, body, 401)
        assert took < AT_ONCE, f"401 after {took:.2f}s: the hub waited for the body"
    assert hub.stats()["events_published"] == 0


def test_wrong_publish_token_is_refused_with_401_before_the_body(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(SSE_PUBLISH_TOKEN="the-right-one")
    with raw_publishes() as opened:
        for headers in ({"Authorization": "Bearer the-wrong-one"}, {}):
            raw = RawPublish(hub.port, headers=headers).send()
            opened.append(raw)
            status, answer_headers, body, took = raw.answer(timeout=10)
            assert_json_error(status, answer_headers, body, 401)
            assert took < AT_ONCE, f"401 after {took:.2f}s ({headers}): waited for the body"
        # The right token still publishes.
        status, _, body = hub.request(
            "POST", "/publish", b'{"data": "ok"}',
            {"Content-Type": "application/json", "Authorization": "Bearer the-right-one"},
        )
        assert status == 202, body


# -- 3. batches ---------------------------------------------------------------


def test_a_full_batch_reaches_ten_fast_readers_and_one_over_the_limit_publishes_nothing(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(SSE_QUEUE_SIZE=200, SSE_HISTORY_SIZE=2000, SSE_HEARTBEAT_SECONDS=60)
    readers = read_in_threads(hub, "batch", readers=10, count=1000, timeout=20)
    items = [{"channel": "batch", "data": f"n={n}"} for n in range(1000)]
    status, _, answer = post_batch(hub, items)
    assert status == 202, answer
    ids = answer["ids"]
    assert len(ids) == 1000
    join_all(readers, timeout=25)
    for reader in readers:
        assert reader.error is None, f"got {len(reader.ids)} of 1000: {reader.error}"
        assert reader.ids == ids
        assert reader.data == [item["data"] for item in items]
    stats = hub.stats()
    assert stats["subscribers_dropped_slow"] == 0, stats
    assert stats["subscribers"] == 10, stats
    published = stats["events_published"]

    # One more than SSE_MAX_BATCH: 413, and not one of them published.
    live = readers[0].stream
    status, headers, answer = post_batch(
        hub, [{"channel": "batch", "data": f"over={n}"} for n in range(1001)]
    )
    assert status == 413, answer
    assert headers["content-type"].startswith("application/json"), headers
    assert "SSE_MAX_BATCH" in answer["error"], answer
    assert hub.stats()["events_published"] == published
    marker = hub.publish("after the refused batch", channel="batch")
    event = live.next_event(timeout=5)
    assert (event.last_event_id, event.data) == (marker, "after the refused batch"), (
        "the live subscriber got something of the refused batch"
    )
    assert hub.stats()["subscribers_dropped_slow"] == 0


def test_SSE_MAX_BATCH_bounds_a_batch(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_MAX_BATCH=50)
    stream = hub.subscribe("small")
    status, headers, answer = post_batch(hub, [{"channel": "small", "data": n} for n in range(51)])
    assert status == 413, answer
    assert headers["content-type"].startswith("application/json"), headers
    assert hub.stats()["events_published"] == 0
    status, _, answer = post_batch(hub, [{"channel": "small", "data": n} for n in range(50)])
    assert status == 202, answer
    got = stream.events(50, timeout=5)
    assert [event.data for event in got] == [str(n) for n in range(50)]
    assert [event.last_event_id for event in got] == answer["ids"]


def test_a_one_mib_batch_of_tiny_events_reaches_every_fast_reader_whole(
    start_hub: HubLauncher,
) -> None:
    """The "1 MiB batch of tiny events dropped every subscriber" bug."""
    count = 20_000
    hub = start_hub(SSE_MAX_BATCH=count, SSE_MAX_PUBLISH_BYTES=2_000_000, SSE_QUEUE_SIZE=1000,
                    SSE_HISTORY_SIZE=count, SSE_HEARTBEAT_SECONDS=60)
    items = [{"channel": "tiny", "data": f"{n:08d}-{'x' * 15}"} for n in range(count)]
    body = json.dumps(items, separators=(",", ":")).encode()
    assert 1_000_000 <= len(body) <= 2_000_000, len(body)
    readers = read_in_threads(hub, "tiny", readers=10, count=count, timeout=30)
    status, _, raw = hub.request("POST", "/publish", body, {"Content-Type": "application/json"},
                                 timeout=30)
    assert status == 202, raw[:300]
    ids = json.loads(raw)["ids"]
    join_all(readers, timeout=35)
    for reader in readers:
        assert reader.error is None, f"got {len(reader.ids)} of {count}: {reader.error}"
        assert reader.ids == ids
        assert reader.data == [item["data"] for item in items]
    stats = hub.stats()
    assert stats["subscribers_dropped_slow"] == 0, stats
    assert stats["subscribers"] == 10, stats


# -- 4. anonymous publishing and the Host header ------------------------------


@pytest.fixture(scope="module")
def open_hub(start_hub_for_module: HubLauncher) -> HubServer:
    """No SSE_PUBLISH_TOKEN, no JWT, no SSE_STATS_TOKEN."""
    return start_hub_for_module()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example",
                                  "127.0.0.1.evil.example", "[::2]:80"])
def test_anonymous_publish_with_a_foreign_host_is_403(open_hub: HubServer, host: str) -> None:
    before = open_hub.stats()["events_published"]
    status, headers, body = open_hub.request(
        "POST", "/publish", b'{"data": "rebound"}',
        {"Host": host, "Content-Type": "application/json"},
    )
    assert_json_error(status, headers, body, 403)
    assert open_hub.stats()["events_published"] == before


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:1234", "[::1]:80", "localhost",
                                  "127.0.0.1", "127.1.2.3:9"])
def test_anonymous_publish_with_a_loopback_host_is_accepted(
    open_hub: HubServer, host: str,
) -> None:
    status, _, body = open_hub.request(
        "POST", "/publish", b'{"data": "local"}',
        {"Host": host, "Content-Type": "application/json"},
    )
    assert status == 202, (host, body)
    assert json.loads(body)["id"]


# -- 5. who may read /stats ---------------------------------------------------


@pytest.fixture(scope="module")
def stats_token_hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_STATS_TOKEN="s3cret")


RELAYED = {"X-Forwarded-For": "1.2.3.4"}


def test_stats_for_loopback_and_not_for_relayed_clients_without_a_token(
    open_hub: HubServer,
) -> None:
    status, _, body = open_hub.request("GET", "/stats")
    assert status == 200, body
    assert "subscribers" in json.loads(body)
    for relayed in (RELAYED, {"X-Real-IP": "1.2.3.4"}, {"Forwarded": "for=1.2.3.4"}):
        status, headers, body = open_hub.request("GET", "/stats", headers=relayed)
        assert_json_error(status, headers, body, 403)
    status, headers, body = open_hub.request(
        "GET", "/stats", headers={**RELAYED, "Authorization": "Bearer anything"}
    )
    assert_json_error(status, headers, body, 403)


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, 200),
    (RELAYED, 401),
    ({**RELAYED, "Authorization": "Bearer wrong"}, 401),
    ({**RELAYED, "Authorization": "Bearer s3cret"}, 200),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "Bearer s3cret"}, 200),
])
def test_stats_with_SSE_STATS_TOKEN(
    stats_token_hub: HubServer, headers: dict[str, str], expected: int,
) -> None:
    status, answer_headers, body = stats_token_hub.request("GET", "/stats", headers=headers)
    if expected == 200:
        assert status == 200, body
        assert "subscribers" in json.loads(body)
    else:
        assert_json_error(status, answer_headers, body, expected)


#: The other operator routes, and a byte string each one's answer carries.
OPERATOR_ROUTES = {"/metrics": b"sse_hub_streams", "/presence?channel=a": b'"occupancy"'}


@pytest.mark.parametrize("path", OPERATOR_ROUTES)
def test_metrics_and_presence_for_loopback_and_not_for_relayed_clients(
    open_hub: HubServer, path: str,
) -> None:
    status, _, body = open_hub.request("GET", path)
    assert status == 200 and OPERATOR_ROUTES[path] in body, body[:200]
    status, headers, body = open_hub.request("GET", path, headers=RELAYED)
    assert_json_error(status, headers, body, 403)


@pytest.mark.parametrize("path", OPERATOR_ROUTES)
@pytest.mark.parametrize(("headers", "expected"), [
    (RELAYED, 401),
    ({**RELAYED, "Authorization": "Bearer wrong"}, 401),
    ({**RELAYED, "Authorization": "Bearer s3cret"}, 200),
])
def test_metrics_and_presence_with_SSE_STATS_TOKEN(
    stats_token_hub: HubServer, path: str, headers: dict[str, str], expected: int,
) -> None:
    status, answer_headers, body = stats_token_hub.request("GET", path, headers=headers)
    if expected == 200:
        assert status == 200 and OPERATOR_ROUTES[path] in body, body[:200]
    else:
        assert_json_error(status, answer_headers, body, expected)


def test_refusals_leave_the_hub_serving(open_hub: HubServer) -> None:
    stream = open_hub.subscribe("after")
    event_id = open_hub.publish("still serving", channel="after")
    assert stream.next_event(timeout=5).last_event_id == event_id
    wait_until(lambda: open_hub.request("GET", "/healthz")[0], lambda s: s == 200,
               timeout=5, what="/healthz 200")
