"""Several gunicorn workers, one hub: Redis is the backplane (docs/protocol.md#redis).

* With ``SSE_REDIS_URL``, a publish answered by any worker reaches the
  subscribers of every worker, all in the same (publish) order, each once.
* Without it, ``gunicorn.conf.py`` refuses ``WEB_CONCURRENCY`` > 1: the master
  exits non-zero and says why (the memory backend cannot cross workers).

Which worker answers a request is the kernel's choice. /stats is per worker,
so one answer tells whether a count is split: while ``total`` subscriptions
(or publishes) exist in all, a worker reporting ``0 < n < total`` proves the
other holds the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    REPO_ROOT,
    HubLauncher,
    HubServer,
    HubStream,
)

pytestmark = pytest.mark.integration

SUBSCRIBERS = 40
PUBLISHES = 200
#: How long to keep trying to land work on both workers (a worker may still be booting).
SPREAD_SECONDS = 20.0


def split_between_workers(hub: HubServer, count: Callable[[dict[str, Any]], int],
                          total: int) -> bool:
    """True when the worker answering /stats holds some, but not all, of ``total``."""
    held = count(hub.stats())
    return 0 < held < total


def open_on_both_workers(hub: HubServer, channel: str, wanted: int) -> list[HubStream]:
    """``wanted`` open streams on ``channel``, each on a fresh connection, on both workers.

    First waits until both workers accept (the second may still be booting
    when /healthz first answers): probe streams are opened one by one until
    they are split, then closed. When the ``wanted`` streams still all land on
    one worker, more are added one at a time until one lands on the other;
    every earlier stream then sits on the first worker, so closing the
    surplus among them keeps the split.
    """
    def on(name: str) -> Callable[[dict[str, Any]], int]:
        def subscribers(stats: dict[str, Any]) -> int:
            held: int = stats["channels"].get(name, 0)
            return held
        return subscribers

    deadline = time.monotonic() + SPREAD_SECONDS
    probes = [hub.subscribe(f"{channel}-probe")]
    while not split_between_workers(hub, on(f"{channel}-probe"), len(probes)):
        assert time.monotonic() < deadline, f"one worker took every connection\n{hub.log_text()}"
        probes.append(hub.subscribe(f"{channel}-probe"))
    for probe in probes:
        probe.close()

    opened = [hub.subscribe(channel) for _ in range(wanted)]
    while not split_between_workers(hub, on(channel), len(opened)):
        assert time.monotonic() < deadline, (
            f"{len(opened)} streams opened on fresh connections all landed on one worker\n"
            f"{hub.log_text()}"
        )
        opened.append(hub.subscribe(channel))
    surplus, kept = opened[: len(opened) - wanted], opened[len(opened) - wanted :]
    for stream in surplus:
        stream.close()
    return kept


def test_two_workers_deliver_every_publish_to_every_subscriber_in_one_order(
    start_hub: HubLauncher, redis_url: str,
) -> None:
    hub = start_hub(SSE_REDIS_URL=redis_url, WEB_CONCURRENCY=2, SSE_HEARTBEAT_SECONDS=1)
    streams = open_on_both_workers(hub, "fan", SUBSCRIBERS)

    # hub.publish opens a new connection per request, so either worker may answer.
    published = [(hub.publish(f"m{n}", channel="fan"), f"m{n}") for n in range(PUBLISHES)]
    published_by_worker = split_between_workers(
        hub, lambda stats: stats["events_published"], PUBLISHES,
    )
    assert published_by_worker, "all 200 publishes were answered by the same worker"
    # A last event, so that a duplicate of any of the 200 would show up before it.
    published.append((hub.publish("end", channel="fan"), "end"))

    ids = [event_id for event_id, _ in published]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids, key=lambda i: tuple(int(part) for part in i.split("-")))
    for number, stream in enumerate(streams):
        got = stream.until_data("end", timeout=15)
        assert [(e.last_event_id, e.data) for e in got] == published, f"subscriber {number}"
        assert {e.type for e in got} == {"message"}


def test_several_workers_without_redis_are_refused_with_the_reason(
    tmp_path: Path, free_port: Callable[[], int],
) -> None:
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith("SSE_") and key not in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")
    }
    port = free_port()
    env.update(WEB_CONCURRENCY="2", SSE_BIND=f"127.0.0.1:{port}")
    # HubServer only to build the same gunicorn command line start_hub uses; not started.
    command = HubServer(app="wsgi:app", env=env, log_dir=tmp_path, name="refused",
                        port_source=free_port).command()
    master = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, text=True,
    )
    try:
        output, _ = master.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(master.pid, signal.SIGKILL)
        output, _ = master.communicate()
        pytest.fail(f"gunicorn started 2 workers with the memory backend:\n{output}")
    assert master.returncode != 0, output
    assert "refusing to run 2 workers with the memory backend" in output, output
    assert "SSE_REDIS_URL" in output, output
    assert "Worker failed to boot" in output, output  # the worker refused, the master stopped
