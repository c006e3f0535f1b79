"""Keeps named IP lists fresh: URL lists by conditional GET, file lists by polling, into NamedLists.

The failure policy, in one place: a list that cannot be fetched, is too big, parses to
nothing, or is mostly garbage never replaces the list already in use.  The guard goes on
with the last good version (from memory, or after a restart from the on-disk cache) and
counts the failure, so an outage of a list publisher, a captive portal's HTML page, or a
truncated download degrades freshness, never protection.  A download is read under a size
cap (counted after decompression, so a gzip bomb stops at the cap) and a total timeout
(across redirects).

Redirects are followed only within the configured URL's origin (scheme, host and port), at
most ``MAX_REDIRECTS``.  Whoever answers for that origin can already serve any list, so a
same-origin hop adds nothing; a hop to another origin would let a compromised publisher, its
CDN, or anyone on the path of a plain-http URL point the guard's GET at an internal address
(a cloud metadata endpoint, an admin port), or downgrade https to http.  It is refused and
counted like any failed download, and the reason names the target's origin (never its path or
query) so the operator can configure the final URL instead.

Parsing a million lines takes a second or two of CPU, so it runs in a worker thread, as do
stat, file reads and cache writes: the event loop only does the HTTP exchange.  Log lines
carry the list name, counts and the URL without its query string or credentials (API keys
live there), never list content.

This module knows nothing of guard.yaml: :class:`ListSource` is what config wiring hands it.
Counters are plain attributes of :class:`ListStatus` for the metrics wiring to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from yarl import URL

from guard.iplists import NamedLists, ParseResult, parse_bytes, read_list

__all__ = ["ListFetcher", "ListSource", "ListStatus", "Outcome"]

log = logging.getLogger("guard.listfetch")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A list that is more than half bad lines is a different format or an error page, not a list.
DEFAULT_MAX_BAD_RATIO = 0.5
# File lists are a stat() away, so they are checked this often even when ``refresh`` is long.
DEFAULT_FILE_POLL = 5.0

# The cache file is the list as downloaded behind one comment line of metadata: one file
# replaced atomically, so the validators can never belong to a different body, and the file
# is itself a valid list (the parser skips the comment).
_CACHE_MAGIC = b"# loginguard-list-cache "
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class ListSource:
    """Where one named list comes from: exactly one of ``path`` and ``url``.

    ``refresh`` is the seconds between checks of a URL (a file is also checked at least every
    few seconds, see :class:`ListFetcher`); ``max_bytes`` caps a download or file.
    """

    name: str
    path: Path | None = None
    url: str | None = None
    refresh: float = 3600.0
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise ValueError(f"list {self.name!r}: give exactly one of path or url")
        if self.url is not None and urlsplit(self.url).scheme not in ("http", "https"):
            got = _safe_url(self.url)
            raise ValueError(f"list {self.name!r}: url must be http:// or https:// (got {got!r})")
        if not self.refresh > 0:
            raise ValueError(f"list {self.name!r}: refresh must be > 0 (got {self.refresh})")
        if not self.max_bytes > 0:
            raise ValueError(f"list {self.name!r}: max_bytes must be > 0 (got {self.max_bytes})")


class Outcome(enum.StrEnum):
    """What one refresh did.  Every outcome but LOADED and UNCHANGED left the old list in place."""

    LOADED = "loaded"          # a new version is installed
    UNCHANGED = "unchanged"    # 304 Not Modified, or the file's size/mtime did not change
    FAILED = "failed"          # could not get it: network, timeout, HTTP status, missing file
    REJECTED = "rejected"      # got it, refused it: too big, no entries, too many bad lines


@dataclass(slots=True)
class ListStatus:
    """Per-list counters and state, read by metrics and the admin API."""

    loads: int = 0                    # versions installed (download, file or disk cache)
    failures: int = 0                 # refreshes that kept the old list (FAILED or REJECTED)
    not_modified: int = 0             # refreshes that found the source unchanged
    last_success: float | None = None  # wall time the installed list was last confirmed current
    last_attempt: float | None = None
    last_outcome: Outcome | None = None
    last_error: str | None = None     # short reason, never list content
    source: str | None = None         # where the installed version came from: url, file or cache
    entries: int = 0                  # of the installed version
    ranges: int = 0
    bad_lines: int = 0


@dataclass(slots=True)
class _Slot:
    source: ListSource
    status: ListStatus = field(default_factory=ListStatus)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    installed: bool = False           # has this fetcher installed a version yet
    cache_tried: bool = False
    etag: str | None = None
    last_modified: str | None = None
    file_sig: tuple[int, int, int] | None = None   # (mtime_ns, size, inode) of the installed file
    seen_sig: tuple[int, int, int] | None = None   # last file version looked at, good or bad


class _Refused(Exception):
    """A refresh that leaves the old list: ``outcome`` says how, ``reason`` says why (no content)."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


