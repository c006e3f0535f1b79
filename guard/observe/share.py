"""One live view for the whole guard when ``--workers N`` splits it over processes.

Each worker's ``LiveView`` only sees the requests that worker served, and an
admin request lands on any one worker (``SO_REUSEPORT``).  So every worker
writes a snapshot of its view into the shared folder (next to the Prometheus
multiprocess files) every ``interval`` seconds, and an API request merges the
fresh snapshots of all workers with its own current one.  The other workers'
part is at most ``interval`` old; a dead worker's file goes stale and drops out.

Reading and writing happen in a worker thread: never file I/O on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from guard.observe.live import LiveView, merge

log = logging.getLogger("guard.observe.share")

SHARED_RECENT = 500   # recent rows each worker publishes: the dashboard shows far fewer


class LiveShare:
    def __init__(self, live: LiveView, folder: Path | None, interval: float = 2.0) -> None:
        self.live = live
        self.folder = folder
        self.interval = interval
        self._pid = os.getpid()
        self._task: asyncio.Task[None] | None = None

    def _write(self, folder: Path, snap: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".live-{self._pid}.tmp"
        tmp.write_text(json.dumps(snap, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, folder / f"live-{self._pid}.json")   # readers see a whole snapshot or the last one

    def _read_peers(self, folder: Path, now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for p in folder.glob("live-*.json"):
            if p.name == f"live-{self._pid}.json":
                continue
            try:
                if now - p.stat().st_mtime > 3 * self.interval:
                    continue
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue   # a peer mid-restart: skip it this time
        return out

    async def view(self, recent: int = 2000) -> dict[str, Any]:
        """The guard-wide view: this worker now, the others as of their last snapshot."""
        own = self.live.snapshot(recent=recent)
        folder = self.folder
        if folder is None:
            return own
        peers = await asyncio.to_thread(self._read_peers, folder, time.time())
        return merge([own, *peers], recent=recent) if peers else own

    async def _run(self, folder: Path) -> None:
        while True:
            try:
                snap = self.live.snapshot(recent=SHARED_RECENT)
                await asyncio.to_thread(self._write, folder, snap)
            except Exception:  # publishing is best effort; the next tick tries again
                log.exception("could not publish the live snapshot")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.folder is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(self.folder), name="live-share")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.folder is not None:
            with contextlib.suppress(OSError):
                (self.folder / f"live-{self._pid}.json").unlink()
