"""A client that leaves frees its stream at once, however it leaves.

The rules: docs/protocol.md#disconnects.

* **Closed** (FIN or RST) while its stream is idle: heartbeats are 30 s
  apart here, so only the hub's closed-peer watch can notice. 500 streams
  closed with FIN, then 500 with RST: each batch is gone from ``/stats``
  and the worker's descriptors are back to what they were within 2 s.
* **Vanished** (no FIN, no RST: the client's network is gone): iptables
  drops every packet to and from a dedicated loopback address. Its streams
  are unregistered within ``SSE_DEAD_CLIENT_SECONDS`` (+ 2 s), while a
  stream of another address stays and keeps receiving; the per-address
  limit does not lock the address out once its network is back.
* **TLS** (gunicorn's ``--certfile``/``--keyfile``): a stream delivers, and
  TLS clients that vanish without a close_notify are unregistered within
  2 s, without a traceback in the server's log.

The timings are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import datetime
import functools
import http.client
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.netfault import dropped, iptables_or_skip
from tests.support.sse_client import _ChunkedDecoder, http_request
from tests.support.sse_parser import Event, EventStreamParser

from . import conftest as hub_fixtures
from .conftest import HOST, HubLauncher, HubServer, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

#: What "at once" means for a closed client (the watch polls every 0.5 s).
GONE_SECONDS = 2.0


# -- a raw stream: plain or TLS, from any source address -------------------------


class RawStream:
    """``GET path`` on a socket of our own (bound to ``source``, wrapped in TLS or not).

    Reads the response head, then the chunked body into an
    :class:`EventStreamParser`; closes with FIN (:meth:`close`) or RST
    (:meth:`reset`).
    """

    def __init__(
        self, port: int, path: str, *, source: str | None = None,
        tls: ssl.SSLContext | None = None, timeout: float = 10.0,
    ) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if source is not None:
                raw.bind((source, 0))
            raw.settimeout(timeout)
            raw.connect((HOST, port))
            self.sock: socket.socket = (
                tls.wrap_socket(raw, server_hostname=HOST) if tls is not None else raw
            )
        except BaseException:
            raw.close()
            raise
        self.parser = EventStreamParser()
        self.events: list[Event] = []
        self.status = 0
        self.headers: dict[str, str] = {}
        self._decoder = _ChunkedDecoder()
        self._head = b""
        self._raw_body = b""
        self.eof = False
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())

    def _read(self, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out waiting for {what} (status {self.status}, "
                               f"{len(self.events)} events, comments {self.parser.comments})")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(f"timed out waiting for {what} (status {self.status}, "
                               f"{len(self.events)} events)") from None
        if not data:
            self.eof = True
            raise EOFError(f"the server closed the connection while we waited for {what}")
        if not self.status:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, data = self._head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            assert self.headers.get("transfer-encoding") == "chunked", self.headers
        self._raw_body += data
        payload = self._decoder.feed(data)
        self.events += self.parser.feed(payload)

    def opened(self, timeout: float = 10.0) -> RawStream:
        """Wait for the response head and the stream's first chunk; assert 200."""
        deadline = time.monotonic() + timeout
        while not self.status or not self._first_chunk_done():
            self._read(deadline, "the response head and the first chunk")
        assert self.status == 200, (self.status, self._raw_body[:300])
        return self

    def _first_chunk_done(self) -> bool:
        size_line, crlf, rest = self._raw_body.partition(b"\r\n")
        if not crlf:
            return False
        return len(rest) >= int(size_line.split(b";")[0], 16) + 2

    def until_id(self, event_id: str, timeout: float = 10.0) -> Event:
        """Read until the event with id ``event_id`` has arrived; return it."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.last_event_id == event_id:
                    return event
            self._read(deadline, f"the event {event_id}")

    def drain(self) -> None:
        """Read whatever has arrived, without waiting (a FIN close leaves nothing unread)."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        """Close with nothing unread: the kernel sends FIN."""
        self.sock.close()

    def reset(self) -> None:
        """Close with ``SO_LINGER`` 0: the kernel sends RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def resting_descriptors(pid: int) -> int:
    """The fewest descriptors ``pid`` holds over 0.3 s: without the test's own requests
    (``/stats``, publish), whose server side closes a moment after the client's."""
    counts = []
    for _ in range(7):
        counts.append(descriptors(pid))
        time.sleep(0.05)
    return min(counts)


