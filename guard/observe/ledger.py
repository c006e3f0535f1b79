"""The exposure ledger: every valid password presented from a flagged source, kept across restarts.

This is the list security needs for forced resets, so it must outlive the
process: with the memory store it is a local append-only JSON-lines file, with
Redis a Redis stream (every instance writes to the same one).  Both are bounded
(``max_entries``): the file is compacted to its newest rows, the stream is
trimmed by ``XADD MAXLEN``.

The login id arrives sealed (AES-GCM) from the engine and is stored sealed;
only ``guard report`` opens it.  The observer call only queues the row; a
timer writes batches (in a thread for the file), and rows that could not be
written stay queued for the next try, up to a cap past which they are dropped
and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from guard.config import StoreConfig
from guard.observe.events import ExposureEntry, NullObserver
from guard.observe.settings import LedgerSettings

log = logging.getLogger("guard.observe.ledger")

LEDGER_FILE = "exposure-ledger.jsonl"
PENDING_CAP = 10_000
COMPACT_SLACK = 1.1      # compact the file when it holds 10% more rows than max_entries


def to_json(e: ExposureEntry) -> dict[str, Any]:
    return {
        "v": 1, "ts": e.ts, "user_key": e.user_key, "login_sealed": e.login_sealed, "ip": e.ip,
        "country": e.country, "asn": e.asn, "flags": list(e.flags), "seen": e.seen, "endpoint": e.endpoint,
        "rules": list(e.rules),
    }


def from_json(d: Mapping[str, Any]) -> ExposureEntry:
    return ExposureEntry(
        ts=float(d["ts"]), user_key=str(d["user_key"]), login_sealed=str(d.get("login_sealed", "")),
        ip=str(d.get("ip", "")), country=str(d.get("country", "")), asn=int(d.get("asn", 0) or 0),
        flags=tuple(str(f) for f in d.get("flags", ())), seen=bool(d.get("seen", False)),
        endpoint=str(d.get("endpoint", "")), rules=tuple(str(r) for r in d.get("rules", ())),
    )


def _in(e: ExposureEntry, since: float | None, until: float | None) -> bool:
    return (since is None or e.ts >= since) and (until is None or e.ts < until)


class LedgerBackend(Protocol):
    name: str

    async def append(self, entries: list[ExposureEntry]) -> None:
        """Persist ``entries``; raise ``OSError`` / ``ConnectionError`` to have them retried."""

    async def read(self, since: float | None = None, until: float | None = None) -> list[ExposureEntry]: ...

    async def close(self) -> None: ...


class FileLedger:
    """Append-only JSON lines; a torn last line (a crash mid-write) is skipped on read."""

    name = "file"

    def __init__(self, path: Path, max_entries: int) -> None:
        self.path = path
        self.max_entries = max_entries
        self._rows: int | None = None   # lines in the file, counted on first append

    def _locked(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _count(self) -> int:
        try:
            with open(self.path, "rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def _append(self, entries: list[ExposureEntry]) -> None:
        lock = self._locked()
        try:
            if self._rows is None:
                self._rows = self._count()
            data = "".join(json.dumps(to_json(e), separators=(",", ":")) + "\n" for e in entries).encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)   # a forced-reset list that loses its last second on power loss is a bad list
            finally:
                os.close(fd)
            self._rows += len(entries)
            if self._rows > self.max_entries * COMPACT_SLACK:
                self._compact()
        finally:
            os.close(lock)

    def _compact(self) -> None:
        with open(self.path, "rb") as f:
            lines = f.readlines()[-self.max_entries :]
        tmp = self.path.with_name(self.path.name + ".compact")
        with open(tmp, "wb") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._rows = len(lines)

    def _read(self, since: float | None, until: float | None) -> list[ExposureEntry]:
        out: list[ExposureEntry] = []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        e = from_json(json.loads(line))
                    except (ValueError, KeyError, TypeError):
                        continue
                    if _in(e, since, until):
                        out.append(e)
        except FileNotFoundError:
            pass
        return out

    async def append(self, entries: list[ExposureEntry]) -> None:
        await asyncio.to_thread(self._append, entries)

    async def read(self, since: float | None = None, until: float | None = None) -> list[ExposureEntry]:
        return await asyncio.to_thread(self._read, since, until)

    async def close(self) -> None:
        return None


class RedisLedger:
    """A Redis stream shared by every instance; ``XADD MAXLEN ~`` keeps it bounded."""

    name = "redis"

    def __init__(self, url: str, key: str, max_entries: int, timeout: float = 2.0) -> None:
        from redis.asyncio import Redis

        self.key = key
        self.max_entries = max_entries
        self._redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    async def append(self, entries: list[ExposureEntry]) -> None:
        from redis.exceptions import RedisError

        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for e in entries:
                    pipe.xadd(self.key, {"e": json.dumps(to_json(e), separators=(",", ":"))},
                              maxlen=self.max_entries, approximate=True)
                await pipe.execute()
        except RedisError as exc:
            raise ConnectionError(str(exc)) from exc

    async def read(self, since: float | None = None, until: float | None = None) -> list[ExposureEntry]:
        # Stream ids are the server's clock; rows carry the guard's.  Read a margin wider, filter exactly.
        lo = "-" if since is None else str(max(0, int((since - 3600) * 1000)))
        hi = "+" if until is None else str(int((until + 3600) * 1000))
        from redis.exceptions import RedisError

        out: list[ExposureEntry] = []
        cursor = lo
        while True:
            try:
                batch = await self._redis.xrange(self.key, min=cursor, max=hi, count=5000)
            except RedisError as exc:
                raise ConnectionError(str(exc)) from exc
            if not batch:
                break
            for _id, fields in batch:
                raw = fields.get(b"e") or fields.get("e") if fields else None
                try:
                    e = from_json(json.loads(raw or b""))
                except (ValueError, KeyError, TypeError):
                    continue
                if _in(e, since, until):
                    out.append(e)
            last = batch[-1][0]
            last_s = last.decode() if isinstance(last, bytes) else str(last)
            cursor = "(" + last_s
            if len(batch) < 5000:
                break
        return out

    async def close(self) -> None:
        await self._redis.aclose()


class Ledger(NullObserver):
    """The observer: queues rows from the request path, writes them on a timer."""

    def __init__(self, backend: LedgerBackend, flush_interval: float = 1.0,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.backend = backend
        self.flush_interval = flush_interval
        self._pending: list[ExposureEntry] = []
        self._on_drop = on_drop
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.dropped = 0
        self._failing = False

    def exposure(self, entry: ExposureEntry) -> None:
        if len(self._pending) >= PENDING_CAP:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)
            return
        self._pending.append(entry)

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self.backend.append(batch)
                if self._failing:
                    log.info("exposure ledger writable again")
                self._failing = False
            except (OSError, ConnectionError) as exc:
                # keep the rows for the next try, oldest first, within the cap
                room = PENDING_CAP - len(self._pending)
                kept = batch[:room] if room > 0 else []
                lost = len(batch) - len(kept)
                self._pending[:0] = kept
                if lost:
                    self.dropped += lost
                    if self._on_drop is not None:
                        self._on_drop(lost)
                if not self._failing:
                    log.error("exposure ledger (%s) not writable, rows kept in memory: %s",
                              self.backend.name, exc)
                self._failing = True

    async def read(self, since: float | None = None, until: float | None = None) -> list[ExposureEntry]:
        """Stored rows plus those still queued in this process."""
        rows = await self.backend.read(since, until)
        rows.extend(e for e in self._pending if _in(e, since, until))
        return rows

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("exposure ledger flush failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-flush")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        await self.backend.close()


def make_backend(settings: LedgerSettings, store: StoreConfig,
                 state_dir: Path = Path("var")) -> LedgerBackend:
    """From ``observe.ledger`` and the ``store:`` section: Redis when the store is, else the file."""
    backend = settings.backend
    if backend == "auto":
        backend = "redis" if store.backend == "redis" else "file"
    if backend == "redis":
        return RedisLedger(store.url, f"{store.key_prefix}{settings.key}", settings.max_entries)
    return FileLedger(settings.path or state_dir / LEDGER_FILE, settings.max_entries)