def _safe_url(url: str) -> str:
    """The URL for logs: scheme, host and path; credentials and query (API keys) dropped."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme.lower(), (url.host or "").lower(), url.port   # port: the scheme's default if unset


def _same_origin_redirect(current: URL, location: str | None) -> URL:
    """The redirect's target, if it stays within ``current``'s origin; else :class:`_Refused`."""
    if not location:
        raise _Refused(Outcome.FAILED, "redirect without a Location")
    try:
        target = current.join(URL(location))
    except ValueError:
        raise _Refused(Outcome.FAILED, "redirect to an unparseable Location") from None
    if _origin(target) != _origin(current):
        scheme, host, port = _origin(target)
        shown = f"{scheme}://{host}" + (f":{port}" if port is not None else "") if host else "an unparseable origin"
        raise _Refused(Outcome.FAILED, f"redirect to another origin refused ({shown}); configure the final URL")
    return target


def _cache_file(cache_dir: Path, name: str) -> Path:
    stem = name if _SAFE_NAME.fullmatch(name) else "list-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return cache_dir / f"{stem}.list"


def _write_cache(path: Path, meta: dict[str, str | None], body: bytes) -> None:
    """Atomically replace the cache file (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _CACHE_MAGIC + json.dumps(meta, separators=(",", ":")).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_cache(path: Path, max_bytes: int) -> tuple[dict[str, str | None], ParseResult] | None:
    """The cached metadata and parsed list, or None when there is no usable cache file."""
    try:
        if path.stat().st_size > max_bytes + 4096:
            return None
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not data.startswith(_CACHE_MAGIC):
        return None
    header, _, _ = data.partition(b"\n")
    try:
        meta = json.loads(header[len(_CACHE_MAGIC):])
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    return {k: v for k, v in meta.items() if isinstance(v, str)}, parse_bytes(data)


def _read_file(path: Path, seen: tuple[int, int, int] | None, max_bytes: int
               ) -> tuple[tuple[int, int, int], ParseResult | None]:
    """Stat the file; parse it only if it changed since ``seen``.  Runs in a worker thread."""
    st = path.stat()
    sig = (st.st_mtime_ns, st.st_size, st.st_ino)
    if sig == seen:
        return sig, None
    if st.st_size > max_bytes:
        raise _Refused(Outcome.REJECTED, f"file is larger than max_bytes ({max_bytes})")
    return sig, read_list(path)


class ListFetcher:
    """One asyncio task per list, each refreshing on its interval; :meth:`refresh_once` does one cycle.

    ``clock`` (wall time for ``last_success``), ``sleep`` and ``rng`` (interval jitter) are
    injectable so tests drive cycles without waiting.  URL intervals get +-10% jitter so a
    fleet of guards restarted together does not hit a list server in lockstep.
    """

    def __init__(
        self,
        lists: NamedLists,
        sources: Iterable[ListSource],
        *,
        cache_dir: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_bad_ratio: float = DEFAULT_MAX_BAD_RATIO,
        file_poll: float = DEFAULT_FILE_POLL,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 (got {timeout})")
        if not 0.0 <= max_bad_ratio <= 1.0:
            raise ValueError(f"max_bad_ratio must be between 0 and 1 (got {max_bad_ratio})")
        self.lists = lists
        self._slots: dict[str, _Slot] = {}
        for src in sources:
            if src.name in self._slots:
                raise ValueError(f"list {src.name!r} given twice")
            self._slots[src.name] = _Slot(src)
        self.status: dict[str, ListStatus] = {n: s.status for n, s in self._slots.items()}
        self._cache_dir = cache_dir
        self._timeout = timeout
        self._max_bad_ratio = max_bad_ratio
        self._file_poll = file_poll
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not a secret
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # ---- totals for a one-line health summary ---------------------------------------------------

    @property
    def loads(self) -> int:
        return sum(s.loads for s in self.status.values())

    @property
    def failures(self) -> int:
        return sum(s.failures for s in self.status.values())

    @property
    def last_success(self) -> float | None:
        times = [s.last_success for s in self.status.values() if s.last_success is not None]
        return max(times) if times else None

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Refresh every list once (so the guard starts with what can be had), then keep them fresh."""
        if self._tasks or self._closed:
            raise RuntimeError("ListFetcher.start() called twice, or after close()")
        await self.refresh_all()
        for slot in self._slots.values():
            self._tasks.append(asyncio.create_task(self._run(slot), name=f"listfetch:{slot.source.name}"))

    async def close(self) -> None:
        self._closed = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ListFetcher:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def interval(self, name: str) -> float:
        """Seconds until the next check of ``name``."""
        src = self._slots[name].source
        if src.path is not None:
            return min(src.refresh, self._file_poll)
        return src.refresh * self._rng.uniform(0.9, 1.1)

    async def _run(self, slot: _Slot) -> None:
        """Refresh forever.  An unexpected error is logged and counted; the loop survives it."""
        name = slot.source.name
        while True:
            await self._sleep(self.interval(name))
            await self._refresh_guarded(name)

    async def _refresh_guarded(self, name: str) -> Outcome:
        """:meth:`refresh_once` for the loop and startup: a bug is logged and counted, not raised.

        One list's unexpected error must not stop the other lists, its own loop, or startup.
        """
        try:
            return await self.refresh_once(name)
        except Exception:
            st = self.status[name]
            st.failures += 1
            st.last_outcome, st.last_error = Outcome.FAILED, "internal error"
            log.exception("IP list refresh crashed; keeping the loaded list", extra={"list": name})
            return Outcome.FAILED

    # ---- one cycle ------------------------------------------------------------------------------

    async def refresh_all(self) -> dict[str, Outcome]:
        """Refresh every list concurrently; one list's trouble never stops another's refresh."""
        names = list(self._slots)
        outcomes = await asyncio.gather(*(self._refresh_guarded(n) for n in names))
        return dict(zip(names, outcomes, strict=True))

    async def refresh_once(self, name: str) -> Outcome:
        """Check one list's source now and install a new version if there is a good one."""
        slot = self._slots[name]
        async with slot.lock:
            slot.status.last_attempt = self._clock()
            src = slot.source
            try:
                if src.url is not None:
                    outcome = await self._refresh_url(slot, src.url)
                elif src.path is not None:
                    outcome = await self._refresh_file(slot, src.path)
                else:  # ListSource.__post_init__ makes this unreachable
                    raise ValueError(f"list {name!r} has neither path nor url")
            except _Refused as r:
                return self._refused(slot, r.outcome, r.reason)
            slot.status.last_outcome = outcome
            slot.status.last_success = self._clock()
            if slot.status.last_error is not None:
                log.info("IP list source is healthy again", extra={"list": name})
                slot.status.last_error = None
            if outcome is Outcome.UNCHANGED:
                slot.status.not_modified += 1
            return outcome

    def _refused(self, slot: _Slot, outcome: Outcome, reason: str) -> Outcome:
        """Count the failure; warn once per distinct reason so a long outage is one log line."""
        st = slot.status
        st.failures += 1
        st.last_outcome = outcome
        if reason != st.last_error:
            log.warning(
                "IP list not updated; keeping the loaded one",
                extra={"list": slot.source.name, "outcome": outcome.value, "reason": reason,
                       "has_list": slot.installed, "from": self._where(slot)},
            )
        st.last_error = reason
        return outcome

    def _where(self, slot: _Slot) -> str:
        src = slot.source
        return str(src.path) if src.path is not None else _safe_url(src.url or "")

    def _check(self, result: ParseResult, allow_empty: bool = False) -> None:
        if result.entries == 0 and allow_empty and result.bad == 0:
            return  # an operator's file with only comments is a deliberately empty list
        if result.entries == 0:
            raise _Refused(Outcome.REJECTED, f"no entries ({result.bad} bad lines)")
        if result.bad_ratio > self._max_bad_ratio:
            raise _Refused(
                Outcome.REJECTED,
                f"{result.bad} of {result.entries + result.bad} lines are not addresses or CIDRs",
            )

    def _install(self, slot: _Slot, result: ParseResult, source: str) -> None:
        self.lists.set(slot.source.name, result.ipset)
        slot.installed = True
        st = slot.status
        st.loads += 1
        st.source = source
        st.entries, st.ranges, st.bad_lines = result.entries, len(result.ipset), result.bad
        first_bad = [p.line for p in result.problems[:5]]
        log.info(
            "IP list loaded",
            extra={"list": slot.source.name, "source": source, "entries": result.entries,
                   "ranges": len(result.ipset), "bad_lines": result.bad,
                   "first_bad_line_numbers": ",".join(map(str, first_bad)), "from": self._where(slot)},
        )

    async def _refresh_file(self, slot: _Slot, path: Path) -> Outcome:
        try:
            sig, result = await asyncio.to_thread(_read_file, path, slot.seen_sig, slot.source.max_bytes)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise _Refused(Outcome.FAILED, f"cannot read file ({reason})") from None
        if result is None:
            if sig == slot.file_sig:
                return Outcome.UNCHANGED
            # this version was already looked at and refused; say so again without re-parsing
            raise _Refused(Outcome.REJECTED, slot.status.last_error or "rejected")
        slot.seen_sig = sig
        self._check(result, allow_empty=True)
        self._install(slot, result, "file")
        slot.file_sig = sig
        return Outcome.LOADED

    async def _load_cache(self, slot: _Slot, url: str) -> None:
        """Install the last good download from disk, so a restart without network has a list."""
        slot.cache_tried = True
        if self._cache_dir is None:
            return
        try:
            cached = await asyncio.to_thread(
                _read_cache, _cache_file(self._cache_dir, slot.source.name), slot.source.max_bytes
            )
        except OSError as exc:
            log.warning("IP list cache unreadable", extra={"list": slot.source.name, "reason": exc.strerror})
            return
        if cached is None:
            return
        meta, result = cached
        if meta.get("url") != url:
            return  # the config now names another source; that list is not this one
        try:
            self._check(result)
        except _Refused:
            return
        self._install(slot, result, "cache")
        slot.etag, slot.last_modified = meta.get("etag"), meta.get("last_modified")

    async def _session_for(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("ListFetcher is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "loginguard-listfetch"})
        return self._session

    async def _refresh_url(self, slot: _Slot, url: str) -> Outcome:
        if not slot.installed and not slot.cache_tried:
            await self._load_cache(slot, url)
        headers: dict[str, str] = {}
        if slot.installed:  # validators only vouch for a body we hold
            if slot.etag:
                headers["If-None-Match"] = slot.etag
            if slot.last_modified:
                headers["If-Modified-Since"] = slot.last_modified
        body, etag, last_modified = await self._download(slot, url, headers)
        if body is None:
            return Outcome.UNCHANGED
        result = await asyncio.to_thread(parse_bytes, body)
        self._check(result)
        self._install(slot, result, "url")
        slot.etag, slot.last_modified = etag, last_modified
        if self._cache_dir is not None:
            meta = {"url": url, "etag": etag, "last_modified": last_modified}
            where = _cache_file(self._cache_dir, slot.source.name)
            try:
                await asyncio.to_thread(_write_cache, where, meta, body)
            except OSError as exc:
                log.warning("IP list cache not written",
                            extra={"list": slot.source.name, "reason": exc.strerror})
        return Outcome.LOADED

    async def _download(
        self, slot: _Slot, url: str, headers: dict[str, str]
    ) -> tuple[bytes | None, str | None, str | None]:
        """``(body, etag, last_modified)``; body None on 304.  Raises :class:`_Refused` otherwise."""
        cap = slot.source.max_bytes
        session = await self._session_for()
        target = URL(url)
        try:
            async with asyncio.timeout(self._timeout):      # the whole exchange, redirects included
                for _ in range(MAX_REDIRECTS + 1):
                    async with session.get(target, headers=headers, allow_redirects=False) as resp:
                        if resp.status in _REDIRECTS:
                            target = _same_origin_redirect(target, resp.headers.get("Location"))
                            continue
                        if resp.status == 304 and slot.installed:
                            return None, None, None
                        if resp.status != 200:
                            raise _Refused(Outcome.FAILED, f"HTTP {resp.status}")
                        if resp.content_length is not None and resp.content_length > cap:
                            raise _Refused(Outcome.REJECTED, f"body is larger than max_bytes ({cap})")
                        chunks: list[bytes] = []
                        size = 0
                        # counted after decompression, so a small gzip that inflates past the cap stops here
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            size += len(chunk)
                            if size > cap:
                                raise _Refused(Outcome.REJECTED, f"body is larger than max_bytes ({cap})")
                            chunks.append(chunk)
                        return b"".join(chunks), resp.headers.get("ETag"), resp.headers.get("Last-Modified")
                raise _Refused(Outcome.FAILED, f"more than {MAX_REDIRECTS} redirects")
        except TimeoutError:
            raise _Refused(Outcome.FAILED, f"timed out after {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise _Refused(Outcome.FAILED, f"request failed ({type(exc).__name__})") from None
