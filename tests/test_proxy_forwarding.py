"""Forwarding through a real guard to a real upstream: what arrives, byte for byte, both ways."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession

from tests.proxy_fixtures import (
    GuardFactory,
    Upstream,
    client,
    make_guard,
    parse_response,
    raw_exchange,
    raw_get,
    upstream,
)

__all__ = ["client", "make_guard", "upstream"]  # fixtures, re-exported for pytest

RAW_PATH = "/a/../b/%2e%2e/c%2Fd;p=1/caf%C3%A9?q=%20x&y=a+b&z&e=%zz"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_method_path_query_headers_body_arrive_unchanged(
    method: str, upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url)
    body = b"" if method in ("GET", "OPTIONS") else b"field=value&other=\xff\x00"
    request = (
        f"{method} {RAW_PATH} HTTP/1.1\r\nHost: app.example\r\nX-Custom: One\r\nx-custom: two\r\n"
        f"Cookie: sid=1; theme=dark\r\nUser-Agent: Test/1\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    resp = parse_response(await raw_exchange(g.port, request))
    assert resp.status == 200
    seen = upstream.seen[-1]
    assert seen.method == method
    assert seen.raw_path == RAW_PATH
    assert seen.body == body
    assert seen.header("X-Custom") == ["One", "two"]
    assert seen.header("Cookie") == ["sid=1; theme=dark"]
    assert seen.header("User-Agent") == ["Test/1"]
    assert seen.header("Host") == ["app.example"]


async def test_no_headers_are_invented(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    await raw_exchange(g.port, b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    names = {k.lower() for k, _ in upstream.seen[-1].headers}
    assert names <= {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}


async def test_chunked_request_body_is_streamed(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    request = (
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    resp = parse_response(await raw_exchange(g.port, request))
    assert resp.status == 200
    seen = upstream.seen[-1]
    assert seen.body == b"hello world"
    assert seen.header("Transfer-Encoding") == ["chunked"]
    assert seen.header("Content-Length") == []


async def test_large_upload_streams_intact(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for i in range(256):  # 16 MiB
            chunk = bytes([i]) * 65536
            digest.update(chunk)
            yield chunk

    async with client.post(g.url("/up"), data=body()) as resp:
        echo = await resp.json()
    assert echo["body_len"] == 16 * 1024 * 1024
    assert echo["body_sha256"] == digest.hexdigest()


async def test_content_length_is_kept_for_bodies(upstream: Upstream, make_guard: GuardFactory) -> None:
    """Old services often cannot read a chunked request: a Content-Length body stays one."""
    g = await make_guard(upstream.url)
    await raw_exchange(g.port, b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                               b"Connection: close\r\n\r\nabc")
    seen = upstream.seen[-1]
    assert seen.header("Content-Length") == ["3"]
    assert seen.header("Transfer-Encoding") == []


async def test_chunked_response(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    resp = await raw_get(g.port, "/chunked")
    assert resp.status == 200
    assert resp.header("Transfer-Encoding") == ["chunked"]
    assert resp.body == b"one,two,three"


async def test_http10_client_gets_a_close_delimited_body(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url)
    raw = await raw_exchange(g.port, b"GET /chunked HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 200")
    assert b"chunked" not in raw.split(b"\r\n\r\n")[0].lower()
    assert raw.endswith(b"one,two,three")
    assert upstream.seen[-1].header("Host") == [f"127.0.0.1:{upstream.port}"]  # HTTP/1.1 upstream needs one


async def test_set_cookie_repeats_are_kept_in_order(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    async with client.get(g.url("/cookies")) as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly", "c=3"]


async def test_hop_by_hop_headers_are_removed_both_ways(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    request = (
        b"GET /hop HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: secret\r\n"
        b"Keep-Alive: 300\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Stay: 1\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    seen = {k.lower() for k, _ in upstream.seen[-1].headers}
    assert not seen & {"connection", "x-drop-me", "keep-alive", "te", "proxy-authorization",
                       "proxy-connection", "upgrade"}
    assert "x-stay" in seen
    response_names = {line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:] if line}
    assert not response_names & {b"x-secret-hop", b"keep-alive", b"proxy-authenticate", b"trailer"}
    assert b"x-kept" in response_names


async def test_forwarding_headers_are_set(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    await raw_exchange(g.port, b"GET / HTTP/1.1\r\nHost: shop.example:8443\r\nConnection: close\r\n\r\n")
    seen = upstream.seen[-1]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    assert seen.header("X-Forwarded-Host") == ["shop.example:8443"]


async def test_forged_forwarding_headers_from_an_untrusted_peer_change_nothing(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url)
    request = (
        b"GET /who HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6, 7.7.7.7\r\nX-Forwarded-For: 8.8.8.8\r\n"
        b"Forwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n"
    )
    await raw_exchange(g.port, request)
    seen = upstream.seen[-1]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    assert seen.header("X-Forwarded-Host") == ["h"]
    for name in ("Forwarded", "X-Real-IP", "True-Client-IP"):
        assert seen.header(name) == []
    assert g.log()[-1]["ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("xff", "client_ip"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("203.0.113.9, 10.1.2.3", "203.0.113.9"),               # a trusted hop is skipped
        ("1.1.1.1, 203.0.113.9, 10.0.0.1", "203.0.113.9"),      # right-most untrusted wins
        ("10.0.0.7, 10.0.0.8", "10.0.0.7"),                     # all trusted: left-most
        ("garbage, 203.0.113.9", "203.0.113.9"),
    ],
)
async def test_trusted_proxy_chain(
    xff: str, client_ip: str, upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url, trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"])
    request = f"GET /t HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n".encode()
    await raw_exchange(g.port, request)
    assert g.log()[-1]["ip"] == client_ip
    assert upstream.seen[-1].header("X-Forwarded-For") == [f"{xff}, 127.0.0.1"]


async def test_trusted_proxy_headers_are_kept_and_extended(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url, trusted_proxies=["127.0.0.1"], forwarded_header="forwarded")
    request = (
        b"GET /t HTTP/1.1\r\nHost: h\r\nForwarded: for=198.51.100.4;proto=https\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\nConnection: close\r\n\r\n"
    )
    await raw_exchange(g.port, request)
    seen = upstream.seen[-1]
    assert g.log()[-1]["ip"] == "198.51.100.4"
    assert seen.header("Forwarded") == ["for=198.51.100.4;proto=https, for=127.0.0.1;proto=http"]
    assert seen.header("X-Forwarded-Proto") == ["https"]
    assert seen.header("X-Forwarded-Host") == ["public.example"]


@pytest.mark.parametrize(("mode", "expected"), [("keep", "client.example"), ("upstream", None),
                                                ("legacy.internal", "legacy.internal")])
async def test_host_header_modes(
    mode: str, expected: str | None, upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url, host_header=mode)
    await raw_exchange(g.port, b"GET / HTTP/1.1\r\nHost: client.example\r\nConnection: close\r\n\r\n")
    assert upstream.seen[-1].header("Host") == [expected or f"127.0.0.1:{upstream.port}"]
    assert upstream.seen[-1].header("X-Forwarded-Host") == ["client.example"]


async def test_absolute_form_target(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    await raw_exchange(g.port, b"GET http://site.example/abs/p?x=1 HTTP/1.1\r\nHost: other\r\n"
                               b"Connection: close\r\n\r\n")
    seen = upstream.seen[-1]
    assert seen.raw_path == "/abs/p?x=1"
    assert seen.header("Host") == ["site.example"]  # RFC 9112 section 3.2.2


async def test_asterisk_form_is_answered_by_the_guard(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    options = b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    resp = parse_response(await raw_exchange(g.port, options))
    assert resp.status == 400
    assert upstream.seen == []


async def test_expect_100_continue(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    try:
        writer.write(b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
                     b"Connection: close\r\n\r\n")
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        resp = parse_response(await reader.read())
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    assert resp.status == 200
    assert upstream.seen[-1].body == b"hello"
    assert upstream.seen[-1].header("Expect") == []


async def test_redirects_are_passed_not_followed(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    async with client.get(g.url("/redirect"), allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere"
    assert len(upstream.seen) == 1


async def test_keep_alive_reuses_connections(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    try:
        for i in range(3):
            writer.write(f"GET /k{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            echo = json.loads(await reader.readexactly(length))
            assert echo["raw_path"] == f"/k{i}"
    finally:
        writer.close()
    peers = {s.peer for s in upstream.seen}
    assert len(upstream.seen) == 3 and peers == {"127.0.0.1"}


async def test_upstream_without_server_or_content_type_gets_none_added(make_guard: GuardFactory) -> None:
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bare, "127.0.0.1", 0)
    try:
        g = await make_guard(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        resp = await raw_get(g.port)
    finally:
        server.close()
    assert resp.status == 200 and resp.body == b"ok"
    names = {k.lower() for k, _ in resp.headers}
    assert "server" not in names and "content-type" not in names
    assert "x-up" in names


async def test_access_log_line(upstream: Upstream, make_guard: GuardFactory, client: ClientSession) -> None:
    g = await make_guard(upstream.url)
    async with client.get(g.url("/page?token=secret")) as resp:
        await resp.read()
    entry = g.log()[-1]
    assert entry["ip"] == "127.0.0.1" and entry["method"] == "GET" and entry["path"] == "/page"
    assert entry["status"] == 200 and entry["action"] == "pass"
    assert entry["upstream_ms"] >= 0 and entry["overhead_ms"] >= 0
    assert "secret" not in g.stream.getvalue()
