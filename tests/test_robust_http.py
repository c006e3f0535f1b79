"""Bad input on the public listener: malformed heads, smuggling, oversized heads, idle floods, resets.

Each attack is sent as raw bytes, and the upstream is a raw socket with its own
strict HTTP/1.1 parser that records every request and every byte it receives,
so "the upstream never saw a smuggled request" is checked on the wire, not
through a library that might agree with the guard's parser by construction.
The smuggling tables run twice: once on aiohttp's C parser (llhttp, what
production uses) and once on its pure-Python parser (what runs where the C
extension is missing, e.g. ``AIOHTTP_NO_EXTENSIONS=1``).

Already covered elsewhere (not repeated here): one bad header line, a header
line or head over the limit, slow heads and bodies, the connection limit with
two connections (``tests/test_proxy_limits.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp.http_parser as http_parser
import aiohttp.web_protocol as web_protocol
import pytest

from tests.proxy_fixtures import GuardFactory, Upstream, make_guard, parse_response, upstream
from tests.test_proxy_limits import assert_branded, wait_until

__all__ = ["make_guard", "upstream"]

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


# ---- a raw upstream that records everything -----------------------------------------------------


@dataclass
class Got:
    """One request as the raw upstream parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool


@dataclass
class RecordingUpstream:
    """A raw-socket HTTP/1.1 server: strict framing (Content-Length or chunked), keep-alive, 200 "ok".

    ``raw`` is every byte received on every connection; ``requests`` every request
    head it saw, with ``complete`` False when the connection ended inside the body.
    """

    raw: bytearray = field(default_factory=bytearray)
    requests: list[Got] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)   # what the strict parser refused
    connections: int = 0
    head_seen: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _read(self, reader: asyncio.StreamReader, n: int | None = None, until: bytes = b"") -> bytes:
        try:
            data = await (reader.readuntil(until) if until else reader.readexactly(n or 0))
        except asyncio.IncompleteReadError as exc:
            self.raw += exc.partial
            raise
        self.raw += data
        return data

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        got: Got | None = None
        try:
            while True:
                head = await self._read(reader, until=b"\r\n\r\n")
                lines = head[:-4].split(b"\r\n")
                method, target, _version = lines[0].split(b" ")
                headers = [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(b":") for ln in lines[1:])]
                got = Got(method, target, headers, b"", False)
                self.requests.append(got)
                self.head_seen.set()
                names = [k for k, _ in headers]
                if b"transfer-encoding" in names:
                    if names.count(b"transfer-encoding") != 1 or b"content-length" in names:
                        raise ValueError("ambiguous framing")
                    if dict(headers)[b"transfer-encoding"] != b"chunked":
                        raise ValueError("a coding other than chunked")
                    while True:
                        size = int(await self._read(reader, until=b"\r\n"), 16)
                        got.body += (await self._read(reader, size + 2))[:-2]
                        if size == 0:
                            break
                elif b"content-length" in names:
                    if names.count(b"content-length") != 1:
                        raise ValueError("two Content-Length fields")
                    got.body = await self._read(reader, int(dict(headers)[b"content-length"]))
                got.complete = True
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ValueError as exc:   # includes a malformed request line or chunk size
            self.violations.append(f"{exc}: {bytes(self.raw[-200:])!r}")
        finally:
            writer.close()
            self.done.set()

    def request_lines(self) -> list[bytes]:
        return [g.method + b" " + g.target for g in self.requests]


@pytest.fixture
async def recorder() -> AsyncIterator[RecordingUpstream]:
    rec = RecordingUpstream()
    rec.server = await asyncio.start_server(rec.serve, "127.0.0.1", 0)
    yield rec
    rec.server.close()
    assert rec.violations == [], "the guard sent the upstream something a strict parser refuses"


