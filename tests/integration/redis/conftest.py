"""A redis-server of the tests' own: a free port, no persistence, killable and restartable.

Never the machine's shared Redis. When redis-server is not installed (``make
test`` installs it when it can), the Redis tests skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import GAP_EVENT

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """One redis-server process on 127.0.0.1:<port>, started and stopped by PID."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - kept by Popen
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Kill and start again on the same port: it comes back EMPTY (no persistence)."""
        self.kill()
        self.start()

    def command(self, *args: str) -> bytes:
        """Run one command with redis-cli-free raw RESP; returns the raw reply."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"".join(parts))
            time.sleep(0.05)
            chunks = []
            sock.settimeout(0.5)
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except TimeoutError:
                pass
            return b"".join(chunks)


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]
) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (make test installs it when run as root)")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The shared test Redis, flushed before each test, started again if a test killed it."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.command("FLUSHALL")
    yield redis_server.url


# -- Shared by the Redis integration tests (test_*.py here); its imports are local to it.

#: The Redis stream of the standalone hub (blueprint "sse"): ``flask-sse-hub:<name>``.
HUB_STREAM = "flask-sse-hub:sse"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    """A redis-py client of the tests' own Redis (flushed for this test), for inspection."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True)
    yield client
    client.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a gunicorn master and its workers), from /proc."""
    import contextlib

    found = [pid]
    for parent in found:  # grows while iterating: breadth-first
        tasks = Path(f"/proc/{parent}/task")
        with contextlib.suppress(OSError):
            for task in tasks.iterdir():
                with contextlib.suppress(OSError):
                    found += [int(child) for child in (task / "children").read_text().split()]
    return found


def redis_connections_by_pid(
    clients: list[dict[str, str]], pids: list[int], redis_port: int,
) -> dict[int, int]:
    """How many of Redis's ``CLIENT LIST`` entries each of ``pids`` holds.

    Redis names each client by its address (127.0.0.1:<port>); /proc/net/tcp
    maps that local port to a socket inode, and /proc/<pid>/fd the inode to
    the process holding it. Clients of other processes are not counted.
    """
    import contextlib
    import os

    ports = {int(client["addr"].rsplit(":", 1)[1]) for client in clients}
    inode_of_port: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                peer = int(fields[2].rsplit(":", 1)[1], 16)
                # 01: ESTABLISHED; a closed socket of the same port has inode 0.
                if port in ports and peer == redis_port and fields[3] == "01":
                    inode_of_port[port] = fields[9]
    owner_of_inode: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owner_of_inode[target[len("socket:[") : -1]] = pid
    counts = dict.fromkeys(pids, 0)
    for port in ports:
        owner = owner_of_inode.get(inode_of_port.get(port, ""))
        if owner is not None:
            counts[owner] += 1
    return counts


# -- Shared by the never-silent, fault and replay tests.


def assert_every_event_or_a_gap(events: list[Any], expected: list[str], who: str) -> Any:
    """``events`` hold the ids ``expected`` whole and in order, or one gap stands for the loss.

    With a gap: the events before it are the first of ``expected`` (none
    missing up to there), the events after it are the last of ``expected``,
    contiguous, and none is both (no duplicate). Returns the gap event, if any.
    """
    shown = [(e.type, e.last_event_id) for e in events]
    gaps = [index for index, event in enumerate(events) if event.type == GAP_EVENT]
    assert len(gaps) <= 1, f"{who}: more than one gap: {shown}"
    if not gaps:
        assert [e.last_event_id for e in events] == expected, (
            f"{who}: {len(events)} events of {len(expected)} and no gap event: {shown}"
        )
        return None
    at = gaps[0]
    before = [e.last_event_id for e in events[:at]]
    after = [e.last_event_id for e in events[at + 1 :]]
    assert before == expected[: len(before)], f"{who}: events lost before the gap: {shown}"
    assert after == expected[len(expected) - len(after) :], (
        f"{who}: the events after the gap are not the last ones, contiguous: {shown}"
    )
    assert len(before) + len(after) <= len(expected), f"{who}: duplicates around the gap: {shown}"
    gap = events[at]
    data = json.loads(gap.data)
    assert isinstance(data, dict) and set(data) == {"last_event_id"}, (who, gap.data)
    return gap


def gap_ids_on_the_wire(stream: Any) -> list[str | None]:
    """The ``id:`` field of each ``sse-hub-gap`` event in the raw body (None: no id field)."""
    found: list[str | None] = []
    for block in stream.body.decode().replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        if f"event: {GAP_EVENT}" in lines:
            ids = [line[len("id: ") :] for line in lines if line.startswith("id: ")]
            found.append(ids[-1] if ids else None)
    return found


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process ``pid`` is stopped (SIGSTOP) inside the block, always continued after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def worker_serving(hub_port: int, client_port: int, workers: list[int]) -> int | None:
    """The PID among ``workers`` holding the hub's end of the connection from ``client_port``.

    Found in /proc: the socket's inode in /proc/net/tcp, then the worker with
    a descriptor on it.
    """
    inode = None
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            local, peer = (int(field.rsplit(":", 1)[1], 16) for field in fields[1:3])
            if (local, peer) == (hub_port, client_port) and fields[3] == "01":
                inode = fields[9]
    for pid in workers:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
    return None
