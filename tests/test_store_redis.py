"""The Redis backend's promises beyond the contract: one round trip, a sane key layout, and outages survived.

Everything runs against a real redis-server.  Outages are real too: the
server is killed with SIGKILL, frozen with SIGSTOP, or pushed out of memory,
and must come back into use with the same ``RedisStore`` object.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from guard.store import (
    SLICES,
    AddDistinct,
    Ban,
    Count,
    CountDistinct,
    Delete,
    Get,
    GetBans,
    Hit,
    Incr,
    Op,
    Put,
    PutNew,
    RedisStore,
    StoreError,
    Take,
    slice_index,
)
from tests.redisserver import RedisServer, free_port

W = 60.0
WIDTH = W / SLICES
T0 = 1_700_000_004.0


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client to look at what the store wrote."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "lg:", timeout=2.0, retry_after=0.5, pool_size=4)
    await s.start()
    yield s
    await s.close()


def login_batch(i: int) -> list[Op]:
    return [
        GetBans(("ip:192.0.2.1", "net:192.0.2.0/24")),
        Hit("login:ip:192.0.2.1", W),
        AddDistinct("users:ip:192.0.2.1", W, f"user-{i}"),
        CountDistinct("users:ip:192.0.2.1", W),
        PutNew(f"seen:{i}", b"1", 60),
        Get("seen:0"),
        Incr("fails", 600),
        Count("login:ip:192.0.2.1", W),
    ]


async def commandstats(admin: Redis) -> dict[str, int]:
    stats: dict[str, Any] = await admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_one_round_trip_per_execute(
    store: RedisStore, admin: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.execute(login_batch(0), T0)          # connection made, script known
    before = await commandstats(admin)

    sends = 0
    send = AbstractConnection.send_packed_command

    async def counting_send(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal sends
        sends += 1
        await send(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
    for i in range(1, 21):
        await store.execute(login_batch(i), T0 + i)
    monkeypatch.undo()

    after = await commandstats(admin)
    assert sends == 20                                # client side: one write per execute ...
    assert after["evalsha"] - before["evalsha"] == 20  # ... server side: one EVALSHA per execute
    for cmd in ("eval", "script|load", "multi", "exec", "ping"):
        assert after.get(cmd, 0) == before.get(cmd, 0), cmd


async def test_the_script_is_reloaded_after_script_flush(store: RedisStore, admin: Redis) -> None:
    assert await store.execute([Hit("k", W)], T0) == [1]
    await admin.script_flush()
    assert await store.execute([Hit("k", W)], T0 + 1) == [2]
    assert await store.ping() is True
    assert await store.execute([Hit("k", W)], T0 + 2) == [3]


async def test_key_layout_hash_tags_and_expiry(store: RedisStore, admin: Redis) -> None:
    cur = slice_index(T0, W)
    await store.execute(
        [Hit("login:ip:1", W), AddDistinct("user:h", W, "m"), Put("code:1", b"v", 300), Incr("n", 60)], T0
    )
    await store.ban(Ban("ip:1", T0 + 60, "r"), T0)
    keys = {k.decode() for k in await admin.keys("*") if isinstance(k, bytes)}
    assert keys == {
        "lg:c:{login:ip:1}",
        "lg:d:{user:h}",
        f"lg:d:{{user:h}}:{cur}",
        "lg:k:{code:1}",
        "lg:k:{n}",
        "lg:bans",
        "lg:bans:exp",
        "lg:bans:ver",
    }
    for key in keys - {"lg:bans", "lg:bans:exp", "lg:bans:ver"}:
        assert await admin.pttl(key) > 0, f"{key} would live forever"
    assert await admin.pttl("lg:c:{login:ip:1}") <= (W + WIDTH) * 1000
    # The hash tag puts every key of one logical key in one Cluster slot.
    assert key_slot(b"lg:d:{user:h}") == key_slot(f"lg:d:{{user:h}}:{cur}".encode()) == key_slot(b"user:h")


async def test_old_slices_are_pruned(store: RedisStore, admin: Redis) -> None:
    for s in range(30):
        await store.execute([Hit("c", W), AddDistinct("d", W, f"m{s}")], T0 + s * WIDTH)
    assert await admin.hlen("lg:c:{c}") <= SLICES
    assert await admin.hlen("lg:d:{d}") <= SLICES
    assert len(await admin.keys("lg:d:{d}:*")) <= SLICES


async def test_delete_leaves_no_key_behind(store: RedisStore, admin: Redis) -> None:
    for s in range(5):
        await store.execute([Hit("k", W), AddDistinct("k", W, f"m{s}"), Put("k", b"v", 60)], T0 + s * WIDTH)
    assert await store.execute([Delete("k")], T0 + 5 * WIDTH) == [True]
    assert await admin.keys("lg:*") == []


async def test_values_are_bytes_and_nothing_is_decoded(store: RedisStore) -> None:
    blob = bytes(range(256))
    await store.execute([Put("blob", blob, 60)], T0)
    assert await store.execute([Get("blob"), Take("blob")], T0) == [blob, blob]


# ---- failures -----------------------------------------------------------------------------------


async def test_start_does_not_raise_when_redis_is_down() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, retry_after=0.2)
    await store.start()
    try:
        assert await store.ping() is False
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.execute([Hit("k", W)], T0)
        with pytest.raises(StoreError):
            await store.bans_version()
        with pytest.raises(StoreError):
            await store.ban(Ban("ip:1", T0 + 1, "r"), T0)
        assert time.monotonic() - started < 0.5
    finally:
        await store.close()


async def test_kill_and_restart_on_the_same_port(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url, timeout=0.25, retry_after=0.5, pool_size=8)
    await store.start()
    try:
        for i in range(20):
            assert await store.execute([Hit("k", W)], T0 + i) == [i + 1]

        private_redis.kill()
        slowest = 0.0
        failures = 0
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            started = time.monotonic()
            with pytest.raises(StoreError):
                await store.execute([Hit("k", W), Get("x")], T0 + 30)
            slowest = max(slowest, time.monotonic() - started)
            failures += 1
            await asyncio.sleep(0.01)
        assert failures > 20
        assert slowest < 0.3, f"a call took {slowest:.3f}s while Redis was down"
        assert await store.ping() is False

        private_redis.start()          # same port, empty (nothing persisted)
        back = time.monotonic()
        while True:
            try:
                got = await store.execute([Hit("k", W)], T0 + 31)
                break
            except StoreError:
                assert time.monotonic() - back < 1.0, "the store was not used again within a second"
                await asyncio.sleep(0.02)
        assert got == [1]
        assert await store.ping() is True
        assert await store.execute([Hit("k", W), Count("k", W)], T0 + 32) == [2, 2]
    finally:
        await store.close()


async def test_the_breaker_skips_the_network_until_retry_after(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url, timeout=0.25, retry_after=0.3)
    await store.start()
    try:
        assert await store.execute([Hit("k", W)], T0) == [1]
        private_redis.kill()
        with pytest.raises(StoreError):
            await store.execute([Hit("k", W)], T0)
        private_redis.start()
        # Redis is back, but the breaker is open: the call fails without trying.
        started = time.monotonic()
        with pytest.raises(StoreError, match="unavailable"):
            await store.execute([Hit("k", W)], T0)
        assert time.monotonic() - started < 0.01
        await asyncio.sleep(0.35)
        assert await store.execute([Hit("k", W)], T0) == [1]
    finally:
        await store.close()


async def test_a_hung_server_costs_one_timeout(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url, timeout=0.2, retry_after=0.3)
    await store.start()
    try:
        assert await store.execute([Hit("k", W)], T0) == [1]
        private_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreError):
                await store.execute([Hit("k", W)], T0)
            assert 0.15 < time.monotonic() - started < 0.6
            started = time.monotonic()
            with pytest.raises(StoreError):
                await store.execute([Hit("k", W)], T0)   # breaker: no second wait
            assert time.monotonic() - started < 0.01
        finally:
            private_redis.resume()
        await asyncio.sleep(0.35)
        assert len(await store.execute([Count("k", W)], T0)) == 1
        assert await store.ping() is True
    finally:
        await store.close()


async def test_out_of_memory_is_a_store_error(private_redis: RedisServer) -> None:
    admin = Redis.from_url(private_redis.url)
    store = RedisStore(private_redis.url, timeout=0.5, retry_after=0.1)
    await store.start()
    try:
        await admin.config_set("maxmemory", "1")
        with pytest.raises(StoreError, match=r"OOM|memory"):
            await store.execute([Put("k", b"v", 60)], T0)
        await admin.config_set("maxmemory", "0")
        await asyncio.sleep(0.15)
        assert await store.execute([Put("k", b"v", 60), Get("k")], T0) == [None, b"v"]
    finally:
        await store.close()
        await admin.aclose()


async def test_a_full_pool_waits_briefly_then_fails_without_opening_the_breaker(
    private_redis: RedisServer,
) -> None:
    store = RedisStore(private_redis.url, timeout=0.2, retry_after=5.0, pool_size=1)
    await store.start()
    try:
        await store._slots.acquire()        # another request holds the only connection
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="busy"):
                await store.execute([Hit("k", W)], T0)
            assert 0.15 < time.monotonic() - started < 0.5
        finally:
            store._slots.release()
        # Overload is not an outage: the breaker stayed closed (retry_after is 5 s).
        assert await store.execute([Hit("k", W)], T0) == [1]
    finally:
        await store.close()
