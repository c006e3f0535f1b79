"""The same guard on uvloop: accept loop, add_reader, TLS upgrade and timers behave on both loops.

The supervisor picks uvloop when installed, the rest of the suite runs on the
default loop; this runs the paths that touch loop internals (PROXY protocol's
peek-and-hand-over, TLS on an accepted socket, the head timer, WebSockets)
under uvloop in one go.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from aiohttp import ClientSession

from guard.http import GuardServer
from guard.proxyproto import build_v2
from tests.proxy_fixtures import TLSFiles, Upstream, make_config, parse_response, raw_exchange, tls_files

__all__ = ["tls_files"]

uvloop = pytest.importorskip("uvloop")


async def scenario(tmp_path: Path, tls: TLSFiles) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    upstream = Upstream()
    await upstream.start()
    plain = GuardServer(make_config(upstream.url, tmp_path, timeouts={"client_header": 0.3},
                                    limits={"max_header_size": 2048}), log_stream=io.StringIO())
    tls_config = {"cert": str(tls.cert), "key": str(tls.key)}
    proxied = GuardServer(make_config(upstream.url, tmp_path, proxy_protocol=True, tls=tls_config),
                          log_stream=io.StringIO())
    await plain.start()
    await proxied.start()
    try:
        get = b"GET /u?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        assert parse_response(await raw_exchange(plain.public_port, get)).status == 200
        chunked = (b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                   b"3\r\nabc\r\n0\r\n\r\n")
        assert parse_response(await raw_exchange(plain.public_port, chunked)).status == 200
        assert upstream.seen[-1].body == b"abc"

        header = build_v2(("203.0.113.77", 9), ("192.0.2.1", 443))
        resp = await raw_exchange(proxied.public_port, get, prefix=header, ssl_context=tls.client_context())
        assert parse_response(resp).status == 200
        assert upstream.seen[-1].header("X-Forwarded-For") == ["203.0.113.77"]
        assert await raw_exchange(proxied.public_port, get, prefix=b"JUNK\r\n") == b""

        reader, writer = await asyncio.open_connection("127.0.0.1", plain.public_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        assert parse_response(await asyncio.wait_for(reader.read(), 5)).status == 408
        writer.close()

        fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(20))
        big = b"GET / HTTP/1.1\r\nHost: h\r\n" + fields
        assert parse_response(await raw_exchange(plain.public_port, big + b"\r\n")).status == 431

        async with ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{plain.public_port}/ws") as ws:
                await ws.send_bytes(b"\x00\x01")
                assert await ws.receive_bytes() == b"\x00\x01"
                await ws.close(code=4002)
            async with session.get(f"http://127.0.0.1:{plain.admin_port}/readyz") as r:
                assert r.status == 200
        await asyncio.wait_for(upstream.ws_closed.wait(), 5)
        assert upstream.ws_close_codes == [4002]
    finally:
        await plain.stop(0.5)
        await proxied.stop(0.5)
        await upstream.close()


def test_key_paths_on_uvloop(tmp_path: Path, tls_files: TLSFiles) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario(tmp_path, tls_files))
