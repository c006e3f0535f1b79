"""WebSocket pass-through: text and binary frames both ways, subprotocols, close codes."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession, WSMsgType

from tests.proxy_fixtures import GuardFactory, Upstream, client, make_guard, upstream

__all__ = ["client", "make_guard", "upstream"]


async def test_echo_text_and_binary_and_client_close_code(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    async with client.ws_connect(g.url("/ws"), protocols=("chat.v1",)) as ws:
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert await ws.receive_str() == "hello"
        payload = bytes(range(256)) * 1000
        await ws.send_bytes(payload)
        assert await ws.receive_bytes() == payload
        await ws.close(code=4001, message=b"client bye")
    await asyncio.wait_for(upstream.ws_closed.wait(), 5)
    assert upstream.ws_close_codes == [4001]
    entry = g.log()[-1]
    assert entry["status"] == 101 and entry["path"] == "/ws"


async def test_upstream_close_code_reaches_the_client(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    async with client.ws_connect(g.url("/ws")) as ws:
        await ws.send_str("close:4000")
        msg = await ws.receive()
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 4000
        assert msg.extra == "upstream says bye"
    assert ws.close_code == 4000


async def test_forwarding_headers_on_the_upgrade(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    async with client.ws_connect(g.url("/ws"), headers={"X-Forwarded-For": "6.6.6.6", "Cookie": "s=1"}) as ws:
        await ws.send_str("x")
        await ws.receive_str()
        await ws.close()
    await asyncio.wait_for(upstream.ws_closed.wait(), 5)
    seen = upstream.seen[-1]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("Cookie") == ["s=1"]
    assert len(seen.header("Sec-WebSocket-Key")) == 1
    assert seen.header("Upgrade") == ["websocket"]


async def test_websocket_to_a_down_upstream_is_502(make_guard: GuardFactory, client: ClientSession) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = await make_guard(f"http://127.0.0.1:{port}")
    async with client.get(g.url("/ws"), headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }) as resp:
        assert resp.status == 502


async def test_upstream_refusing_the_upgrade(upstream: Upstream, make_guard: GuardFactory,
                                             client: ClientSession) -> None:
    g = await make_guard(upstream.url)
    async with client.get(g.url("/not-ws"), headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }) as resp:
        assert resp.status == 502  # the upstream answered 200 to an upgrade: not a WebSocket server


async def test_shutdown_says_going_away(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    async with client.ws_connect(g.url("/ws")) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str() == "hi"
        stopping = asyncio.create_task(g.server.stop(5))
        msg = await ws.receive()
        assert msg.type is WSMsgType.CLOSE and msg.data == 1001
    await asyncio.wait_for(stopping, 5)
    await asyncio.wait_for(upstream.ws_closed.wait(), 5)
    assert upstream.ws_close_codes == [1001]
