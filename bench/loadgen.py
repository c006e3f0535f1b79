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

Prints one JSON object on stdout; ``--human`` adds a summary on stderr.

  python bench/loadgen.py --url http://127.0.0.1:8081/page --connections 32 --duration 10
  python bench/loadgen.py --url http://127.0.0.1:8081/login --method POST \\
      --body 'user=alice&password=right' --rate 2000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import random
import sys
import time
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


def vary_requests(
    method: str, host: str, port: int, target: str, content_type: str, n: int = 4096
) -> Iterator[bytes]:
    """Logins from many clients and accounts (see wrk.lua's BENCH_VARY), prebuilt and cycled."""
    rnd = random.Random(1)
    pool = []
    for _ in range(n):
        ip = f"10.{rnd.randrange(1, 251)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        body = f"user=user{rnd.randrange(1, 1_000_000)}&password=right".encode()
        head = build_request(method, host, port, target, body, content_type)
        sep = head.index(b"\r\n") + 2
        pool.append(head[:sep] + f"X-Forwarded-For: {ip}\r\n".encode() + head[sep:])
    return itertools.cycle(pool)


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
        self.transport.write(req if isinstance(req, bytes) else next(req))

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

    def __init__(self, host: str, port: int, request: bytes, timeout: float) -> None:
        self.host, self.port, self.request, self.timeout = host, port, request, timeout
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
        if self.stopping and self.in_flight == 0:
            self.drained.set()

    def _response(self, conn: Conn, status: int) -> None:
        raise NotImplementedError

    def _lost(self, conn: Conn) -> None:
        self.conns.discard(conn)
        if conn.busy:  # died mid-request
            conn.busy = False
            self.in_flight -= 1
            if self._counts(conn):
                self.stats.read_errors += 1
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
        self.recording = True
        started = time.perf_counter()
        await asyncio.sleep(duration)
        self.recording = False
        elapsed = time.perf_counter() - started
        await self.drain()
        return elapsed


class OpenLoop(Generator):
    """Requests due every 1/rate s; each goes to an idle connection, or waits in a backlog."""

    def __init__(self, host: str, port: int, request: bytes, timeout: float) -> None:
        super().__init__(host, port, request, timeout)
        self.idle: list[Conn] = []
        self.backlog: deque[int] = deque()
        self.max_backlog = 0
        self.sent = 0
        self.window = (0, 0)

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
        else:
            self.backlog.append(scheduled_ns)
            self.max_backlog = max(self.max_backlog, len(self.backlog))

    async def run(self, connections: int, duration: float, warmup: float, rate: float) -> float:
        for conn in await asyncio.gather(*(self.connect() for _ in range(connections))):
            if conn is not None:
                self.idle.append(conn)
        interval_ns = 1e9 / rate
        start_ns = time.perf_counter_ns()
        record_from = start_ns + int(warmup * 1e9)
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


def summarize(values_ns: list[int]) -> dict[str, float]:
    values = sorted(values_ns)
    out = {f"p{p:g}".replace(".", "_"): percentile(values, p) for p in (50, 90, 99, 99.9)}
    out["max"] = values[-1] / 1e6 if values else math.nan
    out["mean"] = sum(values) / len(values) / 1e6 if values else math.nan
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
    if args.vary:
        request = vary_requests(args.method.upper(), host, port, target, args.content_type)
    result: dict[str, Any] = {"url": args.url, "method": args.method.upper(), "connections": args.connections}
    if args.rate:
        gen: Generator = OpenLoop(host, port, request, args.timeout)
        assert isinstance(gen, OpenLoop)
        elapsed = await gen.run(args.connections, args.duration, args.warmup, args.rate)
        result.update(mode="open", target_rate=args.rate, max_backlog=gen.max_backlog)
    else:
        gen = ClosedLoop(host, port, request, args.timeout)
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
    if args.connections < 1 or args.duration <= 0 or args.rate < 0:
        parser.error("--connections >= 1, --duration > 0, --rate >= 0")
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
