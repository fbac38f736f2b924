"""The README's shell commands, run as written against real processes (from the checkout).

Blocks come from ``tests/unit/test_readme.py``'s extractor (which also checks
that every README block is claimed by some test):

* "checkout commands": ``make test`` exists (``make -n``), ``make run`` serves
  the hub (``-o .venv/.installed``: the virtualenv the tests run in is not
  remade), and then the ``curl`` block, with the hub's port for 8000: the
  subscriber receives the event the publish answered with;
* "Redis workers": the ``flask-sse-hub`` line with our own redis-server
  for the README's address: four workers, a publish reaches streams on all of
  them.

The "From PyPI" block runs in ``test_installed.py``.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.sse_parser import Event, EventStreamParser
from tests.unit.test_readme import readme_block

from .conftest import HOST, HubServer, wait_until
from .test_wrong_servers import ProcessServer, clean_env, shut_down_at_the_end

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
README_HOST = "127.0.0.1:8000"


def commands(text: str) -> list[list[str]]:
    """The block's commands, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line, comments=True) for line in joined.splitlines()
            if shlex.split(line, comments=True)]


@pytest.fixture
def serve(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Callable[..., ProcessServer]]:
    """``serve(*argv, **env)`` in the checkout, the .venv's bin first on PATH."""
    if not (VENV_BIN / "gunicorn").exists():
        pytest.skip(f"{VENV_BIN / 'gunicorn'} is missing: `make run` would have to create it")
    servers: list[ProcessServer] = []

    def start(*argv: str, **settings: str) -> ProcessServer:
        env = clean_env(**settings)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        server = ProcessServer(argv, cwd=REPO_ROOT, env=env, log_dir=tmp_path,
                               name=f"readme{len(servers) + 1}", port_source=free_port)
        servers.append(server)
        server.start()
        return server

    with shut_down_at_the_end(servers):
        yield start


def read_events_until(
    proc: subprocess.Popen[bytes], stop: Callable[[Event], bool], timeout: float,
) -> list[Event]:
    """Parse ``proc``'s stdout as an event stream until an event ``stop`` accepts."""
    assert proc.stdout is not None
    parser, events = EventStreamParser(), list[Event]()
    deadline = time.monotonic() + timeout
    while not any(stop(event) for event in events):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no such event within {timeout}s; got {events}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                pytest.fail(f"the subscriber's output ended; got {events}")
            events += parser.feed(data)
    return events


def run_curl_block(hub: HubServer) -> None:
    subscribe, publish = (
        [arg.replace(README_HOST, f"{HOST}:{hub.port}") for arg in command]
        for command in commands(readme_block("curl subscribe and publish").text)
    )
    assert subscribe[:2] == ["curl", "-N"] and "/stream?channel=orders" in subscribe[-1]
    assert publish[:3] == ["curl", "-X", "POST"] and publish[3].endswith("/publish")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    subscriber = subprocess.Popen(subscribe, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        hub.wait_subscribers("orders", 1)
        published = subprocess.run(publish, capture_output=True, timeout=10, check=True)
        event_id = json.loads(published.stdout)["id"]
        events = read_events_until(subscriber, lambda e: e.last_event_id == event_id, 10)
        assert (events[-1].type, json.loads(events[-1].data)) == (
            "order-created", {"order": 42}), events
    finally:
        subscriber.kill()
        subscriber.wait(timeout=10)


def test_make_run_then_the_curl_commands(serve: Callable[..., ProcessServer]) -> None:
    assert commands(readme_block("checkout commands").text) == [["make", "run"], ["make", "test"]]
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry = subprocess.run([make, "-n", "test"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=30, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "pytest" in dry.stdout, dry.stdout
    hub = serve(make, "-o", ".venv/.installed", "run")
    assert "Using worker: gevent" in hub.log_text()
    run_curl_block(hub)


def test_the_redis_command_serves_four_workers(
    serve: Callable[..., ProcessServer], tmp_path: Path, free_port: Callable[[], int],
) -> None:
    pytest.importorskip("redis")
    from tests.integration.redis.conftest import REDIS_SERVER, RedisServer

    install, run = commands(readme_block("Redis workers").text)
    assert install == ["pip", "install", "flask-sse-hub[redis]"], install
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    redis = RedisServer(free_port(), tmp_path)
    redis.start()
    try:
        settings = dict(word.split("=", 1) for word in run if re.match(r"[A-Z_]+=", word))
        assert [word for word in run if "=" not in word] == ["flask-sse-hub"], run
        workers = int(settings["WEB_CONCURRENCY"])
        readme_url = settings["SSE_REDIS_URL"]
        ours = re.sub(r"//[^/]+/", f"//127.0.0.1:{redis.port}/", readme_url)
        line = readme_block("Redis workers").text.splitlines()[1].replace(readme_url, ours)
        hub = serve("sh", "-c", line)
        wait_until(lambda: len(re.findall("Booting worker", hub.log_text())), workers.__eq__,
                   timeout=20, what=f"{workers} workers booted", log=hub.log_text)
        streams = [hub.subscribe("orders") for _ in range(2 * workers)]
        event_id = hub.publish({"order": 42}, channel="orders")
        for stream in streams:
            assert stream.next_event(timeout=10).last_event_id == event_id
        assert hub.get_json("/healthz")["backend"] == "redis"
    finally:
        redis.kill()
