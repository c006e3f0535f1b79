"""TLS on both legs: terminating for clients, verifying towards https upstreams."""

from __future__ import annotations

import asyncio
import ssl

from aiohttp import ClientSession

from guard.config import TLSConfig
from guard.http.tls import server_context
from tests.proxy_fixtures import (
    GuardFactory,
    TLSFiles,
    Upstream,
    client,
    make_guard,
    parse_response,
    raw_exchange,
    tls_files,
    upstream,
)

__all__ = ["client", "make_guard", "tls_files", "upstream"]


async def test_tls_termination(
    upstream: Upstream, make_guard: GuardFactory, tls_files: TLSFiles, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, tls={"cert": str(tls_files.cert), "key": str(tls_files.key)})
    async with client.get(g.url("/secure?x=1"), ssl=tls_files.client_context()) as resp:
        assert resp.status == 200
    ctx = tls_files.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await asyncio.open_connection("127.0.0.1", g.port, ssl=ctx, server_hostname="localhost")
    tls = writer.get_extra_info("ssl_object")
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert tls.selected_alpn_protocol() == "http/1.1"  # never h2: the guard speaks HTTP/1.1
    writer.close()
    seen = upstream.seen[-1]
    assert seen.raw_path == "/secure?x=1"
    assert seen.header("X-Forwarded-Proto") == ["https"]


def test_server_context_is_modern(tls_files: TLSFiles) -> None:
    ctx = server_context(TLSConfig(cert=tls_files.cert, key=tls_files.key))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    for cipher in ctx.get_ciphers():
        if cipher["protocol"] == "TLSv1.2":
            assert cipher["aead"] and "ECDHE" in cipher["name"]


async def test_plain_http_on_a_tls_port_is_dropped(
    upstream: Upstream, make_guard: GuardFactory, tls_files: TLSFiles
) -> None:
    g = await make_guard(upstream.url, tls={"cert": str(tls_files.cert), "key": str(tls_files.key)})
    data = await raw_exchange(g.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not data.startswith(b"HTTP/1.1 200")
    assert upstream.seen == []


async def test_https_upstream_verified_with_ca_bundle(
    make_guard: GuardFactory, tls_files: TLSFiles, client: ClientSession
) -> None:
    up = Upstream()
    await up.start(tls_files.server_context())
    try:
        g = await make_guard(f"https://localhost:{up.port}",
                             upstream_tls={"ca_bundle": str(tls_files.ca_pem)})
        async with client.get(g.url("/over-tls")) as resp:
            assert resp.status == 200
        assert up.seen[-1].raw_path == "/over-tls"
    finally:
        await up.close()


async def test_https_upstream_with_server_name(
    make_guard: GuardFactory, tls_files: TLSFiles, client: ClientSession
) -> None:
    """Connect by address, verify (and send SNI for) the name in the certificate."""
    up = Upstream()
    await up.start(tls_files.server_context())
    try:
        g = await make_guard(
            f"https://127.0.0.1:{up.port}",
            upstream_tls={"ca_bundle": str(tls_files.ca_pem), "server_name": "upstream.test"},
        )
        async with client.get(g.url("/sni")) as resp:
            assert resp.status == 200
    finally:
        await up.close()


async def test_https_upstream_failing_verification_is_502(
    make_guard: GuardFactory, tls_files: TLSFiles, client: ClientSession
) -> None:
    up = Upstream()
    await up.start(tls_files.server_context())
    try:
        g = await make_guard(f"https://localhost:{up.port}")  # system CAs: trustme's CA is unknown
        async with client.get(g.url("/")) as resp:
            assert resp.status == 502
            text = await resp.text()
        assert "certificate" not in text.lower() and str(up.port) not in text
        assert up.seen == []
    finally:
        await up.close()


async def test_https_upstream_wrong_name_is_502(
    make_guard: GuardFactory, tls_files: TLSFiles, client: ClientSession
) -> None:
    up = Upstream()
    await up.start(tls_files.server_context())
    try:
        g = await make_guard(
            f"https://127.0.0.1:{up.port}",
            upstream_tls={"ca_bundle": str(tls_files.ca_pem), "server_name": "not-in-the-cert.test"},
        )
        async with client.get(g.url("/")) as resp:
            assert resp.status == 502
    finally:
        await up.close()


async def test_tls_and_websocket(
    upstream: Upstream, make_guard: GuardFactory, tls_files: TLSFiles, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, tls={"cert": str(tls_files.cert), "key": str(tls_files.key)})
    async with client.ws_connect(g.url("/ws").replace("https", "wss"), ssl=tls_files.client_context()) as ws:
        await ws.send_str("over tls")
        assert await ws.receive_str() == "over tls"
        await ws.close()
    await asyncio.wait_for(upstream.ws_closed.wait(), 5)
    resp = parse_response(
        await raw_exchange(g.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                           ssl_context=tls_files.client_context())
    )
    assert resp.status == 200
