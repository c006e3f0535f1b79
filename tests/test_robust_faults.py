"""Faults around the guard: Redis killed, slowed, full; the upstream down, slow, resetting, truncating;
SMTP down during a challenge; a full disk under the decision log.

For each: the guard keeps answering under its configured policy (``store.fail_open``),
recovers with no restart, keeps every ban and held login the store kept, and says what
happened in its metrics and logs.  Everything is real: redis-server processes, an
aiosmtpd server, raw-socket upstreams, ``/dev/full``.

Already covered elsewhere (not repeated): the store-level breaker, hung Redis and OOM
(``tests/test_store_redis.py``); upstream refused, slow head, connect timeout, reset
mid-body and stale pooled connections (``tests/test_proxy_limits.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiosmtpd.controller import Controller
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tests.challenge_fixtures import mailbox
from tests.proxy_fixtures import (
    Guard,
    GuardFactory,
    Upstream,
    client,
    make_guard,
    parse_response,
    raw_exchange,
    upstream,
)
from tests.redisserver import RedisServer, free_port
from tests.test_challenge_channels import Mailbox
from tests.test_challenge_e2e import ALICE, Browser, code_in, form_fields, guard_config, legacy, started
from tests.test_proxy_limits import assert_branded, wait_until

__all__ = ["client", "legacy", "mailbox", "make_guard", "upstream"]

LOGIN = {"logins": [{"id": "login", "path": "/login"}]}
TRUST = {"trusted_proxies": ["127.0.0.1/32"]}   # so X-Forwarded-For picks the client IP per request
BANNED = "203.0.113.66"
HAS_DEV_FULL = Path("/dev/full").is_char_device()   # writes to it fail with ENOSPC
MARGIN = 0.6  # seconds on top of a configured timeout: scheduling on a shared 2-core machine


class PersistentRedis(RedisServer):
    """A redis-server that keeps its data across SIGKILL (AOF, fsync on every write).

    A ban or a held login survives a Redis crash only if Redis persisted it; this is the
    setup under which the guard must lose none of them.
    """

    def _spawn(self) -> None:
        d = self._dir.name
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", d,
             "--logfile", os.path.join(d, "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d,
        )


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    with PersistentRedis() as server:
        yield server


def redis_store(url: str, fail_open: bool) -> dict[str, Any]:
    return {"store": {"backend": "redis", "url": url, "timeout": 0.25, "retry_after": 0.3,
                      "fail_open": fail_open}, "secret_key": "test-fingerprint-key-0123456789"}


async def login(client: ClientSession, g: Guard, ip: str, user: str = "bob") -> tuple[int, float]:
    started = time.monotonic()
    async with client.post(g.url("/login"), data={"username": user, "password": "bad"},
                           headers={"X-Forwarded-For": ip}) as resp:
        await resp.read()
        return resp.status, time.monotonic() - started


async def get(client: ClientSession, g: Guard, path: str, ip: str) -> int:
    async with client.get(g.url(path), headers={"X-Forwarded-For": ip}) as resp:
        await resp.read()
        return resp.status


def metric(g: Guard, name: str, **labels: str) -> float:
    obs = g.server.observability
    assert obs is not None
    obs.metrics.flush()   # what a scrape does first
    return obs.metrics.registry.get_sample_value(name, labels) or 0.0


async def until_login_works(client: ClientSession, g: Guard, ip: str, limit: float = 5.0) -> float:
    """Log in until the store answers again (the breaker probes by itself); returns the wait."""
    started = time.monotonic()
    while True:
        before = len(g.log())
        status, _ = await login(client, g, ip)
        entry = g.log()[before:][-1]
        if status == 200 and "store-unavailable" not in entry["rules"]:
            return time.monotonic() - started
        assert time.monotonic() - started < limit, "the store was not used again by itself"
        await asyncio.sleep(0.05)  # a client's retry pace, not synchronisation


# ---- Redis killed and restarted ---------------------------------------------------------------


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail_open", "fail_closed"])
async def test_redis_killed_and_restarted(
    fail_open: bool, aof_redis: RedisServer, upstream: Upstream, make_guard: GuardFactory,
    client: ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    g = await make_guard(upstream.url, **LOGIN, **TRUST, **redis_store(aof_redis.url, fail_open))
    await g.server.engine.ban(f"ip:{BANNED}", 600, "manual")
    assert (await login(client, g, "203.0.113.7"))[0] == 200

    aof_redis.kill()
    with caplog.at_level(logging.WARNING, logger="guard.store.redis"):
        seen_before = len(upstream.seen)
        status, took = await login(client, g, "203.0.113.8")
        assert took < 0.25 + MARGIN, f"a login took {took:.2f}s with Redis down"
        if fail_open:
            assert status == 200 and len(upstream.seen) == seen_before + 1
            assert g.log()[-1]["action"] == "log"
        else:
            assert status == 503 and len(upstream.seen) == seen_before  # not forwarded unchecked
            assert g.log()[-1]["action"] == "unavailable"
        assert g.log()[-1]["rules"] == ["store-unavailable"]
        # the hot path never needed Redis, and the ban is still enforced from memory
        assert await get(client, g, "/page", "203.0.113.9") == 200
        assert await get(client, g, "/page", BANNED) == 403
        assert (await login(client, g, BANNED))[0] == 403
    assert any("redis failed" in r.getMessage() for r in caplog.records)
    assert metric(g, "guard_rule_hits_total", rule="store-unavailable", mode="enforce") >= 1
    async with client.get(g.admin("/readyz")) as resp:
        assert (await resp.json())["store"] == "down"
        assert resp.status == 503 or fail_open   # fail_open still serves: degraded, not unready

    aof_redis.start()   # same port, data back from the AOF
    assert await until_login_works(client, g, "203.0.113.10") < 0.3 + 2 * MARGIN
    async with client.get(g.admin("/readyz")) as resp:
        assert resp.status == 200
    # the ban the store kept is still there for everyone: a guard started now enforces it too
    assert [b.subject for b in await g.server.engine.store.bans(time.time())] == [f"ip:{BANNED}"]
    fresh = await make_guard(upstream.url, **LOGIN, **TRUST, **redis_store(aof_redis.url, fail_open))
    assert await get(client, fresh, "/page", BANNED) == 403


async def test_a_held_login_survives_a_redis_crash(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int], aof_redis: RedisServer
) -> None:
    """Step-up: the upstream's session is held in Redis; a crash between code and answer loses nothing."""
    box, smtp = mailbox
    store = (f"store: {{backend: redis, url: '{aof_redis.url}', timeout: 250ms, retry_after: 300ms}}\n"
             "secret_key: test-fingerprint-key-0123456789\n")
    server = await started(guard_config(tmp_path, legacy, smtp, store))
    browser = Browser(f"http://127.0.0.1:{server.public_port}")
    try:
        status, _, page, _ = await browser.post("/login", {"username": ALICE.login, "password": ALICE.password})
        assert status == 200 and "one-time-code" in page
        await server._challenges.drain()
        fields, code = form_fields(page), code_in(box)

        aof_redis.kill()
        started_at = time.monotonic()
        status, _, page, cookies = await browser.post("/.loginguard/challenge", {**fields, "code": code, "op": "verify"})
        assert status == 503, "without the store the held answer is never released"
        assert time.monotonic() - started_at < 0.25 + MARGIN
        assert not any(c.startswith("SID=") for c in cookies)

        aof_redis.start()
        deadline = time.monotonic() + 5
        while True:  # the breaker lets a probe through after retry_after
            status, headers, _, cookies = await browser.post(
                "/.loginguard/challenge", {**fields, "code": code, "op": "verify"})
            if status != 503:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert status == 302 and headers["Location"] == "/contact"
        assert any(c.startswith("SID=") for c in cookies)  # the upstream's session, released once
    finally:
        await browser.close()
        await server.stop(1)


