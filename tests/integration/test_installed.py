"""``pip install flask-sse-hub`` works on its own: a wheel in a fresh virtualenv.

Once per session, a wheel is built from a copy of the checkout (``pip wheel
--no-deps``: a build in the checkout itself would leave ``build/`` there) and
installed with its dependencies into a new virtualenv under a temporary
directory (pip's cache is reused). About 35 s with a warm pip cache, most of
it installing gevent & co.; each scenario after that takes a few seconds.

Everything then runs from another temporary directory, with ``PYTHONPATH``
unset, so nothing of the checkout can be imported:

* ``flask-sse-hub`` and ``python -m flask_sse_hub``: ``/healthz``, the demo
  page and its static files, two concurrent streams that both receive a
  publish (the gevent worker; a sync worker would refuse them), exit within
  3 s of SIGTERM with the streams open;
* a library app under ``gunicorn -c python:flask_sse_hub.gunicorn_config``: the
  same, its publish from a view; ``-w 2`` (or ``WEB_CONCURRENCY=2``) with the
  memory backend refuses to start, naming ``SSE_REDIS_URL``; under ``-k gthread``
  SIGTERM ends the streams at once;
* the README's "From PyPI" commands as written, serving the README's library
  example as ``yourapp.py``;
* the wheel's contents: the gunicorn settings, ``__main__``, templates, static
  files, LICENSE, the console script, ``__version__``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import EVENT_ID_RE, HubServer, HubStream
from .test_wrong_servers import ProcessServer, clean_env, shut_down_at_the_end

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: What a SIGTERM with streams open may take, master exit included.
EXIT_SECONDS = 3.0
#: What the copy of the checkout the wheel is built from leaves out.
NOT_BUILT_FROM = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".mypy_cache", ".ruff_cache", ".hypothesis", "node_modules", "bench", ".ci",
)

#: A library app, as a pip user writes it (the blueprint, a view calling publish()).
LIBRARY_APP = '''
from flask import Flask
from flask_sse_hub import publish, sse

app = Flask(__name__)
app.register_blueprint(sse, url_prefix="/events")


@app.post("/orders")
def create_order():
    return {"event_id": publish({"order": 42}, event="order-created", channel="orders")}, 201


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
'''


@dataclass
class Installed:
    """The wheel and the virtualenv it was installed into."""

    wheel: Path
    venv: Path
    workdir: Path  # not the checkout; PYTHONPATH unset
    seconds: float  # how long building and installing took

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **settings: str) -> dict[str, str]:
        env = clean_env(**settings)
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def python(self, code: str) -> str:
        done = subprocess.run(
            [str(self.bin / "python"), "-c", code], cwd=self.workdir, env=self.env(),
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], what: str) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}): {shlex.join(argv)}\n"
                    f"{done.stdout[-5000:]}\n{done.stderr[-5000:]}")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    started = time.monotonic()
    root = tmp_path_factory.mktemp("installed")
    source, dist, venv, workdir = (root / name for name in ("src", "dist", "venv", "cwd"))
    shutil.copytree(REPO_ROOT, source, ignore=NOT_BUILT_FROM)
    workdir.mkdir()
    env = clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("VIRTUAL_ENV", None)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
         cwd=root, env=env, what="building the wheel")
    (wheel,) = dist.glob("flask_sse_hub-*.whl")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root, env=env, what="python -m venv")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
         cwd=workdir, env=env, what="installing the wheel")
    result = Installed(wheel=wheel, venv=venv, workdir=workdir,
                       seconds=time.monotonic() - started)
    where = result.python("import flask_sse_hub; print(flask_sse_hub.__file__)")
    assert Path(where).is_relative_to(venv), f"flask_sse_hub imported from {where}, not the venv"
    return result


@pytest.fixture
def serve(
    installed: Installed, tmp_path: Path, free_port: Callable[[], int],
) -> Iterator[Callable[..., ProcessServer]]:
    """``serve(*argv, **env)``: start ``argv`` (venv's bin first on PATH) in the work dir."""
    servers: list[ProcessServer] = []

    def start(
        *argv: str, wait: bool = True, any_answer: bool = False, **settings: str,
    ) -> ProcessServer:
        server = ProcessServer(
            argv, cwd=installed.workdir, env=installed.env(**settings), log_dir=tmp_path,
            name=f"{Path(argv[0]).name}{len(servers) + 1}", port_source=free_port,
            any_answer=any_answer,
        )
        servers.append(server)
        if wait:
            server.start()
        else:
            server.launch()
        return server

    with shut_down_at_the_end(servers):
        yield start


def wait_exit_after_sigterm(server: HubServer, *streams: HubStream) -> float:
    """SIGTERM the master; assert the streams end and it exits within EXIT_SECONDS."""
    server.terminate()
    for stream in streams:
        stream.read_until_closed(timeout=EXIT_SECONDS)
    took = server.wait_exit(EXIT_SECONDS)
    assert took <= EXIT_SECONDS
    print(f"{server.name}: exited {took:.2f}s after SIGTERM with {len(streams)} streams open")
    return took


def two_streams_and_a_publish(
    server: HubServer, publish: Callable[[], str], *, prefix: str,
) -> list[HubStream]:
    """Two streams open at once, both receive the event ``publish()`` returns the id of."""
    first = server.subscribe("orders", prefix=prefix)
    second = server.subscribe("orders", prefix=prefix)  # a sync worker would block here
    event_id = publish()
    assert EVENT_ID_RE.fullmatch(event_id), event_id
    for stream in (first, second):
        event = stream.next_event(timeout=5)
        assert event.last_event_id == event_id
        assert json.loads(event.data) == {"order": 42}
    return [first, second]


def standalone_publish(server: HubServer) -> Callable[[], str]:
    return lambda: server.publish({"order": 42}, channel="orders")


def view_publish(server: HubServer) -> Callable[[], str]:
    def publish() -> str:
        status, answer = server.post_json("/orders", {})
        assert status == 201, (status, answer)
        event_id: str = answer["event_id"]
        return event_id
    return publish


@pytest.mark.parametrize("command", [["flask-sse-hub"], ["python", "-m", "flask_sse_hub"]],
                         ids=["console-script", "python-m"])
def test_standalone_hub_from_the_wheel(
    serve: Callable[..., ProcessServer], installed: Installed, command: list[str],
) -> None:
    program = str(installed.bin / command[0])
    server = serve(program, *command[1:])
    assert "Using worker: gevent" in server.log_text(), server.log_text()
    assert server.get_json("/healthz")["status"] == "ok"
    status, _, page = server.request("GET", "/")
    assert status == 200 and b"<html" in page.lower(), (status, page[:200])
    for asset in re.findall(rb'(?:src|href)="(/static/[^"]+)"', page):
        assert server.request("GET", asset.decode())[0] == 200, asset
    streams = two_streams_and_a_publish(server, standalone_publish(server), prefix="/stream")
    wait_exit_after_sigterm(server, *streams)


def test_library_app_under_the_packaged_gunicorn_config(
    serve: Callable[..., ProcessServer], installed: Installed,
) -> None:
    (installed.workdir / "app.py").write_text(LIBRARY_APP)
    server = serve(str(installed.bin / "gunicorn"), "-c", "python:flask_sse_hub.gunicorn_config",
                   "app:app")
    assert "Using worker: gevent" in server.log_text(), server.log_text()
    streams = two_streams_and_a_publish(server, view_publish(server), prefix="/events")
    wait_exit_after_sigterm(server, *streams)


@pytest.mark.parametrize("workers", [("-w", "2"), ("WEB_CONCURRENCY", "2")],
                         ids=["-w 2", "WEB_CONCURRENCY=2"])
def test_two_workers_with_the_memory_backend_refuse_to_start(
    serve: Callable[..., ProcessServer], installed: Installed, workers: tuple[str, str],
) -> None:
    (installed.workdir / "app.py").write_text(LIBRARY_APP)
    option, env = (list(workers), {}) if workers[0] == "-w" else ([], dict([workers]))
    started = time.monotonic()
    server = serve(str(installed.bin / "gunicorn"), "-c", "python:flask_sse_hub.gunicorn_config",
                   *option, "app:app", wait=False, **env)
    assert server.proc is not None
    try:
        code = server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("two memory-backend workers were not refused within 15 s:\n"
                    + server.log_text())
    took = time.monotonic() - started
    assert code != 0, server.log_text()
    refusals = [line for line in server.log_text().splitlines()
                if "refus" in line and "memory backend" in line and "SSE_REDIS_URL" in line]
    assert refusals, server.log_text()
    assert took < 10, f"the refusal took {took:.1f}s"


def test_library_app_under_gthread_ends_its_streams_at_once_on_sigterm(
    serve: Callable[..., ProcessServer], installed: Installed,
) -> None:
    (installed.workdir / "app.py").write_text(LIBRARY_APP)
    server = serve(str(installed.bin / "gunicorn"), "-c", "python:flask_sse_hub.gunicorn_config",
                   "-k", "gthread", "--threads", "8", "app:app")
    assert "Using worker: gthread" in server.log_text(), server.log_text()
    streams = two_streams_and_a_publish(server, view_publish(server), prefix="/events")
    wait_exit_after_sigterm(server, *streams)


def readme_block_after(marker: str) -> str:
    """The first fenced block after the line ``marker`` in README.md."""
    text = (REPO_ROOT / "README.md").read_text()
    found = re.search(rf"^{re.escape(marker)}\n+```(\w*)\n(.*?)^```", text, re.M | re.S)
    assert found, f"README.md has no code block after {marker!r}"
    return found.group(2)


def readme_library_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    found = re.search(r"^## Use it as a library\n+```python\n(.*?)^```", text, re.M | re.S)
    assert found, "README.md has no ```python block under 'Use it as a library'"
    return found.group(1)


def test_readme_from_pypi_commands_run_as_written(
    serve: Callable[..., ProcessServer], installed: Installed,
) -> None:
    lines = [shlex.split(line, comments=True)
             for line in readme_block_after("From PyPI:").splitlines() if line.strip()]
    assert lines[0] == ["pip", "install", "flask-sse-hub"], lines[0]  # what the fixture did
    assert len(lines) == 3, lines
    hub = serve(*lines[1])
    assert hub.get_json("/healthz")["status"] == "ok"
    streams = two_streams_and_a_publish(hub, standalone_publish(hub), prefix="/stream")
    wait_exit_after_sigterm(hub, *streams)

    assert lines[2][-1] == "yourapp:app", lines[2]
    (installed.workdir / "yourapp.py").write_text(readme_library_example())
    app = serve(*lines[2], any_answer=True)  # the example has no /healthz
    streams = two_streams_and_a_publish(app, view_publish(app), prefix="/stream")
    status, _, body = app.request("GET", "/stream?channel=admin-room")
    assert status == 403, (status, body)
    wait_exit_after_sigterm(app, *streams)


def test_the_wheel_holds_what_a_pip_user_needs(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in ("flask_sse_hub/gunicorn_config.py", "flask_sse_hub/__main__.py",
                 "flask_sse_hub/py.typed", "flask_sse_hub/templates/sse-hub-demo.html",
                 "flask_sse_hub/static/demo.js", "flask_sse_hub/static/demo.css",
                 "flask_sse_hub/backends/redis.py"):
        assert name in names, f"{name} is not in {installed.wheel.name}"
    version = installed.wheel.name.split("-")[1]
    dist_info = f"flask_sse_hub-{version}.dist-info"
    assert {f"{dist_info}/LICENSE", f"{dist_info}/licenses/LICENSE"} & names, sorted(names)
    with zipfile.ZipFile(installed.wheel) as wheel:
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert re.search(r"^flask-sse-hub\s*=\s*flask_sse_hub\.__main__:main$", entry_points, re.M)
    assert re.search(rf"^Version: {re.escape(version)}$", metadata, re.M)
    assert installed.python("import flask_sse_hub; print(flask_sse_hub.__version__)") == version
    assert (installed.bin / "flask-sse-hub").exists()
    # The package's own modules are all in it (nothing left behind in the checkout).
    modules = {path.relative_to(REPO_ROOT).as_posix()
               for path in (REPO_ROOT / "flask_sse_hub").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    print(f"wheel built and installed in {installed.seconds:.1f}s")


def test_the_sdist_carries_the_tests_and_the_checkout_configuration(tmp_path: Path) -> None:
    """An sdist (built through setuptools' PEP 517 hook) can test and serve like a checkout."""
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_BUILT_FROM)
    dist = tmp_path / "dist"
    dist.mkdir()
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    built = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=source,
                           capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    (sdist,) = dist.glob("flask[-_]sse[-_]hub-*.tar.gz")  # older setuptools: dashes
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "Makefile", "wsgi.py",
                 "gunicorn.conf.py", "setup.cfg", "pyproject.toml", "tests/conftest.py",
                 "tests/unit/test_wire.py", "tests/integration/conftest.py",
                 "tests/clients/node/package-lock.json", "flask_sse_hub/gunicorn_config.py",
                 "docs/protocol.md", "docs/architecture.md"):
        assert name in names, f"{name} is not in {sdist.name}"
    assert not any("node_modules" in name or "__pycache__" in name for name in names)