def timed_wait(probe: Callable[[], Any], condition: Callable[[Any], bool], *, timeout: float,
               what: str, since: float, hub: HubServer) -> float:
    """``wait_until`` the condition; return the seconds from ``since`` until it held."""
    wait_until(probe, condition, timeout=timeout - (time.monotonic() - since), what=what,
               log=hub.log_text, interval=0.02)
    return time.monotonic() - since


# -- closed clients ---------------------------------------------------------------

IDLE_STREAMS = 500


def test_idle_streams_closed_with_fin_or_rst_are_freed_at_once(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_HEARTBEAT_SECONDS=30)
    worker = hub.worker_pid()
    # One stream and one event first: the broadcaster, the watcher and their
    # state exist before the baseline is taken.
    warm = RawStream(hub.port, "/stream?channel=idle").opened()
    event_id = hub.publish("warm", channel="idle")
    warm.until_id(event_id)
    warm.close()
    hub.wait_for_stats(lambda s: s["subscribers"] == 0, what="the warm-up stream gone")
    baseline = resting_descriptors(worker)

    timings = {}
    for how in ("FIN", "RST"):
        streams = [RawStream(hub.port, "/stream?channel=idle") for _ in range(IDLE_STREAMS)]
        for stream in streams:
            stream.opened()
        hub.wait_for_stats(lambda s: s["subscribers"] == IDLE_STREAMS,
                           what=f"{IDLE_STREAMS} idle streams")
        held = descriptors(worker)
        assert held >= baseline + IDLE_STREAMS, (baseline, held)
        started = time.monotonic()
        for stream in streams:
            if how == "FIN":
                stream.drain()
                stream.close()
            else:
                stream.reset()
        unregistered = timed_wait(
            hub.stats, lambda s: s["subscribers"] == 0, timeout=GONE_SECONDS,
            what=f"{IDLE_STREAMS} streams closed with {how} unregistered", since=started, hub=hub)
        freed = timed_wait(
            lambda: descriptors(worker), lambda n: n <= baseline, timeout=GONE_SECONDS,
            what=f"the worker's descriptors back to {baseline} after {how}", since=started,
            hub=hub)
        timings[how] = (unregistered, freed, held)
    for how, (unregistered, freed, held) in timings.items():
        print(f"\n{IDLE_STREAMS} idle streams closed with {how}: unregistered after "
              f"{unregistered * 1000:.0f} ms, descriptors {held} -> {baseline} after "
              f"{freed * 1000:.0f} ms")
    # The hub still serves a stream normally afterwards.
    after = RawStream(hub.port, "/stream?channel=idle").opened()
    event_id = hub.publish("after", channel="idle")
    assert after.until_id(event_id).data == "after"
    assert "Traceback" not in hub.log_text()


# -- vanished clients -------------------------------------------------------------

VANISHING = "127.0.0.77"
VANISHING_STREAMS = 5
DEAD_CLIENT_SECONDS = 6
HEARTBEAT_SECONDS = 2


