"""The decision log: one JSON line per request decision, rotated by size, safe to ship.

What a line may hold is fixed here and nowhere else: time (ISO 8601 and epoch),
client IP, method, host, path (no query string: queries carry tokens and e-mail
addresses; e-mail-like path segments are masked), status, action, the rules
that fired with their scores and counter values, login endpoint and outcome,
the *keyed hash* of the username, country, ASN, latencies.  Never a body, a
header or cookie value, a password or a PII value: the fields are picked one by
one from the event, so a new field elsewhere cannot leak in by accident.

The request path only appends a small tuple to a list.  The rows are encoded
on the event loop right after (a callback queued behind the request, a few rows
at a time) and written by a worker thread on a timer, so neither ``json`` nor a
slow disk costs a request anything, and a full disk or a full queue drops lines
(counted, reported through ``on_drop``) instead of failing or blocking requests.

Several worker processes may share one file: each batch is written with a
single ``write`` under an ``flock``, and whoever holds the lock rotates, so
lines never interleave and a file is rotated once, not once per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from guard.engine.decision import Reason
from guard.observe.events import NullObserver, RequestEvent
from guard.observe.settings import DecisionLogSettings

log = logging.getLogger("guard.observe.decisionlog")

MAX_PATH = 512
MAX_TEXT = 200
_EMAIL = re.compile(r"[^/]*(?:@|%40)[^/]*", re.IGNORECASE)
_ascii_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def _dumps(entry: dict[str, object]) -> bytes:
    """Compact JSON in UTF-8.

    orjson, not ``json``: a line per request is encoded, and ``json`` took about 5 us of the
    9 us a line cost (orjson: 0.4 us).  The stdlib encoder stays as the fallback for what
    orjson refuses (a lone surrogate in a string, an integer beyond 64 bits): it escapes
    them instead, so a line is never lost to its content.
    """
    try:
        return orjson.dumps(entry)
    except orjson.JSONEncodeError:
        return _ascii_dumps(entry).encode("ascii")

# (ts, ip, method, host, path, status, action, shadow, login, outcome, user, country, asn, score,
#  reasons, upstream_s, overhead_s): plain values only, so the request objects are not kept alive.
Row = tuple[Any, ...]


def iso(ts: float) -> str:
    """``ts`` as ISO 8601 UTC with milliseconds, exactly as ``datetime.isoformat`` writes it.

    One line per request is written, and building a ``datetime`` for each cost about 1 % of
    the guard's CPU on a plain GET; the date and time of day change once a second, so they are
    kept per second.  The fraction is rounded to microseconds half-even, then cut to
    milliseconds, as ``datetime.fromtimestamp`` and ``isoformat`` do.
    """
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole += 1.0
        us -= 1_000_000
    elif us < 0:   # before 1970: modf keeps the sign
        whole -= 1.0
        us += 1_000_000
    second = int(whole)
    cached = _ISO_SECOND[0]
    if cached[0] != second:
        # one tuple, swapped whole: a caller on another thread never sees half of it
        cached = _ISO_SECOND[0] = (second, datetime.fromtimestamp(second, UTC).isoformat()[:19])
    return f"{cached[1]}.{us // 1000:03d}Z"


_ISO_SECOND: list[tuple[int | None, str]] = [(None, "")]
"""The last second ``iso`` wrote, and its date and time of day."""


def clean_path(path: str) -> str:
    if len(path) > MAX_PATH:
        path = path[:MAX_PATH] + "..."
    if "@" in path or "%40" in path:
        path = _EMAIL.sub("{email}", path)
    return path


def _text(value: object, limit: int = MAX_TEXT) -> str:
    s = str(value)
    return s if len(s) <= limit else s[:limit] + "..."


def _reason(r: Reason) -> dict[str, object]:
    out: dict[str, object] = {"rule": r.rule}
    if r.detail:
        out["detail"] = _text(r.detail)
    if r.score:
        out["score"] = r.score
    if r.values:
        out["values"] = {
            _text(k, 64): v if isinstance(v, int | float) else _text(v, 64) for k, v in r.values.items()
        }
    if r.shadow:
        out["shadow"] = True
    return out


def encode_row(row: Row, with_user: bool, pid: int) -> bytes:
    """One JSON line: stable field names (dashboards and index mappings depend on them)."""
    (ts, ip, method, host, path, status, action, shadow, login, outcome, user, country, asn, score,
     reasons, upstream_s, overhead_s) = row
    entry: dict[str, object] = {
        "time": iso(ts), "ts": round(ts, 3), "event": "decision", "ip": ip, "method": _text(method, 16),
        "host": _text(host, 255), "path": clean_path(path), "status": status, "action": action,
        "rules": [r.rule for r in reasons],
        "upstream_ms": None if upstream_s is None else round(upstream_s * 1000, 3),
        "overhead_ms": round(overhead_s * 1000, 3), "pid": pid,
    }
    if shadow:
        entry["shadow"] = True
    if login is not None:
        entry["login"] = login
        entry["outcome"] = outcome or "none"
    if user is not None and with_user:
        entry["user"] = user
    if country:
        entry["country"] = country
    if asn:
        entry["asn"] = asn
    if score:
        entry["score"] = score
    if reasons:
        entry["reasons"] = [_reason(r) for r in reasons]
    return _dumps(entry)


def encode_ban(ts: float, subject: str, seconds: float, reason: str, removed: bool, pid: int) -> bytes:
    return _dumps({
        "time": iso(ts), "ts": round(ts, 3), "event": "unban" if removed else "ban",
        "subject": _text(subject, 80), "seconds": seconds, "reason": _text(reason), "pid": pid,
    })


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


PIPE_BUF = 4096   # POSIX: pipe writes up to this size are atomic: workers sharing stderr never split a line


def _write_piped(fd: int, lines: list[bytes]) -> None:
    """Write whole lines in chunks of at most ``PIPE_BUF`` bytes (a longer line goes alone)."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > PIPE_BUF:
            _write_all(fd, b"".join(chunk))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        _write_all(fd, b"".join(chunk))


