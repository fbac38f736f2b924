"""Node's ``eventsource`` npm package, run as a subprocess the tests read line by line.

``tests/clients/node`` pins the package (``package-lock.json``); ``listen.mjs``
opens ``new EventSource(url)`` with it and prints one JSON object per line for
every event, ``open`` and ``error`` it sees. The session fixture ``node``
finds ``node`` and runs ``npm ci`` there when ``node_modules`` is missing or
older than the lock file (``make test`` does the same first; both use the
stamp ``node_modules/.installed``). Only a machine without ``node`` skips
these tests; a failing ``npm ci`` fails them.

``listen_node(hub, query, types=())`` starts ``listen.mjs`` against
``hub``'s ``/stream?query`` and returns a :class:`NodeEventSource`; every
process it started is stopped at teardown (stdin closed, then SIGTERM, then
SIGKILL, each by its own pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import HOST, REPO_ROOT, HubServer, wait_until

NODE_DIR = REPO_ROOT / "tests" / "clients" / "node"
LISTEN_SCRIPT = NODE_DIR / "listen.mjs"
#: Written after a successful ``npm ci`` (by this fixture or by ``make test``).
NPM_STAMP = NODE_DIR / "node_modules" / ".installed"
#: ``eventsource`` needs a global ``fetch``, ``EventTarget`` and ``MessageEvent``.
MIN_NODE_MAJOR = 18
NPM_CI_SECONDS = 300.0
#: How long a test waits for something the client should see (a deadline, not a pause).
WAIT_SECONDS = 10.0

#: The tricky events both clients must receive exactly: (published data, the
#: data the client must show). Per the WHATWG parser, CRLF and lone CR inside
#: data come out as LF (the hub writes one ``data:`` line per line).
TRICKY: list[tuple[Any, str]] = [
    ("line one\nline two\nline three", "line one\nline two\nline three"),
    ("crlf one\r\ncrlf two\r\n", "crlf one\ncrlf two\n"),
    ("cr one\rcr two", "cr one\ncr two"),
    ("mixed\r\nall\rthree\nkinds", "mixed\nall\nthree\nkinds"),
    ("   three leading spaces", "   three leading spaces"),
    (" \n  both lines indented", " \n  both lines indented"),
    ("data: looks like a field\n: and a comment", "data: looks like a field\n: and a comment"),
    ("", ""),
    ("\n", "\n"),
    ("héllo — 日本語 🎉", "héllo — 日本語 🎉"),
    ({"a": 1, "b": [True, None], "s": "é\n"}, '{"a":1,"b":[true,null],"s":"é\\n"}'),
]


def _node_modules_stale() -> bool:
    if not NPM_STAMP.exists() or not (NODE_DIR / "node_modules" / "eventsource").is_dir():
        return True
    installed = NPM_STAMP.stat().st_mtime
    return any((NODE_DIR / name).stat().st_mtime > installed
               for name in ("package.json", "package-lock.json"))


def _npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"node is installed but npm is not, and {NODE_DIR}/node_modules is missing "
                    "or stale: install npm (make test does, as root) or run `npm ci` there")
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=NODE_DIR,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=NPM_CI_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npm ci` in {NODE_DIR} took over {NPM_CI_SECONDS:.0f}s")
    if result.returncode != 0:
        pytest.fail(f"`npm ci` in {NODE_DIR} failed ({result.returncode}):\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    NPM_STAMP.touch()


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable, with ``tests/clients/node/node_modules`` installed."""
    found = shutil.which("node") or shutil.which("nodejs")
    if found is None:
        pytest.skip("node is not installed (make test apt-installs nodejs and npm when run "
                    "as root): the Node eventsource client tests need it")
    version = subprocess.run([found, "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(f"{found} is Node {version or '(unknown version)'}; the eventsource "
                    f"package needs Node >= {MIN_NODE_MAJOR}")
    if _node_modules_stale():
        _npm_ci()
    return found


class NodeEventSource:
    """One ``node listen.mjs URL TYPE...`` process and the JSON lines it printed so far.

    ``lines`` are dicts with ``kind`` (``event``, ``open``, ``error``,
    ``closed``) and, for events, ``type``, ``data`` and ``lastEventId``; a
    reader thread appends them as they arrive, each with ``arrived`` (our
    ``time.monotonic()`` when it was read).
    """

    def __init__(self, node: str, url: str, types: tuple[str, ...], stderr_path: Path,
                 hub: HubServer) -> None:
        self.url = url
        self.hub = hub
        self.stderr_path = stderr_path
        self._lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [node, str(LISTEN_SCRIPT), url, *types], cwd=NODE_DIR,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, name=f"node-{self.proc.pid}",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line: dict[str, Any] = json.loads(raw)
            except ValueError:
                line = {"kind": "unparsable", "raw": raw.decode(errors="replace")}
            line["arrived"] = time.monotonic()
            with self._lock:
                self._lines.append(line)

    # -- what it saw -----------------------------------------------------------

    def lines(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(line) for line in self._lines if kind is None or line["kind"] == kind]

    def events(self) -> list[dict[str, str]]:
        """Every event so far as ``{"type", "data", "lastEventId"}``, in arrival order."""
        return [{key: line[key] for key in ("type", "data", "lastEventId")}
                for line in self.lines("event")]

    def count(self, kind: str) -> int:
        return len(self.lines(kind))

    def describe(self) -> str:
        shown = "\n".join(json.dumps({k: v for k, v in line.items() if k != "arrived"})
                          for line in self.lines()[-30:])
        stderr = self.stderr_path.read_text(errors="replace")[-3000:]
        return (f"--- node {self.url} (exit {self.proc.poll()}), last lines ---\n{shown}\n"
                f"--- node stderr ---\n{stderr}\n--- hub log ---\n{self.hub.log_text()[-5000:]}")

    # -- waiting ---------------------------------------------------------------

    def wait_lines(self, condition: Callable[[list[dict[str, Any]]], bool], *, what: str,
                   timeout: float = WAIT_SECONDS) -> list[dict[str, Any]]:
        """Wait until ``condition(every line so far)`` holds; fail with the output if not."""
        return wait_until(self.lines, condition, timeout=timeout, what=what, log=self.describe)

    def wait_count(self, kind: str, count: int, *, timeout: float = WAIT_SECONDS) -> None:
        self.wait_lines(lambda lines: sum(line["kind"] == kind for line in lines) >= count,
                        what=f"{count} {kind!r} lines from node", timeout=timeout)

    def wait_events(self, count: int, *, timeout: float = WAIT_SECONDS) -> list[dict[str, str]]:
        """Wait until at least ``count`` events arrived; return all of them."""
        self.wait_count("event", count, timeout=timeout)
        return self.events()

    # -- stopping --------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> int:
        """Close its stdin (it exits by itself), then SIGTERM, then SIGKILL; return the status."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)

    def finish(self) -> None:
        """Teardown: stop it and collect what it printed last."""
        self.close()
        self._reader.join(timeout=5)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def listen_node(node: str, tmp_path: Path) -> Iterator[Callable[..., NodeEventSource]]:
    """``listen_node(hub, query, types=()) -> NodeEventSource``; waits for its first ``open``."""
    started: list[NodeEventSource] = []

    def listen(hub: HubServer, query: str, types: tuple[str, ...] = (), *,
               wait_open: bool = True) -> NodeEventSource:
        client = NodeEventSource(
            node, f"http://{HOST}:{hub.port}/stream?{query}", types,
            tmp_path / f"node{len(started) + 1}.stderr", hub,
        )
        started.append(client)
        if wait_open:
            client.wait_count("open", 1)
        return client

    try:
        yield listen
    finally:
        for client in started:
            client.finish()
