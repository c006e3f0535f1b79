"""Accepting under load: every queued connection in one pass, and refusals the client can read."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import uvloop

from guard.http import GuardServer
from tests.proxy_fixtures import GuardFactory, Upstream, make_config, make_guard, parse_response, upstream
from tests.test_proxy_limits import assert_branded, wait_until
from tests.test_proxy_shedding import burn

__all__ = ["make_guard", "upstream"]


async def test_a_refused_connection_reads_the_503_and_no_reset(upstream: Upstream, make_guard: GuardFactory) -> None:
    """Past max_connections, a client that already sent its request still gets the page, then EOF.

    A plain close with the request unread would make the kernel answer with a reset, which
    can overtake the 503; the guard drains the request first (lingering close).
    """
    g = await make_guard(upstream.url, limits={"max_connections": 1})
    upstream.release.set()
    held = await asyncio.open_connection("127.0.0.1", g.port)
    await wait_until(lambda: g.server.open_connections == 1)
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        writer.write(b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 20000\r\n\r\n" + b"x" * 20000)
        data = await asyncio.wait_for(reader.read(), 5)   # ConnectionResetError here is the bug
        assert_branded(parse_response(data), 503)
        writer.close()
    listener = g.server._listener
    assert listener is not None and listener.refused_full == 20
    await wait_until(lambda: not listener._lingering)       # each refused socket closed after the client's close
    assert upstream.seen == []
    held[1].close()


def test_connections_queued_while_the_loop_is_busy_are_accepted_in_one_pass(tmp_path: Path) -> None:
    """On uvloop, 150 connections arriving during 60 ms passes are all accepted within a few passes.

    ``loop.create_server`` on uvloop accepts one connection per pass while the loop is busy,
    so an overloaded guard left new clients in the kernel's accept queue for seconds instead of
    serving or refusing them.  The guard's own accept callback takes all that is queued.
    """

    async def scenario() -> tuple[int, int]:
        up = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        config = make_config(f"http://127.0.0.1:{up.sockets[0].getsockname()[1]}", tmp_path)
        server = GuardServer(config)
        await server.start()
        socks: list[socket.socket] = []

        def connect_all() -> None:
            for _ in range(150):
                socks.append(socket.create_connection(("127.0.0.1", server.public_port)))

        try:
            burn(0.06)
            dialer = threading.Thread(target=connect_all)
            dialer.start()
            passes = 0
            while dialer.is_alive() and passes < 200:   # the kernel completes handshakes meanwhile
                burn(0.06)
                await asyncio.sleep(0)
                passes += 1
            dialer.join()
            for _ in range(3):                           # then three more busy passes, no more
                burn(0.06)
                await asyncio.sleep(0)
            return server.open_connections, passes
        finally:
            for s in socks:
                s.close()
            await server.stop(1)
            up.close()
            await up.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        t0 = time.perf_counter()
        accepted, passes = runner.run(scenario())
    assert accepted == 150, (accepted, passes, time.perf_counter() - t0)
