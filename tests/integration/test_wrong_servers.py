"""A library app on the wrong server is told what to change, from the checkout.

The app is ``tests/integration/apps/library_app.py`` (the blueprint under
``/events``, ``POST /orders`` calling ``flask_sse_hub.publish()``, a plain
``GET /healthz``), served by the ``.venv``'s gunicorn started directly, from a
temporary directory (so the repository's ``gunicorn.conf.py`` is not picked
up), bound with ``--bind``:

* plain ``gunicorn -k sync``: a stream answers 500 JSON naming the gevent
  worker at once (< 1 s), and the same worker goes on serving;
* plain ``gunicorn -k gevent -w 2`` with the memory backend: subscribing and
  the view calling ``publish()`` answer 500 JSON naming ``SSE_REDIS_URL``; other
  views still answer;
* ``gunicorn -c python:flask_sse_hub.gunicorn_config -k gthread --threads 4``:
  streams that take (nearly) all threads log ONE warning naming the gevent
  worker, not one per stream.

:class:`ProcessServer` (any command line, any working directory) is also used
by ``test_installed.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.sse_client import http_request

from .conftest import _NO_CONTROL_SOCKET, APPS_DIR, GUNICORN, HOST, STARTUP_SECONDS, HubServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Environment variables that would change the server under test.
SCRUBBED = ("PYTHONPATH", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "FLASK_APP")


def clean_env(**settings: str) -> dict[str, str]:
    """``os.environ`` without ``SSE_*``/gunicorn/PYTHONPATH variables, plus ``settings``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SSE_") and key not in SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


class ProcessServer(HubServer):
    """A :class:`HubServer` whose command line and working directory are ours.

    ``argv`` items may contain ``{port}`` (e.g. ``--bind 127.0.0.1:{port}``);
    ``SSE_BIND`` is set to the same port, as the packaged settings read it. It
    is up once ``GET /healthz`` answers 200 (``any_answer=True``: answers at
    all, for apps without that route).
    """

    def __init__(
        self, argv: Sequence[str], *, cwd: Path, env: dict[str, str], log_dir: Path, name: str,
        port_source: Callable[[], int], any_answer: bool = False,
    ) -> None:
        super().__init__(app=" ".join(argv), env=env, log_dir=log_dir, name=name,
                         port_source=port_source)
        self.argv = list(argv)
        self.cwd = cwd
        self.any_answer = any_answer

    def command(self) -> list[str]:
        return [arg.format(port=self.port) for arg in self.argv]

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the command, without waiting for it to serve (for servers that must refuse)."""
        self._runs += 1
        self.log_path = self.log_dir / f"{self.name}-{self._runs}.log"
        env = {**self.env, "SSE_BIND": f"{HOST}:{self.port}"}
        with open(self.log_path, "wb") as log:
            # A session of its own: kill() reaches the workers by process group.
            self.proc = subprocess.Popen(
                self.command(), cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._terminated_at = None
        return self.proc

    def _spawn(self) -> bool:
        proc = self.launch()
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if proc.poll() is not None or "Connection in use" in self.log_text():
                return False
            try:
                status, _, _ = http_request(HOST, self.port, "GET", "/healthz", timeout=1.0)
            except OSError:
                status = 0
            if status == 200 or (self.any_answer and status):
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def serve(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Callable[..., ProcessServer]]:
    """``serve(*gunicorn_args, **env)``: the .venv's gunicorn serving ``library_app:app``."""
    servers: list[ProcessServer] = []
    workdir = tmp_path / "cwd"  # not the checkout: no ./gunicorn.conf.py is read
    workdir.mkdir()

    def start(*args: str, **settings: str) -> ProcessServer:
        argv = [str(GUNICORN), *_NO_CONTROL_SOCKET, "--bind", f"{HOST}:{{port}}",
                "--pythonpath", str(APPS_DIR), *args, "library_app:app"]
        server = ProcessServer(argv, cwd=workdir, env=clean_env(**settings), log_dir=tmp_path,
                               name=f"gunicorn{len(servers) + 1}", port_source=free_port)
        servers.append(server)
        server.start()
        return server

    with shut_down_at_the_end(servers):
        yield start


