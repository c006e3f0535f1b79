"""The Redis store behind Redis Sentinel: the master found by asking, and found again after a failover.

Real processes throughout: a master, a replica and a sentinel (quorum 1,
half-second failure detection).  The contract's smoke subset runs against the
master the sentinel names; then the master is killed, the sentinel promotes
the replica, and the same store object is back in use by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from redis.asyncio import Redis

from guard.config import StoreConfig
from guard.store import Ban, Get, Hit, Put, RedisStore, Store, StoreError, make_store
from guard.store.redis import SENTINEL_CHECK_INTERVAL
from tests import test_store_contract as contract
from tests.redisserver import SentinelGroup

W = 60.0
T0 = 1_700_000_004.0


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[SentinelGroup]:
    with SentinelGroup() as group:
        yield group


@pytest.fixture
async def store(sentinel_group: SentinelGroup) -> AsyncIterator[RedisStore]:
    sentinel_group.master.flushall()
    s = RedisStore(sentinel_group.url, "lg:", timeout=2.0, retry_after=0.5, pool_size=4)
    await s.start()
    yield s
    await s.close()


SMOKE: list[Callable[[Store], Awaitable[None]]] = [
    contract.test_store_protocol,
    contract.test_hit_returns_the_count_after_adding,
    contract.test_distinct_counts_members_once,
    contract.test_put_new_stores_only_when_absent_or_expired,
    contract.test_take_is_single_use,
    contract.test_a_batch_answers_in_order_and_sees_its_own_writes,
    contract.test_ban_get_list_unban_and_version,
]


@pytest.mark.parametrize("case", SMOKE, ids=lambda case: case.__name__.removeprefix("test_"))
async def test_contract_smoke(store: RedisStore, case: Callable[[Store], Awaitable[None]]) -> None:
    await case(store)


async def test_the_store_writes_to_the_master_the_sentinel_names(
    store: RedisStore, sentinel_group: SentinelGroup
) -> None:
    assert sentinel_group.sentinel is not None and sentinel_group.replica is not None
    assert sentinel_group.sentinel.master_port_now() == sentinel_group.master.port
    await store.execute([Put("k", b"v", 60)], T0)
    master = Redis(port=sentinel_group.master.port)
    try:
        assert await master.exists("lg:k:{k}") == 1
    finally:
        await master.aclose()


async def test_an_unknown_master_name_is_a_store_error(sentinel_group: SentinelGroup) -> None:
    assert sentinel_group.sentinel is not None
    store = RedisStore(f"redis+sentinel://127.0.0.1:{sentinel_group.sentinel.port}/nosuch", timeout=0.25)
    try:
        with pytest.raises(StoreError, match="No master found for 'nosuch'"):
            await store.execute([Hit("k", W)], T0)
        assert await store.ping() is False
    finally:
        await store.close()


def test_make_store_picks_the_sentinel_master_from_the_url() -> None:
    cfg = StoreConfig.model_validate({"backend": "redis", "url": "redis+sentinel://127.0.0.1:1/m/2"})
    store = make_store(cfg)
    assert type(store) is RedisStore


async def test_the_store_recovers_by_itself_after_a_failover() -> None:
    with SentinelGroup() as group:
        assert group.sentinel is not None and group.replica is not None
        store = RedisStore(group.url, timeout=0.25, retry_after=0.3, pool_size=8)
        await store.start()
        try:
            assert await store.execute([Hit("k", W), Put("v", b"kept", 600)], T0) == [1, None]
            await store.ban(Ban("ip:203.0.113.7", T0 + 600, "manual"), T0)
            # Replication is asynchronous: wait until the replica has it all, so
            # the test shows the state survives, not a race.
            group.wait_replicated()

            group.master.kill()
            killed = time.monotonic()
            slowest = 0.0
            while True:
                started = time.monotonic()
                try:
                    got = await store.execute([Hit("k", W), Get("v")], T0 + 1)
                    break
                except StoreError:
                    slowest = max(slowest, time.monotonic() - started)
                    assert time.monotonic() - killed < 15, "no recovery within 15 s of the master's death"
                    await asyncio.sleep(0.05)
            took = time.monotonic() - killed
            assert group.sentinel.master_port_now() == group.replica.port     # the replica was promoted
            assert got == [2, b"kept"]
            assert [b.subject for b in await store.bans(T0 + 1)] == ["ip:203.0.113.7"]
            assert await store.ping() is True
            assert slowest < 1.0, f"a call took {slowest:.2f}s during the failover (timeout 0.25 s)"
            assert took < 15
        finally:
            await store.close()


async def test_the_store_follows_a_switchover_away_from_a_live_master() -> None:
    # A planned failover (maintenance): the old master stays up and, for some
    # ten seconds, still a master that takes writes it will lose when Sentinel
    # makes it a replica.  The store must leave it within about its check interval.
    with SentinelGroup() as group:
        assert group.sentinel is not None and group.replica is not None
        store = RedisStore(group.url, timeout=0.25, retry_after=0.3, pool_size=8)
        await store.start()
        new_master = Redis(port=group.replica.port)
        try:
            assert await store.execute([Hit("k", W)], T0) == [1]
            group.wait_replicated()
            assert group.sentinel.command("SENTINEL", "FAILOVER", group.service).startswith(b"+OK")
            started = time.monotonic()
            while group.sentinel.master_port_now() != group.replica.port:
                assert time.monotonic() - started < 15, "the sentinel did not switch masters"
                await asyncio.sleep(0.05)
            switched = time.monotonic()
            while True:
                try:
                    await store.execute([Put("after", b"1", 60)], T0 + 1)
                    if await new_master.exists("lg:k:{after}"):
                        break
                except StoreError:
                    pass
                assert time.monotonic() - switched < SENTINEL_CHECK_INTERVAL + 2, "still writing to the old master"
                await asyncio.sleep(0.05)
            assert await store.execute([Get("after")], T0 + 1) == [b"1"]
        finally:
            await new_master.aclose()
            await store.close()