TRAP = """
rules:
  - id: trap
    description: whoever requests the trap is banned
    when: {path: /trap}
    action: ban
    ban: {duration: 10m}
"""


async def test_a_ban_made_during_an_outage_outlives_the_recovery(
    private_redis: RedisServer, upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, rules=TRAP, **TRUST, **redis_store(private_redis.url, True))
    private_redis.kill()
    assert await get(client, g, "/trap", "198.51.100.5") == 403       # "ban kept locally only"
    assert await get(client, g, "/page", "198.51.100.5") == 403
    private_redis.start()
    store = g.server.engine.store
    deadline = time.monotonic() + 5
    while not await store.ping():   # the breaker lets a probe through after retry_after
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await g.server.engine.ban("ip:198.51.100.99", 600)   # any other ban moves the version
    assert await g.server.engine.bans.refresh()           # what the ban-cache poll does next
    assert await get(client, g, "/page", "198.51.100.5") == 403


# ---- Redis slowed --------------------------------------------------------------------------------


@dataclass
class DelayProxy:
    """A TCP proxy between the guard and Redis that holds every chunk ``delay`` seconds each way."""

    target: int
    delay: float = 0.0
    bytes_up: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await src.read(65536):
                if up:
                    self.bytes_up += len(data)
                if self.delay:
                    await asyncio.sleep(self.delay)  # the fault being injected
                dst.write(data)
                await dst.drain()
        dst.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        r2, w2 = await asyncio.open_connection("127.0.0.1", self.target)
        for src, dst, up in ((reader, w2, True), (r2, writer, False)):
            task = asyncio.create_task(self._pump(src, dst, up))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def __aenter__(self) -> DelayProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail_open", "fail_closed"])