@pytest.fixture(params=["llhttp", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test on aiohttp's C request parser, then on its pure-Python one."""
    if request.param == "python":
        monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    elif http_parser.HttpRequestParser is http_parser.HttpRequestParserPy:
        pytest.skip("aiohttp's C extension is not installed: only the Python parser exists here")
    yield request.param


# ---- raw client helpers -------------------------------------------------------------------------


async def exchange(port: int, data: bytes, idle: float = 1.0) -> tuple[bytes, bool]:
    """Send ``data``; read until the guard closes (True) or stays silent for ``idle`` seconds (False)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), idle)
            if not chunk:
                closed = True
                break
            out += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:  # closed with our bytes unread: the kernel sends RST
        closed = True
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return out, closed


async def read_all(reader: asyncio.StreamReader, into: list[bytes] | None = None, limit: float = 5.0) -> bytes:
    """Everything until EOF (or a reset), kept chunk by chunk so a late RST loses nothing already read."""
    chunks = into if into is not None else []
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def responses(data: bytes) -> int:
    """How many responses a byte stream holds (status lines at the start or after a body)."""
    return sum(data.count(b"HTTP/%s " % v) for v in (b"1.1", b"1.0", b"0.9"))


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): what a crashing client or a middlebox does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def post(headers: bytes, body: bytes = b"", target: bytes = b"/x") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n" + body


# ---- malformed request lines and heads ----------------------------------------------------------

MALFORMED = {
    "method with a separator": b"G(T /x HTTP/1.1\r\nHost: h\r\n\r\n",
    "lower-case version": b"GET /x http/1.1\r\nHost: h\r\n\r\n",
    "unknown version": b"GET /x HTTP/1.x\r\nHost: h\r\n\r\n",
    "HTTP/2 preface on an HTTP/1 port": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "space inside the target": b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    "control byte in the target": b"GET /a\x01b HTTP/1.1\r\nHost: h\r\n\r\n",
    "NUL in a header value": b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "space inside a header name": b"GET /x HTTP/1.1\r\nHost: h\r\nX A: b\r\n\r\n",
    "empty header name": b"GET /x HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n",
    "bare CR as a line end": b"GET /x HTTP/1.1\rHost: h\r\n\r\n",
    "bare LF line ends": b"GET /x HTTP/1.1\nHost: h\n\n",
    "two Host fields": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_heads_get_a_branded_400_and_a_close(
    data: bytes, parser: str, recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(recorder.url)
    out, closed = await exchange(g.port, data)
    assert closed, "the connection must not stay open after a framing error"
    assert responses(out) == 1
    assert_branded(parse_response(out), 400)
    assert recorder.connections == 0 and not recorder.raw


# ---- request smuggling ---------------------------------------------------------------------------

# Each smuggles a second request ("GET /smuggled") past a front end that frames the
# body differently from the back end.  All must be refused outright.
SMUGGLING = {
    "CL.TE": post(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "TE.CL": post(b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", b"0\r\n\r\n" + SMUGGLED),
    "duplicate Content-Length, different": post(b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
    "duplicate Content-Length, same": post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
    "Content-Length list": post(b"Content-Length: 5, 5\r\n", b"hello"),
    "Content-Length with a sign": post(b"Content-Length: +5\r\n", b"hello"),
    "negative Content-Length": post(b"Content-Length: -1\r\n", b"hello" + SMUGGLED),
    "hex Content-Length": post(b"Content-Length: 0x5\r\n", b"hello"),
    "Content-Length with inner space": post(b"Content-Length: 5 0\r\n", b"hello"),
    "obs-fold hiding Transfer-Encoding": post(
        b"Content-Length: 3\r\nX-Foo: a\r\n Transfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED
    ),
    "obs-fold of a value (tab)": b"GET /x HTTP/1.1\r\nHost: h\r\nX-Foo: a\r\n\tb\r\n\r\n",
    "obs-fold of Transfer-Encoding's value": post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "Transfer-Encoding: chunked, identity": post(b"Transfer-Encoding: chunked, identity\r\n",
                                                 b"0\r\n\r\n" + SMUGGLED),
    "two Transfer-Encoding fields": post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                                         b"0\r\n\r\n" + SMUGGLED),
    "unknown coding (xchunked)": post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "space before the colon": post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "vertical tab before chunked": post(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "chunked in HTTP/1.0": b"POST /x HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "chunk size with 0x": post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"),
    "negative chunk size": post(b"Transfer-Encoding: chunked\r\n", b"-1\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk size with a trailing space": post(b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk size with an underscore": post(b"Transfer-Encoding: chunked\r\n",
                                          b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),
    "chunk lines ended by LF": post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n" + SMUGGLED),
    "chunk data without its CRLF": post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED),
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_smuggling_attempts_are_refused_and_never_reach_the_upstream(
    data: bytes, parser: str, recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(recorder.url)
    out, closed = await exchange(g.port, data)
    assert closed
    assert responses(out) == 1, "one answer, then close: the smuggled bytes are never parsed as a request"
    assert_branded(parse_response(out), 400)
    assert recorder.connections == 0 and not recorder.raw
    # the guard is unharmed: a clean request on a new connection goes through, alone
    out, _ = await exchange(g.port, b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert parse_response(out).status == 200
    assert recorder.request_lines() == [b"GET /after"]


# Where the two parsers differ, or the request is legal: the guard may accept it, but
# only ever forwards what it parsed, re-framed by its own client.
LENIENT = {
    "Transfer-Encoding: identity, chunked": post(b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"),
    "GET with a Content-Length body": b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
                                      % (len(SMUGGLED), SMUGGLED),
    "chunk size over 64 bits": post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"
                                    + SMUGGLED),
    "NUL in a chunk extension": post(b"Transfer-Encoding: chunked\r\n", b"5;\x00\r\nhello\r\n0\r\n\r\n"),
    "two spaces after the method": b"GET  /x HTTP/1.1\r\nHost: h\r\n\r\n",
    "empty lines before the request": b"\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n",
    "HTTP/0.9 request line": b"GET /x\r\n\r\n",
    "TLS ClientHello on the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
}


@pytest.mark.parametrize("data", LENIENT.values(), ids=LENIENT.keys())
async def test_whatever_is_accepted_is_reframed_and_never_smuggles(
    data: bytes, parser: str, recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(recorder.url, timeouts={"client_header": 0.5})
    out, _ = await exchange(g.port, data)
    answered = responses(out)
    assert answered <= 1
    if out:
        assert parse_response(out).status in (200, 400, 408)
    # Smuggling means the upstream sees more requests than the client was answered for.  The
    # upstream's strict parser saw at most one request, finished only if the client was answered,
    # and the "/smuggled" bytes (inside a body here) were never a request line.
    assert len(recorder.requests) <= 1
    assert sum(got.complete for got in recorder.requests) <= answered
    assert b"/smuggled" not in b" ".join(recorder.request_lines())


async def test_bad_chunk_after_the_upstream_started_gets_no_complete_request(
    parser: str, recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    """A streamed (non-login) body whose chunking breaks mid-way: the upstream gets a cut request.

    llhttp only queues its 400 for after the in-flight request; the guard fails that
    request's body itself (``GuardProtocol._fail_body``), or the upload would hang.
    """
    g = await make_guard(recorder.url, timeouts={"upstream_read": 2})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n", b"/upload"))
    await asyncio.wait_for(recorder.head_seen.wait(), 5)
    writer.write(b"zz\r\n" + SMUGGLED)
    started = time.monotonic()
    try:
        out = await read_all(reader, limit=3)   # returns only once the guard closes
    finally:
        writer.close()
    assert time.monotonic() - started < 1.5, "the broken upload must end at once, not at a timeout"
    assert responses(out) == 1, "one answer for the broken request, none for the smuggled bytes"
    assert_branded(parse_response(out), 400)
    await asyncio.wait_for(recorder.done.wait(), 3)
    assert recorder.request_lines() == [b"POST /upload"]
    assert recorder.requests[0].complete is False, "the cut body must not end with a terminating chunk"
    assert recorder.requests[0].body == b"hello", "the good chunk went on; the bad one and the rest did not"
    assert b"0\r\n\r\n" not in recorder.raw and b"smuggled" not in recorder.raw
    await wait_until(lambda: g.server.in_flight == 0 and g.server.open_connections == 0)
    entry = g.log()[-1]
    assert (entry["path"], entry["status"]) == ("/upload", 400), "the client's broken body, not a 502"


BLOCK_ADMIN = """
rules:
  - id: no-admin
    description: nobody reaches /admin
    when: {path: {prefix: /admin}}
    action: block
"""


async def test_bad_chunk_after_the_answer_closes_at_once(
    parser: str, recorder: RecordingUpstream, make_guard: GuardFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Answered (blocked) before its body is in; then the chunking breaks while aiohttp drains the rest.

    The connection closes at once instead of after the 2 s lingering drain.  On llhttp,
    where the guard ends the body itself, aiohttp logs nothing (its Python parser fails
    the body on its own, and aiohttp logs that as an unhandled exception: not ours).
    """
    g = await make_guard(recorder.url, rules=BLOCK_ADMIN)
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    try:
        writer.write(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n", b"/admin/x"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        writer.write(b"zz\r\n" + SMUGGLED)
        started = time.monotonic()
        out = head + await read_all(reader, limit=3)   # returns only once the guard closes
        waited = time.monotonic() - started
    finally:
        writer.close()
    assert waited < 1.0, f"closed after {waited:.2f}s: the broken body was drained, not ended"
    assert responses(out) == 1
    assert_branded(parse_response(out), 403)
    assert recorder.connections == 0
    if parser == "llhttp":
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("where", ["login", "stream"])
async def test_bad_chunking_in_one_read_is_400_for_login_and_streamed_bodies(
    where: str, parser: str, recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(recorder.url, logins=[{"id": "login", "path": "/login"}])
    target = b"/login" if where == "login" else b"/upload"
    out, closed = await exchange(g.port, post(b"Transfer-Encoding: chunked\r\n",
                                              b"5\r\nhello\r\nzz\r\n" + SMUGGLED, target))
    assert closed and responses(out) == 1
    assert_branded(parse_response(out), 400)
    assert not recorder.raw


# ---- oversized heads -----------------------------------------------------------------------------


async def test_too_many_header_fields_is_431(recorder: RecordingUpstream, make_guard: GuardFactory) -> None:
    g = await make_guard(recorder.url)
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(200))   # tiny fields, 200 of them (limit 128)
    out, closed = await exchange(g.port, b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n")
    assert closed
    assert_branded(parse_response(out), 431)
    assert not recorder.raw


async def test_request_line_over_the_limit_is_431(recorder: RecordingUpstream, make_guard: GuardFactory) -> None:
    g = await make_guard(recorder.url, limits={"max_header_size": 4096})
    out, closed = await exchange(g.port, b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert closed
    assert_branded(parse_response(out), 431)
    assert not recorder.raw


async def test_head_over_the_limit_in_many_small_writes_is_431(
    recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    """The total-size limit holds when the head arrives in pieces (each under the limit)."""
    g = await make_guard(recorder.url, limits={"max_header_size": 2048})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    got: list[bytes] = []
    reading = asyncio.create_task(read_all(reader, got))
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n")
    with contextlib.suppress(ConnectionError):
        for i in range(40):  # 40 fields of ~100 bytes: over 2048 after about 20
            if got:
                break  # the answer is in: stop sending
            writer.write(b"X-%02d: %s\r\n" % (i, b"v" * 90))
            await writer.drain()
            await asyncio.sleep(0.005)  # the client's pace, so the guard sees separate reads
    out = await reading
    writer.close()
    assert_branded(parse_response(out), 431)
    assert not recorder.raw


# ---- many idle connections -----------------------------------------------------------------------


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_idle(port: int, n: int) -> list[Conn]:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]


async def close_all(conns: list[Conn]) -> None:
    for _, w in conns:
        w.close()
    for _, w in conns:
        with contextlib.suppress(Exception):
            await w.wait_closed()


async def test_500_idle_connections_do_not_starve_a_real_request(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url)
    idle = await open_idle(g.port, 500)
    try:
        await wait_until(lambda: g.server.open_connections == 500)
        started = time.monotonic()
        out, _ = await exchange(g.port, b"GET /real HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        elapsed = time.monotonic() - started
        assert parse_response(out).status == 200
        assert elapsed < 1.0, f"a request behind 500 idle connections took {elapsed:.2f}s"
    finally:
        await close_all(idle)
    await wait_until(lambda: g.server.open_connections == 0)


async def test_idle_connections_past_the_limit_are_refused_then_reclaimed(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    """max_connections is exact under a flood, and idle slots come back at the head deadline."""
    g = await make_guard(upstream.url, limits={"max_connections": 50}, timeouts={"client_header": 0.5})
    flood = await open_idle(g.port, 60)
    try:
        await wait_until(lambda: g.server.open_connections == 50)
        # the ten over the limit got a complete 503 page and a close
        for reader, _ in flood[50:]:
            assert_branded(parse_response(await read_all(reader)), 503)
        # the silent fifty are cut off at client_header; the guard is free again by itself
        await wait_until(lambda: g.server.open_connections == 0, limit=5)
        out, _ = await exchange(g.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert parse_response(out).status == 200
    finally:
        await close_all(flood)


# ---- clients that reset mid-body ---------------------------------------------------------------


async def test_client_reset_mid_upload_releases_the_upstream_connection(
    recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    """With one pooled upstream connection, a leak would make the next request wait for ever."""
    g = await make_guard(recorder.url, limits={"upstream_connections": 1},
                         timeouts={"upstream_connect": 1, "upstream_read": 2})
    _, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(post(b"Content-Length: 1000000\r\n", b"x" * 65536, b"/upload"))
    await writer.drain()
    await asyncio.wait_for(recorder.head_seen.wait(), 5)
    reset(writer)
    await asyncio.wait_for(recorder.done.wait(), 5)
    assert recorder.requests[0].complete is False
    await wait_until(lambda: g.server.in_flight == 0 and g.server.open_connections == 0)
    for path in (b"/one", b"/two"):  # the single pool slot is free again, twice over
        out, _ = await exchange(g.port, b"GET " + path + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert parse_response(out).status == 200
    assert recorder.request_lines()[1:] == [b"GET /one", b"GET /two"]


async def test_a_stalled_upload_does_not_hold_an_upstream_connection(
    recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    """A client silent mid-upload for client_body gets a 408; the single pooled upstream connection is freed."""
    g = await make_guard(recorder.url, limits={"upstream_connections": 1},
                         timeouts={"client_body": 0.3, "upstream_connect": 1, "upstream_read": 1})
    reader, stalled = await asyncio.open_connection("127.0.0.1", g.port)
    try:
        stalled.write(post(b"Content-Length: 1000\r\n", b"x" * 10, b"/upload"))   # then nothing more
        started = time.monotonic()
        await asyncio.wait_for(recorder.head_seen.wait(), 5)
        out = await read_all(reader, limit=3)   # returns only once the guard closes
        waited = time.monotonic() - started
    finally:
        stalled.close()
    assert 0.25 <= waited < 1.5, f"the 408 came after {waited:.2f}s of silence, client_body is 0.3s"
    assert responses(out) == 1
    assert_branded(parse_response(out), 408)
    await asyncio.wait_for(recorder.done.wait(), 3)
    assert recorder.requests[0].complete is False and recorder.requests[0].body == b""
    await wait_until(lambda: g.server.in_flight == 0)
    assert g.log()[-1]["path"] == "/upload" and g.log()[-1]["status"] == 408
    out, _ = await exchange(g.port, b"GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", idle=3)
    assert parse_response(out).status == 200, "the only upstream connection is still held by the stall"
    assert recorder.request_lines() == [b"POST /upload", b"GET /next"]


async def test_client_body_is_an_idle_timeout_not_a_deadline_for_the_whole_upload(
    recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    """An upload that keeps coming may take far longer than client_body in all."""
    g = await make_guard(recorder.url, timeouts={"client_body": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    body = b"0123456789" * 10
    try:
        writer.write(post(b"Content-Length: %d\r\nConnection: close\r\n" % len(body), b"", b"/upload"))
        for i in range(0, len(body), 10):   # 10 pieces, 0.1 s apart: 1 s in all, twice client_body
            await asyncio.sleep(0.1)
            writer.write(body[i : i + 10])
            await writer.drain()
        out = await read_all(reader)
    finally:
        writer.close()
    assert parse_response(out).status == 200
    assert recorder.requests[0].complete and recorder.requests[0].body == body


@dataclass
class SlowReader:
    """An upstream that reads a request head, then nothing for ``pause`` seconds, then the whole body."""

    pause: float
    got: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))
            await asyncio.sleep(self.pause)   # the guard's writes back up: the client is not the silent one
            self.got = len(await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        finally:
            writer.close()


async def test_an_upstream_slow_to_read_the_upload_is_not_the_clients_silence(make_guard: GuardFactory) -> None:
    """Backpressure from the upstream stops the guard reading the client: that wait is not client_body's."""
    slow = SlowReader(pause=1.0)
    server = await asyncio.start_server(slow.serve, "127.0.0.1", 0)
    try:
        g = await make_guard(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeouts={"client_body": 0.3})
        size = 32 * 1024 * 1024   # more than the socket buffers on both hops hold: the client is held back
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        try:
            writer.write(post(b"Content-Length: %d\r\nConnection: close\r\n" % size, b"", b"/upload"))
            piece = b"x" * (1024 * 1024)
            for _ in range(size // len(piece)):
                writer.write(piece)
                await writer.drain()
            out = await read_all(reader, limit=10)
        finally:
            writer.close()
    finally:
        server.close()
    assert parse_response(out).status == 200
    assert slow.got == size


@pytest.mark.parametrize(("how", "logged"), [("stall", 408), ("bad chunk", 400)])
async def test_an_upload_failing_after_the_upstream_answered_closes_the_client_connection(
    how: str, logged: int, make_guard: GuardFactory
) -> None:
    """The upstream answers before the body is in, then the upload fails: cut at once, not held for ever.

    The upstream waits for the rest of the body (upstream_idle is 30 s): only the guard
    closing its answer ends the exchange.
    """
    upstream_eof = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nearly\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):   # whatever of the body comes, until the guard hangs up
                pass
        upstream_eof.set()
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    try:
        g = await make_guard(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                             timeouts={"client_body": 0.3, "upstream_idle": 30})
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        try:
            if how == "stall":
                writer.write(post(b"Content-Length: 1000\r\n", b"x" * 10, b"/upload"))   # then nothing more
            else:
                writer.write(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n", b"/upload"))
                got = await asyncio.wait_for(reader.readuntil(b"early\r\n"), 3)   # the answer has started
                writer.write(b"zz\r\n")
            started = time.monotonic()
            out = await read_all(reader, limit=3)   # returns only once the guard closes
            waited = time.monotonic() - started
            if how != "stall":
                out = got + out
        finally:
            writer.close()
        await asyncio.wait_for(upstream_eof.wait(), 3)
    finally:
        server.close()
    assert waited < 1.5, f"the failed exchange lasted {waited:.2f}s more"
    resp = parse_response(out)
    assert resp.status == 200 and resp.body == b"early"
    assert not out.endswith(b"0\r\n\r\n"), "a cut response must never look complete"
    await wait_until(lambda: g.server.in_flight == 0 and g.server.open_connections == 0)
    entry = g.log()[-1]
    assert (entry["path"], entry["status"]) == ("/upload", logged), "logged as what ended it: the upload"


async def test_client_reset_mid_login_body_never_reaches_the_upstream(
    recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(recorder.url, logins=[{"id": "login", "path": "/login"}])
    _, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(post(b"Content-Length: 5000\r\nContent-Type: application/x-www-form-urlencoded\r\n",
                      b"username=alice&password=", b"/login"))
    await writer.drain()
    await wait_until(lambda: g.server.in_flight == 0 and g.server.open_connections == 1)
    reset(writer)
    await wait_until(lambda: g.server.open_connections == 0)
    out, _ = await exchange(g.port, b"GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert parse_response(out).status == 200
    assert recorder.request_lines() == [b"GET /next"]


# ---- what an accepted request keeps -----------------------------------------------------------


@pytest.mark.parametrize("accept", ["", "application/json"])
async def test_non_utf8_header_bytes_are_refused_never_altered(
    accept: str, parser: str, recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    """obs-text (RFC 9110 section 5.5) aiohttp's client cannot write back unchanged: refused, not altered.

    aiohttp decodes such bytes with surrogateescape; its C header writer drops them
    silently and its Python one raises.  So the guard answers a branded 400 (JSON for
    API clients), logs it, and the upstream gets nothing.
    """
    g = await make_guard(recorder.url)
    extra = b"Accept: %s\r\n" % accept.encode() if accept else b""
    out, closed = await exchange(g.port, b"GET /x HTTP/1.1\r\nHost: h\r\nX-Legacy: \x82\xa0 ok\r\n" + extra
                                 + b"Connection: close\r\n\r\n")
    assert closed and responses(out) == 1
    resp = parse_response(out)
    if accept:
        assert resp.status == 400 and resp.header("Content-Type") == ["application/json"]
        assert json.loads(resp.body)["status"] == 400
    else:
        assert_branded(resp, 400)
    assert recorder.connections == 0 and not recorder.raw
    assert g.log()[-1]["status"] == 400


async def test_utf8_header_text_reaches_the_upstream_unchanged(
    parser: str, recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    """Non-ASCII that is valid UTF-8 is written back as the same bytes: only undecodable bytes are refused."""
    value = "café 東京".encode()
    g = await make_guard(recorder.url)
    out, _ = await exchange(g.port, b"GET /x HTTP/1.1\r\nHost: h\r\nX-Legacy: " + value
                            + b"\r\nConnection: close\r\n\r\n")
    assert parse_response(out).status == 200
    assert dict(recorder.requests[0].headers)[b"x-legacy"] == value


async def test_a_non_ascii_request_target_is_refused_by_both_parsers(
    parser: str, recorder: RecordingUpstream, make_guard: GuardFactory
) -> None:
    """llhttp refuses it; the Python parser accepts it, and the upstream would get ``/admin`` for ``/adm\\x82in``."""
    g = await make_guard(recorder.url)
    out, closed = await exchange(g.port, b"GET /adm\x82in HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert closed and responses(out) == 1
    assert_branded(parse_response(out), 400)
    assert recorder.connections == 0 and not recorder.raw


async def test_non_utf8_response_header_bytes_reach_the_client_unchanged(make_guard: GuardFactory) -> None:
    """obs-text in the upstream's fields (a Shift_JIS cookie value) is passed on byte for byte.

    aiohttp's C serializer would drop the bytes (the cookie arrives empty) and its Python
    one would raise (the response is lost); the guard writes such a head itself.
    """
    legacy = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Legacy: \x82\xa0 ok\r\nSet-Cookie: n=\x93\x87; Path=/\r\n\r\nok"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(legacy)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        g = await make_guard(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        out, _ = await exchange(g.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    finally:
        server.close()
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"ok"
    lines = head.split(b"\r\n")
    assert b"X-Legacy: \x82\xa0 ok" in lines and b"Set-Cookie: n=\x93\x87; Path=/" in lines
    assert b"Content-Length: 2" in lines and any(line.startswith(b"Date: ") for line in lines)
