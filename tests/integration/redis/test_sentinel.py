"""Redis high availability through Sentinel (docs/protocol.md#redis-sentinel).

The tests' own Sentinel set-up (:mod:`.sentinel_cluster`: a master, two
replicas, three sentinels, quorum 2, ``down-after-milliseconds 1000``) and
the real hub (gunicorn, gevent) configured with ``SSE_REDIS_SENTINELS`` and
``SSE_REDIS_SENTINEL_MASTER`` (not the default name) and no ``SSE_REDIS_URL``:
the master can only come from Sentinel.

* The hub finds the master through Sentinel: it publishes, delivers and
  resumes there; with an ``SSE_REDIS_URL`` too, only its db is used, never
  its host.
* Failover with ``SSE_REDIS_MIN_REPLICAS=1`` and two workers: the master is
  killed (SIGKILL) while a publisher posts every ~20 ms (each on a fresh
  connection, so either worker answers) and six EventSource-like readers on
  two channels, each channel on both workers, read (resuming with
  ``Last-Event-ID`` if a stream ends). Publishes answer 503 during the
  failover, within SSE_REDIS_TIMEOUT, and 202 after; every event answered
  202 reaches every reader of its channel exactly once, in publish order,
  with no ``sse-hub-gap``; the streams stay open (no reader reconnects).
  Variant: replication is cut before the kill, so events published then
  exist on the master alone: they answer 503 and no reader ever sees one.
* Failover with ``SSE_REDIS_MIN_REPLICAS=0``: events acknowledged by the old
  master alone are lost with it (made certain: replication cut, one worker
  frozen with its Redis connections cut), but never silently: each stream
  receives every 202 event, or an ``sse-hub-gap`` naming its last event
  before the first one it misses, and a gap never excuses skipping an event
  Redis still holds.

A publish answered 503 "may have been published" (docs/protocol.md#redis-timeouts):
such an event may reach a stream, at most once and in its place.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import GAP_EVENT, HOST, HubLauncher, HubServer, wait_until
from tests.support.sse_client import HTTPProtocolError, SSEClient, http_request
from tests.support.sse_parser import Event

from .conftest import HUB_STREAM, process_tree, worker_serving
from .sentinel_cluster import SentinelCluster, sentinel_cluster  # noqa: F401

pytestmark = pytest.mark.integration

#: SSE_REDIS_TIMEOUT for these hubs; a publish must answer within it (retries
#: included), plus this much slack for HTTP and a loaded machine. Shorter than
#: any failover (``down-after-milliseconds`` alone is 1 s): a publish sent just
#: after the kill cannot ride the failover out on retries, it must answer 503.
REDIS_TIMEOUT = 1.0
ANSWER_SLACK = 1.5
FINAL = "final"
#: Publishes that must get 202, in a row, after the failover.
AFTER_FAILOVER = 30


def start_sentinel_hub(
    start_hub: HubLauncher, cluster: SentinelCluster, *, min_replicas: int = 0, workers: int = 1,
    url: str | None = None,
) -> HubServer:
    """The standalone hub finding its Redis through ``cluster``'s sentinels.

    Without ``url`` no SSE_REDIS_URL is set at all; with it, SSE_REDIS_URL
    supplies db (and password), never the host.
    """
    settings: dict[str, object] = {
        "SSE_REDIS_SENTINELS": cluster.sentinels_setting,
        "SSE_REDIS_SENTINEL_MASTER": cluster.master_name,
        "SSE_REDIS_MIN_REPLICAS": min_replicas, "WEB_CONCURRENCY": workers,
        "SSE_REDIS_TIMEOUT": REDIS_TIMEOUT, "SSE_HEARTBEAT_SECONDS": 1,
    }
    if url is not None:
        settings["SSE_REDIS_URL"] = url
    return start_hub("wsgi:app", pythonpath=None, **settings)


# -- an EventSource-like reader and a steady publisher ---------------------------------


class StreamClient(SSEClient):
    """An :class:`SSEClient` that tells its local port (to find the worker serving it)."""

    @property
    def local_port(self) -> int:
        assert self._sock is not None, "not connected"
        port: int = self._sock.getsockname()[1]
        return port


class ResumingClient(threading.Thread):
    """Reads one channel like a browser's ``EventSource``.

    When the stream ends or fails it reconnects with ``Last-Event-ID`` (the
    last id it saw), every 0.2 s while connections are refused or answered
    other than 200, until it has read the event whose data is ``FINAL`` or
    the deadline passes. Every event it read, in order, is in ``events``.
    """

    def __init__(self, port: int, channel: str, deadline: float) -> None:
        super().__init__(daemon=True, name=f"reader-{channel}")
        self.port = port
        self.channel = channel
        self.deadline = deadline
        self.events: list[Event] = []
        self.last_event_id = ""
        #: Streams read (200 and preamble): 1 means it never reconnected.
        self.streams_opened = 0
        #: Why each connection (attempt) ended, other than reading FINAL.
        self.interruptions: list[str] = []
        self.first: StreamClient | None = None  # opened before the thread starts
        self.worker = 0  # the PID of the worker serving its first stream
        self.done = threading.Event()  # FINAL was read
        self.stopping = threading.Event()

    def open(self) -> StreamClient | None:
        """One connection attempt: the open stream (preamble read), or None (noted why)."""
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        client = StreamClient(HOST, self.port, f"/stream?channel={self.channel}", headers,
                              timeout=5)
        try:
            client.connect()
            if client.status == 200:
                client.wait_comment(timeout=5)  # the preamble: registered from now on
                return client
            self.interruptions.append(f"status {client.status}")
        except (OSError, EOFError, HTTPProtocolError) as exc:
            self.interruptions.append(repr(exc))
        client.close()
        return None

    def run(self) -> None:
        client, self.first = self.first, None
        while not self.done.is_set() and not self.stopping.is_set():
            if time.monotonic() >= self.deadline:
                self.interruptions.append("deadline passed")
                break
            if client is None:
                client = self.open()
            if client is None:
                time.sleep(0.2)
                continue
            self.streams_opened += 1
            try:
                self._read(client)
            except (OSError, EOFError, HTTPProtocolError) as exc:
                self.interruptions.append(repr(exc))
                time.sleep(0.2)
            finally:
                client.close()
                client = None
        if client is not None:
            client.close()

    def _read(self, client: SSEClient) -> None:
        while not (self.stopping.is_set() or time.monotonic() >= self.deadline):
            try:
                event = client.next_event(timeout=0.5)
            except TimeoutError:
                continue
            self.events.append(event)
            if event.last_event_id:
                self.last_event_id = event.last_event_id
            if event.data == FINAL:
                self.done.set()
                return


@dataclass(frozen=True)
class Publish:
    """One ``POST /publish`` and its answer."""

    data: str
    channel: str
    sent_at: float
    seconds: float
    status: int | str  # the HTTP status, or the exception when there was no answer
    event_id: str | None

    @property
    def answered_at(self) -> float:
        return self.sent_at + self.seconds


class SteadyPublisher(threading.Thread):
    """One publish every ``interval`` seconds, each on a fresh connection (any worker).

    Data ``n0, n1, ...``; event ``n`` goes to ``channels[n % len(channels)]``.
    :meth:`pause` returns once no publish is in flight; meanwhile the test may
    publish the next numbers itself with :meth:`publish_next`.
    """

    def __init__(self, hub: HubServer, channels: list[str], interval: float = 0.02) -> None:
        super().__init__(daemon=True, name="publisher")
        self.hub = hub
        self.channels = channels
        self.interval = interval
        self.results: list[Publish] = []
        self.stopping = threading.Event()
        self._number = 0
        self._lock = threading.RLock()  # held for each publish: pause() waits for it
        self._paused = False

    def run(self) -> None:
        while not self.stopping.is_set():
            with self._lock:
                if not self._paused:
                    self.publish_next()
            self.stopping.wait(self.interval)

    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def publish_next(self) -> Publish:
        with self._lock:
            number, self._number = self._number, self._number + 1
            data, channel = f"n{number}", self.channels[number % len(self.channels)]
            body = json.dumps({"channel": channel, "data": data}).encode()
            sent_at = time.monotonic()
            event_id = None
            status: int | str
            try:
                status, _, answer = http_request(
                    HOST, self.hub.port, "POST", "/publish", body,
                    {"Content-Type": "application/json"}, timeout=10)
                if status == 202:
                    event_id = json.loads(answer)["id"]
            except OSError as exc:
                status = repr(exc)
            result = Publish(data, channel, sent_at, time.monotonic() - sent_at, status,
                             event_id)
            self.results.append(result)
            return result

    def last_all_acknowledged(self, count: int, after: float) -> bool:
        """The last ``count`` publishes were all sent after ``after`` and all got 202."""
        tail = self.results[-count:]
        return len(tail) == count and all(r.status == 202 and r.sent_at > after for r in tail)

    @contextlib.contextmanager
    def running(self) -> Iterator[SteadyPublisher]:
        self.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self.join(timeout=15)


def redis_clients_of(pid: int, redis_port: int, clients: list[dict[str, str]]) -> list[str]:
    """The ids, among Redis's ``CLIENT LIST`` entries, of the connections ``pid`` holds."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            local, peer = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if peer == redis_port and fields[3] == "01" and fields[9] in inodes:
                ports.add(local)
    return [client["id"] for client in clients
            if int(client["addr"].rsplit(":", 1)[1]) in ports]


