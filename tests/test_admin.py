"""The admin listener: liveness always, readiness only when the store answers and we are not draining."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiohttp import ClientSession

from guard.store.base import Ban, Op
from guard.store.memory import MemoryStore
from tests.proxy_fixtures import GuardFactory, Upstream, client, make_guard, upstream

__all__ = ["client", "make_guard", "upstream"]


class PingStore:
    """A minimal ``Store`` whose ping answer the test sets: this tests the endpoint logic, not a backend."""

    name = "ping-test"

    def __init__(self) -> None:
        self.up = True
        self.hang = False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        if self.hang:
            await asyncio.Event().wait()
        return self.up

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        return await MemoryStore().execute(ops, now)

    async def ban(self, ban: Ban, now: float) -> None:
        return None

    async def unban(self, subject: str, now: float) -> bool:
        return False

    async def bans(self, now: float) -> list[Ban]:
        return []

    async def bans_version(self) -> int:
        return 0


async def test_healthz(upstream: Upstream, make_guard: GuardFactory, client: ClientSession) -> None:
    g = await make_guard(upstream.url)
    async with client.get(g.admin("/healthz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_readyz_follows_the_store(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    store = PingStore()
    g = await make_guard(upstream.url, use_store=store, store={"fail_open": False})
    async with client.get(g.admin("/readyz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "store": "up"}
    store.up = False
    async with client.get(g.admin("/readyz")) as resp:
        assert resp.status == 503
        assert await resp.json() == {"status": "unavailable", "store": "down"}
    async with client.get(g.admin("/healthz")) as resp:
        assert resp.status == 200  # alive, just not ready


async def test_readyz_with_fail_open_stays_ready_when_the_store_is_down(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    """Every instance shares the store: pulling them all out of the balancer would fail closed."""
    store = PingStore()
    g = await make_guard(upstream.url, use_store=store, store={"fail_open": True})
    store.up = False
    async with client.get(g.admin("/readyz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "degraded", "store": "down", "policy": "fail_open"}


async def test_readyz_with_a_hanging_store_answers_in_time(
    upstream: Upstream, make_guard: GuardFactory, client: ClientSession
) -> None:
    store = PingStore()
    g = await make_guard(upstream.url, use_store=store, store={"fail_open": False})
    store.hang = True
    async with client.get(g.admin("/readyz")) as resp:
        assert resp.status == 503


async def test_admin_is_not_the_public_port(upstream: Upstream, make_guard: GuardFactory,
                                            client: ClientSession) -> None:
    g = await make_guard(upstream.url)
    assert g.server.admin_port != g.server.public_port
    async with client.get(g.url("/healthz")) as resp:
        assert upstream.seen[-1].raw_path == "/healthz"  # on the public port it is the upstream's path
        assert resp.status == 200
