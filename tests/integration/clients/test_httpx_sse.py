"""Python's ``httpx-sse`` (``httpx.Client``, ``connect_sse``) against the hub.

httpx-sse parses the stream but never reconnects: the tests resume the way
its users must, by connecting again with the ``Last-Event-ID`` header of the
last event they saw.

httpx-sse 0.4 yields things a WHATWG parser dispatches nothing for: an empty
``message`` for every blank line ending a block without data — a block with
only ``retry:`` or only comments (florimondmanca/httpx-sse#35). The hub
therefore ends neither its preamble nor its heartbeats with a blank line, and
these tests assert that httpx-sse users see no such phantom: every event
yielded is one the hub published (:class:`Reader` counts phantoms, the
reconnect-loop test, with a heartbeat every 0.2 s, asserts there are none).

A new stream starts with the hub's position block (``id:`` and type
``sse-hub-position``, no data): a WHATWG client fires nothing for it but takes
its id, so a stream ended before its first event still resumes. httpx-sse
yields it as an event of that type; :class:`Reader` does what the README
tells such clients to do: keep its id as the resume point, pass it on to no one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent, connect_sse

from tests.support.threads import run_in_thread

from ..conftest import GAP_EVENT, HOST, HubLauncher, HubServer
from .conftest import TRICKY

pytestmark = pytest.mark.integration

POSITION_EVENT = "sse-hub-position"

#: Per read: what a test waits at most for the next bytes of a stream.
READ_TIMEOUT = 10.0


class Reader:
    """``EventSource.iter_sse()``, counting httpx-sse's phantom events (see the module doc)."""

    def __init__(self, source: EventSource) -> None:
        self.response = source.response
        self._events = source.iter_sse()
        # What httpx-sse's parser holds as the last event id: "" on each new connection.
        self._last_id = ""
        #: The last ``retry`` httpx-sse reported (it is how its users learn the delay).
        self.retry: int | None = None
        self.phantoms = 0
        #: Where to resume from: the last id seen, the position block's included.
        self.resume_id: str | None = None

    def __iter__(self) -> Iterator[ServerSentEvent]:
        for sse in self._events:
            if sse.retry is not None:
                self.retry = sse.retry
            if sse.id:
                self.resume_id = sse.id
            if sse.event == POSITION_EVENT:
                assert sse.data == "", sse
                self._last_id = sse.id
                continue
            if sse.event == "message" and sse.data == "" and sse.id == self._last_id:
                self.phantoms += 1
            self._last_id = sse.id
            yield sse

    def take(self, count: int) -> list[ServerSentEvent]:
        """The next ``count`` events; fails if the stream ends first."""
        got: list[ServerSentEvent] = []
        if count == 0:
            return got
        for sse in self:
            got.append(sse)
            if len(got) == count:
                return got
        pytest.fail(f"the stream ended after {len(got)} of {count} events: {got!r}")


def client() -> httpx.Client:
    # trust_env=False: straight to 127.0.0.1, whatever proxy the environment names.
    return httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT), trust_env=False)


def stream_url(hub: HubServer) -> str:
    return f"http://{HOST}:{hub.port}/stream"


def channels(*names: str) -> list[tuple[str, str]]:
    return [("channel", name) for name in names]


def as_tuples(events: list[ServerSentEvent]) -> list[tuple[str, str, str]]:
    return [(e.event, e.data, e.id) for e in events]


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_RETRY_MS=1500)


def test_httpx_sse_gets_tricky_data_exactly(hub: HubServer) -> None:
    with client() as http, connect_sse(http, "GET", stream_url(hub),
                                       params=channels("httpx-tricky")) as source:
        assert source.response.status_code == 200
        reader = Reader(source)
        hub.wait_subscribers("httpx-tricky", 1)
        ids = [hub.publish(data, channel="httpx-tricky") for data, _ in TRICKY]
        events = reader.take(len(TRICKY))

    assert [e.data for e in events] == [expected for _, expected in TRICKY]
    assert [e.id for e in events] == ids
    assert {e.event for e in events} == {"message"}
    assert events[-1].json() == TRICKY[-1][0]


def test_named_events_arrive_with_their_type_and_the_published_ids(hub: HubServer) -> None:
    with client() as http, connect_sse(http, "GET", stream_url(hub),
                                       params=channels("httpx-named")) as source:
        reader = Reader(source)
        hub.wait_subscribers("httpx-named", 1)
        created = hub.publish({"order": 1}, channel="httpx-named", event="order-created")
        plain = hub.publish("plain", channel="httpx-named")
        paid = hub.publish("o1 paid\nin full", channel="httpx-named", event="order-paid")
        explicit = hub.publish("explicit", channel="httpx-named", event="message")
        events = reader.take(4)

    assert as_tuples(events) == [
        ("order-created", '{"order":1}', created),
        ("message", "plain", plain),
        ("order-paid", "o1 paid\nin full", paid),
        ("message", "explicit", explicit),
    ]


def test_httpx_sse_gets_several_channels_in_publish_order(hub: HubServer) -> None:
    with client() as http, connect_sse(http, "GET", stream_url(hub),
                                       params=channels("httpx-a", "httpx-b", "httpx-c")) as src:
        reader = Reader(src)
        hub.wait_subscribers("httpx-c", 1)
        sent = [(f"httpx-{'abc'[n % 3]}", f"event-{n}") for n in range(12)]
        ids = [hub.publish(data, channel=channel, event="tick" if n % 2 else None)
               for n, (channel, data) in enumerate(sent)]
        hub.publish("elsewhere", channel="httpx-other")
        last = hub.publish("end", channel="httpx-a")
        events = reader.take(len(sent) + 1)

    assert [e.data for e in events] == [*(data for _, data in sent), "end"]
    assert [e.id for e in events] == [*ids, last]
    assert [e.event for e in events[:-1]] == ["tick" if n % 2 else "message" for n in range(12)]