class RotatingFile:
    """Size-rotated appends, safe across processes (``flock`` on ``<path>.lock``)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._ino = 0

    def _open(self) -> int:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._ino = os.fstat(self._fd).st_ino
        return self._fd

    def _current(self) -> int:
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            ino = -1
        if self._fd is None or ino != self._ino:  # another process rotated (or someone removed the file)
            return self._open()
        return self._fd

    def _rotate(self) -> int:
        if self.backups == 0:
            os.truncate(self.path, 0)
            return self._current()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        return self._open()

    def write(self, lines: list[bytes]) -> None:
        """Append whole lines, rotating between them at ``max_bytes``.  Blocking; raises ``OSError``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fd = self._current()
            size = os.fstat(fd).st_size
            chunk: list[bytes] = []
            room = self.max_bytes - size
            for line in lines:
                if len(line) > room and (chunk or size):
                    _write_all(fd, b"".join(chunk))
                    chunk = []
                    fd = self._rotate()
                    size, room = 0, self.max_bytes
                chunk.append(line)
                room -= len(line)
            if chunk:
                _write_all(fd, b"".join(chunk))
        finally:
            os.close(lock)  # releases the flock

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def files(self) -> list[Path]:
        """The live file and its backups, oldest first (what a report reads)."""
        out = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.backups, 0, -1)]
        return [p for p in [*out, self.path] if p.exists()]


ENCODE_SLICE = 16
"""Rows encoded per callback: a quarter of a millisecond of work on a slow core, then the loop runs."""


