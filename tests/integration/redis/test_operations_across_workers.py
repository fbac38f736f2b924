"""Metrics, presence, disconnect and idempotent publish across two gunicorn workers (Redis).

Which worker accepts a connection is the kernel's choice; the tests learn
which one did from /proc (the worker holding the hub's end of the
connection) and open more connections until both workers hold some. Each
worker's own ``/stats`` is read over a connection known to be served by it.

* ``/metrics`` answered by either worker sums both workers' figures.
* ``/presence`` answered by either worker lists the subjects of both; a
  closed stream leaves after the grace, one that reconnects (even to the
  other worker) within it never leaves, and a SIGKILLed worker's streams
  leave when its lease runs out.
* ``POST /disconnect`` reaches the matching streams on both workers.
* An ``Idempotency-Key`` repeated on the other worker publishes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flask_sse_hub import mint_token
from tests.integration.conftest import HOST, HubLauncher, HubServer, HubStream, wait_until
from tests.integration.redis.conftest import process_tree, worker_serving

pytestmark = pytest.mark.integration

SECRET = "ops-tests-hs256-secret-0123456789abcdef"
GRACE = 1.5
#: A closed stream leaves everyone's presence within this (seconds).
LEAVE_WITHIN = 3.0
HEARTBEAT = 1.0
DISCONNECT_EVENT = "sse-hub-disconnect"
ANYWHERE = {"Authorization": f"Bearer {mint_token(SECRET, publish=['*'], ttl=86400)}"}
#: How long to keep opening connections until both workers hold some.
SPREAD_SECONDS = 20.0


@pytest.fixture
def hub(start_hub: HubLauncher, redis_url: str) -> HubServer:
    return start_hub(
        SSE_REDIS_URL=redis_url, WEB_CONCURRENCY=2, SSE_JWT_SECRET=SECRET,
        SSE_HEARTBEAT_SECONDS=HEARTBEAT, SSE_PRESENCE_GRACE_SECONDS=GRACE,
    )


# -- which worker serves what -----------------------------------------------------


def worker_pids(hub: HubServer) -> list[int]:
    assert hub.proc is not None
    master = hub.proc.pid
    pids: list[int] = wait_until(lambda: process_tree(master)[1:], lambda found: len(found) == 2,
                                 timeout=10, what="2 gunicorn workers", log=hub.log_text)
    return pids


def stream_worker(hub: HubServer, stream: HubStream, pids: list[int]) -> int | None:
    sock = stream._sock  # its local port names the connection in /proc
    assert sock is not None
    return worker_serving(hub.port, sock.getsockname()[1], pids)


@contextlib.contextmanager
def connection_to(
    hub: HubServer, pid: int, pids: list[int],
) -> Iterator[http.client.HTTPConnection]:
    """A keep-alive connection served by worker ``pid`` (placed with a ``GET /healthz``)."""
    deadline = time.monotonic() + SPREAD_SECONDS
    while True:
        conn = http.client.HTTPConnection(HOST, hub.port, timeout=10)
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        assert conn.sock is not None
        if worker_serving(hub.port, conn.sock.getsockname()[1], pids) == pid:
            break
        conn.close()
        assert time.monotonic() < deadline, f"no connection reached worker {pid}\n{hub.log_text()}"
    try:
        yield conn
    finally:
        conn.close()


def ask(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, data, {**sent, **(headers or {})})
    response = conn.getresponse()
    return response.status, response.read()


def ask_each(hub: HubServer, pids: list[int], path: str) -> dict[int, bytes]:
    """``GET path`` answered by each worker: its answer, by pid."""
    answers = {}
    for pid in pids:
        with connection_to(hub, pid, pids) as conn:
            status, body = ask(conn, "GET", path)
            assert status == 200, (pid, path, status, body[:300])
            answers[pid] = body
    return answers


def spread(
    hub: HubServer, pids: list[int], opened: list[HubStream], open_one: Callable[[], HubStream],
) -> None:
    """Open more streams with ``open_one()`` until ``opened`` has some on every worker."""
    deadline = time.monotonic() + SPREAD_SECONDS
    while {stream_worker(hub, stream, pids) for stream in opened} != set(pids):
        assert time.monotonic() < deadline, f"every stream on one worker\n{hub.log_text()}"
        opened.append(open_one())


# -- streams, tokens, publishing ------------------------------------------------------


def join(hub: HubServer, subject: str | None, *channels: str) -> HubStream:
    token = mint_token(SECRET, subscribe=list(channels), subject=subject)
    return hub.subscribe(*channels, headers={"Authorization": f"Bearer {token}"})


def publish(hub: HubServer, data: str, channel: str) -> str:
    status, answer = hub.post_json("/publish", {"channel": channel, "data": data}, ANYWHERE)
    assert status == 202, (status, answer)
    event_id: str = answer["id"]
    return event_id




# -- metrics --------------------------------------------------------------------------


def metric_values(text: bytes) -> dict[str, float]:
    """The hub's samples by name (one hub, no status label needed here)."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.labels.get("hub") in ("sse", None) and "le" not in sample.labels
    }


