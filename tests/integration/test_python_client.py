"""flask_sse_hub.client (``listen``) and ``flask-sse-hub tail`` against the real hub.

The listener must do what a careful hand-written loop does: resume with the
last id it saw (the position record included), honour ``retry:``, surface
``sse-hub-gap`` and ``sse-hub-disconnect`` as typed events, and stop for
good when the hub refuses it. Each test here breaks one of those if it is
missing: streams the hub ends while events keep coming (max age), a memory
hub restarted under the listener (a gap), refusals, the retry delay.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flask_sse_hub import mint_token
from flask_sse_hub.client import Disconnected, Gap, Listener, Refused, ServerEvent, listen
from tests.support.threads import Worker, run_in_thread

from .conftest import HOST, HubLauncher, HubServer, wait_until

pytestmark = pytest.mark.integration

SECRET = "client-tests-secret-0123456789abcdef"


def stream_url(hub: HubServer) -> str:
    return f"http://{HOST}:{hub.port}/stream"


class Collector:
    """A listener read in a thread: the events it yields, in order."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.events: list[ServerEvent] = []
        self.worker: Worker = run_in_thread(self._read, name="listener")

    def _read(self) -> None:
        for event in self.listener:
            self.events.append(event)

    def wait_for(self, condition: Callable[[list[ServerEvent]], bool], what: str) -> None:
        wait_until(lambda: list(self.events), condition, timeout=20, what=what)
        self.worker.check()

    def stop(self) -> None:
        self.listener.close()
        self.worker.thread.join(5)


def publish_for(hub: HubServer, seconds: float, rate: float = 100.0) -> list[str]:
    """Publish ``{"n": i}`` to channel ``a`` at about ``rate``/s for ``seconds``; the ids."""
    ids: list[str] = []
    deadline = time.monotonic() + seconds
    with hub.publisher() as publish:
        while time.monotonic() < deadline:
            ids.append(publish({"channel": "a", "data": {"n": len(ids)}}))
            time.sleep(1 / rate)
    return ids


def check_exactly_once_in_order(events: list[ServerEvent], ids: list[str]) -> None:
    got = [event.id for event in events if event.type == "message"]
    assert got == ids, f"{len(got)} events for {len(ids)} published; first wrong at " + str(
        next((i for i, (a, b) in enumerate(zip(got, ids, strict=False)) if a != b), len(got))
    )
    assert [event.json()["n"] for event in events if event.type == "message"] == list(
        range(len(ids))
    )


