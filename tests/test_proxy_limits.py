"""Every limit, and every failure, answered with a clean branded page (or a closed connection)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import ClientPayloadError, ClientSession

from guard.store.base import Op, StoreError
from guard.store.memory import MemoryStore
from tests.proxy_fixtures import (
    GuardFactory,
    RawResponse,
    Upstream,
    client,
    make_guard,
    parse_response,
    raw_exchange,
    raw_get,
    read_response,
    upstream,
)

__all__ = ["client", "make_guard", "upstream"]

LOGIN = {"logins": [{"id": "login", "path": "/login"}]}
INTERNALS = ("Traceback", "aiohttp", "Python/", "127.0.0.1:", "Error:", "Exception")


def assert_branded(resp: RawResponse, status: int) -> None:
    assert resp.status == status
    assert resp.header("Content-Type") == ["text/html; charset=utf-8"]
    text = resp.body.decode()
    assert "loginguard" in text and f">{status}<" in text
    for leak in INTERNALS:
        assert leak not in text


async def wait_until(predicate: Any, limit: float = 5.0) -> None:
    """Poll a condition that has no event to wait on (a counter inside the guard)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# ---- bodies and heads ---------------------------------------------------------------------------


async def test_oversized_login_body_with_length_is_refused_before_reading(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url, limits={"max_body_size": 2048}, **LOGIN)
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(b"POST /login HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4096\r\n\r\n")
    resp = await read_response(reader)  # no 100 Continue first: the answer at once
    writer.close()
    assert resp.header("Connection") == ["close"]
    assert_branded(resp, 413)
    assert upstream.seen == []
    assert g.log()[-1]["status"] == 413


async def test_oversized_chunked_login_body(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, limits={"max_body_size": 2048}, **LOGIN)
    chunk = b"800\r\n" + b"a" * 2048 + b"\r\n"
    head = b"POST /login HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    request = head + chunk * 2 + b"0\r\n\r\n"
    assert_branded(parse_response(await raw_exchange(g.port, request)), 413)
    assert upstream.seen == []


async def test_non_login_bodies_are_not_limited(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, limits={"max_body_size": 2048}, **LOGIN)
    async with client.post(g.url("/upload"), data=b"x" * 100_000) as resp:
        assert (await resp.json())["body_len"] == 100_000


async def test_error_pages_in_json(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, limits={"max_body_size": 2048}, **LOGIN)
    async with client.post(g.url("/login"), data=b"x" * 4096, headers={"Accept": "application/json"}) as resp:
        assert resp.status == 413
        assert resp.content_type == "application/json"
        assert await resp.json() == {
            "error": "body_too_large", "status": 413, "message": "The request body is larger than allowed."
        }


async def test_header_line_over_the_limit_is_431(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, limits={"max_header_size": 2048})
    request = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
    assert_branded(parse_response(await raw_exchange(g.port, request)), 431)
    assert upstream.seen == []


async def test_request_head_over_the_total_limit_is_431(upstream: Upstream, make_guard: GuardFactory) -> None:
    """aiohttp limits each line; the guard limits the head as a whole."""
    g = await make_guard(upstream.url, limits={"max_header_size": 2048})
    fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(20))  # 20 lines of ~210 bytes
    request = b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n"
    assert_branded(parse_response(await raw_exchange(g.port, request)), 431)
    assert upstream.seen == []


