"""Overload shedding: a request that waited longer than ``limits.max_queue_time`` gets a 503 at once."""

from __future__ import annotations

import asyncio

from tests.proxy_fixtures import GuardFactory, Upstream, make_guard, raw_get, read_response, upstream
from tests.test_proxy_limits import assert_branded, wait_until

__all__ = ["make_guard", "upstream"]


async def test_a_request_that_waited_too_long_is_shed_and_never_reaches_the_upstream(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    """The second of two pipelined requests waits behind a slow first one: past the limit it is shed.

    Its head was parsed on arrival; its turn came only when the first answer was done,
    later than ``max_queue_time``.  It gets the branded 503 with ``Retry-After`` and a
    close, the upstream never sees it, and the decision log says why.
    """
    g = await make_guard(upstream.url, limits={"max_queue_time": "100ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\nGET /late HTTP/1.1\r\nHost: h\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    await asyncio.sleep(0.3)
    upstream.release.set()
    first = await read_response(reader)
    second = await read_response(reader)
    writer.close()
    assert first.status == 200 and first.body == b"released"
    assert_branded(second, 503)
    assert second.header("Retry-After") == ["1"] and second.header("Connection") == ["close"]
    assert [s.raw_path for s in upstream.seen] == ["/hold"]
    await wait_until(lambda: any(line.get("status") == 503 for line in g.log()))
    line = next(line for line in g.log() if line.get("status") == 503)
    assert line["action"] == "unavailable" and line["rules"] == ["overload"]
    # a fresh request is not late: it goes through
    fresh = await raw_get(g.port, "/fresh")
    assert fresh.status == 200 and upstream.seen[-1].raw_path == "/fresh"


async def test_a_request_within_the_limit_is_served(upstream: Upstream, make_guard: GuardFactory) -> None:
    """The same pipelined pair, with the first answer quicker than the limit: both are served."""
    g = await make_guard(upstream.url, limits={"max_queue_time": "5s"})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    await asyncio.sleep(0.3)
    upstream.release.set()
    first = await read_response(reader)
    second = await read_response(reader)
    writer.close()
    assert (first.status, second.status) == (200, 200)
    assert [s.raw_path for s in upstream.seen] == ["/hold", "/next"]


async def test_the_wait_for_a_pooled_upstream_connection_is_bounded_too(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    """Every pooled connection busy: a request waits ``max_queue_time`` (+ connect) for one, not a minute."""
    g = await make_guard(upstream.url, limits={"upstream_connections": 1, "max_queue_time": "200ms"},
                         timeouts={"upstream_connect": 1, "upstream_read": 30})
    holder = asyncio.create_task(raw_get(g.port, "/hold"))
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiting = await raw_get(g.port, "/waiting")
    waited = loop.time() - t0
    assert_branded(waiting, 504)
    assert waited < 3.0, waited
    upstream.release.set()
    assert (await holder).status == 200
    assert [s.raw_path for s in upstream.seen] == ["/hold"]