async def test_redis_slowed_costs_at_most_one_timeout_then_the_breaker_holds(
    fail_open: bool, private_redis: RedisServer, upstream: Upstream, make_guard: GuardFactory,
    client: ClientSession,
) -> None:
    async with DelayProxy(private_redis.port) as proxy:
        g = await make_guard(upstream.url, **LOGIN, **TRUST, **redis_store(proxy.url, fail_open))
        await g.server.engine.ban(f"ip:{BANNED}", 600)
        assert (await login(client, g, "203.0.113.7"))[0] == 200

        proxy.delay = 0.05          # slow, but inside the 250 ms store timeout: nothing changes
        assert (await login(client, g, "203.0.113.7"))[0] == 200
        assert "store-unavailable" not in g.log()[-1]["rules"]

        proxy.delay = 2.0           # slower than the store timeout
        expected = 200 if fail_open else 503
        status, took = await login(client, g, "203.0.113.8")
        assert status == expected and took < 0.25 + MARGIN, f"{status} after {took:.2f}s"
        # the breaker is open: the next logins do not even write to Redis, and answer at once
        sent = proxy.bytes_up
        for _ in range(3):
            status, took = await login(client, g, "203.0.113.8")
            assert status == expected and took < MARGIN
        assert proxy.bytes_up == sent
        assert await get(client, g, "/page", BANNED) == 403   # bans still enforced from memory

        proxy.delay = 0.0
        assert await until_login_works(client, g, "203.0.113.11") < 0.3 + 2 * MARGIN
        assert await get(client, g, "/page", BANNED) == 403


# ---- Redis full --------------------------------------------------------------------------------


VELOCITY = """
rules:
  - id: many-attempts
    description: a counter every login writes
    when:
      velocity: {key: ip, metric: attempts, window: 10m, over: 1000}
    action: block
"""


