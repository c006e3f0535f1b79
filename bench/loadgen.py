"""HTTP/1.1 load generator for when ``wrk`` is missing, and for open-loop latency.

Two reasons it exists:

* Closed loop (``--connections N``): N keep-alive connections, each sending its
  next request as soon as the previous response is complete -- what wrk does.
  ``run.py`` uses it as the fallback load generator so the benchmark still runs
  on a machine without wrk.
* Open loop (``--rate R``): requests are *scheduled* at fixed intervals
  regardless of how fast responses come back, and latency is measured from the
  scheduled time, so a stall is charged to every request it delays (no
  "coordinated omission").  wrk has no such mode (wrk2 has, but is not packaged
  here), and "p99 added latency at half the max rate" needs exactly this.

To leave as much headroom as possible on its one core, it speaks HTTP through a
raw ``asyncio.Protocol`` on uvloop with prebuilt request bytes and a minimal
response parser (status line, Content-Length, chunked, read-until-close), and
drives everything from callbacks instead of one task per request.  The open-loop
scheduler spins on the event loop instead of sleeping, because timer wake-ups
are only millisecond-accurate and the latency budget being checked is 1 ms; the
load generator is pinned to its own core, so the spinning costs nothing the
measured server could have used.

For load and soak tests (``bench/soak.py``) it also has:

* ``--mix page=80,login=10,attack=10``: one process sends a blend of request kinds
  to the URL's host (paths fixed: ``/page``, ``/contact``, ``/login``), and reports
  statuses and latency per kind.  ``login`` is a good login from a new client and
  account each time (as ``--vary``); ``attack`` is credential stuffing: wrong
  passwords for ever-new victims from a rotating botnet (``X-Forwarded-For`` in
  198.18.0.0/15, the benchmarking range of RFC 2544; each bot tries a few in a row).
* ``--max-connections M`` (open loop): when every connection is busy, open another
  one, up to M -- as new clients would arrive at an overloaded site -- instead of
  queueing in the load generator, where the target would never see the overload.
* ``--timeline S``: statuses and p50/p99 per S-second window (by scheduled time).

Prints one JSON object on stdout; ``--human`` adds a summary on stderr.

  python bench/loadgen.py --url http://127.0.0.1:8081/page --connections 32 --duration 10
  python bench/loadgen.py --url http://127.0.0.1:8081/login --method POST \\
      --body 'user=alice&password=right' --rate 2000 --duration 10
  python bench/loadgen.py --url http://127.0.0.1:8080/ --mix page=80,login=10,attack=10 \\
      --rate 1500 --max-connections 2000 --duration 60 --timeline 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

_HEAD, _BODY, _CHUNKED, _UNTIL_CLOSE = range(4)
_MAX_HEAD = 64 * 1024


def build_request(method: str, host: str, port: int, target: str, body: bytes, content_type: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: loginguard-bench"]
    if body or method in ("POST", "PUT", "PATCH"):
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_SPREAD = 2654435761  # odd: i -> i * _SPREAD mod 2**24 visits every 24-bit number once


class _Forms:
    """Form POSTs built per request: a new X-Forwarded-For and body each time, from a counter."""

    kind = 0

    def __init__(self, method: str, host: str, port: int, target: str, content_type: str, seed: int) -> None:
        self.head = (
            f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: loginguard-bench\r\n"
            f"Content-Type: {content_type}\r\nX-Forwarded-For: "
        ).encode("latin-1")
        self.i = seed

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self.i += 1
        ip, body = self.client(self.i)
        data = body.encode()
        return self.head + f"{ip}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data

    def client(self, i: int) -> tuple[str, str]:
        raise NotImplementedError


class Vary(_Forms):
    """Good logins, each from a new client and account (see wrk.lua's BENCH_VARY).

    Addresses walk 10.0.0.0/8 in a scattered order (no address repeats within 16M requests,
    consecutive ones land in different /24s), and every account has its own password
    (``right-<n>``, which the bench upstream accepts): thousands of accounts sharing one
    password is password spraying, which the guard would rightly challenge.  With a
    ``population``, the same accounts come back (each from its own address), as a site's
    returning users do; without one, every login is a new account.
    """

    population = 0

    def client(self, i: int) -> tuple[str, str]:
        n = ((i % self.population if self.population else i) * _SPREAD) & 0xFFFFFF
        return f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", f"user=user{n}&password=right-{n}"


class Attack(_Forms):
    """Credential stuffing: leaked pairs that fail, for ever-new victims, from a rotating botnet.

    Bot addresses are in 198.18.0.0/15 (RFC 2544's benchmarking range); each bot sends
    ``per_bot`` attempts in a row, then the next bot takes over, so the target keeps
    seeing new sources (and bans them) instead of blocking one address forever.
    """

    per_bot = 8

    def client(self, i: int) -> tuple[str, str]:
        bot = (i // self.per_bot) % (1 << 17)
        return f"198.{18 + (bot >> 16)}.{(bot >> 8) & 255}.{bot & 255}", f"user=victim{i}&password=wrong{i}"


def vary_requests(
    method: str, host: str, port: int, target: str, content_type: str, seed: int | None = None
) -> Iterator[bytes]:
    """Good logins from many clients and accounts: see ``Vary``."""
    return Vary(method, host, port, target, content_type, _seed(seed))


def _seed(seed: int | None) -> int:
    # A different start per run: repeated runs against one target do not replay the same clients.
    return random.Random(seed if seed is not None else time.time_ns() ^ os.getpid()).randrange(1 << 24)


MIX_KINDS = ("page", "contact", "login", "attack")


class Mix:
    """A blend of request kinds, interleaved evenly by weight; ``kind`` is the index of the last one."""

    def __init__(
        self, spec: dict[str, int], host: str, port: int, content_type: str, seed: int | None, population: int = 0
    ) -> None:
        self.names = [k for k in MIX_KINDS if spec.get(k)]
        start = _seed(seed)
        gets = {k: build_request("GET", host, port, f"/{k}", b"", content_type) for k in ("page", "contact")}
        logins = Vary("POST", host, port, "/login", content_type, start)
        logins.population = population
        sources: dict[str, Iterator[bytes]] = {
            "login": logins,
            "attack": Attack("POST", host, port, "/login", content_type, start),
        }
        # A fixed schedule of 100 slots (smooth weighted round robin): kinds interleave evenly.
        total = sum(spec[k] for k in self.names)
        credit = dict.fromkeys(self.names, 0)
        self.schedule: list[tuple[int, bytes | Iterator[bytes]]] = []
        for _ in range(100):
            for k in self.names:
                credit[k] += spec[k]
            pick = max(self.names, key=lambda k: credit[k])
            credit[pick] -= total
            self.schedule.append((self.names.index(pick), gets.get(pick) or sources[pick]))
        self.pos = 0
        self.kind = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        kind, req = self.schedule[self.pos]
        self.pos = (self.pos + 1) % len(self.schedule)
        self.kind = kind
        return req if isinstance(req, bytes) else next(req)


def parse_mix(text: str) -> dict[str, int]:
    """``page=80,login=10,attack=10`` -> weights; unknown kinds or bad numbers are a usage error."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in MIX_KINDS or not weight.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected KIND=WEIGHT with KIND in {', '.join(MIX_KINDS)} (got {part!r})"
            )
        out[name] = int(weight)
    if not any(out.values()):
        raise argparse.ArgumentTypeError("all weights are 0")
    return out


def _header_value(head: bytes, name: bytes) -> bytes | None:
    """Value of header ``name`` in a lower-cased header block, or None."""
    i = head.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    start = i + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


@dataclass(slots=True)
class Stats:
    latencies_ns: list[int] = field(default_factory=list)  # open loop: from the scheduled time
    service_ns: list[int] = field(default_factory=list)  # open loop: from the write
    statuses: Counter[int] = field(default_factory=Counter)
    connect_errors: int = 0
    read_errors: int = 0
    timeouts: int = 0
    # per request, when kinds or a timeline are asked for: scheduled time, latency, service
    # time (from the write), status (0: the connection died mid-request), kind
    at_ns: array[int] = field(default_factory=lambda: array("q"))
    lat_ns: array[int] = field(default_factory=lambda: array("q"))
    svc_ns: array[int] = field(default_factory=lambda: array("q"))
    status_of: array[int] = field(default_factory=lambda: array("h"))
    kind_of: array[int] = field(default_factory=lambda: array("b"))


class Conn(asyncio.Protocol):
    """One keep-alive connection; reports each complete response to ``on_response``."""

    def __init__(
        self,
        request: bytes | Iterator[bytes],
        on_response: Callable[[Conn, int], None],
        on_lost: Callable[[Conn], None],
    ):
        self.request = request
        self.on_response = on_response
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _HEAD
        self.remaining = 0
        self.status = 0
        self.close_after = False
        self.busy = False
        self.scheduled_ns = 0  # when the request was due (open loop) / sent (closed loop)
        self.sent_ns = 0
        self.kind = 0  # of the request in flight (see Mix)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy and self.state == _UNTIL_CLOSE:
            self._complete()
        self.transport = None
        self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while self.busy:
            if self.state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        self.abort()
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                self.status = int(head[9:12])
                connection = _header_value(head, b"connection")
                self.close_after = connection == b"close" or head.startswith(b"http/1.0")
                te = _header_value(head, b"transfer-encoding")
                length = _header_value(head, b"content-length")
                if te is not None and b"chunked" in te:
                    self.state = _CHUNKED
                elif length is not None:
                    self.remaining = int(length)
                    self.state = _BODY
                elif self.status in (204, 304) or 100 <= self.status < 200:
                    self.remaining = 0
                    self.state = _BODY
                else:
                    self.state = _UNTIL_CLOSE
            if self.state == _BODY:
                take = min(len(buf), self.remaining)
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self._complete()
            elif self.state == _CHUNKED:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                if size == 0:
                    if buf[eol + 2 : eol + 4] == b"\r\n":
                        del buf[: eol + 4]
                    else:  # trailers
                        end = buf.find(b"\r\n\r\n", eol)
                        if end < 0:
                            return
                        del buf[: end + 4]
                    self._complete()
                else:
                    if len(buf) < eol + 2 + size + 2:
                        return
                    del buf[: eol + 2 + size + 2]
            else:  # _UNTIL_CLOSE
                buf.clear()
                return

    # -- driving -----------------------------------------------------------------------------
    def send(self, scheduled_ns: int) -> None:
        assert self.transport is not None
        self.busy = True
        self.state = _HEAD
        self.scheduled_ns = scheduled_ns
        self.sent_ns = time.perf_counter_ns()
        req = self.request
        if isinstance(req, bytes):
            self.transport.write(req)
        else:
            self.transport.write(next(req))
            self.kind = getattr(req, "kind", 0)
        if self.buf:
            # The server answered before the request (a refusal at accept: a 503 page, then
            # a close).  Like a browser, read it as the answer rather than call it a reset.
            self.data_received(b"")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _complete(self) -> None:
        self.busy = False
        self.state = _HEAD
        if self.close_after and self.transport is not None:
            self.transport.close()
        self.on_response(self, self.status)


class Generator:
    """Shared bookkeeping of both modes: connections, stats, reconnects."""

    def __init__(
        self, host: str, port: int, request: bytes | Iterator[bytes], timeout: float, detail: bool = False
    ) -> None:
        self.host, self.port, self.request, self.timeout = host, port, request, timeout
        self.detail = detail  # keep every request's (time, latency, status, kind) for kinds / timeline
        self.origin_ns = time.perf_counter_ns()
        self.stats = Stats()
        self.conns: set[Conn] = set()
        self.recording = False
        self.stopping = False
        self.in_flight = 0
        self.drained = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()  # reconnects in progress (the loop keeps weak refs)

    async def connect(self) -> Conn | None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Conn(self.request, self._response, self._lost), self.host, self.port
                ),
                self.timeout,
            )
        except (OSError, TimeoutError):
            self.stats.connect_errors += 1
            return None
        if conn.transport is None:
            # Accepted and closed at once (a server refusing connections past its limit):
            # ``_lost`` has already scheduled the replacement.
            return None
        self.conns.add(conn)
        return conn

    def _counts(self, conn: Conn) -> bool:
        """Whether the request ``conn`` just finished belongs to the measured window."""
        return self.recording

    def _record(self, conn: Conn, status: int) -> None:
        now = time.perf_counter_ns()
        self.in_flight -= 1
        if self._counts(conn):
            self.stats.statuses[status] += 1
            self.stats.latencies_ns.append(now - conn.scheduled_ns)
            self.stats.service_ns.append(now - conn.sent_ns)
            if self.detail:
                self._detail(conn, now, status)
        if self.stopping and self.in_flight == 0:
            self.drained.set()

    def _detail(self, conn: Conn, now: int, status: int) -> None:
        s = self.stats
        s.at_ns.append(conn.scheduled_ns - self.origin_ns)
        s.lat_ns.append(now - conn.scheduled_ns)
        s.svc_ns.append(now - conn.sent_ns)
        s.status_of.append(status)
        s.kind_of.append(conn.kind)

    def _response(self, conn: Conn, status: int) -> None:
        raise NotImplementedError

    def _lost(self, conn: Conn) -> None:
        self.conns.discard(conn)
        if conn.busy:  # died mid-request
            conn.busy = False
            self.in_flight -= 1
            if self._counts(conn):
                self.stats.read_errors += 1
                if self.detail:
                    self._detail(conn, time.perf_counter_ns(), 0)
            if self.stopping and self.in_flight == 0:
                self.drained.set()
        if not self.stopping:
            task = asyncio.get_running_loop().create_task(self._replace())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _replace(self) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        self.stopping = True
        if self.in_flight > 0:
            try:
                await asyncio.wait_for(self.drained.wait(), self.timeout)
            except TimeoutError:
                self.stats.timeouts += self.in_flight
        for conn in list(self.conns):
            conn.abort()