class DecisionLog(NullObserver):
    def __init__(
        self,
        settings: DecisionLogSettings,
        stream: IO[str] | None = None,
        on_drop: Callable[[int], None] | None = None,
        inline: bool | None = None,
    ) -> None:
        self.settings = settings
        self._rows: list[Row] = []
        self._lines: list[bytes] = []       # encoded rows, waiting for the writer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._encoding = False              # an _encode_some callback is queued
        self._bans: list[bytes] = []
        self._cap = settings.queue
        self._with_user = settings.usernames == "hash"
        self._on_drop = on_drop
        self._pid = os.getpid()
        path = settings.path
        self._file = RotatingFile(path, settings.max_bytes, settings.backups) if path is not None else None
        self._stream = stream
        # An in-memory stream handed in by an embedding program or a test is written at once:
        # it costs no syscall, and the caller reads it right after the request.
        self._inline = (stream is not None and path is None) if inline is None else inline
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Lock | None = None
        self._last_error = 0.0
        self.dropped = 0
        self.written = 0

    # ---- observer (request path) -------------------------------------------------------------------

    def request(self, event: RequestEvent) -> None:
        rows = self._rows
        if len(rows) + len(self._lines) >= self._cap:
            self._count_dropped(1)
            return
        req = event.req
        d = event.decision
        rows.append((
            event.ts, req.client_ip, req.method, req.host, req.path, event.status, d.action.value, d.shadow,
            req.login, req.outcome, event.user_key, event.country, event.asn, event.score, d.reasons,
            event.upstream_s, event.overhead_s,
        ))
        if self._inline:
            self._rows = []
            self._write(rows, [])
        elif not self._encoding and self._loop is not None:
            self._encoding = True
            self._loop.call_soon(self._encode_some)

    def _encode_some(self) -> None:
        """Encode a slice of the waiting rows (``_encode_batch``); queue another pass if more are left.

        Queued behind the request that added the row, so it runs once that response is on
        its way, and spreads the encoding over the loop's passes as requests come.  Encoding
        a whole flush's rows at once (half a second of traffic) made every request in flight
        wait behind each slice of it on every one of its awaits: +2.5 ms at the p99.
        """
        try:
            self._encode_batch()
        finally:
            if self._rows and self._loop is not None:
                self._loop.call_soon(self._encode_some)
            else:
                self._encoding = False

    def _encode_batch(self) -> None:
        """Move up to ``ENCODE_SLICE`` rows from the queue to the encoded lines.

        The rows leave the queue before they are encoded: a row that will not encode (a rule
        value JSON cannot write) costs its batch, counted as dropped, never the log itself.
        """
        rows = self._rows
        if len(rows) > ENCODE_SLICE:
            batch = rows[:ENCODE_SLICE]
            del rows[:ENCODE_SLICE]
        else:
            batch, self._rows = rows, []
        try:
            self._lines.extend(self._encode(batch, []))
        except Exception:
            log.exception("decision log: %d row(s) could not be encoded and were dropped", len(batch))
            self._count_dropped(len(batch))

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        if self._on_drop is not None:
            self._on_drop(n)

    def ban(self, subject: str, seconds: float, reason: str, removed: bool = False) -> None:
        if len(self._bans) < self._cap:
            self._bans.append(encode_ban(time.time(), subject, seconds, reason, removed, self._pid))

    # ---- writing ----------------------------------------------------------------------------------------

    def _encode(self, rows: list[Row], bans: list[bytes]) -> list[bytes]:
        enc = encode_row
        lines = [enc(r, self._with_user, self._pid) + b"\n" for r in rows]
        lines.extend(b + b"\n" for b in bans)
        return lines

    def _write(self, rows: list[Row], bans: list[bytes]) -> None:
        self._write_lines(self._encode(rows, bans), len(rows), len(bans))

    def _write_lines(self, lines: list[bytes], n_rows: int, n_bans: int) -> None:
        if not lines:
            return
        try:
            if self._file is not None:
                self._file.write(lines)
            elif self._stream is not None:
                self._stream.write(b"".join(lines).decode("utf-8"))
                self._stream.flush()
            else:
                _write_piped(sys.stderr.fileno(), lines)
            self.written += n_rows
        except (OSError, ValueError) as exc:
            # A full disk loses log lines, never requests.  Say so, at most once a minute.
            self._count_dropped(n_rows + n_bans)
            now = time.monotonic()
            if now - self._last_error > 60:
                self._last_error = now
                reason = getattr(exc, "strerror", None) or exc
                log.error("decision log write failed; dropping lines: %s", reason)

    async def flush(self) -> None:
        """Write what is encoded (encoding the rest first, a slice at a time); the thread only writes.

        Encoding is pure Python: in a thread it would hold the GIL while the event loop
        waits for it, in 5 ms slices (``sys.getswitchinterval``), which is a p99 of several
        milliseconds on every request in flight.  So it happens on the loop, in slices of
        ``ENCODE_SLICE`` rows with a yield between them (``_encode_some`` does most of it as
        rows arrive).  Writing, which releases the GIL, stays in the thread.  One batch at a
        time, in order.
        """
        if self._writing is None:
            self._writing = asyncio.Lock()
        async with self._writing:
            while self._rows:
                self._encode_batch()
                if self._rows:
                    await asyncio.sleep(0)
            lines, n_rows, n_bans = self._take_encoded()
            if lines:
                await asyncio.to_thread(self._write_lines, lines, n_rows, n_bans)

    def flush_sync(self) -> None:
        while self._rows:
            self._encode_batch()
        self._write_lines(*self._take_encoded())

    def _take_encoded(self) -> tuple[list[bytes], int, int]:
        """The encoded rows and the bans after them, for one write, and how many of each."""
        lines, self._lines = self._lines, []
        bans, self._bans = self._bans, []
        n_rows = len(lines)
        lines.extend(self._encode([], bans))
        return lines, n_rows, len(bans)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.flush()
            except Exception:  # the flusher must outlive a bug in one batch
                log.exception("decision log flush failed")

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name="decision-log")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._loop = None   # a callback still queued finds nothing to do, or encodes once more
        await self.flush()
        if self._file is not None:
            self._file.close()

    def files(self) -> list[Path]:
        return self._file.files() if self._file is not None else []