async def fill(admin: Redis) -> None:
    """Write junk until Redis refuses with OOM (maxmemory 1mb, noeviction)."""
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1mb")
    blob = b"x" * 16384
    for i in range(10_000):
        try:
            await admin.set(f"junk:{i}", blob)
        except ResponseError as exc:
            assert "OOM" in str(exc) or "maxmemory" in str(exc)
            return
    raise AssertionError("Redis never filled up")


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail_open", "fail_closed"])
async def test_redis_full_becomes_the_fail_policy(
    fail_open: bool, private_redis: RedisServer, upstream: Upstream, make_guard: GuardFactory,
    client: ClientSession,
) -> None:
    admin = Redis.from_url(private_redis.url)
    try:
        g = await make_guard(upstream.url, rules=VELOCITY, **LOGIN, **TRUST,
                             **redis_store(private_redis.url, fail_open))
        await g.server.engine.ban(f"ip:{BANNED}", 600)
        await fill(admin)
        seen = len(upstream.seen)
        status, took = await login(client, g, "203.0.113.7")
        assert status == (200 if fail_open else 503) and took < 0.25 + MARGIN
        assert len(upstream.seen) == seen + (1 if fail_open else 0)
        assert g.log()[-1]["rules"] == ["store-unavailable"]
        assert await get(client, g, "/page", "203.0.113.7") == 200
        assert await get(client, g, "/page", BANNED) == 403

        await admin.flushdb()   # an operator frees memory (the bans went with it: a test shortcut)
        await admin.config_set("maxmemory", "0")
        assert await until_login_works(client, g, "203.0.113.12") < 0.3 + 2 * MARGIN
    finally:
        await admin.aclose()


async def test_a_guard_started_while_redis_is_full_still_enforces_stored_bans(
    private_redis: RedisServer, upstream: Upstream, make_guard: GuardFactory, client: ClientSession,
) -> None:
    """Reads (the ban list) still work under maxmemory/noeviction: only writes are refused."""
    admin = Redis.from_url(private_redis.url)
    try:
        g = await make_guard(upstream.url, **TRUST, **redis_store(private_redis.url, True))
        await g.server.engine.ban(f"ip:{BANNED}", 600)
        await fill(admin)
        fresh = await make_guard(upstream.url, **TRUST, **redis_store(private_redis.url, True))
        assert await get(client, fresh, "/page", BANNED) == 403
    finally:
        await admin.aclose()


# ---- what the store failures say in metrics ----------------------------------------------------


