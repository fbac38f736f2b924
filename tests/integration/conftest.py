"""Fixtures that run the real hub: ``gunicorn`` with the repository's ``gunicorn.conf.py``.

``start_hub(app="wsgi:app", **SSE_settings)`` starts a gunicorn master (gevent
worker) on a free 127.0.0.1 port with ``os.environ`` plus the given settings,
waits until ``GET /healthz`` answers, and returns a :class:`HubServer`: HTTP
helpers, SSE streams (:class:`HubStream`), bounded polling of ``/stats``,
``terminate()``/``wait_exit()``/``stop()`` (SIGTERM, timed) and ``restart()``
on the same port. Its log goes to a file under the test's temporary directory
and is shown when the server fails to come up or a poll times out. Whatever a
fixture started is killed by process group id at teardown.

``start_hub`` is per test; ``start_hub_for_module`` keeps servers for a whole
module (for tables of requests against one configuration).

Nothing here sleeps to wait for an outcome: waits poll a condition against a
deadline and fail with the last value seen.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.sse_client import SSEClient, http_request
from tests.support.sse_parser import Event

REPO_ROOT = Path(__file__).resolve().parents[2]
APPS_DIR = Path(__file__).resolve().parent / "apps"
GUNICORN = Path(sys.executable).parent / "gunicorn"
GUNICORN_CONF = REPO_ROOT / "gunicorn.conf.py"
HOST = "127.0.0.1"
#: Ids are 1-64 characters from A-Z a-z 0-9 . _ - (docs/protocol.md#id-shape).
EVENT_ID_RE = re.compile(r"[A-Za-z0-9._\-]{1,64}")
GAP_EVENT = "sse-hub-gap"
#: How long a server may take to answer /healthz after its start.
STARTUP_SECONDS = 20.0
#: Environment variables of the calling shell that would change the server under test.
_SCRUBBED_ENV = ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "FLASK_APP")

T = TypeVar("T")


def _gunicorn_has_control_socket() -> bool:
    # gunicorn >= 25 opens a control socket at a fixed path in $HOME; several
    # servers started at once (tests, a benchmark) must not share it.
    try:
        from gunicorn.config import make_settings  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - gunicorn is a dependency
        return False
    return "control_socket_disable" in make_settings()


_NO_CONTROL_SOCKET = ["--no-control-socket"] if _gunicorn_has_control_socket() else []


def wait_until(
    probe: Callable[[], T], condition: Callable[[T], bool], *, timeout: float, what: str,
    interval: float = 0.05, log: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until ``condition(value)`` holds; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if condition(value):
            return value
        if time.monotonic() >= deadline:
            details = f"\n--- server log ---\n{log()}" if log is not None else ""
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {what}; last value: "
                        f"{value!r}{details}")
        time.sleep(interval)


class HubStream(SSEClient):
    """An :class:`SSEClient` with the few reading patterns the hub tests repeat."""

    def until(self, stop: Callable[[Event], bool], timeout: float = 10.0) -> list[Event]:
        """Every event up to and including the first one ``stop`` accepts."""
        deadline = time.monotonic() + timeout
        got: list[Event] = []
        while True:
            try:
                event = self.next_event(max(deadline - time.monotonic(), 0.0))
            except (TimeoutError, EOFError) as exc:
                raise type(exc)(f"after {len(got)} events ({_tail(got)}): {exc}") from None
            got.append(event)
            if stop(event):
                return got

    def until_data(self, data: str, timeout: float = 10.0) -> list[Event]:
        """Every event up to and including the first whose data is ``data``."""
        return self.until(lambda event: event.data == data, timeout)

    def messages(self, count: int, timeout: float = 10.0) -> list[str]:
        """The data of the next ``count`` ordinary events (the hub's own ones skipped)."""
        got: list[str] = []
        while len(got) < count:
            event = self.next_event(timeout)
            if event.type == "message":
                got.append(event.data)
        return got

    def until_id(self, event_id: str, timeout: float = 10.0) -> list[Event]:
        """Every event up to and including the one with id ``event_id``."""
        return self.until(lambda event: event.last_event_id == event_id, timeout)


def _tail(events: list[Event]) -> str:
    shown = ", ".join(f"{e.type}#{e.last_event_id}={e.data[:20]!r}" for e in events[-3:])
    return f"last: {shown}" if events else "none"


class HubServer:
    """One gunicorn master we started, its log, and helpers to talk to it."""

    def __init__(
        self, *, app: str, env: dict[str, str], log_dir: Path, name: str,
        pythonpath: Path | None = None, port_source: Callable[[], int],
    ) -> None:
        self.app = app
        self.env = env
        self.pythonpath = pythonpath
        self.log_dir = log_dir
        self.name = name
        self._port_source = port_source
        self.port = port_source()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._runs = 0
        self._terminated_at: float | None = None
        self._streams: list[SSEClient] = []

    # -- lifecycle ------------------------------------------------------------

    @property
    def graceful_timeout(self) -> float:
        """What gunicorn.conf.py reads from SSE_GRACEFUL_TIMEOUT (default 10)."""
        return float(self.env.get("SSE_GRACEFUL_TIMEOUT", "10"))

    def command(self) -> list[str]:
        extra = ["--pythonpath", str(self.pythonpath)] if self.pythonpath else []
        return [str(GUNICORN), "--config", str(GUNICORN_CONF), *_NO_CONTROL_SOCKET, *extra,
                self.app]

    def start(self, *, new_port_on_conflict: bool = True) -> HubServer:
        """Start gunicorn and wait until ``GET /healthz`` answers 200."""
        for _attempt in range(3):
            if self._spawn():
                return self
            if not (new_port_on_conflict and "Connection in use" in self.log_text()):
                break
            self.kill()  # someone else took the port between probe and bind: another one
            self.port = self._port_source()
        pytest.fail(
            f"gunicorn {self.app} did not come up on {HOST}:{self.port} within "
            f"{STARTUP_SECONDS:.0f}s (exit status {self.proc and self.proc.poll()}).\n"
            f"command: {' '.join(self.command())}\n--- server log ---\n{self.log_text()}"
        )

    def _spawn(self) -> bool:
        self._runs += 1
        self.log_path = self.log_dir / f"{self.name}-{self._runs}.log"
        env = {**self.env, "SSE_BIND": f"{HOST}:{self.port}"}
        with open(self.log_path, "wb") as log:
            # A session of its own: the group id is the master's pid, and
            # kill() reaches the worker too even if the master is gone.
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._terminated_at = None
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None or "Connection in use" in self.log_text():
                return False
            try:
                status, _, _ = http_request(HOST, self.port, "GET", "/healthz", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                return True
            time.sleep(0.05)
        return False

    def worker_pid(self) -> int:
        """The pid of the server's single gunicorn worker (the master's one child)."""
        assert self.proc is not None
        master = self.proc.pid

        def children() -> list[int]:
            found: list[int] = []
            for task in Path(f"/proc/{master}/task").glob("*"):
                with contextlib.suppress(OSError):
                    found += [int(pid) for pid in (task / "children").read_text().split()]
            return found

        pids = wait_until(children, lambda found: len(found) == 1, timeout=10,
                          what="one gunicorn worker", log=self.log_text)
        return pids[0]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM to the master (gunicorn's graceful shutdown) and note when."""
        assert self.proc is not None and self.running, "server is not running"
        self._terminated_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> float:
        """Wait for the master to exit after :meth:`terminate`; return seconds since SIGTERM."""
        assert self.proc is not None and self._terminated_at is not None
        try:
            self.proc.wait(timeout=max(timeout - (time.monotonic() - self._terminated_at), 0.1))
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"gunicorn master did not exit within {timeout:.1f}s of SIGTERM\n"
                f"--- server log ---\n{self.log_text()}"
            )
        return time.monotonic() - self._terminated_at

    def stop(self, timeout: float | None = None) -> float:
        """SIGTERM, wait for the master to exit; return how long it took (seconds)."""
        self.terminate()
        return self.wait_exit(self.graceful_timeout + 5 if timeout is None else timeout)

    def restart(self) -> HubServer:
        """Stop (SIGTERM) and start again on the same port: a new run of the hub."""
        self.close_streams()
        if self.running:
            self.stop()
        return self.start(new_port_on_conflict=False)

    def kill(self) -> None:
        """Kill the master and its workers (the process group we created); reap the master."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def shutdown(self) -> None:
        """Teardown: close our streams and kill the whole group.

        No graceful SIGTERM here: it costs a second or two per server, and
        the graceful shutdown has a test of its own.
        """
        self.close_streams()
        self.kill()

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-20000:]

    # -- HTTP -----------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        return http_request(HOST, self.port, method, path, body=body, headers=headers,
                            timeout=timeout)

    def get_json(self, path: str) -> Any:
        status, headers, body = self.request("GET", path)
        assert status == 200, f"GET {path} -> {status}: {body[:300]!r}"
        assert headers.get("content-type", "").startswith("application/json"), headers
        return json.loads(body)

    def post_json(
        self, path: str, payload: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """POST ``payload`` as JSON; return the status and the decoded JSON answer."""
        status, _, body = self.request(
            "POST", path, json.dumps(payload).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )
        return status, json.loads(body) if body else None

    def publish(self, data: Any, *, channel: str = "default", event: str | None = None,
                **fields: Any) -> str:
        """``POST /publish`` one event; assert 202 and return its id."""
        item: dict[str, Any] = {"channel": channel, "data": data, **fields}
        if event is not None:
            item["event"] = event
        status, answer = self.post_json("/publish", item)
        assert status == 202, f"publish {item!r} -> {status} {answer!r}"
        event_id: str = answer["id"]
        return event_id

    def publish_batch(self, items: list[dict[str, Any]]) -> list[str]:
        """``POST /publish`` a JSON array; assert 202 and return the ids."""
        status, answer = self.post_json("/publish", items)
        assert status == 202, f"batch publish -> {status} {answer!r}"
        ids: list[str] = answer["ids"]
        return ids

    @contextlib.contextmanager
    def publisher(self) -> Iterator[Callable[[dict[str, Any]], str]]:
        """A keep-alive connection for many quick publishes: ``publish(item) -> id``."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)

        def publish(item: dict[str, Any]) -> str:
            conn.request("POST", "/publish", json.dumps(item).encode(),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 202, f"publish {item!r} -> {response.status} {body!r}"
            event_id: str = json.loads(body)["id"]
            return event_id

        try:
            yield publish
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.get_json("/stats")
        return stats

    def wait_for_stats(
        self, condition: Callable[[dict[str, Any]], bool], *, what: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Poll ``/stats`` until ``condition`` holds; fail with the last answer at the deadline."""
        return wait_until(self.stats, condition, timeout=timeout, what=what, log=self.log_text)

    def channel_subscribers(self, channel: str) -> int:
        count: int = self.stats()["channels"].get(channel, 0)
        return count

    def wait_subscribers(self, channel: str, count: int, timeout: float = 10.0) -> None:
        """Wait until ``channel`` has exactly ``count`` registered subscribers."""
        self.wait_for_stats(lambda s: s["channels"].get(channel, 0) == count,
                            what=f"{count} subscribers on channel {channel!r}", timeout=timeout)

    # -- streams --------------------------------------------------------------

    def open_stream(
        self, path: str = "/stream", headers: dict[str, str] | None = None,
        timeout: float = 10.0, *, keep_body: bool = True,
    ) -> HubStream:
        """Send ``GET path`` and read the response head; the stream is closed at teardown."""
        client = HubStream(HOST, self.port, path, headers, timeout, keep_body=keep_body)
        self._streams.append(client)
        client.connect()
        return client

    def subscribe(
        self, *channels: str, headers: dict[str, str] | None = None, query: str = "",
        prefix: str = "/stream", timeout: float = 10.0,
    ) -> HubStream:
        """Open a stream on ``channels``, assert 200, and read its first chunk (the preamble).

        Once the preamble has arrived the subscription is registered, so events
        published from now on reach it.
        """
        params = "&".join(f"channel={c}" for c in channels)
        if query:
            params = f"{params}&{query}" if params else query
        stream = self.open_stream(f"{prefix}?{params}" if params else prefix, headers, timeout)
        assert stream.status == 200, f"subscribe {stream.path} -> {stream.status}: {stream.body!r}"
        stream.wait_comment(timeout=timeout)  # the preamble's comment
        return stream

    def close_streams(self) -> None:
        for client in self._streams:
            client.close()
        self._streams.clear()


class HubLauncher:
    """Starts :class:`HubServer` s for one fixture scope and kills them all at its end."""

    def __init__(self, log_dir: Path, port_source: Callable[[], int]) -> None:
        self.log_dir = log_dir
        self.port_source = port_source
        self.servers: list[HubServer] = []

    def __call__(
        self, app: str = "wsgi:app", *, pythonpath: Path | None = None, **settings: object
    ) -> HubServer:
        """Start ``gunicorn <app>`` with ``settings`` (``SSE_*``, ``WEB_CONCURRENCY``...) set."""
        env = {
            key: value for key, value in os.environ.items()
            if not key.startswith("SSE_") and key not in _SCRUBBED_ENV
        }
        env["PYTHONUNBUFFERED"] = "1"
        env.update({key: str(value) for key, value in settings.items()})
        server = HubServer(
            app=app, env=env, pythonpath=pythonpath, log_dir=self.log_dir,
            name=f"gunicorn{len(self.servers) + 1}", port_source=self.port_source,
        )
        self.servers.append(server)
        return server.start()

    def shutdown(self) -> None:
        for server in self.servers:
            server.shutdown()


@pytest.fixture
def start_hub(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[HubLauncher]:
    """``start_hub(app="wsgi:app", pythonpath=None, **settings) -> HubServer``, for one test."""
    launcher = HubLauncher(tmp_path, free_port)
    try:
        yield launcher
    finally:
        launcher.shutdown()


@pytest.fixture(scope="module")
def start_hub_for_module(
    tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]
) -> Iterator[HubLauncher]:
    """Like ``start_hub``, but the servers live until the end of the test module."""
    launcher = HubLauncher(tmp_path_factory.mktemp("gunicorn"), free_port)
    try:
        yield launcher
    finally:
        launcher.shutdown()
