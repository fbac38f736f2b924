#!/usr/bin/env python3
"""The flask-sse-hub benchmark: this hub against the servers a user would pick instead.

One invocation builds the Go load generator, installs every peer into its own
virtualenv under ``bench/.venvs/``, and for each peer, scenario and run starts a
fresh server (ONE worker process pinned to CPU 0 with ``taskset``; Redis, when
the peer needs it, is a redis-server of our own, also on CPU 0), runs the load
generator pinned to CPU 1, and stops everything. It writes ``run-<date>.json``
(every run's raw report plus medians and the machine), ``results.md`` and
``results.png`` under ``bench/results/`` (``bench/results/tmp/`` with --quick).

    python3 bench/run.py                       # everything, 2 runs each (make bench)
    python3 bench/run.py --quick               # a 1-2 minute smoke run, small N
    python3 bench/run.py --peers hub --scenarios fanout-max --runs 3
    python3 bench/run.py --profile             # py-spy profile of the hub under fanout-max
    python3 bench/run.py --report results/run-X.json   # re-render md/png from a JSON

Uses the standard library; matplotlib and py-spy come from a tools virtualenv
(``bench/.venvs/tools``) that the script creates and re-executes itself in.
See bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
BUILD = BENCH / ".build"
LOADGEN = BUILD / "loadgen"
PEERS_DIR = BENCH / "peers"
TOOLS_VENV = VENVS / "tools"
TOOLS_PACKAGES = ["matplotlib", "py-spy"]

SERVER_CPUS = "0"
LOADGEN_CPUS = "1"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} bench: {message}", file=sys.stderr, flush=True)


# -- scenarios -------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "fanout" (deliveries), "idle" (memory), "publish" (throughput) or "storm" (resume)
    title: str
    streams: int
    events: int
    rate: float = 0.0  # events/s, 0: as fast as possible
    batch: int = 1
    publishers: int = 1
    hold: float = 0.0  # seconds the open streams are held idle before publishing
    deadline: float = 300.0  # seconds after the first publish
    drain: float = 10.0  # stop after this many seconds without a new delivery
    # "storm": ``events`` are published with no stream open (in POSTs of ``batch``), then
    # all ``streams`` open at once, each resuming from an early id (loadgen --storm-events).
    event_bytes: int = 0  # pad each event's data to about this size (0: no padding)
    history_size: int = 0  # SSE_HISTORY_SIZE of the peer (0: its default)
    probe_interval: float = 0.2  # storm: one single POST this often while it lasts (s)
    ndjson: bool = False  # publish: one streaming NDJSON POST per publisher (loadgen --ndjson)

    def loadgen_args(self) -> list[str]:
        args = [
            f"--streams={self.streams}", f"--rate={self.rate:g}",
            f"--batch={self.batch}", f"--publishers={self.publishers}",
            f"--hold={self.hold:g}s", f"--deadline={self.deadline:g}s",
            f"--drain-timeout={self.drain:g}s", f"--event-bytes={self.event_bytes}",
        ]
        if self.kind == "storm":
            return [*args, f"--storm-events={self.events}", f"--dial-concurrency={self.streams}",
                    f"--storm-publish-interval={self.probe_interval * 1000:g}ms"]
        return [*args, f"--events={self.events}", *(["--ndjson"] if self.ndjson else [])]

    def server_env(self) -> dict[str, str]:
        return {"SSE_HISTORY_SIZE": str(self.history_size)} if self.history_size else {}


FULL_SCENARIOS = [
    Scenario("fanout-100", "fanout", "fan-out: 1 000 streams, 200 events at 100/s",
             streams=1000, events=200, rate=100),
    Scenario("fanout-max", "fanout",
             "fan-out: 1 000 streams, 1 000 events as fast as possible (single POSTs, 4 publishers)",
             streams=1000, events=1000, publishers=4),
    Scenario("scale-10k", "fanout", "scale: 10 000 streams, 50 events at 10/s",
             streams=10000, events=50, rate=10),
    Scenario("idle-5k", "idle", "idle memory: 5 000 streams held 20 s",
             streams=5000, events=1, hold=20),
    Scenario("publish-single", "publish",
             "publish: 10 000 single-event POST /publish (4 keep-alive connections, 1 stream)",
             streams=1, events=10000, publishers=4),
    Scenario("publish-batch", "publish",
             "publish: 100 000 events in POSTs of 100 (4 keep-alive connections, 1 stream)",
             streams=1, events=100000, batch=100, publishers=4),
    Scenario("publish-stream", "publish",
             "publish: 100 000 events as ONE streaming POST /publish of NDJSON (1 connection, "
             "1 stream)", streams=1, events=100000, ndjson=True),
    Scenario("resume-storm", "storm",
             "resume storm: 600 events of 1 KB published with no stream open (POSTs of 300), then "
             "2 000 streams at once, each resuming 400 to 599 events back",
             streams=2000, events=600, batch=300, event_bytes=1024, history_size=5000,
             deadline=120, drain=15),
    Scenario("resume-storm-10k", "storm",
             "reconnect storm: 30 events published with no stream open, then 10 000 streams at "
             "once, each resuming (Last-Event-ID) 20 to 29 events back",
             streams=10000, events=30, batch=30, deadline=120, drain=15),
]

QUICK_SCENARIOS = [
    Scenario("fanout-100", "fanout", "fan-out: 100 streams, 50 events at 100/s",
             streams=100, events=50, rate=100, deadline=30, drain=3),
    Scenario("fanout-max", "fanout", "fan-out: 100 streams, 200 events as fast as possible",
             streams=100, events=200, publishers=4, deadline=30, drain=3),
    Scenario("scale-10k", "fanout", "scale: 1 000 streams, 10 events at 10/s",
             streams=1000, events=10, rate=10, deadline=30, drain=3),
    Scenario("idle-5k", "idle", "idle memory: 500 streams held 2 s",
             streams=500, events=1, hold=2, deadline=30, drain=3),
    Scenario("publish-single", "publish", "publish: 1 000 single-event POSTs",
             streams=1, events=1000, publishers=4, deadline=30, drain=3),
    Scenario("publish-batch", "publish", "publish: 10 000 events in POSTs of 100",
             streams=1, events=10000, batch=100, publishers=4, deadline=30, drain=3),
    Scenario("publish-stream", "publish",
             "publish: 10 000 events as one streaming POST of NDJSON", streams=1, events=10000,
             ndjson=True),
    Scenario("resume-storm", "storm",
             "resume storm: 600 events of 1 KB, then 300 streams at once resuming 400 to 599 back",
             streams=300, events=600, batch=300, event_bytes=1024, history_size=5000,
             deadline=60, drain=5),
    Scenario("resume-storm-10k", "storm",
             "reconnect storm: 30 events, then 1 000 streams at once resuming 20 to 29 back",
             streams=1000, events=30, batch=30, deadline=60, drain=5),
]

# -- peers -----------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    title: str
    venv: str | None  # None: no Python (the Go reference)
    packages: list[str]
    redis: bool = False
    workers: int = 1
    reference: bool = False  # not a contender: excluded from "best peer"
    resume: bool = True  # keeps a history and resumes from Last-Event-ID (the storm scenario)
    ndjson: bool = False  # takes a streaming publish (the publish-stream scenario)
    health_path: str = "/healthz"
    cpus: str = SERVER_CPUS

    def command(self, port: int, python_bin: Path) -> tuple[list[str], dict[str, str], Path]:
        raise NotImplementedError


@dataclass
class HubPeer(Peer):
    ndjson: bool = True
    def command(self, port: int, bin_dir: Path) -> tuple[list[str], dict[str, str], Path]:
        env = {"SSE_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(self.workers),
               "SSE_LOG_LEVEL": "warning"}
        return [str(bin_dir / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], env, ROOT


@dataclass
class FlaskSSEPeer(Peer):
    def command(self, port: int, bin_dir: Path) -> tuple[list[str], dict[str, str], Path]:
        return [
            str(bin_dir / "gunicorn"), "-k", "gevent", "-w", "1", "--worker-connections", "20000",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "flask_sse_peer:app",
        ], {}, PEERS_DIR


@dataclass
class StarlettePeer(Peer):
    def command(self, port: int, bin_dir: Path) -> tuple[list[str], dict[str, str], Path]:
        return [
            str(bin_dir / "uvicorn"), "starlette_peer:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log",
        ], {}, PEERS_DIR


@dataclass
class GoPeer(Peer):
    def command(self, port: int, bin_dir: Path) -> tuple[list[str], dict[str, str], Path]:
        return [str(LOADGEN), "serve", "--addr", f"127.0.0.1:{port}"], {}, BENCH


def _hub_spec() -> str:
    # A relative path, so that the venv works wherever the repository is cloned.
    return "-e " + os.path.relpath(ROOT, BENCH) + "[redis]"


NO_RESUME = "n/a: no history, cannot resume from Last-Event-ID"
NO_NDJSON = "n/a: no streaming publish"


def cannot_run(peer: Peer, scenario: Scenario) -> str | None:
    """Why ``peer`` has no result for ``scenario`` (it lacks the feature), or None."""
    if scenario.kind == "storm" and not peer.resume:
        return NO_RESUME
    if scenario.ndjson and not peer.ndjson:
        return NO_NDJSON
    return None

# gunicorn 27's gevent worker imports ``packaging`` without declaring it.
GUNICORN_GEVENT = ["gunicorn", "gevent", "packaging"]


PEERS: list[Peer] = [
    GoPeer("go-reference", "trivial Go server (reference: the load generator's ceiling)",
           None, [], reference=True, resume=False),
    FlaskSSEPeer("flask-sse", "flask-sse (gunicorn gevent, Redis pub/sub)", "flask-sse",
                 ["flask-sse", *GUNICORN_GEVENT, "redis"], redis=True, resume=False),
    StarlettePeer("sse-starlette", "sse-starlette (uvicorn, in-process broadcast)", "sse-starlette",
                  ["sse-starlette", "starlette", "uvicorn[standard]"], resume=False),
    HubPeer("hub", "flask-sse-hub, memory backend (gunicorn gevent)", "hub", [_hub_spec(), "packaging"]),
    HubPeer("hub-redis-1w", "flask-sse-hub, Redis backend, 1 worker", "hub", [_hub_spec(), "packaging"],
            redis=True),
    HubPeer("hub-redis-2w", "flask-sse-hub, Redis backend, 2 workers (CPUs 0,1)", "hub",
            [_hub_spec(), "packaging"], redis=True, workers=2, cpus="0,1"),
]

# -- processes -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out = [pid]
    for p in out:
        out.extend(children.get(p, []))
    return out[1:]


def pinned(cpus: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if shutil.which("taskset") else argv


@dataclass
class Proc:
    """A process we started, and how to stop it (by PID, then its leftover descendants)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    # gunicorn's quick shutdown; the benchmark needs no graceful one.
    stop_signal: int = signal.SIGQUIT

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        family = _descendants(self.pid) if self.alive() else []
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        for pid in family:  # workers that outlived their master
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def start(name: str, argv: list[str], *, cwd: Path, env: dict[str, str], log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    out = open(log_path, "wb")
    popen = subprocess.Popen(
        argv, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, preexec_fn=_raise_nofile,
    )
    out.close()
    return Proc(name, popen, log_path)


def start_redis(cpus: str, log_dir: Path) -> tuple[Proc, int]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = start("redis", pinned(cpus, [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
        "no", "--maxclients", "19000", "--protected-mode", "no", "--loglevel", "warning",
    ]), cwd=log_dir, env={}, log_dir=log_dir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError("redis-server exited: " + proc.log_tail())
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc, port
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError("redis-server did not answer PING in 10 s")


def wait_healthy(proc: Proc, port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"server exited with {proc.popen.returncode}: {proc.log_tail(4)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200:
                return
            last = f"HTTP {response.status}: {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"not healthy after {timeout:.0f} s ({last}): {proc.log_tail(4)}")


# -- setup -----------------------------------------------------------------------


def run_checked(argv: list[str], **kwargs: Any) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def ensure_venv(name: str, packages: list[str]) -> Path:
    """bench/.venvs/<name> with ``packages`` installed (reinstalled when they change)."""
    venv = VENVS / name
    digest = hashlib.sha256(json.dumps(packages).encode())
    if any(spec.startswith("-e ") for spec in packages):  # the hub: its own dependencies
        for config in ("setup.cfg", "pyproject.toml"):
            with contextlib.suppress(OSError):
                digest.update((ROOT / config).read_bytes())
    stamp = venv / ".bench-installed"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return venv / "bin"
    log(f"creating virtualenv {venv.relative_to(ROOT)} with {' '.join(packages)}")
    if not (venv / "bin" / "python").exists():
        run_checked([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run_checked([*pip, "install", "--upgrade", "pip"])
    args: list[str] = []
    for spec in packages:
        args.extend(shlex.split(spec))
    run_checked([*pip, "install", *args], cwd=BENCH)
    stamp.write_text(digest.hexdigest())
    return venv / "bin"


def ensure_tools() -> None:
    """Re-execute inside bench/.venvs/tools (matplotlib, py-spy) unless already there."""
    if Path(sys.prefix).resolve() == TOOLS_VENV.resolve():
        return
    bin_dir = ensure_venv("tools", TOOLS_PACKAGES)
    os.execv(str(bin_dir / "python"), [str(bin_dir / "python"), str(Path(__file__).resolve()),
                                       *sys.argv[1:]])


def build_loadgen() -> None:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("bench: Go is missing: apt-get install golang-go (make bench does it)")
    BUILD.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOCACHE": str(BUILD / "gocache"), "GOFLAGS": "-mod=mod",
           "GOPROXY": "off", "CGO_ENABLED": "0"}
    log("building the load generator (go build)")
    run_checked([go, "build", "-o", str(LOADGEN), "."], cwd=BENCH / "loadgen", env=env)


def package_versions(bin_dir: Path, names: list[str]) -> dict[str, str]:
    result = subprocess.run([str(bin_dir / "python"), "-m", "pip", "list", "--format", "json",
                             "--disable-pip-version-check"], capture_output=True, text=True)
    try:
        listed = json.loads(result.stdout)
    except ValueError:
        return {}
    wanted = {n.lower() for n in names}
    return {p["name"]: p["version"] for p in listed if p["name"].lower() in wanted}


def machine_info(command: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def output(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10)
            return (r.stdout or r.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unavailable"

    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    dirty = output(["git", "status", "--porcelain", "--", "flask_sse_hub", "wsgi.py",
                    "gunicorn.conf.py"])
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1048576, 1),
        "kernel": platform.release(),
        "os": output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "go": output(["go", "version"]),
        "redis": output(["redis-server", "--version"]),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "hub_commit": output(["git", "rev-parse", "--short", "HEAD"]),
        "hub_uncommitted_changes": bool(dirty and dirty != "unavailable"),
        "pinning": f"server on CPU {SERVER_CPUS}, load generator on CPU {LOADGEN_CPUS} (taskset)",
    }


# -- one measurement -------------------------------------------------------------


@dataclass
class Context:
    log_dir: Path
    bins: dict[str, Path] = field(default_factory=dict)


def run_loadgen(args: list[str], timeout: float, log_dir: Path, tag: str) -> dict[str, Any]:
    out = log_dir / f"{tag}.json"
    argv = pinned(LOADGEN_CPUS, [str(LOADGEN), *args, f"--out={out}"])
    with open(log_dir / f"{tag}.loadgen.log", "wb") as err:
        result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"loadgen exited {result.returncode}: "
                           + (log_dir / f"{tag}.loadgen.log").read_text(errors="replace")[-800:])
    return dict(json.loads(out.read_text()))


@contextlib.contextmanager
def running_peer(peer: Peer, ctx: Context, tag: str,
                 settings: dict[str, str] | None = None) -> Iterator[tuple[int, Proc, Proc | None]]:
    """Start ``peer`` (and its redis-server), wait until healthy, stop both afterwards."""
    redis: Proc | None = None
    server: Proc | None = None
    try:
        env: dict[str, str] = dict(settings or {})
        if peer.redis:
            redis, redis_port = start_redis(peer.cpus, ctx.log_dir)
            url = f"redis://127.0.0.1:{redis_port}/0"
            env.update({"REDIS_URL": url, "SSE_REDIS_URL": url})
        port = free_port()
        bin_dir = ctx.bins.get(peer.name, BUILD)
        argv, extra, cwd = peer.command(port, bin_dir)
        server = start(f"{tag}.server", pinned(peer.cpus, argv), cwd=cwd, env={**env, **extra},
                       log_dir=ctx.log_dir)
        wait_healthy(server, port, peer.health_path)
        yield port, server, redis
    finally:
        if server is not None:
            server.stop()
        if redis is not None:
            redis.stop()


def measure(peer: Peer, scenario: Scenario, ctx: Context, tag: str,
            profile: Callable[[Proc, Path], Callable[[], None]] | None = None) -> dict[str, Any]:
    with running_peer(peer, ctx, tag, scenario.server_env()) as (port, server, redis):
        args = [f"--url=http://127.0.0.1:{port}", f"--server-pid={server.pid}",
                f"--label={peer.name}/{scenario.name}", *scenario.loadgen_args()]
        if redis is not None:
            args.append(f"--aux-pid={redis.pid}")
        finish = None
        if profile:
            phase_file = ctx.log_dir / f"{tag}.phase"
            args.append(f"--phase-file={phase_file}")
            finish = profile(server, phase_file)
        try:
            report = run_loadgen(args, scenario.deadline + scenario.hold + 180, ctx.log_dir, tag)
        finally:
            if finish:
                finish()
        if not server.alive():
            report.setdefault("warnings", []).append(
                f"server died during the run: {server.log_tail(5)}")
        return report


# -- medians and the report ------------------------------------------------------

METRICS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "deliveries_per_s": lambda r: r.get("deliveries_per_s"),
    "p50_ms": lambda r: r["latency_ms"].get("p50"),
    "p90_ms": lambda r: r["latency_ms"].get("p90"),
    "p99_ms": lambda r: r["latency_ms"].get("p99"),
    "max_ms": lambda r: r["latency_ms"].get("max"),
    "missing": lambda r: r.get("missing"),
    "duplicates": lambda r: r.get("duplicates"),
    "out_of_order": lambda r: r.get("out_of_order"),
    "reconnects": lambda r: r.get("reconnects"),
    "gap_events": lambda r: r.get("gap_events"),
    "streams_opened": lambda r: r.get("streams_opened"),
    "connect_seconds": lambda r: r.get("connect_seconds"),
    "kb_per_stream": lambda r: r.get("kb_per_stream_held") or r.get("kb_per_stream"),
    "redis_kb_per_stream": lambda r: r.get("aux_kb_per_stream"),
    "publish_requests_per_s": lambda r: r.get("publish_requests_per_s"),
    "publish_events_per_s": lambda r: r.get("publish_events_per_s"),
    "publish_p50_ms": lambda r: r["publish_request_ms"].get("p50"),
    "publish_p99_ms": lambda r: r["publish_request_ms"].get("p99"),
    "publish_errors": lambda r: r.get("publish_errors"),
    "server_cpu_pct": lambda r: r["cpu"].get("server_pct"),
    "loadgen_cpu_pct": lambda r: r["cpu"].get("loadgen_pct"),
    "publish_max_ms": lambda r: r["publish_request_ms"].get("max"),
    "storm_resume_seconds": lambda r: r["storm"].get("resume_seconds"),
    "storm_stream_p50_seconds": lambda r: r["storm"]["stream_resume_seconds"].get("p50"),
    "storm_streams_incomplete": lambda r: r["storm"].get("streams_incomplete"),
    "storm_unexpected_events": lambda r: r["storm"].get("unexpected_events"),
    "storm_probe_publishes": lambda r: r["storm"].get("probe_publishes"),
    # The worker's CPU during the storm, per stream resumed.
    "storm_cpu_ms_per_resume": lambda r: round(
        r["cpu"]["server_pct"] / 100 * r["cpu"]["wall_seconds"] * 1000 / max(1, r["streams"]), 3),
}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, get in METRICS.items():
        values = []
        for r in runs:
            with contextlib.suppress(KeyError, TypeError):
                v = get(r)
                if isinstance(v, int | float) and not isinstance(v, bool):
                    values.append(v)
        out[name] = statistics.median(values) if values else None
    return out


def _cells(data: dict[str, Any], peer: str) -> list[dict[str, Any]]:
    return [cells[peer] for cells in data["results"].values() if peer in cells]


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0:
        value = round(value)
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}".replace(",", " ")
    return str(value)


def ratio(value: Any, best: Any, lower_is_better: bool = False) -> str:
    if not value or not best:
        return "–"
    r = best / value if lower_is_better else value / best
    return f"{r:.2f}×"


def render_markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# flask-sse-hub benchmark results", "",
        f"Run on {m['date']} — {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']} ({m['os']}), Python {m['python']}, {m['go']}, {m['redis']}. "
        f"Hub commit {m['hub_commit']}{' + uncommitted changes' if m['hub_uncommitted_changes'] else ''}.",
        "",
        f"Command: `{m['command']}` — {data['runs']} run(s) per cell, medians shown; "
        f"{m['pinning']}. Wall time {data.get('wall_seconds', 0) / 60:.1f} min.",
        "",
        "One worker process per server (except `hub-redis-2w`, two workers on both CPUs, "
        "sharing CPU 1 with the load generator). Redis, when used, is a redis-server of the "
        "harness's own on the server's CPU. `go-reference` is a trivial Go server (channel per "
        "client, coalesced writes) that shows the load generator's ceiling; it is not ranked. "
        "Ratios are to the best Python peer of each column (memory: the lowest).",
        "",
    ]
    c = data.get("ceiling")
    if c:
        lines += [
            "**Load generator ceiling** (`loadgen --ceiling`: "
            f"{c['streams']} streams, {c['events']} events in batches of {c['batch']}, against its "
            f"own Go server on CPU {SERVER_CPUS}): **{fmt(c['deliveries_per_s'])} deliveries/s** "
            f"with the generator at {fmt(c['loadgen_cpu_pct'])} % of its core. "
            "That is with events coalesced (many per read).", "",
        ]
    ref = (data["results"].get("fanout-max", {}).get("go-reference") or {}).get("median")
    if ref and ref.get("loadgen_cpu_pct"):
        lines += [
            "**Uncoalesced** (about one event per read, the hardest case for the generator): "
            f"against `go-reference` in fanout-max it parsed {fmt(ref['deliveries_per_s'])} "
            f"deliveries/s using {fmt(ref['loadgen_cpu_pct'])} % of its core, i.e. a capacity of "
            f"≈ {fmt(ref['deliveries_per_s'] * 100 / ref['loadgen_cpu_pct'])} deliveries/s. "
            "The `loadgen CPU %` column shows how close each run came to it.", "",
        ]
    peers = data["peers"]
    for sc in data["scenarios"]:
        name = sc["name"]
        cells = data["results"].get(name, {})
        if not cells:
            continue
        lines += [f"## {name} — {sc['title']}", ""]
        contenders = {p: c["median"] for p, c in cells.items()
                      if c.get("median") and not peers[p].get("reference")}

        def best(metric: str, low: bool = False) -> Any:
            vals = [v[metric] for v in contenders.values() if v.get(metric)]
            return (min(vals) if low else max(vals)) if vals else None

        if sc["kind"] == "fanout":
            b = best("deliveries_per_s")
            bk = best("kb_per_stream", low=True)
            lines += [
                f"| peer | deliveries/s | × best | published events/s "
                f"({'target ' + fmt(sc['rate']) if sc['rate'] else 'max'}) | p50 ms | p90 ms | "
                "p99 ms | max ms | missing | dups | reconnects | connect s (open/N) | KB/stream | "
                "server CPU % | loadgen CPU % |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for peer, cell in cells.items():
                v = cell.get("median")
                if not v:
                    lines.append(f"| {peer} | {cell.get('status', 'no result')} |" + " |" * 13)
                    continue
                lines.append(
                    f"| {peer} | {fmt(v['deliveries_per_s'])} | {ratio(v['deliveries_per_s'], b)} "
                    f"| {fmt(v['publish_events_per_s'])} "
                    f"| {fmt(v['p50_ms'], 1)} | {fmt(v['p90_ms'], 1)} | {fmt(v['p99_ms'], 1)} "
                    f"| {fmt(v['max_ms'], 1)} | {fmt(v['missing'])} | {fmt(v['duplicates'])} "
                    f"| {fmt(v['reconnects'])} | {fmt(v['connect_seconds'], 2)} "
                    f"({fmt(v['streams_opened'])}/{sc['streams']}) | {fmt(v['kb_per_stream'], 1)} "
                    f"{'' if peers[peer].get('reference') else ratio(v['kb_per_stream'], bk, True)} "
                    f"| {fmt(v['server_cpu_pct'])} | {fmt(v['loadgen_cpu_pct'])} |")
        elif sc["kind"] == "idle":
            bk = best("kb_per_stream", low=True)
            lines += [
                "| peer | KB/stream (server RSS) | × best | + Redis KB/stream | streams open/N | "
                "connect s | event delivered to all | reconnects |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for peer, cell in cells.items():
                v = cell.get("median")
                if not v:
                    lines.append(f"| {peer} | {cell.get('status', 'no result')} |" + " |" * 6)
                    continue
                lines.append(
                    f"| {peer} | {fmt(v['kb_per_stream'], 1)} "
                    f"| {'–' if peers[peer].get('reference') else ratio(v['kb_per_stream'], bk, True)} "
                    f"| {fmt(v['redis_kb_per_stream'], 1)} "
                    f"| {fmt(v['streams_opened'])}/{sc['streams']} | {fmt(v['connect_seconds'], 2)} "
                    f"| {'yes' if v['missing'] == 0 else 'missing ' + fmt(v['missing'])} "
                    f"| {fmt(v['reconnects'])} |")
        elif sc["kind"] == "storm":
            b = best("storm_resume_seconds", low=True)
            lines += [
                "| peer | storm resume s | × best | each run s | streams resumed/N | gap events | "
                "missing | dups | reconnects | replayed deliveries/s | probe POST p50 ms | "
                "probe POST max ms | probe event p99 ms | connect s | server CPU % | "
                "server CPU ms/resume | loadgen CPU % |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for peer, cell in cells.items():
                v = cell.get("median")
                if not v:
                    lines.append(f"| {peer} | {cell.get('status', 'no result')} |" + " |" * 15)
                    continue
                each = " / ".join(fmt((r.get("storm") or {}).get("resume_seconds"), 2)
                                  if (r.get("storm") or {}).get("resume_seconds") is not None
                                  else "incomplete" for r in cell["runs"])
                resumed = (v["streams_opened"] or 0) - (v["storm_streams_incomplete"] or 0)
                lines.append(
                    f"| {peer} | {fmt(v['storm_resume_seconds'], 2)} "
                    f"| {ratio(v['storm_resume_seconds'], b, True)} | {each} "
                    f"| {fmt(resumed)}/{sc['streams']} | {fmt(v['gap_events'])} "
                    f"| {fmt(v['missing'])} | {fmt(v['duplicates'])} | {fmt(v['reconnects'])} "
                    f"| {fmt(v['deliveries_per_s'])} | {fmt(v['publish_p50_ms'], 1)} "
                    f"| {fmt(v['publish_max_ms'], 1)} | {fmt(v['p99_ms'], 1)} "
                    f"| {fmt(v['connect_seconds'], 2)} | {fmt(v['server_cpu_pct'])} "
                    f"| {fmt(v['storm_cpu_ms_per_resume'], 3)} | {fmt(v['loadgen_cpu_pct'])} |")
        else:
            single = sc["batch"] == 1 and not sc.get("ndjson")
            key = "publish_requests_per_s" if single else "publish_events_per_s"
            b = best(key)
            lines += [
                "| peer | requests/s | events/s | × best | request p50 ms | request p99 ms | "
                "errors | missing at the stream | server CPU % |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for peer, cell in cells.items():
                v = cell.get("median")
                if not v:
                    lines.append(f"| {peer} | {cell.get('status', 'no result')} |" + " |" * 7)
                    continue
                lines.append(
                    f"| {peer} | {fmt(v['publish_requests_per_s'])} | {fmt(v['publish_events_per_s'])} "
                    f"| {ratio(v[key], b)} | {fmt(v['publish_p50_ms'], 2)} "
                    f"| {fmt(v['publish_p99_ms'], 2)} | {fmt(v['publish_errors'])} "
                    f"| {fmt(v['missing'])} | {fmt(v['server_cpu_pct'])} |")
        notes = [f"{p}: {w}" for p, cell in cells.items() for w in cell.get("warnings", [])]
        for p, cell in cells.items():
            for i, r in enumerate(cell.get("runs", [])):
                if r.get("publish_errors"):
                    error = " ".join(str(r.get("publish_last_error", "")).split())[:160]
                    notes.append(f"{p}: run {i + 1}: {r['publish_errors']} of "
                                 f"{r['publish_requests']} publish requests failed ({error})")
                unexpected = (r.get("storm") or {}).get("unexpected_events")
                if unexpected:
                    notes.append(f"{p}: run {i + 1}: {unexpected} events at or before a stream's "
                                 "Last-Event-ID were sent to it again")
                if r.get("streams_opened", 0) < r.get("streams", 0):
                    errors = ", ".join(f"{k} ×{v}" for k, v in r.get("stream_errors", {}).items())
                    notes.append(f"{p}: run {i + 1}: {r['streams_opened']}/{r['streams']} streams "
                                 f"opened ({errors})")
        if notes:
            lines += ["", *(f"* {n}" for n in notes)]
        lines.append("")
    unavailable = [f"* {p}: {info['status']}" for p, info in peers.items()
                   if info.get("status", "ok") != "ok"]
    if unavailable:
        lines += ["## Peers that did not run", "", *unavailable, ""]
    lines += ["## Peers", ""]
    for p, info in peers.items():
        versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        lines.append(f"* `{p}` — {info['title']}" + (f" ({versions})" if versions else ""))
    lines.append("")
    return "\n".join(lines)


def render_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fanout = [s for s in data["scenarios"] if s["kind"] == "fanout" and s["name"] in data["results"]]
    publish = [s for s in data["scenarios"] if s["kind"] == "publish" and s["name"] in data["results"]]
    peers = list(data["peers"])
    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    panels = [
        (axes[0], fanout, "deliveries_per_s", "deliveries/s (log; higher is better)", True),
        (axes[1], fanout, "p99_ms", "p99 publish→receive latency, ms (log; lower is better)", True),
        (axes[2], publish, "publish_events_per_s", "published events/s (log; higher is better)",
         True),
    ]
    width = 0.8 / max(1, len(peers))
    for ax, scenarios, metric, label, log_scale in panels:
        plotted = False
        for i, peer in enumerate(peers):
            xs, ys = [], []
            for j, sc in enumerate(scenarios):
                v = (data["results"][sc["name"]].get(peer, {}).get("median") or {}).get(metric)
                if v:
                    xs.append(j + (i - (len(peers) - 1) / 2) * width)
                    ys.append(v)
            hatch = "//" if data["peers"][peer].get("reference") else None
            ax.bar(xs, ys, width, label=peer, hatch=hatch)
            plotted = plotted or bool(ys)
        ax.set_xticks(range(len(scenarios)), [s["name"] for s in scenarios])
        ax.set_title(label, fontsize=10)
        if log_scale and plotted:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"flask-sse-hub benchmark — {m['date'][:10]}, {m['cpu_model']}, "
                 f"one worker per server on CPU {SERVER_CPUS}, median of {data['runs']} run(s); "
                 "go-reference (hatched) is the load generator's ceiling, not a contender",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: The README's performance table: (row title, scenario, metric, format), by peer.
README_ROWS = [
    ("fan-out, 1 000 streams, 1 000 events ASAP (deliveries/s)", "fanout-max",
     "deliveries_per_s", "{:,.0f}"),
    ("fan-out, 1 000 streams at 100 events/s: p99 latency (ms)", "fanout-100", "p99_ms", "{:,.0f}"),
    ("10 000 streams: time to connect all (s)", "scale-10k", "connect_seconds", "{:.1f}"),
    ("10 000 streams at 10 events/s: p99 latency (ms)", "scale-10k", "p99_ms", "{:,.0f}"),
    ("idle memory per stream (KB, server RSS)", "idle-5k", "kb_per_stream", "{:.1f}"),
    ("single `POST /publish` per second", "publish-single", "publish_requests_per_s", "{:,.0f}"),
    ("events/s published in batches of 100", "publish-batch", "publish_events_per_s", "{:,.0f}"),
    ("events/s published as one NDJSON stream (1 connection)", "publish-stream",
     "publish_events_per_s", "{:,.0f}"),
    ("resume storm, 2 000 streams × 400-599 missed events (s)", "resume-storm",
     "storm_resume_seconds", "{:.1f}"),
    ("reconnect storm, 10 000 streams resuming at once (s)", "resume-storm-10k",
     "storm_resume_seconds", "{:.1f}"),
    ("… server CPU per resume (ms)", "resume-storm-10k", "storm_cpu_ms_per_resume", "{:.2f}"),
]
README_PEERS = ["go-reference", "flask-sse", "sse-starlette", "hub", "hub-redis-1w"]
README_START, README_END = "<!-- bench:table -->", "<!-- /bench:table -->"


def readme_table(data: dict[str, Any]) -> str:
    """The README's table from a run: the peers side by side, medians, n/a where none ran."""
    lines = ["| scenario | " + " | ".join(README_PEERS) + " |",
             "|---|" + "---:|" * len(README_PEERS)]
    for title, scenario, metric, shape in README_ROWS:
        cells = data["results"].get(scenario, {})
        shown = []
        for peer in README_PEERS:
            value = ((cells.get(peer) or {}).get("median") or {}).get(metric)
            shown.append("n/a" if value is None else shape.format(value).replace(",", " "))
        lines.append(f"| {title} | " + " | ".join(shown) + " |")
    m = data["machine"]
    lines += ["", f"`{m['command']}` on {m['date'][:10]}: {m['cpu_model']}, {m['cores']} cores, "
              f"Python {m['python']}, hub commit {m['hub_commit']}; {m['pinning']}; medians of "
              f"{data['runs']} runs. Full tables and a plot: `bench/results/results.md`, "
              "`bench/results/results.png`."]
    return "\n".join(lines)


def update_readme(data: dict[str, Any], readme: Path) -> bool:
    """Replace the table between the README's markers; False when it has none."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{readme_table(data)}\n{README_END}{tail}")
    return True


def write_report(data: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.md").write_text(render_markdown(data))
    try:
        render_plot(data, out_dir / "results.png")
    except Exception as exc:  # a plot must never cost the measurements
        log(f"no plot: {exc!r}")


# -- profiling -------------------------------------------------------------------


def profile_hook(fmt_: str, path: Path) -> Callable[[Proc, Path], Callable[[], None]]:
    """Attach py-spy to the gunicorn worker once the load generator starts publishing."""

    def attach(server: Proc, phase_file: Path) -> Callable[[], None]:
        workers = _descendants(server.pid)
        target = workers[-1] if workers else server.pid
        py_spy = TOOLS_VENV / "bin" / "py-spy"
        argv = pinned(LOADGEN_CPUS, [str(py_spy), "record", "--pid", str(target), "--format",
                                     fmt_, "--output", str(path), "--nonblocking", "--rate", "200"])
        spy: list[subprocess.Popen[bytes]] = []
        stop = threading.Event()

        def start_when_publishing() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    if phase_file.read_text().strip() == "publishing":
                        log(f"py-spy on worker {target} -> {path.relative_to(ROOT)}")
                        spy.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE))
                        return
                time.sleep(0.01)

        waiter = threading.Thread(target=start_when_publishing, daemon=True)
        waiter.start()

        def finish() -> None:
            stop.set()
            waiter.join()
            if not spy:
                log("py-spy never started: the load generator did not reach publishing")
                return
            spy[0].send_signal(signal.SIGINT)
            try:
                _, err = spy[0].communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy[0].kill()
                _, err = spy[0].communicate()
            if spy[0].returncode not in (0, -signal.SIGINT):
                log(f"py-spy: {err.decode(errors='replace')[-500:]}")

        return finish

    return attach


def summarise_raw_profile(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    line_counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        # py-spy frames look like "function (file.py:line)"; group by function and file.
        names = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in frames]
        self_counts[names[-1]] = self_counts.get(names[-1], 0) + count
        line_counts[frames[-1]] = line_counts.get(frames[-1], 0) + count
        for name in set(names):
            total_counts[name] = total_counts.get(name, 0) + count
    if not total:
        return "no samples\n"
    out = [f"{total} samples (CPU only, 200 Hz)", "", "self %  total %  function (file)"]
    for name, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{100 * n / total:6.1f}  {100 * total_counts[name] / total:7.1f}  {name}")
    out += ["", "inclusive (top by total %)", "total %  function (file)"]
    for name, n in sorted(total_counts.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{100 * n / total:7.1f}  {name}")
    out += ["", "self % by line (the line running, or calling into C, when sampled)",
            "self %  function (file:line)"]
    for name, n in sorted(line_counts.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{100 * n / total:6.1f}  {name}")
    return "\n".join(out) + "\n"


def run_profile(ctx: Context, scenarios: list[Scenario], out_dir: Path) -> None:
    # fanout-max with more events, so that the samples cover several seconds of fan-out;
    # py-spy starts when the load generator starts publishing (not while streams connect).
    base = next(s for s in scenarios if s.name == "fanout-max")
    scenario = dataclasses.replace(
        base, events=base.events * 5,
        title=f"{base.streams} streams, {base.events * 5} events as fast as possible "
              f"(single POSTs, {base.publishers} publishers)")
    peer = next(p for p in PEERS if p.name == "hub")
    svg = out_dir / "profile-fanout.svg"
    raw = ctx.log_dir / "profile-fanout.raw"
    report = measure(peer, scenario, ctx, "profile-svg", profile_hook("flamegraph", svg))
    measure(peer, scenario, ctx, "profile-raw", profile_hook("raw", raw))
    if raw.exists():
        summary = summarise_raw_profile(raw)
        commit = machine_info("")["hub_commit"]
        header = (f"py-spy profile of the hub's gunicorn worker (commit {commit}) under {scenario.name} "
                  f"({scenario.title}); deliveries/s with the profiler attached: "
                  f"{fmt(report.get('deliveries_per_s'))}\n\n")
        (out_dir / "profile-fanout.txt").write_text(header + summary)
        print(header + summary)


# -- main ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=None, help="runs per cell (default 2; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small N smoke run (results under results/tmp/)")
    parser.add_argument("--peers", default="", help="comma-separated peer names (default: all)")
    parser.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the load generator ceiling run")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the hub under fanout-max with py-spy")
    parser.add_argument("--report", type=Path, default=None, help="re-render md/png from a run JSON")
    args = parser.parse_args()

    ensure_tools()
    if args.report:
        data = json.loads(args.report.read_text())
        write_report(data, args.report.parent)
        if update_readme(data, ROOT / "README.md"):
            log("README.md: performance table regenerated from the report")
        log(f"wrote {args.report.parent / 'results.md'} and results.png")
        return

    started = time.monotonic()
    scenarios = QUICK_SCENARIOS if args.quick else FULL_SCENARIOS
    runs = args.runs or (1 if args.quick else 2)
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        unknown = wanted - {s.name for s in scenarios}
        if unknown:
            parser.error(f"unknown scenarios {sorted(unknown)}; have {[s.name for s in scenarios]}")
        scenarios = [s for s in scenarios if s.name in wanted]
    peers = PEERS
    if args.peers:
        wanted = set(args.peers.split(","))
        unknown = wanted - {p.name for p in PEERS}
        if unknown:
            parser.error(f"unknown peers {sorted(unknown)}; have {[p.name for p in PEERS]}")
        peers = [p for p in PEERS if p.name in wanted]
    out_dir = (args.out or (BENCH / "results" / ("tmp" if args.quick else ""))).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = BUILD / "logs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["python3", "bench/run.py", *sys.argv[1:]])
    log(f"logs in {log_dir}")

    build_loadgen()
    ctx = Context(log_dir)
    if args.profile:
        ctx.bins["hub"] = ensure_venv("hub", next(p for p in PEERS if p.name == "hub").packages)
        run_profile(ctx, QUICK_SCENARIOS if args.quick else FULL_SCENARIOS, out_dir)
        return

    data: dict[str, Any] = {
        "machine": machine_info(command),
        "runs": runs,
        "quick": args.quick,
        "scenarios": [s.__dict__ for s in scenarios],
        "peers": {},
        "results": {s.name: {} for s in scenarios},
    }
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"run-{stamp}.json"

    def save() -> None:
        data["wall_seconds"] = round(time.monotonic() - started, 1)
        json_path.write_text(json.dumps(data, indent=1) + "\n")
        write_report(data, out_dir)

    if not args.no_ceiling:
        streams, events = (200, 2000) if args.quick else (1000, 10000)
        reports = []
        for i in range(runs):
            log(f"load generator ceiling, run {i + 1}/{runs}")
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                reports.append(run_loadgen(
                    ["--ceiling", f"--ceiling-cpu={SERVER_CPUS}", f"--streams={streams}",
                     f"--events={events}", "--batch=100", "--publishers=2"],
                    300, log_dir, f"ceiling-{i}"))
        if reports:
            med = medians(reports)
            data["ceiling"] = {"streams": streams, "events": events, "batch": 100,
                               "deliveries_per_s": med["deliveries_per_s"],
                               "loadgen_cpu_pct": med["loadgen_cpu_pct"],
                               "p99_ms": med["p99_ms"], "runs": reports}

    for peer in peers:
        info: dict[str, Any] = {"title": peer.title, "reference": peer.reference,
                                "workers": peer.workers, "cpus": peer.cpus, "status": "ok"}
        data["peers"][peer.name] = info
        if all(cannot_run(peer, s) for s in scenarios):
            for scenario in scenarios:  # nothing it can run: no need to install it
                data["results"][scenario.name][peer.name] = {
                    "runs": [], "warnings": [], "status": cannot_run(peer, scenario)}
            continue
        try:
            if peer.venv:
                ctx.bins[peer.name] = ensure_venv(peer.venv, peer.packages)
                names = [shlex.split(p)[-1].split("[")[0] for p in peer.packages]
                names += ["flask", "gunicorn", "gevent", "redis", "uvicorn", "starlette",
                          "flask-sse-hub", "werkzeug", "uvloop", "httptools", "hiredis"]
                info["versions"] = package_versions(ctx.bins[peer.name], names)
        except RuntimeError as exc:
            info["status"] = f"unavailable: install failed: {str(exc)[-300:]}"
            log(f"{peer.name}: {info['status']}")
            save()
            continue
        for scenario in scenarios:
            if info["status"] != "ok":
                break
            cell: dict[str, Any] = {"runs": [], "warnings": []}
            data["results"][scenario.name][peer.name] = cell
            lacking = cannot_run(peer, scenario)
            if lacking:
                cell["status"] = lacking
                continue
            for i in range(runs):
                tag = f"{peer.name}.{scenario.name}.{i}"
                log(f"{peer.name} / {scenario.name} run {i + 1}/{runs}")
                try:
                    report = measure(peer, scenario, ctx, tag)
                except RuntimeError as exc:
                    reason = " ".join(str(exc).split())[:400]
                    startup = any(k in reason for k in ("server exited", "not healthy", "redis-server"))
                    if startup and not any(c.get("runs") for c in _cells(data, peer.name)):
                        info["status"] = f"unavailable: {reason}"
                        cell["status"] = info["status"]
                        log(f"{peer.name}: {info['status']}")
                        break
                    cell["warnings"].append(f"run {i + 1} failed: {reason}")
                    log(f"{peer.name}/{scenario.name}: run failed: {reason}")
                    continue
                except subprocess.TimeoutExpired:
                    cell["warnings"].append(f"run {i + 1}: load generator timed out")
                    continue
                except Exception as exc:  # one broken run must not stop the benchmark
                    cell["warnings"].append(f"run {i + 1} failed: {exc!r}"[:400])
                    log(f"{peer.name}/{scenario.name}: run failed: {exc!r}")
                    continue
                cell["runs"].append(report)
                for w in report.get("warnings", []):
                    cell["warnings"].append(f"run {i + 1}: {w}")
                if report.get("timed_out"):
                    cell["warnings"].append(
                        f"run {i + 1}: stopped before every event arrived (deadline, or "
                        f"{scenario.drain:g} s without a delivery); events not received count as missing")
                log(f"  {report.get('deliveries_per_s')} deliveries/s, p99 "
                    f"{report['latency_ms'].get('p99')} ms, missing {report.get('missing')}, "
                    f"KB/stream {report.get('kb_per_stream_held') or report.get('kb_per_stream')}, "
                    f"publish {report.get('publish_requests_per_s')} req/s")
                if "storm" in report:
                    st = report["storm"]
                    log(f"  storm resume {st.get('resume_seconds')} s, "
                        f"gaps {report.get('gap_events')}, "
                        f"incomplete streams {st.get('streams_incomplete')}, probe POST p50/max "
                        f"{report['publish_request_ms'].get('p50')}/"
                        f"{report['publish_request_ms'].get('max')} ms")
            if cell["runs"]:
                cell["median"] = medians(cell["runs"])
            elif "status" not in cell:
                cell["status"] = "failed: " + "; ".join(cell["warnings"])[:300]
            save()
    save()
    complete = {s.name for s in FULL_SCENARIOS} <= set(data["results"]) and not args.quick
    if complete and update_readme(data, ROOT / "README.md"):
        log("README.md: performance table regenerated from this run")
    shown = [os.path.relpath(path, ROOT) for path in
             (json_path, out_dir / "results.md", out_dir / "results.png")]
    log(f"done in {(time.monotonic() - started) / 60:.1f} min: {', '.join(shown)}")


if __name__ == "__main__":
    main()