async def test_store_errors_are_counted_in_metrics(
    private_redis: RedisServer, upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    g = await make_guard(upstream.url, **LOGIN, **TRUST, **redis_store(private_redis.url, True))
    private_redis.kill()
    await login(client, g, "203.0.113.7")
    assert metric(g, "guard_store_errors_total") >= 1


# ---- the upstream: down, resetting, slow, truncating ------------------------------------------


@dataclass
class RawUpstream:
    """A raw-socket upstream whose answer (or lack of one) is scripted per test."""

    behaviour: str
    server: asyncio.Server | None = None
    connections: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            b = self.behaviour
            if b == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if b == "short-length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1000\r\n\r\n"
                             + b"<p>" + b"a" * 97)
            elif b == "short-chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"64\r\n" + b"<p>" + b"a" * 97 + b"\r\n")   # no terminating 0-chunk
            elif b == "stall-body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
                await writer.drain()
                await reader.read()  # silent mid-body until the guard gives up and closes
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_upstream_resetting_connections_is_a_502_and_one_warning(
    make_guard: GuardFactory, client: ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async with RawUpstream("reset") as up:
        g = await make_guard(up.url)
        with caplog.at_level(logging.WARNING, logger="guard.http"):
            for _ in range(20):
                async with client.get(g.url("/x")) as resp:
                    assert resp.status == 502
                    assert "Service unreachable" in await resp.text()
        warnings = [r for r in caplog.records if "upstream answered 502" in r.getMessage()]
        assert len(warnings) == 1, "an outage is one warning a second, not one per request"
        assert up.connections >= 20


@contextlib.asynccontextmanager
async def serving(up: Upstream, port: int) -> AsyncIterator[None]:
    """The fixture upstream's handler on a fixed port (to bring it back where it was)."""
    handler = web.Server(up.handle, access_log=None)
    server = await asyncio.get_running_loop().create_server(handler, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        await handler.shutdown(0.1)   # drop its keep-alive connections: a real outage
        await server.wait_closed()


async def test_upstream_down_then_back_recovers_without_a_restart(
    make_guard: GuardFactory, client: ClientSession
) -> None:
    port = free_port()
    # The upstream binds first: the guard's own listeners take ports too, and one of them could
    # be the port just found free (seen once in CI: "address already in use").
    async with serving(Upstream(), port):
        g = await make_guard(f"http://127.0.0.1:{port}")
        async with client.get(g.url("/a")) as resp:
            assert resp.status == 200          # a pooled keep-alive connection now exists
    async with client.get(g.url("/b")) as resp:
        assert resp.status == 502
    back = Upstream()
    async with serving(back, port):
        async with client.get(g.url("/c")) as resp:
            assert resp.status == 200
    assert [s.raw_path for s in back.seen] == ["/c"]


@pytest.mark.parametrize("behaviour", ["short-length", "short-chunked"])
@pytest.mark.parametrize("path", ["/page", "/login"])
async def test_truncated_upstream_body_never_looks_complete(
    behaviour: str, path: str, make_guard: GuardFactory
) -> None:
    """Content-Length 1000 with 100 bytes then close (or chunked with no last chunk): the client
    gets a short body on a closed connection, or an error page, never a complete-looking 200."""
    async with RawUpstream(behaviour) as up:
        g = await make_guard(up.url, **LOGIN)
        method = b"POST" if path == "/login" else b"GET"
        body = b"username=a&password=b" if method == b"POST" else b""
        request = (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                   b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)
        data = await raw_exchange(g.port, request, wait=5)
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        if status == 200:
            if b"content-length: 1000" in head.lower():
                assert len(rest) < 1000
            else:
                assert b"transfer-encoding: chunked" in head.lower()
                assert not rest.endswith(b"0\r\n\r\n"), "a terminating chunk would make it look complete"
        else:
            assert_branded(parse_response(data), 502)
        # and the guard is fine afterwards
        await wait_until(lambda: g.server.in_flight == 0)


async def test_upstream_stalling_mid_body_is_cut_and_looks_cut(make_guard: GuardFactory) -> None:
    async with RawUpstream("stall-body") as up:
        g = await make_guard(up.url, timeouts={"upstream_idle": 0.3, "upstream_read": 0.5})
        started = time.monotonic()
        data = await raw_exchange(g.port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", wait=5)
        assert time.monotonic() - started < 0.5 + 2 * MARGIN
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and len(rest) == 100   # short, on a closed connection
        await wait_until(lambda: g.server.in_flight == 0)


# ---- SMTP down during a challenge --------------------------------------------------------------


async def test_smtp_down_during_a_challenge(
    tmp_path: Path, legacy: int, caplog: pytest.LogCaptureFixture
) -> None:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    server = await started(guard_config(tmp_path, legacy, port))
    svc = server._challenges
    browser = Browser(f"http://127.0.0.1:{server.public_port}")
    try:
        assert (await svc.check_channels())["email"] is True
        controller.stop()   # the relay goes away between two probes

        # 1. The probe has not noticed yet: the page comes at once (delivery is in the background),
        #    the send fails, is counted and logged, and nothing hangs.
        with caplog.at_level(logging.WARNING, logger="guard.challenge"):
            started_at = time.monotonic()
            status, _, page, _ = await browser.post("/login", {"username": ALICE.login, "password": ALICE.password})
            assert status == 200 and "one-time-code" in page
            assert time.monotonic() - started_at < 1.0
            async with asyncio.timeout(6):   # bounded by the channel's send timeout (5 s)
                await svc.drain()
        assert any(k.startswith("failed:email") for k in svc.stats)
        assert any("code not sent via email" in r.getMessage() for r in caplog.records)
        assert box.messages == []

        # 2. The periodic probe sees it down: every new challenge gets the clear "could not send"
        #    page (503), the same for right and wrong passwords.
        with caplog.at_level(logging.WARNING, logger="guard.challenge"):
            assert (await svc.check_channels())["email"] is False
        assert any("channel email is down" in r.getMessage() for r in caplog.records)
        for password in (ALICE.password, "wrong"):
            status, _, page, _ = await browser.post("/login", {"username": ALICE.login, "password": password})
            assert status == 503

        # 3. The relay comes back: the next probe says so and codes flow again.
        controller = Controller(box, hostname="127.0.0.1", port=port)
        controller.start()
        assert (await svc.check_channels())["email"] is True
        status, _, page, _ = await browser.post("/login", {"username": ALICE.login, "password": ALICE.password})
        assert status == 200 and "one-time-code" in page
        await svc.drain()
        assert len(box.messages) == 1
    finally:
        await browser.close()
        await server.stop(1)
        controller.stop()


async def test_smtp_failure_is_in_the_metrics(tmp_path: Path, legacy: int) -> None:
    server = await started(guard_config(tmp_path, legacy, free_port()))
    svc = server._challenges
    await svc.stop_probing()      # the periodic probe would mark the channel down first
    svc.healthy["email"] = True   # as if the probe had last seen it up
    browser = Browser(f"http://127.0.0.1:{server.public_port}")
    try:
        await asyncio.wait_for(
            browser.post("/login", {"username": ALICE.login, "password": ALICE.password}), 30
        )
        obs = server.observability
        assert obs is not None
        value = None
        for _ in range(200):   # the send runs in the background, after dispatch_delay
            await asyncio.wait_for(svc.drain(), 30)
            value = obs.metrics.registry.get_sample_value(
                "guard_challenges_total", {"event": "send_failed", "channel": "email"})
            if value:
                break
            await asyncio.sleep(0.05)
        assert value == 1
    finally:
        await browser.close()
        await server.stop(1)


# ---- disk full under the decision log ---------------------------------------------------------


@pytest.mark.skipif(not HAS_DEV_FULL, reason="/dev/full is not available on this system")
async def test_decision_log_on_a_full_disk_drops_lines_and_requests_flow(
    tmp_path: Path, upstream: Upstream, make_guard: GuardFactory, client: ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log file is a symlink to /dev/full (every write fails with ENOSPC): no root, no mount."""
    path = tmp_path / "decisions.log"
    path.symlink_to("/dev/full")
    g = await make_guard(upstream.url, observe={"decision_log": {"path": str(path), "flush_interval": 0.05}},
                         admin={"token": "t" * 32})
    obs = g.server.observability
    assert obs is not None and obs.decision_log is not None
    with caplog.at_level(logging.ERROR, logger="guard.observe.decisionlog"):
        for i in range(20):
            started_at = time.monotonic()
            async with client.get(g.url(f"/p{i}")) as resp:
                assert resp.status == 200
            assert time.monotonic() - started_at < 0.5
        await obs.decision_log.flush()
    assert obs.decision_log.dropped >= 20
    assert metric(g, "guard_observe_dropped_total", sink="decision_log") >= 20
    assert sum("decision log write failed" in r.getMessage() for r in caplog.records) == 1  # once, not per line
    async with client.get(g.admin("/api/health"), headers={"Authorization": "Bearer " + "t" * 32}) as resp:
        assert (await resp.json())["decision_log_dropped"] >= 20

    # the disk has room again (the path now names a real file): logging resumes by itself
    path.unlink()
    path.touch()
    async with client.get(g.url("/after")) as resp:
        assert resp.status == 200
    await obs.decision_log.flush()
    assert '"path":"/after"' in path.read_text()


async def test_upstream_idle_applies_from_the_first_silence(make_guard: GuardFactory) -> None:
    async with RawUpstream("stall-body") as up:
        g = await make_guard(up.url, timeouts={"upstream_idle": 0.3, "upstream_read": 3})
        data = await raw_exchange(g.port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", wait=0.3 + 2 * MARGIN)
        assert data.startswith(b"HTTP/1.1 200")
