"""Overload shedding: a request that waited longer than ``limits.max_queue_time`` gets a 503 at once."""

from __future__ import annotations

import asyncio
import time

from tests.proxy_fixtures import (
    GuardFactory,
    RawResponse,
    Upstream,
    make_guard,
    raw_get,
    read_response,
    upstream,
)
from tests.test_proxy_limits import assert_branded, wait_until

__all__ = ["make_guard", "upstream"]


async def pipelined_pair(port: int, upstream: Upstream, second: str) -> tuple[RawResponse, RawResponse]:
    """``GET /hold`` and ``second`` in one write; the upstream holds the first for 300 ms (a sleep
    on purpose: the hold *is* the queue time under test)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\nGET " + second.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    await asyncio.sleep(0.3)
    upstream.release.set()
    answers = await read_response(reader), await read_response(reader)
    writer.close()
    return answers


async def test_a_request_that_waited_too_long_is_shed_and_never_reaches_the_upstream(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    """The second of two pipelined requests waits behind a slow first one: past the limit it is shed.

    Its head was parsed on arrival; its turn came only when the first answer was done,
    later than ``max_queue_time``.  It gets the branded 503 with ``Retry-After`` and a
    close, the upstream never sees it, and the decision log says why.
    """
    g = await make_guard(upstream.url, limits={"max_queue_time": "100ms"})
    first, second = await pipelined_pair(g.port, upstream, "/late")
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
    first, second = await pipelined_pair(g.port, upstream, "/next")
    assert (first.status, second.status) == (200, 200)
    assert [s.raw_path for s in upstream.seen] == ["/hold", "/next"]


async def test_the_wait_for_a_pooled_upstream_connection_is_bounded_too(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    """Every pooled connection busy: a request waits what is left of ``max_queue_time`` for one,
    then gets the overload 503 (``Retry-After``), not a minute in line or a 504."""
    g = await make_guard(upstream.url, limits={"upstream_connections": 1, "max_queue_time": "300ms"},
                         timeouts={"upstream_connect": 1, "upstream_read": 30})
    holder = asyncio.create_task(raw_get(g.port, "/hold"))
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiting = await raw_get(g.port, "/waiting")
    waited = loop.time() - t0
    assert_branded(waiting, 503)
    assert waiting.header("Retry-After") == ["1"] and waiting.header("Connection") == ["close"]
    assert 0.25 <= waited < 1.5, waited
    assert g.server._handler.queued_out == 1  # type: ignore[union-attr]
    obs = g.server.observability
    assert obs is not None   # the hub reads the count on its next once-a-second poll
    refused = 'guard_overload_refused_total{reason="queue_time",stage="upstream_queue"} 1.0'
    await wait_until(lambda: refused in obs.metrics.render().decode(), limit=5)
    upstream.release.set()
    assert (await holder).status == 200
    assert [s.raw_path for s in upstream.seen] == ["/hold"]
    assert [(line["path"], line["status"]) for line in g.log()] == [("/waiting", 503), ("/hold", 200)]


async def test_requests_waiting_for_a_pooled_connection_get_it_in_arrival_order(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    """One pooled connection, held; five requests line up behind it and reach the upstream in
    the order they arrived, each on the connection the one before gave back."""
    g = await make_guard(upstream.url, limits={"upstream_connections": 1, "max_queue_time": "10s"})
    holder = asyncio.create_task(raw_get(g.port, "/hold"))
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    waiting = []
    for i in range(5):
        waiting.append(asyncio.create_task(raw_get(g.port, f"/w{i}")))
        await wait_until(lambda n=i + 2: g.server.in_flight == n)   # in line before the next one comes
    upstream.release.set()
    assert (await holder).status == 200
    assert [r.status for r in await asyncio.gather(*waiting)] == [200] * 5
    assert [s.raw_path for s in upstream.seen] == ["/hold", "/w0", "/w1", "/w2", "/w3", "/w4"]
    assert g.server.in_flight == 0 and g.server._handler.upstream.slots._value == 1  # type: ignore[union-attr]


def burn(seconds: float) -> None:
    """Keep this thread's CPU busy: the event loop runs nothing else meanwhile (a saturated guard)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_new_requests_get_a_503_while_the_loop_is_late_and_are_served_again_after(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    """Work that keeps the loop 60 ms late on every tick: new work is refused at once.

    Past capacity the admitted work makes every tick late; the guard stops taking new
    requests (503, ``Retry-After``, close) and new connections (503 at accept) until the
    loop catches up, and the upstream never sees what was refused.
    """
    g = await make_guard(upstream.url, limits={"max_loop_lag": "20ms"})
    upstream.release.set()
    lag = g.server._handler.lag  # type: ignore[union-attr]
    assert (await raw_get(g.port, "/before")).status == 200 and not lag.overloaded
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)   # accepted while idle
    await wait_until(lambda: g.server.open_connections == 1)
    for _ in range(40):            # every pass over the loop now takes 60 ms
        burn(0.06)
        await asyncio.sleep(0)
        if lag.overloaded:
            break
    assert lag.overloaded and lag.lag > 0.02
    writer.write(b"GET /refused HTTP/1.1\r\nHost: h\r\n\r\n")
    await writer.drain()
    refused = await read_response(reader)
    writer.close()
    assert_branded(refused, 503)
    assert refused.header("Retry-After") == ["1"] and refused.header("Connection") == ["close"]
    line = next(line for line in g.log() if line.get("status") == 503)
    assert line["action"] == "unavailable" and line["rules"] == ["overload"]
    assert "max_loop_lag" in line["reasons"][0]["detail"]
    busy = True

    async def hog() -> None:      # keep every pass late while a new client connects
        while busy:
            burn(0.06)
            await asyncio.sleep(0)

    hogging = asyncio.create_task(hog())
    at_accept = await raw_get(g.port, "/refused-at-accept")
    busy = False
    await hogging
    assert_branded(at_accept, 503)
    assert g.server._listener.refused_busy == 1  # type: ignore[union-attr]
    assert [s.raw_path for s in upstream.seen] == ["/before"]
    await wait_until(lambda: not lag.overloaded)   # the loop is idle again: a few on-time ticks
    after = await raw_get(g.port, "/after")
    assert after.status == 200 and upstream.seen[-1].raw_path == "/after"
    obs = g.server.observability
    assert obs is not None   # SREs see both refusals and the lag behind them on /metrics

    def exported() -> bool:
        text = obs.metrics.render().decode()
        return all(f'guard_overload_refused_total{{reason="loop_lag",stage="{stage}"}} 1.0' in text
                   for stage in ("request", "accept"))

    await wait_until(exported)
    lags = [float(line.split()[-1]) for line in obs.metrics.render().decode().splitlines()
            if line.startswith("guard_event_loop_lag_seconds ")]
    assert len(lags) == 1 and lags[0] >= 0.0


async def test_one_long_pause_is_not_overload(upstream: Upstream, make_guard: GuardFactory) -> None:
    """A single 150 ms stall (a full garbage collection of a big store) sheds nothing."""
    g = await make_guard(upstream.url, limits={"max_loop_lag": "20ms"})
    upstream.release.set()
    lag = g.server._handler.lag  # type: ignore[union-attr]
    await raw_get(g.port, "/warm")
    burn(0.15)
    await wait_until(lambda: lag.peak >= 0.1)  # the next tick saw the stall
    assert not lag.overloaded
    assert (await raw_get(g.port, "/after-pause")).status == 200


async def test_max_loop_lag_zero_turns_the_measure_off(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, limits={"max_loop_lag": 0})
    upstream.release.set()
    lag = g.server._handler.lag  # type: ignore[union-attr]
    for _ in range(6):
        burn(0.05)
        await asyncio.sleep(0)
    assert not lag.overloaded and lag.lag == 0.0
    assert (await raw_get(g.port, "/served")).status == 200
