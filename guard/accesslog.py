"""One JSON line per request decision, cheap enough for every request.

What goes in is fixed here, in one place, so nothing else can leak: time,
client IP, method, path (no query string: queries carry tokens and e-mail
addresses), status, upstream latency, guard overhead, action and reasons.
Never a body, a cookie value, a password or a header value.

Lines are written through a buffered stream and flushed by a timer rather than
per line: a ``write`` syscall per request would cost more than the decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import IO

from guard.engine.decision import Decision
from guard.engine.facts import RequestFacts

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

MAX_PATH = 512


class RequestLog:
    __slots__ = ("_flush_task", "_owns", "_stream", "enabled")

    def __init__(self, enabled: bool = True, file: Path | None = None, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self._owns = False
        if stream is not None:
            self._stream = stream
        elif file is not None:
            self._stream = open(file, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            self._owns = True
        else:
            # stderr is line-buffered; a private block-buffered handle on the same fd is not
            try:
                self._stream = open(  # noqa: SIM115
                    sys.stderr.fileno(), "w", encoding="utf-8", buffering=1 << 16, closefd=False
                )
                self._owns = True
            except (OSError, ValueError, AttributeError):
                self._stream = sys.stderr
        self._flush_task: asyncio.Task[None] | None = None

    def record(
        self,
        req: RequestFacts,
        decision: Decision,
        status: int,
        upstream_s: float | None,
        overhead_s: float,
    ) -> None:
        if not self.enabled:
            return
        path = req.path if len(req.path) <= MAX_PATH else req.path[:MAX_PATH] + "..."
        entry: dict[str, object] = {
            "ts": round(time.time(), 3),
            "ip": req.client_ip,
            "method": req.method,
            "path": path,
            "status": status,
            "action": decision.action.value,
            "upstream_ms": None if upstream_s is None else round(upstream_s * 1000, 3),
            "overhead_ms": round(overhead_s * 1000, 3),
        }
        if req.login is not None:
            entry["login"] = req.login
        if decision.reasons:
            entry["reasons"] = [r.as_dict() for r in decision.reasons]
        if decision.shadow:
            entry["shadow"] = True
        try:
            self._stream.write(_dumps(entry) + "\n")
        except (OSError, ValueError):
            # disk full or closed stream: losing a log line must not lose the request
            pass

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    async def _flusher(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.flush()

    def start(self, interval: float = 0.2) -> None:
        if self._flush_task is None and self.enabled:
            self._flush_task = asyncio.get_running_loop().create_task(self._flusher(interval), name="log-flush")

    async def close(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        self.flush()
        if self._owns:
            with contextlib.suppress(OSError):
                self._stream.close()