class ClosedLoop(Generator):
    """N connections, each back-to-back request/response until the deadline."""

    def _response(self, conn: Conn, status: int) -> None:
        self._record(conn, status)
        if not self.stopping and conn.transport is not None and not conn.close_after:
            self._send(conn)

    def _send(self, conn: Conn) -> None:
        self.in_flight += 1
        conn.send(time.perf_counter_ns())

    async def _replace(self) -> None:
        conn = await self.connect()
        if conn is not None and not self.stopping:
            self._send(conn)

    async def run(self, connections: int, duration: float, warmup: float) -> float:
        opened = await asyncio.gather(*(self.connect() for _ in range(connections)))
        for conn in opened:
            if conn is not None:
                self._send(conn)
        if warmup > 0:
            await asyncio.sleep(warmup)
        self.origin_ns = time.perf_counter_ns()
        self.recording = True
        started = time.perf_counter()
        await asyncio.sleep(duration)
        self.recording = False
        elapsed = time.perf_counter() - started
        await self.drain()
        return elapsed


class OpenLoop(Generator):
    """Requests due every 1/rate s; each goes to an idle connection, or waits in a backlog.

    With ``max_connections`` above the pool size, a due request that finds no idle
    connection also opens a new one (up to that many), so an overloaded target sees the
    overload as clients arriving, not as a queue inside the load generator.
    """

    def __init__(
        self,
        host: str,
        port: int,
        request: bytes | Iterator[bytes],
        timeout: float,
        detail: bool = False,
        max_connections: int = 0,
    ) -> None:
        super().__init__(host, port, request, timeout, detail)
        self.idle: list[Conn] = []
        self.backlog: deque[int] = deque()
        self.max_backlog = 0
        self.sent = 0
        self.window = (0, 0)
        self.max_connections = max_connections
        self.connecting = 0
        self.peak_connections = 0

    def _counts(self, conn: Conn) -> bool:
        # By *scheduled* time, so the slowest requests of the window -- those still in
        # flight when it closes -- are waited for and counted, not silently dropped.
        return self.window[0] <= conn.scheduled_ns < self.window[1]

    def _response(self, conn: Conn, status: int) -> None:
        self._record(conn, status)
        if conn.transport is None or conn.close_after:
            return
        if self.backlog:
            self._send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)

    def _send(self, conn: Conn, scheduled_ns: int) -> None:
        self.in_flight += 1
        self.sent += 1
        conn.send(scheduled_ns)

    def _lost(self, conn: Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        super()._lost(conn)

    async def _replace(self) -> None:
        conn = await self.connect()
        if conn is None or self.stopping:
            return
        if self.backlog:
            self._send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)

    def _dispatch(self, scheduled_ns: int) -> None:
        if self.idle:
            self._send(self.idle.pop(), scheduled_ns)  # LIFO: reuse the warmest connection
            return
        self.backlog.append(scheduled_ns)
        if len(self.conns) + self.connecting < self.max_connections:
            self.connecting += 1
            task = asyncio.get_running_loop().create_task(self._grow())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.max_backlog = max(self.max_backlog, len(self.backlog))

    async def _grow(self) -> None:
        try:
            await self._replace()
        finally:
            self.connecting -= 1
            self.peak_connections = max(self.peak_connections, len(self.conns))

    async def run(self, connections: int, duration: float, warmup: float, rate: float) -> float:
        for conn in await asyncio.gather(*(self.connect() for _ in range(connections))):
            if conn is not None:
                self.idle.append(conn)
        interval_ns = 1e9 / rate
        start_ns = time.perf_counter_ns()
        record_from = start_ns + int(warmup * 1e9)
        self.origin_ns = record_from
        end_ns = record_from + int(duration * 1e9)
        self.window = (record_from, end_ns)
        n = 0
        due = start_ns
        while True:
            now = time.perf_counter_ns()
            if now >= end_ns:
                break
            while due <= now:
                self._dispatch(due)
                n += 1
                due = start_ns + int(n * interval_ns)
            # Spin through the event loop (I/O is polled every pass) until close to the next
            # due time; sleep only when it is far away, as loop timers have 1 ms granularity.
            gap = due - time.perf_counter_ns()
            await asyncio.sleep((gap - 1_500_000) / 1e9 if gap > 2_000_000 else 0)
        self.stats.timeouts += len(self.backlog)  # due but never sent: the target could not keep up
        self.backlog.clear()
        await self.drain()
        return (end_ns - record_from) / 1e9


