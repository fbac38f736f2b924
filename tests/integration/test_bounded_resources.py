"""Each client costs the worker a bounded amount, however it behaves (docs/protocol.md#limits).

* **Replay amplification**: a full history of large events (1 000 of ~60 KB),
  then 120 clients that resume from its start — 100 from the first id, 20
  with an id the hub does not know (a gap, then the whole history) — and
  never read a byte of their bodies. Each replay must hold about one page,
  not a copy of the history: the worker's resident memory grows by tens of
  MB for all of them together (a replay that joined the history it sends
  cost ~57 MB per client), ``/healthz`` keeps answering, and once they are
  gone a normal publish is delivered. For the memory backend and Redis.
* **Capacity** (``SSE_MAX_STREAMS``): a subscriber past the limit gets a 200
  ``text/event-stream`` with a long ``retry:`` and its response ends at
  once (an ``EventSource`` comes back later instead of giving up on a 5xx);
  publishing, ``/healthz`` and the streams already open are unaffected, and
  a freed slot is taken again.

The figures (memory growth, latencies) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import HOST, HubLauncher, HubServer, HubStream, wait_until
from .redis.conftest import REDIS_SERVER, RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

# -- replay amplification -----------------------------------------------------

HISTORY = 1000
EVENT_DATA_BYTES = 60_000
BATCH = 10  # ~600 KB a POST: within the default SSE_MAX_PUBLISH_BYTES (1 MiB)
FROM_FIRST_ID = 100
FROM_GARBAGE_ID = 20
#: The client's receive buffer (Linux doubles it): the kernel holds little of a replay.
CLIENT_RCVBUF = 4096
#: How long the non-reading clients are held open while the worker is watched.
HOLD_SECONDS = 3.0
#: Growth of the worker's RSS allowed for all 120 replays together: a stream holds
#: the rest of a page (128 KiB or one event), a chunk being written (64 KiB or one
#: event) and gunicorn's chunk-framed copy of it: under 0.3 MB here (measured: 64 KB
#: a stream with the memory backend, 284 KB with Redis).
MAX_GROWTH_MB = 80.0
HEALTHZ_SECONDS = 1.0
#: Opening the 120 resuming streams (one after the other): the memory backend takes ~3 s.
OPEN_SECONDS = 20.0


def rss_mb(pid: int) -> float:
    """The resident set size of ``pid`` in MB (VmRSS, from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def open_without_reading(
    port: int, path: str, headers: dict[str, str], deadline: float,
) -> socket.socket:
    """``GET path``, read the response head (asserting 200), then leave the body unread.

    The receive buffer is made small before connecting, so the window the
    client offers stays small and the replay waits in the server. Raises
    ``TimeoutError`` when the head has not arrived by ``deadline`` (monotonic).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        sock.connect((HOST, port))
        lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}", "Accept: text/event-stream",
                 *(f"{name}: {value}" for name, value in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            data = sock.recv(1024)
            assert data, f"connection closed inside the response head: {head!r}"
            head += data
            assert len(head) < 65536, head[:200]
        status_line = head.split(b"\r\n", 1)[0]
        assert status_line.split()[1] == b"200", (path, headers, head[:300])
        assert b"text/event-stream" in head.split(b"\r\n\r\n", 1)[0].lower(), head[:300]
    except BaseException:
        sock.close()
        raise
    return sock


def start_position(hub: HubServer) -> str:
    """Where a new stream starts (its ``sse-hub-position`` id): the broadcaster's position."""
    probe = hub.subscribe("probe")
    try:
        return probe.parser.last_event_id
    finally:
        probe.close()


def timed_healthz(hub: HubServer) -> float:
    started = time.monotonic()
    status, _, body = hub.request("GET", "/healthz", timeout=5)
    elapsed = time.monotonic() - started
    assert status == 200, (status, body)
    return elapsed


@pytest.fixture
def own_redis(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[str]:
    """A redis-server of this test's own (not the machine's), killed at the end."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (make test installs it when run as root)")
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


def publish_the_history(hub: HubServer) -> tuple[list[str], float]:
    """HISTORY large events in batches, all fanned out; their ids and how long it took."""
    started = time.monotonic()
    ids: list[str] = []
    for first in range(0, HISTORY, BATCH):
        items = []
        for n in range(first, first + BATCH):
            head = f"event {n} "
            items.append({"channel": "big", "data": head + "x" * (EVENT_DATA_BYTES - len(head))})
        ids += hub.publish_batch(items)
    publish_seconds = time.monotonic() - started
    assert len(ids) == len(set(ids)) == HISTORY
    hub.wait_for_stats(lambda s: s["events_published"] == HISTORY, what="the whole history")
    # The broadcaster has handed the last event on: a new stream starts after it.
    wait_until(lambda: start_position(hub), lambda position: position == ids[-1],
               timeout=10, what=f"the broadcaster at {ids[-1]}", log=hub.log_text)
    hub.wait_for_stats(lambda s: s["subscribers"] == 0, what="the probes gone")
    return ids, publish_seconds


def open_resumes_without_reading(
    hub: HubServer, backend: str, first_id: str, socks: list[socket.socket]
) -> float:
    """FROM_FIRST_ID resumes from ``first_id``, FROM_GARBAGE_ID from unknown ids, none read.

    Their sockets go onto ``socks``; returns how long opening them took.
    """
    clients = FROM_FIRST_ID + FROM_GARBAGE_ID
    opening = time.monotonic()
    deadline = opening + OPEN_SECONDS
    for n in range(clients):
        resume_from = first_id if n < FROM_FIRST_ID else f"garbage-{n}"
        try:
            socks.append(open_without_reading(
                hub.port, "/stream?channel=big", {"Last-Event-ID": resume_from}, deadline))
        except TimeoutError:
            pytest.fail(
                f"[{backend}] only {len(socks)} of {clients} resuming streams got their "
                f"response head within {OPEN_SECONDS:.0f}s (the memory backend takes ~3s); "
                f"stats {hub.stats()}\n--- server log ---\n{hub.log_text()[-4000:]}"
            )
    opened_seconds = time.monotonic() - opening
    hub.wait_for_stats(
        lambda s: s["subscribers"] == clients and s["replays_served"] == clients,
        what=f"{clients} replaying subscribers",
    )
    return opened_seconds


def hold_and_watch(hub: HubServer, worker: int) -> tuple[float, list[float]]:
    """For HOLD_SECONDS: the worker's peak RSS (MB), and how long each /healthz took."""
    peak = rss_mb(worker)
    healthz: list[float] = []
    hold_until = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < hold_until:
        healthz.append(timed_healthz(hub))
        for _ in range(5):
            peak = max(peak, rss_mb(worker))
            time.sleep(0.05)  # the sampling interval, not an assertion
    return peak, healthz


def assert_delivered_after_the_replays(hub: HubServer) -> None:
    hub.wait_for_stats(lambda s: s["subscribers"] == 0, what="every replay ended", timeout=10)
    after = hub.subscribe("big")
    event_id = hub.publish("after the replays", channel="big")
    event = after.next_event(timeout=5)
    assert (event.data, event.last_event_id) == ("after the replays", event_id)
    assert "Traceback" not in hub.log_text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_resuming_clients_that_never_read_hold_about_a_page_each(
    backend: str, start_hub: HubLauncher, request: pytest.FixtureRequest,
) -> None:
    # An empty SSE_REDIS_URL is the memory backend.
    redis_url = request.getfixturevalue("own_redis") if backend == "redis" else ""
    hub = start_hub(
        SSE_HISTORY_SIZE=HISTORY, SSE_MAX_EVENT_BYTES=2 * EVENT_DATA_BYTES,
        SSE_HEARTBEAT_SECONDS=30, SSE_REDIS_URL=redis_url,
    )
    assert hub.stats()["backend"] == backend
    worker = hub.worker_pid()
    ids, publish_seconds = publish_the_history(hub)
    baseline = rss_mb(worker)

    socks: list[socket.socket] = []
    clients = FROM_FIRST_ID + FROM_GARBAGE_ID
    try:
        opened_seconds = open_resumes_without_reading(hub, backend, ids[0], socks)
        peak, healthz = hold_and_watch(hub, worker)
        stats = hub.stats()
        growth = peak - baseline
        print(
            f"\n[{backend}] history {HISTORY} x {EVENT_DATA_BYTES} B published in "
            f"{publish_seconds:.1f}s; {clients} non-reading resumes opened in "
            f"{opened_seconds:.1f}s; worker RSS {baseline:.1f} MB before, peak {peak:.1f} MB "
            f"with them open: +{growth:.1f} MB ({growth / clients * 1024:.0f} KB a client); "
            f"/healthz max {max(healthz) * 1000:.0f} ms over {len(healthz)} probes; "
            f"gaps reported {stats['gaps_reported']}, delivered {stats['events_delivered']}"
        )
        # Every replay really is under way and stuck on its client (not refused, not done).
        assert stats["subscribers"] == clients, stats
        assert stats["gaps_reported"] >= FROM_GARBAGE_ID, stats
        assert stats["events_delivered"] < clients * HISTORY / 2, stats
        assert growth < MAX_GROWTH_MB, (
            f"the worker grew by {growth:.1f} MB for {clients} replays that are not read "
            f"({baseline:.1f} -> {peak:.1f} MB)"
        )
        assert max(healthz) < HEALTHZ_SECONDS, healthz
    finally:
        for sock in socks:
            sock.close()
    assert_delivered_after_the_replays(hub)


# -- capacity -------------------------------------------------------------------

MAX_STREAMS = 50
EXTRA = 20
RETRY_MS = 500  # the refusal's retry is 2-6 x max(SSE_RETRY_MS, 1000): 2 000 to 6 000 ms
REFUSAL_SECONDS = 2.0
ANSWER_SECONDS = 1.0


def refused(port: int, channel: str) -> tuple[float, int, int]:
    """Subscribe past the limit; return (seconds until EOF, status, retry ms).

    Asserts a ``text/event-stream`` response with a ``retry:`` field whose
    connection the server closes within ``REFUSAL_SECONDS``.
    """
    started = time.monotonic()
    deadline = started + REFUSAL_SECONDS
    with socket.create_connection((HOST, port), timeout=REFUSAL_SECONDS) as sock:
        sock.sendall(f"GET /stream?channel={channel} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        received = b""
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the refused stream did not end in {REFUSAL_SECONDS}s: {received!r}"
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"the refused stream did not end within {REFUSAL_SECONDS}s: "
                            f"{received!r}")
            if not data:
                break
            received += data
    elapsed = time.monotonic() - started
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    assert headers.get("content-type", "").startswith("text/event-stream"), received
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), received
    else:
        assert body.endswith(b"0\r\n\r\n"), f"no final chunk: {received!r}"
    retries = [int(line[len("retry:"):]) for line in body.decode().splitlines()
               if line.startswith("retry:")]
    assert len(retries) == 1, received
    return elapsed, status, retries[0]


@pytest.mark.timeout(60)
def test_past_max_streams_subscribers_are_told_to_come_back_later(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(SSE_MAX_STREAMS=MAX_STREAMS, SSE_RETRY_MS=RETRY_MS, SSE_HEARTBEAT_SECONDS=30)
    held: list[HubStream] = [hub.subscribe("full") for _ in range(MAX_STREAMS)]
    hub.wait_for_stats(lambda s: s["subscribers"] == MAX_STREAMS, what="the worker full")

    results = [refused(hub.port, "full") for _ in range(EXTRA)]
    assert {status for _, status, _ in results} == {200}, results
    retries = [retry for _, _, retry in results]
    assert all(2000 <= retry <= 6000 for retry in retries), retries
    assert max(elapsed for elapsed, _, _ in results) < REFUSAL_SECONDS, results
    assert hub.stats()["subscribers"] == MAX_STREAMS

    started = time.monotonic()
    event_id = hub.publish("while full", channel="full")
    publish_seconds = time.monotonic() - started
    healthz_seconds = timed_healthz(hub)
    for stream in held:
        event = stream.next_event(timeout=5)
        assert (event.data, event.last_event_id) == ("while full", event_id)
    print(f"\n{EXTRA} refusals: slowest ended after {max(r[0] for r in results) * 1000:.0f} ms, "
          f"retry {min(retries)}-{max(retries)} ms; publish {publish_seconds * 1000:.0f} ms, "
          f"/healthz {healthz_seconds * 1000:.0f} ms while full")
    assert publish_seconds < ANSWER_SECONDS and healthz_seconds < ANSWER_SECONDS

    # Freed slots are taken again, and the limit still holds after.
    for stream in held[:10]:
        stream.close()
    hub.wait_for_stats(lambda s: s["subscribers"] == MAX_STREAMS - 10,
                       what="10 slots freed", timeout=5)
    newcomers = [hub.subscribe("full") for _ in range(10)]
    hub.wait_for_stats(lambda s: s["subscribers"] == MAX_STREAMS, what="the newcomers registered")
    _, status, _ = refused(hub.port, "full")
    assert status == 200
    event_id = hub.publish("after the swap", channel="full")
    for stream in held[10:] + newcomers:
        event = stream.next_event(timeout=5)
        assert (event.data, event.last_event_id) == ("after the swap", event_id)
    assert "Traceback" not in hub.log_text()