def test_resume_with_the_last_event_id_header_continues_exactly(hub: HubServer) -> None:
    url, params = stream_url(hub), channels("httpx-resume")
    with client() as http:
        with connect_sse(http, "GET", url, params=params) as source:
            reader = Reader(source)
            hub.wait_subscribers("httpx-resume", 1)
            before = [hub.publish(f"before-{n}", channel="httpx-resume") for n in range(3)]
            seen = reader.take(3)
        assert [e.id for e in seen] == before

        meanwhile = hub.publish_batch(
            [{"channel": "httpx-resume", "data": f"meanwhile-{n}"} for n in range(3)])
        with connect_sse(http, "GET", url, params=params,
                         headers={"Last-Event-ID": seen[-1].id}) as source:
            reader = Reader(source)
            replayed = reader.take(3)  # once replayed, it is subscribed
            live = hub.publish("live", channel="httpx-resume")
            events = [*replayed, *reader.take(1)]

    assert as_tuples(events) == [
        *(("message", f"meanwhile-{n}", meanwhile[n]) for n in range(3)),
        ("message", "live", live),
    ]


def test_unknown_last_event_id_starts_with_the_gap_event_then_history(hub: HubServer) -> None:
    history = [hub.publish(f"retained-{n}", channel="httpx-gap") for n in range(2)]
    with client() as http, connect_sse(http, "GET", stream_url(hub), params=channels("httpx-gap"),
                                       headers={"Last-Event-ID": "0000dead-17"}) as source:
        reader = Reader(source)
        gap, *replayed = reader.take(3)
        live = hub.publish("live", channel="httpx-gap")
        events = [*replayed, *reader.take(1)]

    assert gap.event == GAP_EVENT
    assert json.loads(gap.data) == {"last_event_id": "0000dead-17"}
    assert as_tuples(events) == [
        ("message", "retained-0", history[0]),
        ("message", "retained-1", history[1]),
        ("message", "live", live),
    ]


def publish_for_two_seconds(
    hub: HubServer, sent: list[tuple[str, str]], first_subscriber: threading.Event
) -> None:
    """From the first subscriber on, publish for two seconds, then ``end``: ``(data, id)``s."""
    first_subscriber.wait(timeout=READ_TIMEOUT)
    with hub.publisher() as publish:
        deadline = time.monotonic() + 2.0
        n = 0
        while time.monotonic() < deadline:
            item = {"channel": "httpx-loop", "data": f"event-{n}"}
            sent.append((f"event-{n}", publish(item)))
            n += 1
            time.sleep(0.01)  # paces the publisher, not an assertion
        sent.append(("end", publish({"channel": "httpx-loop", "data": "end"})))


@dataclass
class ReconnectLoop:
    """What an httpx-sse user writes: read; when the hub ends the stream, wait the
    ``retry`` it asked for and connect again with the last id seen."""

    hub: HubServer
    channel: str
    connected: threading.Event = field(default_factory=threading.Event)
    received: list[ServerSentEvent] = field(default_factory=list)
    connections: int = 0
    phantoms: int = 0
    retry: int | None = None
    resume_id: str | None = None

    def run_until(self, last_data: str, *, give_up_after: float) -> None:
        """Connect again and again until the event with data ``last_data`` arrived."""
        give_up = time.monotonic() + give_up_after
        with client() as http:
            while not self.got(last_data):
                assert time.monotonic() < give_up, (
                    f"{self.connections} connections, {len(self.received)} events, "
                    f"{self.phantoms} phantoms")
                self.read_one_connection(http, last_data)
                if self.got(last_data):
                    break
                time.sleep((self.retry or 1000) / 1000)  # the delay the hub asked for

    def got(self, data: str) -> bool:
        return bool(self.received) and self.received[-1].data == data

    def read_one_connection(self, http: httpx.Client, last_data: str) -> None:
        headers = {"Last-Event-ID": self.resume_id} if self.resume_id else {}
        with connect_sse(http, "GET", stream_url(self.hub), params=channels(self.channel),
                         headers=headers) as source:
            assert source.response.status_code == 200
            self.connections += 1
            self.connected.set()
            reader = Reader(source)
            for sse in reader:
                self.received.append(sse)
                if sse.data == last_data:
                    break
            self.phantoms += reader.phantoms
            self.retry = reader.retry or self.retry
            self.resume_id = reader.resume_id or self.resume_id


def test_a_reconnect_loop_misses_nothing_while_the_hub_ends_streams(
    start_hub: HubLauncher,
) -> None:
    # Streams end after 0.9-1 s; the loop reconnects the way an httpx-sse user
    # would, with the last id it saw, while a publisher keeps going.
    hub = start_hub(SSE_MAX_CONNECTION_SECONDS=1, SSE_RETRY_MS=50, SSE_HEARTBEAT_SECONDS=0.2)
    sent: list[tuple[str, str]] = []
    loop = ReconnectLoop(hub, "httpx-loop")
    publisher = run_in_thread(publish_for_two_seconds, hub, sent, loop.connected)
    loop.run_until("end", give_up_after=15.0)
    publisher.join(READ_TIMEOUT)

    assert [(e.data, e.id) for e in loop.received] == sent
    assert {e.event for e in loop.received} == {"message"}
    assert loop.connections >= 2
    assert loop.phantoms == 0
    stats: dict[str, Any] = hub.stats()
    assert stats["replays_served"] >= loop.connections - 1 and stats["gaps_reported"] == 0, stats