def test_metrics_from_either_worker_sum_both_workers_stats(hub: HubServer) -> None:
    pids = worker_pids(hub)
    streams = [join(hub, None, "x-fan") for _ in range(4)]
    spread(hub, pids, streams, lambda: join(hub, None, "x-fan"))
    sent = [f"e{n}" for n in range(10)]
    for data in sent:
        publish(hub, data, "x-fan")
    for stream in streams:
        assert stream.messages(len(sent)) == sent

    def wrong_in_scrape_of(pid: int) -> list[tuple[str, float, float]]:
        # Only ``pid`` is scraped: the other worker's figures must reach it without a scrape.
        stats = [json.loads(body) for body in ask_each(hub, pids, "/stats").values()]
        wanted = {
            "sse_hub_streams": sum(s["subscribers"] for s in stats),
            "sse_hub_events_published_total": sum(s["events_published"] for s in stats),
            "sse_hub_events_delivered_total": sum(s["events_delivered"] for s in stats),
            "sse_hub_delivery_lag_seconds_count": len(sent) * len(streams),
        }
        with connection_to(hub, pid, pids) as conn:
            status, body = ask(conn, "GET", "/metrics")
        assert status == 200, body
        got = metric_values(body)
        return [(name, got.get(name, 0.0), value)
                for name, value in wanted.items() if got.get(name, 0.0) != value]

    for pid in pids:
        wait_until(functools.partial(wrong_in_scrape_of, pid), lambda wrong: not wrong, timeout=10,
                   what=f"metrics scraped from worker {pid} == summed /stats (got, wanted)",
                   log=hub.log_text)
    stats = [json.loads(body) for body in ask_each(hub, pids, "/stats").values()]
    assert all(s["events_delivered"] > 0 for s in stats), "a worker delivered nothing"
    assert sum(s["events_delivered"] for s in stats) == len(sent) * len(streams)


# -- presence -------------------------------------------------------------------------


def presence_from_each(hub: HubServer, pids: list[int], channel: str) -> list[dict[str, Any]]:
    return [json.loads(body) for body in ask_each(hub, pids, f"/presence?channel={channel}")
            .values()]


def wait_presence(hub: HubServer, pids: list[int], channel: str, occupancy: int,
                  subjects: list[str], timeout: float = 5.0) -> None:
    expected = {"channel": channel, "occupancy": occupancy, "subjects": subjects}
    wait_until(lambda: presence_from_each(hub, pids, channel),
               lambda answers: all(answer == expected for answer in answers),
               timeout=timeout, what=f"both workers answering {expected}", log=hub.log_text)


def people_on_both_workers(
    hub: HubServer, pids: list[int], channel: str,
) -> dict[str, tuple[HubStream, int]]:
    """Streams of subjects ``u0``, ``u1``... on ``channel``, some on each worker: by subject."""
    opened: list[HubStream] = []
    spread(hub, pids, opened, lambda: join(hub, f"u{len(opened)}", channel))
    return {f"u{n}": (stream, stream_worker(hub, stream, pids) or 0)
            for n, stream in enumerate(opened)}


def test_presence_from_either_worker_lists_both_workers_subjects(hub: HubServer) -> None:
    pids = worker_pids(hub)
    people = people_on_both_workers(hub, pids, "x-room")
    wait_presence(hub, pids, "x-room", len(people), sorted(people))

    leaving = next(name for name, (_, pid) in people.items() if pid == pids[1])
    people[leaving][0].close()
    closed_at = time.monotonic()
    # Gone within 3 s of its close, and not before its grace ran out.
    wait_presence(hub, pids, "x-room", len(people) - 1, sorted(set(people) - {leaving}),
                  timeout=LEAVE_WITHIN)
    assert time.monotonic() - closed_at >= GRACE - 0.1, f"{leaving} left before the grace"


def test_a_reconnect_to_the_other_worker_within_the_grace_never_leaves(hub: HubServer) -> None:
    pids = worker_pids(hub)
    carol = join(hub, "carol", "x-back")
    wait_presence(hub, pids, "x-back", 1, ["carol"])
    first = stream_worker(hub, carol, pids)
    seen: list[list[str]] = []
    deadline = time.monotonic() + SPREAD_SECONDS
    while stream_worker(hub, carol, pids) == first:  # reconnect until it lands elsewhere
        assert time.monotonic() < deadline, "every reconnect landed on the same worker"
        carol.close()
        carol = join(hub, "carol", "x-back")
        seen += [answer["subjects"] for answer in presence_from_each(hub, pids, "x-back")]
    sample_until = time.monotonic() + GRACE + 1.5
    while time.monotonic() < sample_until:
        seen += [answer["subjects"] for answer in presence_from_each(hub, pids, "x-back")]
    assert all(subjects == ["carol"] for subjects in seen), seen
    wait_presence(hub, pids, "x-back", 1, ["carol"])  # the old stream's grace is over


