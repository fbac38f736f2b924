"""Redis failures (docs/protocol.md#redis-outage).

* Redis dies with streams open: the streams stay open and keep their
  heartbeats; ``POST /publish`` answers 503 with a JSON error; ``/healthz``
  answers 503. Redis comes back on the same port EMPTY (no persistence): once
  ``/healthz`` is 200 again, publishing works and reaches the streams that
  stayed open, after an ``sse-hub-gap`` event that names the last event they
  got (whatever Redis lost, the streams are told).
* Only connections break (``CLIENT KILL``) while events are being published:
  the broadcaster reconnects and resumes after the last id it delivered, so
  no acknowledged event is lost, duplicated or reordered.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import (
    GAP_EVENT,
    HOST,
    HubLauncher,
    HubServer,
    HubStream,
    wait_until,
)

from .conftest import RedisServer

pytestmark = pytest.mark.integration


def broadcaster_client_id(redis_client: Any, *, other_than: str | None = None) -> str:
    """The id of the hub's broadcaster connection: the one client that runs XREAD."""
    def xread_clients() -> list[str]:
        return [c["id"] for c in redis_client.client_list() if c["cmd"] == "xread"]

    found = wait_until(
        xread_clients, lambda ids: len(ids) == 1 and ids[0] != other_than, timeout=10,
        what="one broadcaster connection (cmd=xread)"
        + (f" other than client {other_than}" if other_than else ""),
    )
    return found[0]


def assert_refused_and_open_while_redis_is_down(hub: HubServer, streams: list[HubStream]) -> None:
    """Publishes and /healthz answer 503 (JSON); the streams stay open, with heartbeats."""
    status, answer = hub.post_json("/publish", {"channel": "outage", "data": "during"})
    assert status == 503, answer
    assert "redis" in answer["error"].lower(), answer
    status, answer = hub.post_json("/publish", [{"channel": "outage", "data": "batch"}])
    assert status == 503, answer
    status, headers, body = hub.request("GET", "/healthz")
    assert status == 503, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["status"] != "ok"
    hub.wait_for_stats(lambda stats: stats["redis_connected"] is False,
                       what="the broadcaster to notice the outage")
    for stream in streams:  # two heartbeats each while Redis is down
        stream.wait_comment(timeout=3, new_only=True)
        stream.wait_comment(timeout=3, new_only=True)
        assert not stream.stream_ended


def test_redis_outage_keeps_streams_open_answers_503_and_reports_what_redis_lost(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str, redis_client: Any,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=1)
    streams = [hub.subscribe("outage") for _ in range(3)]
    before = hub.publish("before", channel="outage")
    for stream in streams:
        assert [e.data for e in stream.until_id(before, timeout=5)] == ["before"]

    # An acknowledged event that the broadcaster has not read yet when Redis
    # dies: cut its connection (it reconnects after a 0.1 s backoff), publish,
    # kill Redis at once. Redis restarts empty, so that event is lost.
    redis_client.client_kill_filter(_id=broadcaster_client_id(redis_client))
    in_flight = hub.publish("in flight", channel="outage")
    redis_server.kill()
    try:
        assert_refused_and_open_while_redis_is_down(hub, streams)
    finally:
        redis_server.start()  # same port, empty

    wait_until(lambda: hub.request("GET", "/healthz")[0], lambda status: status == 200,
               timeout=10, what="/healthz 200 after Redis came back", log=hub.log_text)
    after = hub.publish("after", channel="outage")
    for number, stream in enumerate(streams):
        events = stream.until_id(after, timeout=15)
        *lost, gap, last = events
        delivered = [e.data for e in lost]
        assert delivered in ([], ["in flight"]), f"stream {number}: {events}"
        assert gap.type == GAP_EVENT, f"stream {number}: {events}"
        assert json.loads(gap.data) == {"last_event_id": in_flight if delivered else before}
        assert (last.data, last.last_event_id) == ("after", after)
    assert hub.stats()["redis_reconnects"] >= 1