async def test_malformed_request_is_a_branded_400(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url)
    resp = parse_response(await raw_exchange(g.port, b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n"))
    assert_branded(resp, 400)


# ---- slow clients -------------------------------------------------------------------------------


async def test_slowloris_head_is_cut_off(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, timeouts={"client_header": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)

    async def drip() -> None:
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(100):
                writer.write(b"X-%d: a\r\n" % i)
                await writer.drain()
                await asyncio.sleep(0.05)  # the slow client itself, not synchronisation

    started = time.monotonic()
    dripping = asyncio.create_task(drip())
    data = await asyncio.wait_for(reader.read(), 5)
    elapsed = time.monotonic() - started
    dripping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dripping
    writer.close()
    assert_branded(parse_response(data), 408)
    assert 0.4 < elapsed < 2.0
    assert upstream.seen == []


async def test_silent_connection_is_closed_without_an_answer(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url, timeouts={"client_header": 0.3})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - started < 2.0
    writer.close()


async def test_idle_keep_alive_connection_is_closed(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, timeouts={"client_idle": 0.3, "client_header": 5})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    rest = await asyncio.wait_for(reader.read(), 5)  # the body, then EOF once idle
    assert rest.startswith(b"{")
    assert time.monotonic() - started < 2.0
    writer.close()


async def test_slow_login_body_gets_408(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, timeouts={"client_body": 0.3}, **LOGIN)
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(b"POST /login HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nusername=a")
    resp = await read_response(reader)
    writer.close()
    assert resp.header("Connection") == ["close"]
    assert_branded(resp, 408)
    assert upstream.seen == []


async def test_connections_over_the_limit_are_refused_politely(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    g = await make_guard(upstream.url, limits={"max_connections": 2})
    held = [await asyncio.open_connection("127.0.0.1", g.port) for _ in range(2)]
    await wait_until(lambda: g.server.open_connections == 2)
    refused = parse_response(await raw_exchange(g.port, b""))
    assert_branded(refused, 503)
    reader, writer = held[0]  # the admitted ones still work
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert parse_response(await reader.read()).status == 200
    for _, w in held:
        w.close()


# ---- upstream failures --------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_refused_is_502(make_guard: GuardFactory, client: ClientSession) -> None:
    g = await make_guard(f"http://127.0.0.1:{closed_port()}")
    async with client.get(g.url("/")) as resp:
        assert resp.status == 502
        text = await resp.text()
    assert "Service unreachable" in text
    for leak in INTERNALS:
        assert leak not in text
    async with client.get(g.url("/"), headers={"Accept": "application/json"}) as resp:
        assert await resp.json() == {"error": "bad_gateway", "status": 502,
                                     "message": "The service could not be reached. Please try again."}
    assert g.log()[-1]["status"] == 502


async def test_slow_upstream_is_504(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, timeouts={"upstream_read": 0.3})
    started = time.monotonic()
    async with client.get(g.url("/hold")) as resp:
        assert resp.status == 504
        assert "Service timeout" in await resp.text()
    assert time.monotonic() - started < 3


async def test_upstream_connect_timeout_is_504(make_guard: GuardFactory, client: ClientSession) -> None:
    # A listener that never accepts, with its queue full: further SYNs are dropped.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(lsock.getsockname())
            fillers.append(s)
        g = await make_guard(f"http://127.0.0.1:{lsock.getsockname()[1]}", timeouts={"upstream_connect": 0.3})
        async with client.get(g.url("/")) as resp:
            assert resp.status == 504
    finally:
        for s in fillers:
            s.close()
        lsock.close()


async def test_upstream_reset_mid_body_closes_the_client_connection(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    async with client.get(g.url("/reset")) as resp:
        assert resp.status == 200
        with pytest.raises(ClientPayloadError):
            await resp.read()


async def test_queue_to_the_upstream_is_bounded(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, limits={"upstream_connections": 1, "max_pending_upstream": 1})
    waiting = [asyncio.create_task(raw_exchange(g.port, b"GET /hold HTTP/1.1\r\nHost: h\r\n"
                                                       b"Connection: close\r\n\r\n")) for _ in range(2)]
    await wait_until(lambda: g.server.in_flight == 2)
    over = await raw_get(g.port, "/x")
    assert_branded(over, 503)
    upstream.release.set()
    assert [parse_response(r).status for r in await asyncio.gather(*waiting)] == [200, 200]


# ---- decisions ----------------------------------------------------------------------------------

RULES = """
rules:
  - id: no-admin
    description: nobody reaches /admin
    when: {path: {prefix: /admin}}
    action: block
  - id: slow-down
    description: tarpit /slow
    when: {path: /slow}
    action: tarpit
    tarpit: 300ms
"""


async def test_block_decision_is_a_403_page(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, rules=RULES)
    resp = await raw_get(g.port, "/admin/x")
    assert_branded(resp, 403)
    assert "Access denied" in resp.body.decode()
    assert "no-admin" not in resp.body.decode()  # which rule fired is for the log, not the client
    assert upstream.seen == []
    entry = g.log()[-1]
    assert entry["status"] == 403 and entry["action"] == "block" and entry["reasons"][0]["rule"] == "no-admin"


async def test_encoded_path_does_not_evade_a_rule(upstream: Upstream, make_guard: GuardFactory) -> None:
    g = await make_guard(upstream.url, rules=RULES)
    for target in ("/%61dmin/x", "//admin/x", "/x/../admin", "/admin;jsessionid=1"):
        assert (await raw_get(g.port, target)).status == 403, target
    assert upstream.seen == []


async def test_ban_decision_is_a_403_page(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url)
    await g.server.engine.ban("ip:127.0.0.1", 60)
    async with client.get(g.url("/"), headers={"Accept": "application/json"}) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "blocked"
    assert upstream.seen == []


async def test_tarpit_delays_then_forwards(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, rules=RULES)
    started = time.monotonic()
    async with client.get(g.url("/slow")) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.3
    assert g.log()[-1]["action"] == "tarpit"
    assert g.log()[-1]["overhead_ms"] >= 300


class DownStore(MemoryStore):
    """The memory backend with its network unplugged: every batch fails like an unreachable Redis."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.down = False

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        if self.down:
            raise self.error
        return await super().execute(ops, now)


async def test_store_down_fail_closed_is_a_503_page(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    store = DownStore(StoreError("connection refused"))
    g = await make_guard(upstream.url, use_store=store, store={"fail_open": False}, **LOGIN)
    store.down = True
    async with client.post(g.url("/login"), data={"username": "a", "password": "b"}) as resp:
        assert resp.status == 503
        assert "Temporarily unavailable" in await resp.text()
    assert upstream.seen == []
    assert g.log()[-1]["action"] == "unavailable"


async def test_engine_failure_is_a_500_page_and_a_logged_traceback(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    store = DownStore(RuntimeError("store exploded at 10.9.8.7:6379"))
    g = await make_guard(upstream.url, use_store=store, **LOGIN)
    store.down = True
    with caplog.at_level(logging.ERROR, logger="guard.http"):
        async with client.post(g.url("/login"), data={"username": "a", "password": "hunter2"}) as resp:
            assert resp.status == 500
            text = await resp.text()
    assert "Something went wrong" in text
    assert "exploded" not in text and "10.9.8.7" not in text
    assert upstream.seen == []
    assert any(r.exc_info and "exploded" in str(r.exc_info[1]) for r in caplog.records)  # the traceback
    assert "hunter2" not in caplog.text  # the request's secrets are not
    assert g.log()[-1]["status"] == 500


async def test_login_is_forwarded_with_its_body_and_outcome_seen(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, **LOGIN)
    async with client.post(g.url("/login"), data={"username": "alice", "password": "good"},
                           allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Set-Cookie"] == "session=s1"
    seen = upstream.seen[-1]
    assert seen.body == b"username=alice&password=good"
    assert seen.header("Content-Length") == [str(len(seen.body))]
    entry = g.log()[-1]
    assert entry["login"] == "login" and entry["status"] == 302
    assert json.dumps(entry).find("good") < 0  # the password is never logged


async def test_slowloris_on_a_kept_alive_connection(upstream: Upstream, make_guard: GuardFactory) -> None:
    """The deadline also runs for the second head on a connection, from its first byte."""
    g = await make_guard(upstream.url, timeouts={"client_header": 0.3, "client_idle": 30})
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await read_response(reader)).status == 200
    writer.write(b"GET /second HTTP/1.1\r\nHost: h\r\nX-Slow: ")
    started = time.monotonic()
    resp = parse_response(await asyncio.wait_for(reader.read(), 5))
    writer.close()
    assert_branded(resp, 408)
    assert time.monotonic() - started < 2.0
    assert [s.raw_path for s in upstream.seen] == ["/first"]


class StaleUpstream:
    """Keeps connections alive, then drops the second request on each without a word.

    That is what a pooled connection looks like when the upstream closed it just
    as the guard reused it.
    """

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head.split(b" ")[1])
                if n == 1:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_idempotent_request_is_retried_on_a_stale_connection(make_guard: GuardFactory) -> None:
    stale = StaleUpstream()
    async with stale as url:
        g = await make_guard(url)
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        for path in (b"/a", b"/b"):
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            assert (await read_response(reader)).status == 200
        writer.close()
    assert stale.requests == [b"/a", b"/b", b"/b"]  # /b died on the reused connection, then went again


async def test_post_is_not_retried_on_a_stale_connection(make_guard: GuardFactory) -> None:
    stale = StaleUpstream()
    async with stale as url:
        g = await make_guard(url)
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await read_response(reader)).status == 200
        writer.write(b"POST /pay HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
        assert_branded(await read_response(reader), 502)
        writer.close()
    assert stale.requests == [b"/a", b"/pay"]  # RFC 9112 section 9.3.1: never sent twice


FAILURES = """
rules:
  - id: too-many-failures
    description: two failed logins from one IP
    when:
      velocity: {key: ip, metric: failures, window: 10m, over: 2}
    action: ban
    ban: {key: ip, duration: 10m}
"""


async def test_login_outcome_reaches_the_engine(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    """on_response sees the upstream's answer: failures counted there end in a ban."""
    g = await make_guard(upstream.url, rules=FAILURES, **LOGIN)
    statuses = []
    for _ in range(4):
        async with client.post(g.url("/login"), data={"username": "bob", "password": "bad"}) as resp:
            statuses.append(resp.status)
    assert statuses[:2] == [200, 200]  # the upstream's "wrong password" page, passed through
    assert statuses[-1] == 403
    assert g.log()[-1]["action"] == "ban"