def percentile(sorted_values: list[int], p: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1] / 1e6


def summarize(values_ns: list[int] | array[int]) -> dict[str, float]:
    values = sorted(values_ns)
    out = {f"p{p:g}".replace(".", "_"): percentile(values, p) for p in (50, 90, 99, 99.9)}
    out["max"] = values[-1] / 1e6 if values else math.nan
    out["mean"] = sum(values) / len(values) / 1e6 if values else math.nan
    return out


def _group(stats: Stats, indices: Iterator[int] | range) -> dict[str, Any]:
    """Requests, statuses (0: connection died mid-request), latency and service time of some requests."""
    lat: list[int] = []
    svc: list[int] = []
    statuses: Counter[int] = Counter()
    for i in indices:
        lat.append(stats.lat_ns[i])
        svc.append(stats.svc_ns[i])
        statuses[stats.status_of[i]] += 1
    return {
        "requests": len(lat),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "latency_ms": summarize(lat),
        "service_ms": summarize(svc),
    }


def by_kind(stats: Stats, names: list[str]) -> dict[str, dict[str, Any]]:
    n = len(stats.kind_of)
    return {
        name: _group(stats, (i for i in range(n) if stats.kind_of[i] == k)) for k, name in enumerate(names)
    }


def timeline(stats: Stats, bucket: float, names: list[str] | None) -> list[dict[str, Any]]:
    """Per ``bucket`` seconds of scheduled time: all requests, and each kind when there are kinds."""
    width = int(bucket * 1e9)
    buckets: dict[int, list[int]] = {}
    for i, at in enumerate(stats.at_ns):
        buckets.setdefault(max(0, at) // width, []).append(i)
    out = []
    for b in sorted(buckets):
        idx = buckets[b]
        entry = {"t": b * bucket, **_group(stats, iter(idx))}
        if names:
            entry["kinds"] = {
                name: _group(stats, (i for i in idx if stats.kind_of[i] == k)) for k, name in enumerate(names)
            }
        out.append(entry)
    return out


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[int]]:
    # A collector pause here would be charged to the target as latency; this process is
    # short-lived and its garbage is acyclic, so the cycle collector is simply off.
    gc.disable()
    url = urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        raise SystemExit("only http://host:port/path URLs are supported")
    host, port = url.hostname, url.port or 80
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    request: bytes | Iterator[bytes] = build_request(
        args.method.upper(), host, port, target, args.body.encode(), args.content_type
    )
    names: list[str] | None = None
    if args.mix:
        mix = Mix(args.mix, host, port, args.content_type, args.seed, args.population)
        request, names = mix, mix.names
    elif args.vary:
        request = vary_requests(args.method.upper(), host, port, target, args.content_type, args.seed)
    detail = bool(names or args.timeline)
    result: dict[str, Any] = {"url": args.url, "method": args.method.upper(), "connections": args.connections}
    if args.rate:
        gen: Generator = OpenLoop(host, port, request, args.timeout, detail, args.max_connections)
        assert isinstance(gen, OpenLoop)
        elapsed = await gen.run(args.connections, args.duration, args.warmup, args.rate)
        result.update(mode="open", target_rate=args.rate, max_backlog=gen.max_backlog)
        if args.max_connections:
            result["peak_connections"] = max(gen.peak_connections, args.connections)
    else:
        gen = ClosedLoop(host, port, request, args.timeout, detail)
        assert isinstance(gen, ClosedLoop)
        elapsed = await gen.run(args.connections, args.duration, args.warmup)
        result["mode"] = "closed"
    s = gen.stats
    completed = len(s.latencies_ns)
    bad_status = sum(n for code, n in s.statuses.items() if code >= 400)
    result.update(
        duration=elapsed,
        requests=completed,
        rps=completed / elapsed if elapsed > 0 else 0.0,
        statuses={str(k): v for k, v in sorted(s.statuses.items())},
        errors={
            "connect": s.connect_errors,
            "read": s.read_errors,
            "timeout": s.timeouts,
            "status": bad_status,
            "total": s.connect_errors + s.read_errors + s.timeouts + bad_status,
        },
        latency_ms=summarize(s.latencies_ns),
    )
    if args.rate:
        result["service_ms"] = summarize(s.service_ns)
    if names:
        result["mix"] = args.mix
        result["kinds"] = by_kind(s, names)
    if args.timeline:
        result["timeline"] = timeline(s, args.timeline, names)
    return result, s.latencies_ns


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="", help="request body (sent with Content-Length)")
    parser.add_argument(
        "--vary", action="store_true", help="logins from many clients (X-Forwarded-For) and accounts"
    )
    parser.add_argument(
        "--mix",
        type=parse_mix,
        metavar="KIND=W,...",
        help=f"blend of request kinds ({', '.join(MIX_KINDS)}) to the URL's host; --url's path is ignored",
    )
    parser.add_argument("--seed", type=int, help="start of the --vary/--mix client sequence (default: random)")
    parser.add_argument(
        "--population", type=int, default=0, help="--mix logins: N returning accounts (default: every one new)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=0,
        metavar="M",
        help="open loop: open more connections (up to M) when all are busy, instead of queueing here",
    )
    parser.add_argument(
        "--timeline", type=float, default=0.0, metavar="S", help="also report statuses and latency per S s"
    )
    parser.add_argument("--content-type", default="application/x-www-form-urlencoded")
    parser.add_argument(
        "--connections", type=int, default=32, help="closed loop: concurrency; open: pool size"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of load before measuring")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests/s")
    parser.add_argument("--timeout", type=float, default=5.0, help="connect timeout and final drain wait")
    parser.add_argument("--samples", help="write every measured latency (ns, one per line) to this file")
    parser.add_argument("--human", action="store_true", help="also print a summary on stderr")
    args = parser.parse_args()
    if args.connections < 1 or args.duration <= 0 or args.rate < 0 or args.timeline < 0:
        parser.error("--connections >= 1, --duration > 0, --rate >= 0, --timeline >= 0")
    if args.max_connections and (not args.rate or args.max_connections < args.connections):
        parser.error("--max-connections needs --rate and must be at least --connections")
    try:
        import uvloop
    except ImportError:
        result, samples = asyncio.run(run(args))
    else:
        result, samples = uvloop.run(run(args))
    if args.samples:
        with open(args.samples, "w") as fh:
            fh.write("\n".join(map(str, samples)))
    print(json.dumps(result))
    if args.human:
        lat = result["latency_ms"]
        print(
            f"{result['mode']}: {result['rps']:.0f} req/s over {result['duration']:.1f}s, "
            f"p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms, max {lat['max']:.3f} ms, "
            f"statuses {result['statuses']}, errors {result['errors']}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