@contextlib.contextmanager
def shut_down_at_the_end(servers: list[ProcessServer]) -> Iterator[None]:
    """Shut every server in ``servers`` down when the block ends, however it ends."""
    try:
        yield
    finally:
        for server in servers:
            server.shutdown()


def json_error(status: int, headers: dict[str, str], body: bytes) -> str:
    """The ``error`` of a 500 JSON answer (fails with the answer otherwise)."""
    assert status == 500, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:300])
    error: str = json.loads(body)["error"]
    return error


def booted_workers(server: HubServer) -> list[str]:
    return re.findall(r"Booting worker with pid: (\d+)", server.log_text())


def test_sync_worker_answers_a_stream_500_naming_the_gevent_worker_and_keeps_serving(
    serve: Callable[..., ProcessServer],
) -> None:
    server = serve("-k", "sync", "--timeout", "5")
    assert "Using worker: sync" in server.log_text()
    for attempt in range(3):
        started = time.monotonic()
        status, headers, body = server.request("GET", "/events?channel=orders", timeout=5)
        took = time.monotonic() - started
        error = json_error(status, headers, body)
        assert "gevent worker" in error, error
        assert took < 1.0, f"attempt {attempt}: the refusal took {took:.2f}s"
        # The process goes on serving: a plain view, and a publish from a view.
        assert server.request("GET", "/healthz", timeout=2)[0] == 200
    status, answer = server.post_json("/orders", {"order": 1})
    assert status == 201 and answer["event_id"], (status, answer)
    assert len(booted_workers(server)) == 1, "the worker was restarted:\n" + server.log_text()
    assert "WORKER TIMEOUT" not in server.log_text()


def test_memory_backend_in_two_gevent_workers_answers_500_naming_sse_redis_url(
    serve: Callable[..., ProcessServer],
) -> None:
    server = serve("-k", "gevent", "-w", "2")
    for _ in range(4):  # whichever worker takes the connection
        error = json_error(*server.request("GET", "/events?channel=orders", timeout=5))
        assert "SSE_REDIS_URL" in error, error
        status, headers, body = server.request(
            "POST", "/orders", json.dumps({"order": 1}).encode(),
            {"Content-Type": "application/json"}, timeout=5,
        )
        error = json_error(status, headers, body)
        assert "SSE_REDIS_URL" in error, error
        assert server.request("GET", "/healthz", timeout=2)[0] == 200


def test_streams_holding_the_gthread_threads_log_one_warning_naming_the_gevent_worker(
    serve: Callable[..., ProcessServer],
) -> None:
    threads = 4
    server = serve("-c", "python:flask_sse_hub.gunicorn_config", "-k", "gthread",
                   "--threads", str(threads))

    def warnings() -> list[str]:
        return [line for line in server.log_text().splitlines()
                if "WARNING" in line and "gevent worker" in line]

    # SSE_MAX_STREAMS defaults to 90 % of the threads here (3 of 4): the
    # first three streams are held, the next ones are told to come back later.
    held = [server.subscribe("orders", prefix="/events") for _ in range(threads - 1)]
    assert warnings() == [], "warned before the threads were nearly all taken"
    for _ in range(3):  # the 4th stream, and two more after it
        stream = server.open_stream("/events?channel=orders")
        assert stream.status == 200, stream.status
        stream.read_until_closed(timeout=5)  # the worker is full: retry later, the end
        stream.close()
    found = warnings()
    assert len(found) == 1, "\n".join(found) or server.log_text()
    assert f"{threads} threads" in found[0], found[0]
    # The held streams still work, and the free thread still serves a publish.
    status, answer = server.post_json("/orders", {"order": 7})
    assert status == 201, (status, answer)
    for stream in held:
        assert stream.next_event(timeout=5).last_event_id == answer["event_id"]
