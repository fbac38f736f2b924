"""SIGTERM with a client whose socket is full; a worker replaced under ``gunicorn --preload``.

On SIGTERM every stream ends at once, also one whose client has stopped
reading, and the process exits within a couple of seconds, never by the
graceful-timeout kill (docs/protocol.md#shutdown). Ids carry an epoch: an id
of another memory worker is unknown, never mistaken for a position, and
starts the stream with ``sse-hub-gap`` (docs/protocol.md#memory-ids).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.many_streams import ManyStreams, StreamHandle

from .conftest import GAP_EVENT, HOST, HubLauncher, HubServer, wait_until

pytestmark = pytest.mark.integration

IDLE_STREAMS = 300
GRACEFUL_TIMEOUT = 10  # a master that needs it has failed: the bound is far below
EXIT_BOUND = 3.0
EVENT_BYTES = 60_000
EVENTS_PER_BATCH = 15  # under SSE_MAX_PUBLISH_BYTES (1 MiB)
BATCHES = 10  # 9 MB: far more than the client's window and the server's send buffer


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (a gunicorn master's workers), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def tcp_send_queue(local_port: int, remote_port: int) -> int | None:
    """Bytes the kernel holds unsent/unacknowledged on 127.0.0.1:local -> 127.0.0.1:remote."""
    want_local = f"0100007F:{local_port:04X}"
    want_remote = f"0100007F:{remote_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want_local and fields[2] == want_remote:
            return int(fields[4].split(":")[0], 16)
    return None


class FullClient:
    """Subscribes with a tiny receive buffer and never reads."""

    def __init__(self, port: int, channel: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect((HOST, port))
        self.port = self.sock.getsockname()[1]
        self.sock.sendall(
            f"GET /stream?channel={channel} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )

    def read_to_end(self, timeout: float) -> tuple[int, bool]:
        """Read everything until EOF or reset; return (bytes read, reset)."""
        deadline = time.monotonic() + timeout
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the connection is still open after {total} bytes")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return total, True
            if not data:
                return total, False
            total += len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def open_idle_streams(hub: HubServer, many: ManyStreams) -> list[StreamHandle]:
    """IDLE_STREAMS open streams (their preamble read); with the full client, all registered."""
    idle = [many.open("/stream?channel=idle") for _ in range(IDLE_STREAMS)]
    assert many.run_until(
        lambda: all(h.status == 200 and h.parser.comments for h in idle), timeout=20
    ), f"{sum(h.status == 200 for h in idle)} of {IDLE_STREAMS} idle streams opened"
    hub.wait_for_stats(lambda s: s["subscribers"] == IDLE_STREAMS + 1,
                       what=f"{IDLE_STREAMS + 1} subscribers")
    return idle


def block_the_write_to(hub: HubServer, full: FullClient) -> None:
    """Publish far more than the full client takes, until the write to it blocks."""
    payload = "x" * EVENT_BYTES
    published = 0
    for _ in range(BATCHES):
        published += len(hub.publish_batch(
            [{"channel": "full", "data": payload}] * EVENTS_PER_BATCH
        ))

    # The write to the full client is blocked: the kernel holds bytes
    # for it that it does not take, and the stream has not finished
    # writing what was published (nor been dropped as slow).
    last: dict[str, int] = {}

    def blocked() -> bool:
        stats = hub.stats()
        queued = tcp_send_queue(hub.port, full.port) or 0
        now = {"delivered": stats["events_delivered"], "queued": queued}
        steady = now == last
        last.clear()
        last.update(now)
        return (steady and queued > 0 and stats["events_delivered"] < published
                and stats["subscribers_dropped_slow"] == 0)

    wait_until(blocked, bool, timeout=10, interval=0.3,
               what="the write to the full client to block", log=hub.log_text)


def sigterm_until_streams_end(
    hub: HubServer, many: ManyStreams, idle: list[StreamHandle]
) -> tuple[float, float]:
    """SIGTERM; how long until every idle stream ended, and until the master exited."""
    sigterm_at = time.monotonic()
    hub.terminate()
    assert many.run_until(lambda: all(h.closed for h in idle), timeout=EXIT_BOUND), (
        f"{sum(not h.closed for h in idle)} of {IDLE_STREAMS} idle streams still open "
        f"{EXIT_BOUND}s after SIGTERM"
    )
    ended_after = time.monotonic() - sigterm_at
    return ended_after, hub.wait_exit(timeout=EXIT_BOUND)


def test_sigterm_with_a_blocked_write_and_300_idle_streams_exits_within_3s(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(SSE_GRACEFUL_TIMEOUT=GRACEFUL_TIMEOUT, SSE_HEARTBEAT_SECONDS=60,
                    SSE_QUEUE_SIZE=1000, SSE_HISTORY_SIZE=1000)
    full = FullClient(hub.port, "full")
    try:
        with ManyStreams(HOST, hub.port) as many:
            idle = open_idle_streams(hub, many)
            block_the_write_to(hub, full)
            stats = hub.stats()
            assert stats["subscribers"] == IDLE_STREAMS + 1, stats
            assert not any(h.closed for h in idle), "an idle stream ended before the SIGTERM"

            ended_after, took = sigterm_until_streams_end(hub, many, idle)
            # Each ended by the hub (its connection cut, or its terminating
            # chunk): an EventSource reconnects, to another worker.
            assert {h.status for h in idle} == {200}
            assert not any(h.reset for h in idle), "an idle stream was reset"
        assert took < EXIT_BOUND, f"the master exited {took:.2f}s after SIGTERM"
        assert ended_after < EXIT_BOUND
        # The full client's connection was cut as well: it ends once it reads.
        full.read_to_end(timeout=10)
    finally:
        full.close()
    assert hub.proc is not None and hub.proc.returncode == 0, hub.log_text()
    log = hub.log_text().lower()
    assert "graceful timeout" not in log and "worker timeout" not in log, hub.log_text()


def assert_hub_created_in_the_master(hub: HubServer) -> int:
    """The app (and its hub) was created in the master, before the fork; its pid."""
    master = hub.proc.pid if hub.proc is not None else 0
    ready = re.search(r"\[(\d+)\] \[INFO\] hub 'sse' ready", hub.log_text())
    assert ready and int(ready.group(1)) == master, (
        f"the hub was not created in the master ({master}): --preload not in effect\n"
        f"{hub.log_text()}"
    )
    return master


def wait_for_a_new_worker(hub: HubServer, master: int, worker: int) -> int:
    """The pid of the worker the master forked instead of ``worker``, once it answers."""

    def replaced() -> list[int]:
        pids = children(master)
        with contextlib.suppress(OSError):
            if hub.request("GET", "/healthz", timeout=1)[0] == 200:
                return pids
        return []

    (new_worker,) = wait_until(
        replaced, lambda pids: len(pids) == 1 and pids[0] != worker, timeout=15,
        what="a new worker answering /healthz", log=hub.log_text,
    )
    return new_worker


def test_preloaded_app_gives_a_replacement_worker_a_new_epoch(start_hub: HubLauncher) -> None:
    hub = start_hub(GUNICORN_CMD_ARGS="--preload", SSE_HEARTBEAT_SECONDS=60)
    master = assert_hub_created_in_the_master(hub)
    (worker,) = wait_until(lambda: children(master), lambda pids: len(pids) == 1, timeout=5,
                           what="one worker")

    stream = hub.subscribe("epochs")
    old_id = hub.publish("from the first worker", channel="epochs")
    assert stream.next_event(timeout=5).last_event_id == old_id
    old_epoch = hub.stats()["epoch"]
    assert old_id.startswith(f"{old_epoch}-"), (old_id, old_epoch)

    os.kill(worker, signal.SIGKILL)
    stream.read_until_closed(timeout=5)  # its worker is gone
    new_worker = wait_for_a_new_worker(hub, master, worker)
    # Events in the new worker: an old id mistaken for a position here would
    # replay from the middle of them, without a gap.
    new_ids = [hub.publish(f"new {n}", channel="epochs") for n in range(3)]

    resumed = hub.subscribe("epochs", headers={"Last-Event-ID": old_id})
    gap = resumed.next_event(timeout=5)
    assert gap.type == GAP_EVENT, (
        f"resume from {old_id} (first worker) after new events {new_ids}: got {gap}"
    )
    assert json.loads(gap.data)["last_event_id"] == old_id, gap.data
    replay = resumed.events(3, timeout=5)
    assert [(e.last_event_id, e.data) for e in replay] == [
        (event_id, f"new {n}") for n, event_id in enumerate(new_ids)
    ]
    new_epoch = hub.stats()["epoch"]
    assert new_epoch and new_epoch != old_epoch, (old_epoch, new_epoch)
    assert all(event_id.startswith(f"{new_epoch}-") for event_id in new_ids), new_ids
    live = hub.publish("live", channel="epochs")
    event = resumed.next_event(timeout=5)
    assert (event.type, event.last_event_id) == ("message", live)
    assert hub.stats()["gaps_reported"] == 1
    assert children(master) == [new_worker]