def test_every_event_arrives_once_in_order_while_the_hub_keeps_ending_streams(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(SSE_MAX_CONNECTION_SECONDS=0.7, SSE_RETRY_MS=100)
    reader = Collector(listen(stream_url(hub), channels=["a"]))
    hub.wait_subscribers("a", 1)
    ids = publish_for(hub, 3.0)
    reader.wait_for(lambda got: len(got) >= len(ids), f"{len(ids)} events")
    reader.stop()
    check_exactly_once_in_order(reader.events, ids)
    assert reader.listener.reconnects >= 2, "the hub never ended a stream: nothing was tested"
    assert not any(event.is_gap for event in reader.events)


class StalledCollector(Collector):
    """A collector whose reader stops after the first event until released."""

    def __init__(self, listener: Listener) -> None:
        self.release = threading.Event()
        super().__init__(listener)

    def _read(self) -> None:
        for event in self.listener:
            self.events.append(event)
            if len(self.events) == 1:
                self.release.wait(30)  # meanwhile its socket's buffers fill up


def test_a_listener_dropped_as_slow_resumes_and_misses_nothing(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_QUEUE_SIZE=8, SSE_HISTORY_SIZE=5000, SSE_RETRY_MS=100,
                    SSE_MAX_PUBLISH_BYTES=20_000_000)
    reader = StalledCollector(listen(stream_url(hub), channels=["a"]))
    hub.wait_subscribers("a", 1)
    ids = [hub.publish({"n": 0}, channel="a")]
    reader.wait_for(lambda got: len(got) == 1, "the first event")
    # 300 events of 30 KB while it does not read: far more than the socket buffers.
    ids += hub.publish_batch([{"channel": "a", "data": {"n": n, "pad": "x" * 30_000}}
                              for n in range(1, 301)])
    wait_until(lambda: hub.stats()["subscribers_dropped_slow"], lambda n: n >= 1, timeout=20,
               what="the stalled listener dropped as slow")
    reader.release.set()
    reader.wait_for(lambda got: len(got) >= len(ids), f"{len(ids)} events")
    reader.stop()
    check_exactly_once_in_order(reader.events, ids)
    assert reader.listener.reconnects >= 1


def test_a_restarted_memory_hub_is_a_gap_then_events_flow_again(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_RETRY_MS=100)
    reader = Collector(listen(stream_url(hub), channels=["a"]))
    hub.wait_subscribers("a", 1)
    before = hub.publish({"n": 0}, channel="a")
    reader.wait_for(lambda got: any(e.id == before for e in got), "the first event")
    hub.restart()  # a new epoch: the id the listener holds is unknown there
    hub.wait_subscribers("a", 1, timeout=20)
    after = hub.publish({"n": 1}, channel="a")
    reader.wait_for(lambda got: any(e.id == after for e in got), "the event after the restart")
    reader.stop()
    gaps = [event for event in reader.events if isinstance(event, Gap)]
    assert len(gaps) == 1 and gaps[0].last_event_id == before
    assert [event.id for event in reader.events if event.type == "message"] == [before, after]


@pytest.mark.parametrize(("token", "status"), [
    (None, 401),
    ("wrong-channel", 403),
    ("not-a-jwt", 401),
])
def test_a_refused_listener_stops_for_good(
    jwt_hub: HubServer, token: str | None, status: int,
) -> None:
    hub = jwt_hub
    if token == "wrong-channel":
        token = mint_token(SECRET, subscribe=["other"])
    started = time.monotonic()
    with pytest.raises(Refused) as refused:
        for _ in listen(stream_url(hub), channels=["a"], token=token):
            pass
    assert refused.value.status == status
    assert time.monotonic() - started < 5, "the listener retried a final refusal"


@pytest.fixture(scope="module")
def jwt_hub(start_hub_for_module: HubLauncher) -> HubServer:
    """A hub whose streams need a token (the refusal cases share it)."""
    return start_hub_for_module(SSE_JWT_SECRET=SECRET)


def test_the_retry_the_hub_sends_is_the_reconnect_delay(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_MAX_CONNECTION_SECONDS=0.3, SSE_RETRY_MS=1500)
    delays: list[float] = []
    reconnected_at: list[float] = []

    def noted(listener: Listener, delay: float) -> None:
        delays.append(delay)
        reconnected_at.append(time.monotonic())

    reader = Collector(listen(stream_url(hub), channels=["a"], on_reconnect=noted))
    wait_until(lambda: len(delays), lambda n: n >= 2, timeout=20, what="two reconnects")
    reader.stop()
    assert delays[:2] == [1.5, 1.5], "the delay is not the hub's retry: 1500"
    # Loosely: the second reconnect came a stream's life plus the delay after the first.
    assert reconnected_at[1] - reconnected_at[0] >= 1.2


def test_a_disconnect_is_a_typed_event_and_can_end_the_listener(start_hub: HubLauncher) -> None:
    hub = start_hub()
    reader = Collector(listen(stream_url(hub), channels=["a"], stop_on_disconnect=True))
    hub.wait_subscribers("a", 1)
    assert hub.post_json("/disconnect", {"channel": "a"})[0] == 202
    reader.worker.join(10)  # it ended by itself after the event
    assert isinstance(reader.events[-1], Disconnected)
    assert reader.events[-1].json() == {"channel": "a", "subject": None}


# -- flask-sse-hub tail -----------------------------------------------------------------------

def tail(hub: HubServer, *args: str, ignore_sigint: bool = False) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "flask_sse_hub", "tail", stream_url(hub), *args]

    def ignoring() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ignoring if ignore_sigint else None,
    )


def finished(proc: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_tail_prints_one_line_per_event_and_exits_after_count(start_hub: HubLauncher) -> None:
    hub = start_hub()
    proc = tail(hub, "-c", "a", "--count", "3")
    hub.wait_subscribers("a", 1)
    ids = [hub.publish(data, channel="a") for data in ({"n": 1}, "two\nlines", "3")]
    status, out, _ = finished(proc)
    assert status == 0
    assert out.splitlines() == [
        f'{ids[0]}\tmessage\t{{"n":1}}',
        f"{ids[1]}\tmessage\ttwo\\nlines",  # one line per event, whatever its data
        f"{ids[2]}\tmessage\t3",
    ]


def test_tail_json_shows_a_gap_for_an_unknown_id(start_hub: HubLauncher) -> None:
    hub = start_hub()
    proc = tail(hub, "-c", "a", "--last-event-id", "no-such-id", "--json", "--count", "1")
    status, out, _ = finished(proc)
    assert status == 0
    line: dict[str, Any] = json.loads(out)
    assert line["type"] == "sse-hub-gap"
    assert json.loads(line["data"]) == {"last_event_id": "no-such-id"}


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_tail_exits_cleanly_on_a_signal(start_hub: HubLauncher, stop: signal.Signals) -> None:
    hub = start_hub()
    # Started with SIGINT ignored, as a shell's background job is: tail handles it anyway.
    proc = tail(hub, "-c", "a", ignore_sigint=True)
    hub.wait_subscribers("a", 1)
    event_id = hub.publish("hello", channel="a")
    assert proc.stdout is not None
    assert proc.stdout.readline() == f"{event_id}\tmessage\thello\n"
    proc.send_signal(stop)
    status, _, err = finished(proc)
    assert status == 0, err


def test_tail_exits_3_when_refused(jwt_hub: HubServer) -> None:
    status, _, err = finished(tail(jwt_hub, "-c", "a"))
    assert status == 3
    assert "refused: 401" in err
