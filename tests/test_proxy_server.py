"""GuardServer's lifecycle: drain on stop, live reload, shared ports, IPv6 listeners."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import pytest
from aiohttp import ClientConnectorError, ClientSession

from guard.http import GuardServer
from tests.proxy_fixtures import (
    GuardFactory,
    Upstream,
    client,
    make_config,
    make_guard,
    parse_response,
    raw_exchange,
    raw_get,
    upstream,
)

__all__ = ["client", "make_guard", "upstream"]

HOLD = b"GET /hold HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


async def test_stop_drains_in_flight_requests(
    upstream: Upstream, tmp_path: Path, client: ClientSession
) -> None:
    server = GuardServer(make_config(upstream.url, tmp_path), log_stream=io.StringIO())
    await server.start()
    port = server.public_port
    in_flight = asyncio.create_task(raw_exchange(port, HOLD))
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    stopping = asyncio.create_task(server.stop(10))
    await asyncio.sleep(0)  # let stop() close the listener and flip readiness
    async with client.get(f"http://127.0.0.1:{server.admin_port}/readyz") as resp:
        assert resp.status == 503
        assert await resp.json() == {"status": "draining"}
    with pytest.raises(ClientConnectorError):
        async with client.get(f"http://127.0.0.1:{port}/"):
            pass
    assert not stopping.done()
    upstream.release.set()
    assert parse_response(await in_flight).status == 200
    await asyncio.wait_for(stopping, 5)


async def test_stop_gives_up_after_the_grace(upstream: Upstream, tmp_path: Path) -> None:
    server = GuardServer(make_config(upstream.url, tmp_path), log_stream=io.StringIO())
    await server.start()
    in_flight = asyncio.create_task(raw_exchange(server.public_port, HOLD))
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    started = time.monotonic()
    await server.stop(0.3)
    assert time.monotonic() - started < 3
    assert await in_flight == b""  # cut off: no response rather than a partial one


async def test_reload_swaps_trust_rules_and_brand(
    upstream: Upstream, make_guard: GuardFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = await make_guard(upstream.url)
    request = b"GET /admin HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.5\r\nConnection: close\r\n\r\n"
    assert parse_response(await raw_exchange(g.port, request)).status == 200
    assert g.log()[-1]["ip"] == "127.0.0.1"
    rules = "rules:\n  - {id: no-admin, description: d, when: {path: /admin}, action: block}\n"
    new = make_config(upstream.url, tmp_path, rules, trusted_proxies=["127.0.0.1"],
                      brand={"name": "Reloaded"}, listen="127.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="guard.http"):
        await g.server.reload(new)
    resp = parse_response(await raw_exchange(g.port, request))
    assert resp.status == 403 and "Reloaded" in resp.body.decode()
    assert g.log()[-1]["ip"] == "203.0.113.5"
    assert g.server.config is new
    assert any("listen" in r.getMessage() for r in caplog.records)  # needs a restart, and says so


async def test_reuse_port_lets_workers_share_a_port(upstream: Upstream, tmp_path: Path) -> None:
    first = GuardServer(make_config(upstream.url, tmp_path), reuse_port=True, log_stream=io.StringIO())
    await first.start()
    port = first.public_port
    second = GuardServer(
        make_config(upstream.url, tmp_path, listen=f"127.0.0.1:{port}",
                    admin={"listen": f"127.0.0.1:{first.admin_port}"}),
        reuse_port=True, log_stream=io.StringIO(),
    )
    try:
        await second.start()
        assert second.public_port == port
        await first.stop(0)
        assert (await raw_get(port)).status == 200  # the second worker took over
    finally:
        await first.stop(0)
        await second.stop(0)


async def test_taken_port_fails_start_cleanly(upstream: Upstream, tmp_path: Path) -> None:
    first = GuardServer(make_config(upstream.url, tmp_path), log_stream=io.StringIO())
    await first.start()
    try:
        second = GuardServer(make_config(upstream.url, tmp_path, listen=f"127.0.0.1:{first.public_port}"),
                             log_stream=io.StringIO())
        with pytest.raises(OSError):
            await second.start()
    finally:
        await first.stop(0)


async def test_ipv6_listener_and_client(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, listen="[::1]:0")
    request = b"GET /v6 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    resp = parse_response(await raw_exchange(g.port, request, host="::1"))
    assert resp.status == 200
    assert g.log()[-1]["ip"] == "::1"
    assert upstream.seen[-1].header("X-Forwarded-For") == ["::1"]


async def test_reload_applies_limits_to_open_and_new_connections(
    upstream: Upstream, make_guard: GuardFactory, tmp_path: Path
) -> None:
    g = await make_guard(upstream.url)
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(15))  # ~1.6 KB head
    request = b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"Connection: close\r\n\r\n"
    assert parse_response(await raw_exchange(g.port, request)).status == 200
    await g.server.reload(make_config(upstream.url, tmp_path, limits={"max_header_size": 1024}))
    assert parse_response(await raw_exchange(g.port, request)).status == 431