def test_a_killed_workers_subjects_leave_when_its_lease_runs_out(hub: HubServer) -> None:
    pids = worker_pids(hub)
    people = people_on_both_workers(hub, pids, "x-kill")
    wait_presence(hub, pids, "x-kill", len(people), sorted(people))
    victim, survivor = pids[1], pids[0]
    staying = sorted(name for name, (_, pid) in people.items() if pid == survivor)

    os.kill(victim, signal.SIGKILL)
    # Two heartbeats of lease, five seconds for the rest (the master starts a new worker).
    wait_until(lambda: presence_from_survivor(hub, survivor, pids, "x-kill"),
               lambda answer: answer == {"channel": "x-kill", "occupancy": len(staying),
                                         "subjects": staying},
               timeout=2 * HEARTBEAT + 5, what=f"only {staying} present", log=hub.log_text)
    with connection_to(hub, survivor, [survivor]) as conn:
        status, body = ask(conn, "GET", "/metrics")
    assert status == 200
    assert metric_values(body)["sse_hub_streams"] == len(staying), "a dead worker's gauge stayed"


def presence_from_survivor(hub: HubServer, survivor: int, pids: list[int],
                           channel: str) -> dict[str, Any]:
    with connection_to(hub, survivor, pids) as conn:
        status, body = ask(conn, "GET", f"/presence?channel={channel}")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


# -- disconnect -----------------------------------------------------------------------


def assert_disconnected(stream: HubStream, match: dict[str, str | None]) -> None:
    events = stream.read_until_closed(timeout=5)
    assert events and events[-1].type == DISCONNECT_EVENT, [(e.type, e.data) for e in events]
    assert json.loads(events[-1].data) == match


def assert_still_receiving(hub: HubServer, streams: list[HubStream], channel: str) -> None:
    event_id = publish(hub, "later", channel)
    for stream in streams:
        assert stream.until_id(event_id, timeout=5)[-1].data == "later"


def test_disconnect_by_subject_ends_its_streams_on_both_workers(hub: HubServer) -> None:
    pids = worker_pids(hub)
    dave = [join(hub, "dave", "x-d")]
    spread(hub, pids, dave, lambda: join(hub, "dave", "x-d"))
    erin = [join(hub, "erin", "x-d")]
    spread(hub, pids, erin, lambda: join(hub, "erin", "x-d"))
    status, _ = hub.post_json("/disconnect", {"subject": "dave"}, ANYWHERE)
    assert status == 202
    for stream in dave:
        assert_disconnected(stream, {"channel": None, "subject": "dave"})
    assert_still_receiving(hub, erin, "x-d")


def test_disconnect_by_channel_ends_its_streams_on_both_workers(hub: HubServer) -> None:
    pids = worker_pids(hub)
    doomed = [join(hub, "frank", "x-c")]
    spread(hub, pids, doomed, lambda: join(hub, "frank", "x-c"))
    kept = [join(hub, "frank", "x-k")]
    spread(hub, pids, kept, lambda: join(hub, "frank", "x-k"))
    status, _ = hub.post_json("/disconnect", {"channel": "x-c"}, ANYWHERE)
    assert status == 202
    for stream in doomed:
        assert_disconnected(stream, {"channel": "x-c", "subject": None})
    assert_still_receiving(hub, kept, "x-k")


# -- idempotent publish ----------------------------------------------------------------


def test_an_idempotency_key_repeated_on_the_other_worker_publishes_once(hub: HubServer) -> None:
    pids = worker_pids(hub)
    stream = join(hub, None, "x-idem")
    key, body = str(uuid.uuid4()), {"channel": "x-idem", "data": "pay 10"}
    headers = {**ANYWHERE, "Idempotency-Key": key}
    answers = []
    for pid in pids:
        with connection_to(hub, pid, pids) as conn:
            answers.append(ask(conn, "POST", "/publish", body, headers))
    assert answers[0] == answers[1] and answers[0][0] == 202, answers
    with connection_to(hub, pids[0], pids) as conn:
        status, answer = ask(conn, "POST", "/publish", {**body, "data": "pay 20"}, headers)
    assert status == 422, answer
    with connection_to(hub, pids[1], pids) as conn:
        status, answer = ask(conn, "POST", "/publish", body, {**ANYWHERE, "Idempotency-Key": ""})
    assert status == 400, answer

    marker = publish(hub, "marker", "x-idem")
    got = [e.data for e in stream.until_id(marker, timeout=5) if e.type == "message"]
    assert got == ["pay 10", "marker"]
