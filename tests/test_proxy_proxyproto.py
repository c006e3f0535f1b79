"""PROXY protocol on the public listener, over raw sockets, with and without TLS."""

from __future__ import annotations

import asyncio
import time

import pytest

from guard.proxyproto import build_v1, build_v2
from tests.proxy_fixtures import (
    GuardFactory,
    TLSFiles,
    Upstream,
    make_guard,
    parse_response,
    raw_exchange,
    tls_files,
    upstream,
)

__all__ = ["make_guard", "tls_files", "upstream"]

GET = b"GET /pp HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
DST4 = ("192.0.2.1", 443)
DST6 = ("2001:db8::1", 443)


@pytest.mark.parametrize(
    ("header", "client_ip"),
    [
        (build_v1(("203.0.113.7", 51000), DST4), "203.0.113.7"),
        (build_v1(("2001:db8:cafe::17", 51000), DST6), "2001:db8:cafe::17"),
        (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
        (build_v2(("203.0.113.8", 51000), DST4), "203.0.113.8"),
        (build_v2(("2001:db8:cafe::18", 51000), DST6), "2001:db8:cafe::18"),
        (build_v2(("::ffff:198.51.100.7", 51000), DST6), "198.51.100.7"),  # mapped: one form
        (build_v2(("203.0.113.9", 1), DST4, tlvs=b"\x04\x00\x03abc"), "203.0.113.9"),  # TLV ignored
        (build_v2(None), "127.0.0.1"),  # LOCAL: the balancer's own health check
    ],
)
@pytest.mark.parametrize("tls", [False, True])
async def test_proxy_header_sets_the_client(
    header: bytes, client_ip: str, tls: bool, upstream: Upstream, make_guard: GuardFactory,
    tls_files: TLSFiles,
) -> None:
    extra = {"tls": {"cert": str(tls_files.cert), "key": str(tls_files.key)}} if tls else {}
    g = await make_guard(upstream.url, proxy_protocol=True, **extra)
    ctx = tls_files.client_context() if tls else None
    resp = parse_response(await raw_exchange(g.port, GET, prefix=header, ssl_context=ctx))
    assert resp.status == 200
    assert g.log()[-1]["ip"] == client_ip
    seen = upstream.seen[-1]
    assert seen.header("X-Forwarded-For") == [client_ip]  # the forged header is replaced
    assert seen.header("X-Forwarded-Proto") == ["https" if tls else "http"]


async def test_header_split_across_packets(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, proxy_protocol=True)
    header = build_v2(("203.0.113.10", 4000), DST4)
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    for i in range(0, len(header), 5):
        writer.write(header[i : i + 5])
        await writer.drain()
        await asyncio.sleep(0.01)  # separate segments on the wire, not synchronisation
    writer.write(GET)
    resp = parse_response(await asyncio.wait_for(reader.read(), 5))
    writer.close()
    assert resp.status == 200
    assert g.log()[-1]["ip"] == "203.0.113.10"


async def test_trusted_balancer_behind_proxy_protocol(upstream: Upstream, make_guard: GuardFactory) -> None:
    """The PROXY source is the peer: if it is a trusted proxy, its X-Forwarded-For counts."""
    g = await make_guard(upstream.url, proxy_protocol=True, trusted_proxies=["10.0.0.0/8"])
    request = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.20\r\nConnection: close\r\n\r\n"
    await raw_exchange(g.port, request, prefix=build_v1(("10.1.1.1", 1000), ("10.0.0.2", 80)))
    assert g.log()[-1]["ip"] == "198.51.100.20"
    assert upstream.seen[-1].header("X-Forwarded-For") == ["198.51.100.20, 10.1.1.1"]


@pytest.mark.parametrize(
    "prefix",
    [
        b"",                                              # no header at all: HTTP straight away
        b"PROXY TCP4 1.2.3.4\r\n",                         # truncated v1
        b"PROXY TCP4 " + b"1" * 120 + b"\r\n",            # longer than 107 bytes
        b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + b"\x00" * 12,  # v2 with an unknown command
        b"HELLO\r\n",
    ],
)
async def test_missing_or_garbage_header_closes_the_connection(
    prefix: bytes, upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url, proxy_protocol=True)
    data = await raw_exchange(g.port, GET, prefix=prefix)
    assert data == b""
    assert upstream.seen == []


async def test_header_must_arrive_in_time(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, proxy_protocol=True, timeouts={"client_header": 0.3})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(b"PROXY TCP4 ")
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - started < 2
    writer.close()
    assert upstream.seen == []