class Publisher(threading.Thread):
    """Publishes numbered events over one keep-alive connection until stopped.

    Keeps the ids of acknowledged (202) events and the data of refused ones.
    """

    def __init__(self, hub: HubServer, channel: str) -> None:
        super().__init__(daemon=True)
        self.hub = hub
        self.channel = channel
        self.acknowledged: list[tuple[str, str]] = []
        self.refused: list[tuple[str, int | str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.hub.port, timeout=10)
        number = 0
        while not self.stopping.is_set():
            data = f"p{number}"
            number += 1
            body = json.dumps({"channel": self.channel, "data": data}).encode()
            try:
                conn.request("POST", "/publish", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = json.loads(response.read())
            except (OSError, http.client.HTTPException) as exc:
                self.refused.append((data, repr(exc)))
                conn.close()
                continue
            if response.status == 202:
                self.acknowledged.append((answer["id"], data))
            else:
                self.refused.append((data, response.status))
        conn.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Publisher]:
        self.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self.join(timeout=15)


@pytest.mark.parametrize("cut", ["broadcaster", "every-connection"])
def test_broadcaster_resumes_after_its_last_id_when_its_connection_is_cut(
    start_hub: HubLauncher, redis_url: str, redis_client: Any, cut: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=1)
    stream = hub.subscribe("cut")
    cuts = 3
    with Publisher(hub, "cut").running() as publisher:
        broadcaster = broadcaster_client_id(redis_client)
        for _ in range(cuts):
            published = len(publisher.acknowledged)
            wait_until(lambda: len(publisher.acknowledged), lambda n: n >= published + 20,  # noqa: B023
                       timeout=10, what="20 more acknowledged publishes")
            if cut == "broadcaster":
                redis_client.client_kill_filter(_id=broadcaster)
            else:  # the broadcaster's and every pooled connection (not this client's)
                redis_client.client_kill_filter(_type="normal", skipme=True)
            at_cut = len(publisher.acknowledged)
            broadcaster = broadcaster_client_id(redis_client, other_than=broadcaster)
            # The reconnect waits a 0.1 s backoff: events were published meanwhile.
            assert len(publisher.acknowledged) > at_cut
        wait_until(lambda: len(publisher.acknowledged), lambda n: n >= at_cut + 20,
                   timeout=10, what="20 more acknowledged publishes after the last cut")
    end = hub.publish("end", channel="cut")

    events = stream.until_id(end, timeout=15)
    received = [(e.last_event_id, e.data) for e in events[:-1]]
    acknowledged = publisher.acknowledged
    refused = dict(publisher.refused)
    # Every acknowledged event, once, in order. A publish whose connection was
    # cut mid-command is refused (503) though Redis may have stored it: such an
    # event may reach the stream too, in its place in the id order.
    assert [item for item in received if item[1] not in refused] == acknowledged
    assert len({event_id for event_id, _ in received}) == len(received)
    if cut == "broadcaster":
        assert refused == {}, "cutting only the broadcaster must not fail a publish"


class ReplyCuttingProxy:
    """A TCP proxy in front of Redis that can lose the reply to one publish.

    Once :meth:`arm` ed, the next connection that sends a publish command
    (``XADD``, or the hub's publish script by ``EVALSHA``/``EVAL``) has it
    forwarded (Redis executes it) and is then closed before the reply reaches
    the hub: the hub cannot tell whether its event was stored.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server((HOST, 0))
        self.port: int = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def arm(self) -> None:
        self.cut.clear()
        self.armed.set()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection((HOST, self.upstream_port))
                self.sockets += [client, server]
                doomed = threading.Event()
                threading.Thread(target=self._requests, args=(client, server, doomed),
                                 daemon=True).start()
                threading.Thread(target=self._replies, args=(server, client, doomed),
                                 daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket,
                  doomed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.armed.is_set() and any(
                    command in data.upper() for command in (b"XADD", b"EVALSHA", b"EVAL")
                ):
                    self.armed.clear()
                    doomed.set()
                server.sendall(data)

    def _replies(self, server: socket.socket, client: socket.socket,
                 doomed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if doomed.is_set():  # the XADD was executed: lose its reply
                    self.cut.set()
                    break
                client.sendall(data)
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_publish_answered_503_was_not_published_even_when_a_reply_is_lost(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    """BackendUnavailable means "nothing published" (errors.py, the 503's message):
    a client may publish again without making a duplicate. When Redis executed the
    XADD and only its reply was lost, the hub must not claim that."""
    proxy = ReplyCuttingProxy(redis_server.port)
    try:
        hub = start_hub(SSE_REDIS_URL=proxy.url, SSE_HEARTBEAT_SECONDS=1)
        stream = hub.subscribe("ambiguous")
        proxy.arm()
        status, answer = hub.post_json("/publish", {"channel": "ambiguous", "data": "once"})
        assert proxy.cut.is_set(), "the proxy did not cut the XADD's reply"
        after = hub.publish("after", channel="ambiguous")
        received = [(e.last_event_id, e.data) for e in stream.until_id(after, timeout=10)]
    finally:
        proxy.close()
    if status == 202:  # the hub found out (or retried idempotently): delivered exactly once
        assert received == [(answer["id"], "once"), (after, "after")]
    else:
        assert status == 503, answer
        assert received == [(after, "after")], (
            f"publish answered {status} {answer} yet its event was delivered: {received}"
        )


def test_a_resume_during_an_outage_opens_the_stream_with_a_gap_not_a_503(
    start_hub: HubLauncher, redis_server: RedisServer, redis_url: str,
) -> None:
    """A browser's EventSource gives up for good on a 503: a resume while Redis is
    down must still open the stream, start with an sse-hub-gap (the hub cannot
    know what was missed) and deliver live events once Redis is back."""
    hub = start_hub(SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=1)
    seen = hub.publish("seen", channel="resume-outage")
    redis_server.kill()
    try:
        stream = hub.subscribe("resume-outage", headers={"Last-Event-ID": seen})
        assert stream.status == 200
        gap = stream.next_event(timeout=5)
        assert gap.type == GAP_EVENT
        assert json.loads(gap.data) == {"last_event_id": seen}
        # No id on that gap (this fresh parser's id buffer stays empty): a
        # browser keeps its own last id for a later resume.
        assert gap.last_event_id == ""
    finally:
        redis_server.start()
    wait_until(lambda: hub.request("GET", "/healthz")[0], lambda status: status == 200,
               timeout=10, what="/healthz 200 after Redis came back", log=hub.log_text)
    after = hub.publish("after", channel="resume-outage")
    events = stream.until_id(after, timeout=15)
    assert events[-1].data == "after"
