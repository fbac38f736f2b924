"""The socket under a stream (``sockets.py``): finding it, cutting it, and noticing its client left.

Real sockets (a ``socketpair``, a loopback TCP pair): the watcher's poll,
``shutdown`` and the TCP options are the kernel's, not mocks.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from flask_sse_hub.sockets import (
    ClosedPeerWatcher,
    cut,
    end_of_requests,
    give_up_on_silence,
    send_at_once,
    stream_socket,
)
from tests.support.threads import run_in_thread

WAIT = 5.0  # seconds: the watcher sweeps every 0.05 s here


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected socket pair: the hub's end, the client's end."""
    ours, theirs = socket.socketpair()
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: the accepted end, the client's end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    try:
        yield accepted, client
    finally:
        accepted.close()
        client.close()


def test_stream_socket_is_the_servers_connection_or_none(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    assert stream_socket({"gunicorn.socket": ours}) is ours
    assert stream_socket({"werkzeug.socket": ours}) is ours
    assert stream_socket({}) is None
    assert stream_socket({"gunicorn.socket": "not a socket"}) is None


def test_the_watcher_calls_back_once_when_the_peer_closes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    watcher = ClosedPeerWatcher(interval=0.05)
    gone = threading.Event()
    calls: list[int] = []

    def on_gone() -> None:
        calls.append(1)
        gone.set()

    key = watcher.watch(ours, on_gone)
    assert key == ours.fileno() and len(watcher) == 1
    theirs.close()
    assert gone.wait(WAIT), "the watcher did not notice the closed peer"
    assert len(watcher) == 0  # no longer watched: it is called once
    watcher.forget(key)  # what Stream.close does next: harmless
    assert calls == [1]


def test_a_socket_watched_again_calls_back_the_later_function_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A descriptor not forgotten (epoll still holds it) may be watched anew: the new watch wins."""
    ours, theirs = pair
    watcher = ClosedPeerWatcher(interval=0.05)
    calls: list[str] = []
    gone = threading.Event()
    watcher.watch(ours, lambda: calls.append("earlier"))
    watcher.watch(ours, lambda: (calls.append("later"), gone.set()))
    assert len(watcher) == 1
    theirs.close()
    assert gone.wait(WAIT), "the watcher did not notice the closed peer"
    wait_for_a_sweep(watcher)
    assert calls == ["later"]


def wait_for_a_sweep(watcher: ClosedPeerWatcher) -> None:
    """Return once a sweep begun after this call ran, its callbacks included.

    Sweeps and their callbacks run one after another in the watcher's thread:
    a socket watched (and its peer closed) now is reported by a later sweep.
    """
    ours, theirs = socket.socketpair()
    try:
        swept = threading.Event()
        watcher.watch(ours, swept.set)
        theirs.close()
        assert swept.wait(WAIT), "the watcher stopped sweeping"
    finally:
        ours.close()
        theirs.close()


def test_a_forgotten_socket_is_not_reported(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    watcher = ClosedPeerWatcher(interval=0.05)
    reported: list[str] = []
    key = watcher.watch(ours, lambda: reported.append("forgotten"))
    watcher.forget(key)
    assert len(watcher) == 0
    theirs.close()
    wait_for_a_sweep(watcher)
    assert reported == []


def test_nothing_is_watched_without_a_socket() -> None:
    watcher = ClosedPeerWatcher()
    assert watcher.watch(None, lambda: None) is None
    watcher.forget(None)
    assert len(watcher) == 0


def test_cut_makes_a_blocked_read_return_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    ours.settimeout(WAIT)
    got: list[bytes] = []
    reader = run_in_thread(lambda: got.append(ours.recv(1)), name="blocked-reader")
    cut(ours)
    reader.join(WAIT)
    assert got == [b""]
    cut(ours)  # twice, or on a socket already shut: no error
    cut(None)


def test_end_of_requests_shuts_only_the_read_side(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    end_of_requests(ours)
    ours.settimeout(WAIT)
    assert ours.recv(1) == b""  # the server's wait for a next request sees EOF
    ours.sendall(b"still writable")
    theirs.settimeout(WAIT)
    assert theirs.recv(64) == b"still writable"
    end_of_requests(None)


def test_give_up_on_silence_sets_keepalive_and_a_user_timeout_on_tcp(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    accepted, _ = tcp_pair
    give_up_on_silence(accepted, seconds=60, heartbeat=15)
    assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
        # What remains of 60 s after one heartbeat and the watcher's second.
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 44_000
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


def test_give_up_on_silence_leaves_a_unix_socket_alone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    give_up_on_silence(ours, seconds=60, heartbeat=15)
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_send_at_once_delivers_every_byte_in_order_through_partial_sends() -> None:
    """A write larger than the socket takes at once: the rest goes out as the reader drains it."""
    import gevent
    import gevent.socket

    ours, theirs = gevent.socket.socketpair()
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        send_at_once(ours)
        assert type(ours).__name__ == "StreamSocket"
        assert isinstance(ours, gevent.socket.socket)
        payload = bytes(range(256)) * 8192  # 2 MiB: many times the send buffer
        writer = gevent.spawn(ours.sendall, payload)
        got = bytearray()
        while len(got) < len(payload):
            chunk = theirs.recv(65536)
            assert chunk, "the writer closed early"
            got += chunk
        writer.get(timeout=WAIT)
        assert bytes(got) == payload
        ours.sendall(b"")  # nothing to send is no send (gevent's rule too)
        ours.sendall(b"tail")
        assert theirs.recv(16) == b"tail"
    finally:
        ours.close()
        theirs.close()


def test_send_at_once_leaves_other_sockets_as_they_are(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    kind = type(ours)
    send_at_once(ours)
    send_at_once(None)
    assert type(ours) is kind
