"""How streams end: clients that vanish, streams that reach their maximum age, SIGTERM.

Heartbeats (``SSE_HEARTBEAT_SECONDS``) detect dead connections
(docs/protocol.md#heartbeats); a closed client is unregistered within a
heartbeat interval (docs/protocol.md#disconnects); a stream ends after
``SSE_MAX_CONNECTION_SECONDS`` (docs/protocol.md#stream-end); on SIGTERM the
streams end within gunicorn's graceful timeout, which gunicorn.conf.py takes
from ``SSE_GRACEFUL_TIMEOUT`` (docs/protocol.md#shutdown); a resume after a
stream ended loses nothing.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from tests.support.sse_parser import Event
from tests.support.threads import run_in_thread

from .conftest import GAP_EVENT, HOST, HubLauncher

pytestmark = pytest.mark.integration

HEARTBEAT_SECONDS = 2
RETRY_MS = 2000
VANISHING_CLIENTS = 300


def open_raw_stream(port: int, channel: str) -> socket.socket:
    """Send a subscribe request and never read the answer."""
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(f"GET /stream?channel={channel} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    return sock


def test_vanished_clients_are_unregistered_within_two_heartbeats(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS)
    keeper = hub.subscribe("stays")
    # Half read their preamble and close cleanly (FIN: only a heartbeat's
    # check notices); half never read and reset the connection (RST).
    polite = [hub.subscribe("vanish", "vanish-too") for _ in range(VANISHING_CLIENTS // 2)]
    rude = [open_raw_stream(hub.port, "vanish") for _ in range(VANISHING_CLIENTS // 2)]
    hub.wait_for_stats(lambda s: s["subscribers"] >= VANISHING_CLIENTS + 1,
                       what=f"{VANISHING_CLIENTS + 1} subscribers")

    for stream in polite:
        stream.close()
    for sock in rude:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    stats = hub.wait_for_stats(
        lambda s: s["subscribers"] == 1, timeout=2 * HEARTBEAT_SECONDS + 1.5,
        what="the vanished clients to be unregistered (within two heartbeats)",
    )
    assert stats["channels"] == {"stays": 1}
    # The survivor is unaffected.
    event_id = hub.publish("still here", channel="stays")
    assert keeper.next_event(timeout=5).last_event_id == event_id


def test_stream_ends_at_max_connection_age_and_resume_loses_nothing(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(SSE_MAX_CONNECTION_SECONDS=2, SSE_HEARTBEAT_SECONDS=0.5)
    published: list[str] = []
    stop = threading.Event()

    def keep_publishing() -> None:
        with hub.publisher() as publish:
            n = 0
            while not stop.is_set():
                published.append(publish({"channel": "aged", "data": f"n={n}"}))
                n += 1
                stop.wait(0.01)  # pacing, not an assertion

    first = hub.subscribe("aged")
    publisher = run_in_thread(keep_publishing)
    try:
        received: list[Event] = first.read_until_closed(timeout=10)
        # The hub ended the chunked body itself: terminating chunk, not a reset.
        assert first.stream_ended and first.complete and not first.reset
        assert received, "no event arrived during the stream's life"

        # Reconnect like a browser, with the last id seen, while events keep
        # coming; then stop publishing and read up to the last one.
        stream = hub.subscribe("aged", headers={"Last-Event-ID": received[-1].last_event_id})
    finally:
        stop.set()
        publisher.join(10)
    while received[-1].last_event_id != published[-1]:
        try:
            received.append(stream.next_event(timeout=10))
        except EOFError:  # this one reached its age too: resume again
            assert stream.complete, "the stream ended without its terminating chunk"
            stream = hub.subscribe("aged", headers={"Last-Event-ID": received[-1].last_event_id})
    assert GAP_EVENT not in {e.type for e in received}
    assert [e.last_event_id for e in received] == published


def test_stream_ended_at_max_age_closes_its_connection_before_the_client_reconnects(
    start_hub: HubLauncher,
) -> None:
    """SSE_MAX_CONNECTION_SECONDS exists to rebalance workers: that needs a new connection.

    A browser reconnects ``retry`` ms after a stream ends, over an idle
    kept-alive connection if it still has one: the reconnect would land on
    the same worker again, and nothing would be rebalanced. So the hub must
    have closed the connection before ``retry`` ms have passed (gunicorn.conf.py's
    keep-alive alone would keep it open for 5 s).
    """
    hub = start_hub(SSE_MAX_CONNECTION_SECONDS=1, SSE_HEARTBEAT_SECONDS=0.5,
                    SSE_RETRY_MS=RETRY_MS)
    connection = RawConnection(hub.port)
    connection.send_subscribe("aged-out")
    connection.read_until_stream_end(timeout=10)
    assert connection.closed_within(RETRY_MS / 1000), (
        f"the connection of a stream ended for its age was still open {RETRY_MS} ms later: "
        "the client's reconnect would reuse it"
    )


def test_sigterm_ends_open_streams_and_closes_their_connections_before_clients_reconnect(
    start_hub: HubLauncher,
) -> None:
    """Clients must reconnect to another worker, not over a connection to the dying one."""
    hub = start_hub(SSE_GRACEFUL_TIMEOUT=10, SSE_HEARTBEAT_SECONDS=60, SSE_RETRY_MS=RETRY_MS)
    connection = RawConnection(hub.port)
    connection.send_subscribe("closing")
    hub.wait_subscribers("closing", 1)
    hub.terminate()
    connection.read_until_stream_end(timeout=10)
    assert connection.closed_within(RETRY_MS / 1000), (
        f"the dying worker kept the ended stream's connection open {RETRY_MS} ms later: "
        "the client's reconnect would reuse it"
    )


def test_sigterm_ends_open_streams_and_the_master_exits_within_the_graceful_timeout(
    start_hub: HubLauncher,
) -> None:
    graceful = 4
    # Heartbeats far apart: only the shutdown can end these streams.
    hub = start_hub(SSE_GRACEFUL_TIMEOUT=graceful, SSE_HEARTBEAT_SECONDS=60)
    streams = [hub.subscribe("bye"), hub.subscribe("bye", "other"), hub.subscribe("idle")]
    event_id = hub.publish("before shutdown", channel="bye")
    for stream in streams[:2]:
        assert stream.next_event(timeout=5).last_event_id == event_id

    hub.terminate()
    # The clients keep their sockets open once the streams end, as a browser
    # keeps an idle connection for reuse.
    for stream in streams:
        leftovers = stream.read_until_closed(timeout=graceful)
        assert leftovers == []
        assert stream.stream_ended
    took = hub.wait_exit(timeout=graceful + 10)
    assert took < graceful, (
        f"the master needed {took:.1f}s to exit, over the graceful timeout of {graceful}s\n"
        f"{hub.log_text()}"
    )
    assert hub.proc is not None and hub.proc.returncode == 0, hub.log_text()
    assert "graceful timeout" not in hub.log_text().lower(), hub.log_text()


class RawConnection:
    """One HTTP/1.1 connection, to see whether the server closes it after a stream ended."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.received = b""

    def send_subscribe(self, channel: str) -> None:
        self.sock.sendall(
            f"GET /stream?channel={channel} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n\r\n"
            .encode()
        )

    def read_until_stream_end(self, timeout: float) -> None:
        """Read until the terminating chunk (or EOF)."""
        deadline = time.monotonic() + timeout
        while b"\r\n0\r\n\r\n" not in self.received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the stream did not end: {self.received[-200:]!r}")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                return
            self.received += data
        assert self.received.startswith(b"HTTP/1.1 200"), self.received[:200]

    def closed_within(self, timeout: float) -> bool:
        """True if the server closes (EOF or reset) the idle connection within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                self.sock.settimeout(remaining)
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.received += data
            return False
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.close()