def assert_refused_per_address(hub: HubServer, source: str) -> None:
    """A stream from ``source`` is refused: 429, SSE_MAX_CONNECTIONS_PER_IP."""
    conn = http.client.HTTPConnection(HOST, hub.port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/stream?channel=vanish")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 429, (response.status, body[:300])
    assert "SSE_MAX_CONNECTIONS_PER_IP" in json.loads(body)["error"], body


def vanishing_source_or_skip() -> None:
    try:
        with socket.socket() as probe:
            probe.bind((VANISHING, 0))
    except OSError as exc:
        pytest.skip(f"cannot use {VANISHING} as a source address: {exc}")


def open_vanishing_streams(hub: HubServer) -> list[RawStream]:
    """As many streams from VANISHING as its limit allows; the limit is then in force."""
    vanishing = [RawStream(hub.port, "/stream?channel=vanish", source=VANISHING).opened()
                 for _ in range(VANISHING_STREAMS)]
    hub.wait_for_stats(
        lambda s: s["channels"].get("vanish") == VANISHING_STREAMS and s["client_addresses"] == 2,
        what="the streams of both addresses")
    assert_refused_per_address(hub, VANISHING)  # the limit is in force for that address
    return vanishing


def assert_the_address_is_welcome_back(hub: HubServer) -> None:
    """The address's slots are free again: as many new streams as the limit allows."""
    back = [RawStream(hub.port, "/stream?channel=vanish", source=VANISHING).opened()
            for _ in range(VANISHING_STREAMS)]
    hub.wait_for_stats(lambda s: s["channels"].get("vanish") == VANISHING_STREAMS,
                       what=f"new streams from {VANISHING}")
    event_id = hub.publish("welcome back", channel="vanish")
    for stream in back:
        assert stream.until_id(event_id, timeout=5).data == "welcome back"
    for stream in back:
        stream.close()


@pytest.mark.timeout(60)
def test_vanished_clients_are_dropped_within_dead_client_seconds(
    start_hub: HubLauncher,
) -> None:
    iptables = iptables_or_skip()
    vanishing_source_or_skip()
    hub = start_hub(
        SSE_DEAD_CLIENT_SECONDS=DEAD_CLIENT_SECONDS, SSE_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS,
        SSE_MAX_CONNECTIONS_PER_IP=VANISHING_STREAMS,
    )
    staying = hub.subscribe("stay")
    vanishing = open_vanishing_streams(hub)
    try:
        with dropped(iptables, VANISHING):
            cut_at = time.monotonic()
            assert hub.stats()["channels"].get("vanish") == VANISHING_STREAMS
            gone = timed_wait(
                hub.stats, lambda s: s["channels"].get("vanish", 0) == 0,
                timeout=DEAD_CLIENT_SECONDS + 2, since=cut_at, hub=hub,
                what=f"the streams of {VANISHING} unregistered")
            stats = hub.stats()
            assert stats["channels"].get("stay") == 1, stats
            assert stats["client_addresses"] == 1, stats
            # The other client was not affected: it still gets events.
            event_id = hub.publish("still here", channel="stay")
            event = staying.until_id(event_id, timeout=5)[-1]
            assert event.data == "still here"
    finally:
        for stream in vanishing:
            stream.reset()
    print(f"\n{VANISHING_STREAMS} vanished streams unregistered {gone:.1f}s after their "
          f"network went (SSE_DEAD_CLIENT_SECONDS={DEAD_CLIENT_SECONDS}, "
          f"heartbeat {HEARTBEAT_SECONDS}s)")
    assert_the_address_is_welcome_back(hub)
    # A vanished client is an everyday event (a phone leaves the network): no
    # traceback per client in the server's log.
    log = hub.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 200 :][:3000]


# -- TLS ------------------------------------------------------------------------------

TLS_STREAMS = 20


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, valid for a day."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is not None:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-days", "1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )
        return cert, key
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = time.time()
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(now - 60, datetime.timezone.utc))
        .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.timezone.utc))
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    return cert, key


def client_context() -> ssl.SSLContext:
    """TLS without verification: the certificate is our own, self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.timeout(60)
def test_tls_streams_deliver_and_abrupt_closes_are_freed(
    start_hub: HubLauncher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = self_signed(tmp_path)
    # The fixture's requests (the /healthz it waits for, publish, /stats) go over TLS.
    monkeypatch.setattr(
        hub_fixtures, "http_request", functools.partial(http_request, tls=client_context()))
    hub = start_hub(GUNICORN_CMD_ARGS=f"--certfile={cert} --keyfile={key}",
                    SSE_HEARTBEAT_SECONDS=30)
    context = client_context()

    first = RawStream(hub.port, "/stream?channel=tls", tls=context).opened()
    assert first.headers["content-type"].startswith("text/event-stream"), first.headers
    event_id = hub.publish({"over": "tls"}, channel="tls")
    assert json.loads(first.until_id(event_id).data) == {"over": "tls"}

    streams = [RawStream(hub.port, "/stream?channel=tls", tls=context).opened()
               for _ in range(TLS_STREAMS)]
    hub.wait_for_stats(lambda s: s["subscribers"] == TLS_STREAMS + 1, what="the TLS streams")
    event_id = hub.publish("to all", channel="tls")
    for stream in streams:
        assert stream.until_id(event_id).data == "to all"
    started = time.monotonic()
    # Abruptly: no close_notify; half with FIN, half with RST.
    for index, stream in enumerate(streams):
        if index % 2:
            stream.reset()
        else:
            stream.drain()
            stream.close()
    gone = timed_wait(hub.stats, lambda s: s["subscribers"] == 1, timeout=GONE_SECONDS,
                      what="the closed TLS streams unregistered", since=started, hub=hub)
    print(f"\n{TLS_STREAMS} TLS streams closed abruptly: unregistered after {gone * 1000:.0f} ms")
    # The one left open still streams.
    event_id = hub.publish("still", channel="tls")
    assert first.until_id(event_id).data == "still"
    first.close()
    hub.wait_for_stats(lambda s: s["subscribers"] == 0, what="the last TLS stream gone",
                       timeout=GONE_SECONDS)
    log = hub.log_text()
    assert "Traceback" not in log, log