def start_readers(
    hub: HubServer, channels: list[str], count: int, *, workers: int, seconds: float,
) -> list[ResumingClient]:
    """``count`` readers, round-robin on ``channels``, each channel on every worker.

    Reader ``i`` reads ``channels[i % len(channels)]`` and is placed on worker
    ``(i // len(channels)) % workers``: which worker accepts a connection is
    the kernel's choice, so a first stream on the wrong one is closed (before
    any event) and opened again.
    """
    assert hub.proc is not None
    master = hub.proc.pid
    pids = wait_until(lambda: process_tree(master)[1:], lambda found: len(found) == workers,
                      timeout=10, what=f"{workers} gunicorn workers", log=hub.log_text)
    deadline = time.monotonic() + seconds
    placement_deadline = time.monotonic() + 15
    readers = []
    for number in range(count):
        reader = ResumingClient(hub.port, channels[number % len(channels)], deadline)
        wanted = pids[(number // len(channels)) % workers]
        while reader.first is None:
            assert time.monotonic() < placement_deadline, (
                f"reader {number} never landed on worker {wanted} of {pids}\n{hub.log_text()}")
            client = reader.open()
            if client is None:
                time.sleep(0.2)
                continue
            if worker_serving(hub.port, client.local_port, pids) == wanted:
                reader.first, reader.worker = client, wanted
            else:
                client.close()
        readers.append(reader)
    for reader in readers:
        reader.start()
    return readers


def stop_readers(readers: list[ResumingClient]) -> None:
    for reader in readers:
        reader.stopping.set()
    for reader in readers:
        reader.join(timeout=10)


def statuses(results: list[Publish]) -> str:
    """``202 x41, 503 x7, 202 x30``: the answers in order, as runs, for failure messages."""
    return ", ".join(f"{status} x{len(list(run))}"
                     for status, run in itertools.groupby(r.status for r in results))


def _shown(events: list[Event]) -> str:
    return ", ".join(f"{e.type}#{e.last_event_id}={e.data[:24]}" for e in events)


# -- the tests -----------------------------------------------------------------------


def test_hub_finds_the_master_through_sentinel_and_publishes_delivers_and_resumes_there(
    start_hub: HubLauncher, sentinel_cluster: SentinelCluster,  # noqa: F811
) -> None:
    # Two hubs on one Sentinel set-up: without SSE_REDIS_URL (db 0), and with
    # one whose host is no Redis at all (only its db, 3, counts).
    for url, db in [(None, 0), ("redis://not-a-redis-host:1/3", 3)]:
        hub = start_sentinel_hub(start_hub, sentinel_cluster, url=url)
        stream = hub.subscribe("via-sentinel")
        first = hub.publish("first", channel="via-sentinel")
        second = hub.publish("second", channel="via-sentinel")
        events = stream.until_id(second, timeout=5)
        assert [(e.data, e.last_event_id) for e in events] == [
            ("first", first), ("second", second)], url

        # A resume is served from the master's history too.
        resumed = hub.subscribe("via-sentinel", headers={"Last-Event-ID": first})
        assert [(e.data, e.last_event_id) for e in resumed.until_id(second, timeout=5)] == [
            ("second", second)], url

        # The events are in the master Sentinel names (not the URL's host), in the
        # URL's db: each hub's two, apart.
        master = sentinel_cluster.master_port()
        assert master == sentinel_cluster.initial_master_port
        with sentinel_cluster.client(master, db=db) as client:
            assert client.xlen(HUB_STREAM) == 2, (url, client.xrange(HUB_STREAM))
        hub.shutdown()


@dataclass
class Failover:
    """When the trouble came: replication cut (if it was), master killed, failover done."""

    cut_at: float | None
    killed_at: float
    failed_over_at: float


def fail_over_while_publishing(
    hub: HubServer, cluster: SentinelCluster, channels: list[str],
    readers: list[ResumingClient], *, unreplicated: bool,
) -> tuple[SteadyPublisher, Failover]:
    """Publish steadily; kill the master (after cutting replication if ``unreplicated``);
    go on until AFTER_FAILOVER publishes in a row are acknowledged after the kill."""
    with SteadyPublisher(hub, channels).running() as publisher:
        wait_until(lambda: min(len(r.events) for r in readers), lambda n: n >= 5,
                   timeout=10, what="5 events at every reader before the kill",
                   log=hub.log_text)
        replicas: list[int] = []
        cut_at: float | None = None
        if unreplicated:
            replicas, cut_at = cluster.cut_replication(), time.monotonic()
            wait_until(lambda: [r for r in publisher.results[-3:] if r.sent_at > cut_at],
                       lambda tail: len(tail) == 3, timeout=10,
                       what="3 publishes while replication is cut")
        killed_at = time.monotonic()
        old_master = cluster.kill_master()
        cluster.restore_replication(replicas)
        cluster.wait_failover(old_master, timeout=20)
        failed_over_at = time.monotonic()
        wait_until(lambda: publisher.last_all_acknowledged(AFTER_FAILOVER, killed_at),
                   bool, timeout=15,
                   what=f"{AFTER_FAILOVER} publishes in a row answered 202 after the "
                        f"failover ({statuses(publisher.results)})",
                   log=hub.log_text)
    return publisher, Failover(cut_at, killed_at, failed_over_at)


def publish_final_and_wait_for_readers(
    hub: HubServer, channels: list[str], readers: list[ResumingClient]
) -> dict[str, str]:
    """The final event on each channel, once every reader has read it; its ids."""
    finals = {channel: hub.publish(FINAL, channel=channel) for channel in channels}
    wait_until(lambda: [r for r in readers if not r.done.is_set()], lambda left: not left,
               timeout=15, what="every reader to read the final event",
               log=hub.log_text)
    return finals


def assert_answers_through_the_failover(
    results: list[Publish], failover: Failover
) -> tuple[str, set[str]]:
    """202 before the trouble, 503 during it (never a hang), 202 after; returns the timeline
    and the data published while replication was cut (on the master alone)."""
    cut_at, killed_at = failover.cut_at, failover.killed_at
    trouble_at = killed_at if cut_at is None else cut_at
    timeline = (f"publishes: {statuses(results)}; "
                f"{'' if cut_at is None else f'cut at +{cut_at - results[0].sent_at:.2f}s, '}"
                f"kill at +{killed_at - results[0].sent_at:.2f}s, "
                f"failover done +{failover.failed_over_at - killed_at:.2f}s after")
    # Publishes: 202 before the trouble, 503 during it (not a hang), 202 after
    # (the last AFTER_FAILOVER in a row, waited for above).
    assert {r.status for r in results} <= {202, 503}, timeline
    assert all(r.status == 202 for r in results if r.answered_at < trouble_at), timeline
    assert any(r.status == 503 for r in results if r.answered_at >= trouble_at), timeline
    # Published while replication was cut: on the master alone, so neither
    # acknowledged nor fanned out (a stream that saw one would lose its id).
    during_cut = [r for r in results
                  if cut_at is not None and cut_at < r.sent_at and r.answered_at < killed_at]
    assert all(r.status == 503 for r in during_cut), timeline
    slowest = max(results, key=lambda r: r.seconds)
    assert slowest.seconds <= REDIS_TIMEOUT + ANSWER_SLACK, (slowest, timeline)
    return timeline, {r.data for r in during_cut}


def reader_problems(
    readers: list[ResumingClient], results: list[Publish], finals: dict[str, str],
    master_only: set[str],
) -> list[str]:
    """What any reader got wrong: a gap, a 202 event missing or twice, an unreplicated one."""
    problems = []
    for number, reader in enumerate(readers):
        acknowledged = [(r.data, r.event_id) for r in results
                        if r.status == 202 and r.channel == reader.channel]
        acknowledged.append((FINAL, finals[reader.channel]))
        maybe = {r.data for r in results if r.status != 202 and r.channel == reader.channel}
        gaps = [e for e in reader.events if e.type == GAP_EVENT]
        if gaps:
            problems.append(f"reader {number} ({reader.channel}) got gaps: {_shown(gaps)}")
        received = [(e.data, e.last_event_id) for e in reader.events if e.type != GAP_EVENT]
        if [item for item in received if item[0] not in maybe] != acknowledged:
            missing = sorted(set(acknowledged) - set(received))
            problems.append(f"reader {number} ({reader.channel}): not every 202 event exactly "
                            f"once in order; missing {missing[:10]}; received "
                            f"{_shown(reader.events)}")
        numbers = [int(data[1:]) for data, _ in received if data != FINAL]
        if numbers != sorted(set(numbers)):  # 503 events too: at most once, in their place
            problems.append(f"reader {number}: out of publish order or twice: {numbers}")
        if fanned_out := sorted(master_only & {data for data, _ in received}):
            problems.append(f"reader {number} got events no replica had: {fanned_out}")
    return problems


@pytest.mark.parametrize("unreplicated", [False, True], ids=["kill", "unreplicated-then-kill"])
def test_failover_with_min_replicas_loses_no_acknowledged_event_and_keeps_streams_open(
    start_hub: HubLauncher, sentinel_cluster: SentinelCluster,  # noqa: F811
    unreplicated: bool,
) -> None:
    """``unreplicated``: the replicas stop syncing before the master dies, so events
    published meanwhile exist on the master alone: answered 503, never fanned out."""
    hub = start_sentinel_hub(start_hub, sentinel_cluster, min_replicas=1, workers=2)
    channels = ["ha-a", "ha-b"]
    readers = start_readers(hub, channels, 6, workers=2, seconds=45)
    try:
        publisher, failover = fail_over_while_publishing(
            hub, sentinel_cluster, channels, readers, unreplicated=unreplicated)
        finals = publish_final_and_wait_for_readers(hub, channels, readers)
    finally:
        stop_readers(readers)

    timeline, master_only = assert_answers_through_the_failover(publisher.results, failover)
    problems = reader_problems(readers, publisher.results, finals, master_only)
    assert not problems, "\n".join([timeline, *problems])
    # The streams stayed open across the failover: no reader had to reconnect.
    reconnected = {number: reader.interruptions for number, reader in enumerate(readers)
                   if reader.streams_opened != 1}
    assert not reconnected, (timeline, reconnected)


def never_silent(
    events: list[Event], acknowledged: list[str], maybe: set[str], retained: set[str],
) -> list[str]:
    """What ``events`` lost silently: a 202 event missing with no ``sse-hub-gap`` before it.

    ``acknowledged``: the data of every 202 event of the channel, in publish
    order; ``maybe``: data answered 503 (may or may not arrive); ``retained``:
    data Redis still holds, which a gap does not excuse (the retained events
    follow it). A gap event must name the id of the last event the stream got
    before it.
    """
    position = {data: index for index, data in enumerate(acknowledged)}
    owed = 0  # index in ``acknowledged`` of the next event the stream is owed
    told = False  # a gap since the last acknowledged event delivered
    last_id = ""
    problems = []
    for event in events:
        if event.type == GAP_EVENT:
            told = True
            named = json.loads(event.data).get("last_event_id")
            if named != last_id:
                problems.append(f"gap names {named!r}, the stream's last event was {last_id!r}")
        elif event.data in position:
            index = position[event.data]
            if index < owed:
                problems.append(f"{event.data} again or out of order")
            elif index > owed and not told:
                problems.append(f"lost {acknowledged[owed:index]} silently (no gap before "
                                f"{event.data})")
            elif index > owed and set(acknowledged[owed:index]) & retained:
                problems.append(f"after a gap, skipped {acknowledged[owed:index]} though "
                                f"Redis has {sorted(set(acknowledged[owed:index]) & retained)}")
            owed = max(owed, index + 1)
            told = False
        elif event.data not in maybe:
            problems.append(f"an event never published: {event}")
        if event.type != GAP_EVENT:
            last_id = event.last_event_id
    if owed < len(acknowledged):
        problems.append(f"never received {acknowledged[owed:]}")
    return problems


def lose_events_behind_a_frozen_worker(
    cluster: SentinelCluster, publisher: SteadyPublisher, frozen: int
) -> tuple[list[Publish], float, int]:
    """Make a loss for sure; returns the publishes made while replication was cut, when the
    master was killed, and the old master's port.

    One worker is frozen and its Redis connections cut (so that no reply to
    its XREAD waits in its socket), the replicas stop syncing, the other
    worker has events acknowledged that only the master holds, and the
    master dies: the frozen worker can never read those events. (No publish
    in flight when it freezes: it would hang.)
    """
    publisher.pause()
    os.kill(frozen, signal.SIGSTOP)
    try:
        with cluster.client(cluster.master_port()) as master:
            held = redis_clients_of(frozen, master.connection_pool.connection_kwargs[
                "port"], master.client_list())
            assert held, "the frozen worker holds no Redis connection"
            for client_id in held:
                master.client_kill_filter(_id=client_id)
        replicas = cluster.cut_replication()
        cut = [publisher.publish_next() for _ in range(5)]
        killed_at = time.monotonic()
        old_master = cluster.kill_master()
        cluster.restore_replication(replicas)
    finally:
        os.kill(frozen, signal.SIGCONT)
        publisher.resume()
    return cut, killed_at, old_master


def retained_data(cluster: SentinelCluster, master: int) -> set[str]:
    """The data of every event the Redis at port ``master`` holds."""
    with cluster.client(master) as client:
        return {data for _, fields in client.xrange(HUB_STREAM)
                for data in re.findall(r"^data: (.*)$", fields.get("b", ""), re.MULTILINE)}


def test_failover_without_min_replicas_reports_lost_events_as_a_gap_never_silently(
    start_hub: HubLauncher, sentinel_cluster: SentinelCluster,  # noqa: F811
) -> None:
    hub = start_sentinel_hub(start_hub, sentinel_cluster, min_replicas=0, workers=2)
    channel = "ha-lossy"
    # Readers 0 and 2 on one worker (frozen below), reader 1 on the other.
    readers = start_readers(hub, [channel], 3, workers=2, seconds=40)
    frozen = readers[0].worker
    try:
        with SteadyPublisher(hub, [channel], interval=0.01).running() as publisher:
            wait_until(lambda: min(len(r.events) for r in readers), lambda n: n >= 10,
                       timeout=10, what="10 events at every reader before the kill",
                       log=hub.log_text)
            cut, killed_at, old_master = lose_events_behind_a_frozen_worker(
                sentinel_cluster, publisher, frozen)
            new_master = sentinel_cluster.wait_failover(old_master, timeout=20)
            wait_until(lambda: publisher.last_all_acknowledged(AFTER_FAILOVER, killed_at),
                       bool, timeout=15,
                       what=f"{AFTER_FAILOVER} publishes in a row answered 202 after the "
                            f"failover ({statuses(publisher.results)})",
                       log=hub.log_text)
        publish_final_and_wait_for_readers(hub, [channel], readers)
    finally:
        stop_readers(readers)

    results = publisher.results
    lost = [r.data for r in cut if r.status == 202]
    assert lost, cut
    retained = retained_data(sentinel_cluster, new_master)
    assert FINAL in retained, retained  # (the bodies were read right)
    assert not set(lost) & retained, (
        "the new master has events published while replication was cut", lost)

    acknowledged = [r.data for r in results if r.status == 202] + [FINAL]
    maybe = {r.data for r in results if r.status != 202}
    problems = {number: found for number, reader in enumerate(readers)
                if (found := never_silent(reader.events, acknowledged, maybe, retained))}
    assert not problems, (statuses(results), lost, problems)
    # The frozen worker's streams cannot have had the lost events: they were told.
    for number, reader in enumerate(readers):
        if reader.worker == frozen:
            assert not set(lost) & {e.data for e in reader.events}, number
            assert any(e.type == GAP_EVENT for e in reader.events), (number, reader.events)
