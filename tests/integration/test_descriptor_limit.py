"""A worker short of file descriptors keeps answering, and does not flood its log.

* **Known at start** (gunicorn started under ``prlimit --nofile=300``): the
  packaged settings keep ``worker_connections`` below the limit and
  ``SSE_MAX_STREAMS`` at 90 % of that, so 400 subscribers never exhaust the
  descriptors: the ones past capacity are told to come back (200 + ``retry:``)
  and publishing and ``/healthz`` still answer.
* **Lowered while running** (``prlimit --pid`` on the worker): accepting fails
  with EMFILE; that is logged as one rate-limited line, not one traceback per
  attempt, and the worker serves again once descriptors are free.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from .conftest import HOST, HubLauncher, HubServer, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is missing"),
]

LIMIT = 300


def open_streams(hub: HubServer, count: int) -> list[socket.socket]:
    """``count`` raw subscribe requests, left open (their answers unread)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection((HOST, hub.port), timeout=5)
        sock.sendall(b"GET /stream?channel=fd HTTP/1.1\r\nHost: localhost\r\n\r\n")
        socks.append(sock)
    return socks


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def test_a_descriptor_limit_known_at_start_is_never_reached(
    start_hub: HubLauncher, monkeypatch: pytest.MonkeyPatch, sockets: list[socket.socket],
) -> None:
    command = HubServer.command
    monkeypatch.setattr(HubServer, "command", lambda self: [
        "prlimit", f"--nofile={LIMIT}:{LIMIT}", "--", *command(self)])
    hub = start_hub(SSE_HEARTBEAT_SECONDS=30)
    sockets += open_streams(hub, 400)
    capacity = int((LIMIT - 64) * 0.9)  # FD_RESERVE in the packaged settings
    hub.wait_for_stats(lambda s: s["subscribers"] == capacity, timeout=20,
                       what=f"{capacity} streams (SSE_MAX_STREAMS by default)")
    started = time.monotonic()
    status, _, _ = hub.request("GET", "/healthz", timeout=5)
    assert status == 200 and time.monotonic() - started < 1.0
    event_id = hub.publish("still publishing", channel="fd")
    assert event_id
    log = hub.log_text()
    assert "Too many open files" not in log and "Traceback" not in log, log


def test_running_out_of_descriptors_is_one_log_line_not_a_traceback_flood(
    start_hub: HubLauncher, sockets: list[socket.socket],
) -> None:
    hub = start_hub(SSE_HEARTBEAT_SECONDS=30)
    worker = hub.worker_pid()
    # The soft limit only: it can be raised again (the hard one not, without CAP_SYS_RESOURCE).
    subprocess.run(["prlimit", "--pid", str(worker), "--nofile=100:"], check=True)
    sockets += open_streams(hub, 150)  # accepted by the kernel; the worker runs out
    wait_until(hub.log_text, lambda log: "cannot accept connections" in log, timeout=10,
               what="the accept failures to be logged")
    time.sleep(3)  # accepting is retried with backoff meanwhile: it must stay one line
    log = hub.log_text()
    assert log.count("cannot accept connections") <= 2, log
    assert "Traceback" not in log, log
    for sock in sockets:
        sock.close()
    sockets.clear()
    subprocess.run(["prlimit", "--pid", str(worker), f"--nofile={LIMIT * 10}:"], check=True)
    wait_until(lambda: hub.request("GET", "/healthz", timeout=2)[0], lambda s: s == 200,
               timeout=10, what="the worker to answer again")
