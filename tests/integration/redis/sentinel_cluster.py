"""A Redis Sentinel set-up of the tests' own: one master, two replicas, three sentinels.

Every process listens on a free 127.0.0.1 port, keeps nothing on disk
(``--save "" --appendonly no``) and is stopped by PID at teardown; the
sentinels each get a writable config file in the test's temporary
directory (Sentinel rewrites it). Timings are short so that a failover after
``kill_master()`` takes a few seconds: ``down-after-milliseconds 1000``,
``failover-timeout 5000``, quorum 2 of 3.

``SentinelCluster.start()`` returns only once every sentinel names the master,
sees both replicas up and knows the two other sentinels (without those a
sentinel cannot be elected to run a failover). Then: ``sentinels_setting``
(for SSE_REDIS_SENTINELS), ``master_name``, ``master_port()`` (asked from a
sentinel), ``kill_master()`` (SIGKILL), ``wait_failover(old_port)`` (every
sentinel names a new master and it has a replica online), and
``cut_replication()`` / ``restore_replication()`` (writes the master takes
meanwhile exist on it alone). Use it through the ``sentinel_cluster``
fixture, imported into a test module::

    from .sentinel_cluster import SentinelCluster, sentinel_cluster  # noqa: F401

It skips, saying why, when neither ``redis-sentinel`` nor ``redis-server`` is
installed (or redis-py is missing).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
REDIS_SERVER = shutil.which("redis-server")
REDIS_SENTINEL = shutil.which("redis-sentinel")
#: Not ``mymaster`` (the hub's default): a hub that ignored
#: SSE_REDIS_SENTINEL_MASTER would not find this one.
MASTER_NAME = "ssehub-ha"
QUORUM = 2
START_SECONDS = 20.0


class ClusterError(RuntimeError):
    """The cluster did not reach the state waited for in time; the message has the details."""


class SentinelCluster:
    """One master, two replicas and three sentinels on 127.0.0.1, started and stopped by PID."""

    def __init__(
        self, workdir: Path, port_source: Callable[[], int], *, master_name: str = MASTER_NAME,
    ) -> None:
        self.workdir = workdir
        self.port_source = port_source
        self.master_name = master_name
        #: Data servers (master and replicas) by port, and sentinels by port.
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: dict[int, subprocess.Popen[bytes]] = {}
        self.initial_master_port = 0

    # -- settings for the hub ---------------------------------------------------

    @property
    def sentinel_ports(self) -> list[int]:
        return list(self.sentinels)

    @property
    def sentinels_setting(self) -> str:
        """The value for SSE_REDIS_SENTINELS: ``127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3``."""
        return ",".join(f"{HOST}:{port}" for port in self.sentinels)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> SentinelCluster:
        master = self._start_server([])
        self.initial_master_port = master
        for _ in range(2):
            self._start_server(["--replicaof", HOST, str(master),
                                "--replica-announce-ip", HOST])
        self._wait(lambda: self._online_replicas(master) >= 2,
                   what="the master to have 2 replicas online",
                   detail=lambda: repr(self.info(master, "replication")))
        for _ in range(3):
            self._start_sentinel(master)
        self._wait(self._sentinels_agree, what="every sentinel to see the master, "
                   "both replicas and the two other sentinels", detail=self.describe)
        return self

    def stop(self) -> None:
        """Kill (SIGKILL, by PID) every process this cluster started, and reap them."""
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    # -- what the tests do -------------------------------------------------------

    def master_port(self, sentinel_port: int | None = None) -> int:
        """The master's port as a sentinel names it (the first one that answers)."""
        ports = [sentinel_port] if sentinel_port is not None else self.sentinel_ports
        errors: list[str] = []
        for port in ports:
            try:
                address = self._sentinel_client(port).sentinel_get_master_addr_by_name(
                    self.master_name)
            except Exception as exc:  # try the next sentinel, report all
                errors.append(f"{port}: {exc!r}")
                continue
            if address:
                return int(address[1])
            errors.append(f"{port}: no master named {self.master_name!r}")
        raise ClusterError(f"no sentinel names the master: {errors}")

    def kill_master(self) -> int:
        """SIGKILL the current master (by PID); return its port. It is not restarted."""
        port = self.master_port()
        proc = self.servers[port]
        proc.kill()
        proc.wait(timeout=10)
        return port

    def wait_failover(self, old_port: int, timeout: float = 20.0) -> int:
        """Wait until every sentinel names a new master that has a replica online; its port."""
        found: list[int] = []

        def promoted() -> bool:
            ports = set()
            for sentinel in self.sentinel_ports:
                try:
                    ports.add(self.master_port(sentinel))
                except ClusterError:
                    return False
            if len(ports) != 1 or old_port in ports:
                return False
            (port,) = ports
            info = self.info(port, "replication")
            if info.get("role") != "master" or self._online_replicas(port) < 1:
                return False
            found[:] = [port]
            return True

        self._wait(promoted, what=f"a failover away from the master on port {old_port}",
                   detail=self.describe, timeout=timeout)
        return found[0]

    def replica_ports(self) -> list[int]:
        """The running data servers that report the replica role."""
        return [port for port, proc in self.servers.items()
                if proc.poll() is None and self.info(port, "replication").get("role") == "slave"]

    def cut_replication(self) -> list[int]:
        """From now on, what the master takes stays on the master (lost if it dies).

        Each replica drops its link and cannot sync again: its ``masterauth``
        is set to a password the master (which has none) refuses. Returns the
        replicas' ports; :meth:`restore_replication` undoes it.
        """
        replicas = self.replica_ports()
        for port in replicas:
            with self.client(port) as client:
                client.config_set("masterauth", "not-the-masters-password")
                client.client_kill_filter(_type="master")
        self._wait(lambda: all(self.info(port, "replication").get("master_link_status") == "down"
                               for port in replicas),
                   what="every replica to lose its link to the master", detail=self.describe)
        return replicas

    def restore_replication(self, replicas: list[int]) -> None:
        """Undo :meth:`cut_replication` on those of ``replicas`` still running."""
        for port in replicas:
            if self.servers[port].poll() is None:
                with self.client(port) as client:
                    client.config_set("masterauth", "")

    def client(self, port: int, db: int = 0) -> Any:
        """A redis-py client (decode_responses) of one data server."""
        import redis

        return redis.Redis(host=HOST, port=port, db=db, socket_timeout=2, decode_responses=True)

    def info(self, port: int, section: str) -> dict[str, Any]:
        """``INFO <section>`` of a data server, or ``{"error": ...}`` when it does not answer."""
        try:
            with self.client(port) as client:
                info: dict[str, Any] = client.info(section)
                return info
        except Exception as exc:  # a dead server is a normal state here
            return {"error": repr(exc)}

    def describe(self) -> str:
        """What each sentinel believes (for failure messages), and the servers' roles."""
        lines = []
        for port in self.sentinel_ports:
            try:
                client = self._sentinel_client(port)
                master = client.sentinel_master(self.master_name)
                replicas = client.sentinel_slaves(self.master_name)
                lines.append(
                    f"sentinel {port}: master {master.get('ip')}:{master.get('port')} "
                    f"flags={master.get('flags')} other-sentinels="
                    f"{master.get('num-other-sentinels')} replicas="
                    f"{[(r.get('port'), r.get('flags')) for r in replicas]}")
            except Exception as exc:  # describe what we can
                lines.append(f"sentinel {port}: {exc!r}")
        for port, proc in self.servers.items():
            info = self.info(port, "replication")
            lines.append(f"server {port} (pid {proc.pid}, exit {proc.poll()}): "
                         f"role={info.get('role')} slaves={info.get('connected_slaves')} "
                         f"{info.get('error', '')}")
        return "\n".join(lines)

    # -- internals -----------------------------------------------------------------

    def _sentinel_client(self, port: int) -> Any:
        import redis

        return redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1,
                           decode_responses=True)

    def _online_replicas(self, port: int) -> int:
        info = self.info(port, "replication")
        return sum(1 for key, value in info.items()
                   if key.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online")

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            try:
                client = self._sentinel_client(port)
                master = client.sentinel_master(self.master_name)
                replicas = client.sentinel_slaves(self.master_name)
            except Exception:  # not up yet
                return False
            if (int(master["port"]) != self.initial_master_port
                    or int(master["num-other-sentinels"]) != len(self.sentinels) - 1
                    or master.get("is_sdown") or master.get("is_odown")):
                return False
            up = [r for r in replicas
                  if not (r.get("is_sdown") or r.get("is_disconnected"))
                  and r.get("master-link-status") == "ok"]
            if len(up) != 2:
                return False
        return True

    def _spawn(
        self, kind: str, command: Callable[[int], list[str]],
    ) -> tuple[int, subprocess.Popen[bytes]]:
        """Start ``command(port)`` on a free port until one answers PING (3 tries)."""
        import redis

        for _attempt in range(3):
            port = self.port_source()
            log_path = self.workdir / f"{kind}-{port}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(command(port), cwd=self.workdir, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if redis.Redis(host=HOST, port=port, socket_timeout=0.5,
                                   socket_connect_timeout=0.5).ping():
                        return port, proc
                except redis.RedisError:
                    time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if "Address already in use" not in log_path.read_text(errors="replace"):
                raise ClusterError(f"{kind} on port {port} did not start:\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
        raise ClusterError(f"{kind}: three free ports were taken before it could bind them")

    def _start_server(self, extra: list[str]) -> int:
        assert REDIS_SERVER is not None
        server = REDIS_SERVER

        def command(port: int) -> list[str]:
            return [server, "--port", str(port), "--bind", HOST, "--save", "",
                    "--appendonly", "no", "--dir", str(self.workdir),
                    # The initial full sync need not wait 5 s for more replicas.
                    "--repl-diskless-sync-delay", "0", *extra]

        port, proc = self._spawn("redis", command)
        self.servers[port] = proc
        return port

    def _start_sentinel(self, master_port: int) -> int:
        name = self.master_name

        def command(port: int) -> list[str]:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\n"
                f"bind {HOST}\n"
                f"dir {self.workdir}\n"
                f"sentinel announce-ip {HOST}\n"
                f"sentinel monitor {name} {HOST} {master_port} {QUORUM}\n"
                f"sentinel down-after-milliseconds {name} 1000\n"
                f"sentinel failover-timeout {name} 5000\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
            if REDIS_SENTINEL is not None:
                return [REDIS_SENTINEL, str(conf)]
            assert REDIS_SERVER is not None
            return [REDIS_SERVER, str(conf), "--sentinel"]

        port, proc = self._spawn("sentinel", command)
        self.sentinels[port] = proc
        return port

    def _wait(
        self, condition: Callable[[], bool], *, what: str, detail: Callable[[], str],
        timeout: float = START_SECONDS,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out after {timeout:.1f}s waiting for {what}:\n"
                                   f"{detail()}")
            time.sleep(0.1)


@pytest.fixture
def sentinel_cluster(
    tmp_path: Path, free_port: Callable[[], int],
) -> Iterator[SentinelCluster]:
    """A started :class:`SentinelCluster` for one test; everything killed by PID afterwards."""
    if REDIS_SENTINEL is None and REDIS_SERVER is None:
        pytest.skip("neither redis-sentinel nor redis-server is installed "
                    "(make test installs redis-server when run as root)")
    if REDIS_SERVER is None:
        pytest.skip("redis-sentinel is installed but redis-server (for master and replicas) "
                    "is not")
    pytest.importorskip("redis", reason="redis-py is needed to drive Redis Sentinel")
    workdir = tmp_path / "sentinel-cluster"
    workdir.mkdir()
    cluster = SentinelCluster(workdir, free_port)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
