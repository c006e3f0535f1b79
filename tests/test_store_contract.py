"""One contract, every backend: the engine must not be able to tell memory from Redis.

Each test runs against ``MemoryStore``, against ``RedisStore`` on a real
redis-server and against ``RedisClusterStore`` on a real three-master Redis
Cluster (batches split by slot).  Time is the ``now`` argument, so windows
slide and values expire without a single sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from guard.config import StoreConfig
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
    MemoryStore,
    Op,
    Put,
    PutNew,
    RedisClusterStore,
    RedisStore,
    Store,
    Take,
    slice_index,
)
from guard.store import make_store as make_store_from
from tests.redisserver import LocalCluster, shared_cluster

W = 60.0                 # the window most tests use
WIDTH = W / SLICES       # 6 s slices
T0 = 1_700_000_004.0     # a multiple of WIDTH: slice boundaries fall on whole seconds
S0 = slice_index(T0, W)

MakeStore = Callable[[str], Store]


def at(slices: float) -> float:
    """The time ``slices`` slice widths after T0 (T0 opens slice S0)."""
    return T0 + slices * WIDTH


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    with shared_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def make_store(request: pytest.FixtureRequest) -> MakeStore:
    if request.param == "memory":
        return lambda prefix: MemoryStore(prefix, max_keys=10_000, max_members=5_000)
    if request.param == "redis-cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        cluster.reset()
        return lambda prefix: RedisClusterStore(cluster.url, prefix, timeout=2.0, retry_after=0.5, pool_size=4)
    url: str = request.getfixturevalue("redis_url")
    return lambda prefix: RedisStore(url, prefix, timeout=2.0, retry_after=0.5, pool_size=4)


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[Store]:
    s = make_store("lg:")
    await s.start()
    yield s
    await s.close()


async def one(store: Store, op: Op, now: float) -> Any:
    (result,) = await store.execute([op], now)
    return result


def test_boundaries_are_where_the_tests_assume() -> None:
    assert slice_index(T0, W) * WIDTH == T0
    assert slice_index(at(1) - 0.001, W) == S0
    assert slice_index(at(1), W) == S0 + 1


async def test_store_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    assert await store.ping() is True
    assert await store.execute([], T0) == []


# ---- sliding counters ---------------------------------------------------------------------------


async def test_hit_returns_the_count_after_adding(store: Store) -> None:
    assert await one(store, Hit("a", W), T0) == 1
    assert await one(store, Hit("a", W), T0 + 1) == 2
    assert await one(store, Hit("a", W, amount=5), T0 + 2) == 7
    assert await one(store, Count("a", W), T0 + 3) == 7
    assert await one(store, Count("b", W), T0 + 3) == 0
    assert await one(store, Hit("b", W), T0 + 3) == 1


async def test_an_event_counts_until_its_slice_leaves_the_window(store: Store) -> None:
    # An event at the very end of slice S0 ...
    await one(store, Hit("late", W), at(1) - 0.5)
    # ... and one at its very start.
    await one(store, Hit("early", W), at(0))
    for key in ("late", "early"):
        assert await one(store, Count(key, W), at(10) - 0.001) == 1, key
        assert await one(store, Count(key, W), at(10)) == 0, key
    # So an event stays counted between w - w/SLICES and w seconds.
    assert at(10) - (at(1) - 0.5) == pytest.approx(W - WIDTH + 0.5)
    assert at(10) - at(0) == W


async def test_the_count_sums_exactly_the_slices_in_the_window(store: Store) -> None:
    await one(store, Hit("k", W, 1), at(0))
    await one(store, Hit("k", W, 10), at(3) + 2)
    assert await one(store, Hit("k", W, 100), at(9) + 5) == 111
    expected = {9: 111, 10: 110, 12.9: 110, 13: 100, 18.9: 100, 19: 0, 40: 0}
    for when, count in expected.items():
        assert await one(store, Count("k", W), at(when)) == count, when


async def test_hits_after_a_long_gap_start_from_zero(store: Store) -> None:
    for i in range(SLICES):
        await one(store, Hit("k", W), at(i))
    assert await one(store, Count("k", W), at(SLICES - 1)) == SLICES
    assert await one(store, Hit("k", W), at(25)) == 1
    assert await one(store, Hit("k", W), at(25) + 1) == 2


async def test_windows_that_are_not_whole_seconds(store: Store) -> None:
    t = T0 + 0.05
    assert await one(store, Hit("fast", 1.0), t) == 1
    assert await one(store, Hit("fast", 1.0), t + 0.5) == 2
    assert await one(store, Count("fast", 1.0), t + 0.949) == 2
    assert await one(store, Count("fast", 1.0), t + 1.2) == 1
    assert await one(store, Count("fast", 1.0), t + 1.7) == 0


async def test_a_clock_that_steps_back_forgets_the_slices_after_it(store: Store) -> None:
    # An NTP step can move `now` back.  A hit then drops the slices after the new time,
    # as if they had not happened yet, and counts the window that ends at it.
    await one(store, Hit("k", W, 1), at(3))
    assert await one(store, Hit("k", W, 10), at(5)) == 11
    assert await one(store, Hit("k", W, 100), at(3) + 1) == 101
    assert await one(store, Count("k", W), at(5)) == 101
    assert await one(store, Hit("k", W, 1000), at(5) + 1) == 1101
    # Back by more than a window: nothing after it is left.
    assert await one(store, Hit("k", W, 7), at(-20)) == 7
    assert await one(store, Count("k", W), at(5) + 2) == 0


# ---- sliding distinct counts --------------------------------------------------------------------


async def test_distinct_counts_members_once(store: Store) -> None:
    assert await one(store, AddDistinct("u", W, "alice"), T0) == 1
    assert await one(store, AddDistinct("u", W, "alice"), T0 + 1) == 1
    assert await one(store, AddDistinct("u", W, "bob"), T0 + 2) == 2
    assert await one(store, AddDistinct("u", W, "bøb"), T0 + 3) == 3
    assert await one(store, CountDistinct("u", W), T0 + 4) == 3
    assert await one(store, CountDistinct("nobody", W), T0 + 4) == 0


async def test_distinct_members_leave_with_their_last_slice(store: Store) -> None:
    await one(store, AddDistinct("u", W, "a"), at(0))
    await one(store, AddDistinct("u", W, "b"), at(5))
    assert await one(store, CountDistinct("u", W), at(9) + 5) == 2
    assert await one(store, CountDistinct("u", W), at(10)) == 1       # a left
    assert await one(store, AddDistinct("u", W, "a"), at(12)) == 2    # a is back
    assert await one(store, CountDistinct("u", W), at(14) + 5) == 2
    assert await one(store, CountDistinct("u", W), at(15)) == 1       # b left
    assert await one(store, CountDistinct("u", W), at(22)) == 0


async def test_a_member_seen_in_two_slices_counts_once_and_lives_with_the_later(store: Store) -> None:
    await one(store, AddDistinct("u", W, "a"), at(0))
    assert await one(store, AddDistinct("u", W, "a"), at(1)) == 1
    assert await one(store, CountDistinct("u", W), at(10)) == 1
    assert await one(store, CountDistinct("u", W), at(11)) == 0


async def test_a_distinct_set_on_a_clock_that_steps_back(store: Store) -> None:
    await one(store, AddDistinct("u", W, "a"), at(2))
    assert await one(store, AddDistinct("u", W, "b"), at(6)) == 2
    # Back to a slice the set has not used: b's slice lies after it and is forgotten.
    assert await one(store, AddDistinct("u", W, "c"), at(4)) == 2
    assert await one(store, CountDistinct("u", W), at(6)) == 2
    assert await one(store, AddDistinct("u", W, "b"), at(6) + 1) == 3
    assert await one(store, CountDistinct("u", W), at(12)) == 2       # a left
    assert await one(store, CountDistinct("u", W), at(16) + 1) == 0


async def test_small_distinct_counts_are_exact(store: Store) -> None:
    # Memory is exact by construction.  A HyperLogLog is exact for small sets
    # unless two members share one of its 16384 registers: probability about
    # n(n-1)/32768 (1.2% at 20), so "exact" holds for these members (Redis's
    # hash is fixed, the test is deterministic), not for every possible set.
    for i in range(20):
        n = await one(store, AddDistinct("u", W, f"user-{i}"), T0 + i * 2.5)
        assert n == i + 1
    assert await one(store, CountDistinct("u", W), T0 + 50) == 20


async def test_large_distinct_counts_are_close(store: Store) -> None:
    # 3 slices of 1000 members, 500 of them seen in two slices: 2500 distinct.
    for s, first in ((0, 0), (1, 500), (2, 1500)):
        ops: list[Op] = [AddDistinct("u", W, f"198.51.100.{i}") for i in range(first, first + 1000)]
        await store.execute(ops, at(s))
    n = await one(store, CountDistinct("u", W), at(2))
    if isinstance(store, MemoryStore):
        assert n == 2500
    else:  # HyperLogLog: about 0.8% standard error
        assert abs(n - 2500) <= 2500 * 0.03, n


# ---- values -------------------------------------------------------------------------------------


async def test_put_get_and_expiry_follow_now(store: Store) -> None:
    assert await one(store, Get("k"), T0) is None
    assert await one(store, Put("k", b"v1", 10), T0) is None
    assert await one(store, Get("k"), T0 + 9.999) == b"v1"
    assert await one(store, Get("k"), T0 + 10) is None
    await one(store, Put("k", b"\x00\xff\r\n", 5), T0 + 20)  # bytes are bytes
    assert await one(store, Get("k"), T0 + 24) == b"\x00\xff\r\n"


async def test_put_replaces_value_and_ttl(store: Store) -> None:
    await one(store, Put("k", b"old", 100), T0)
    await one(store, Put("k", b"new", 5), T0 + 1)
    assert await one(store, Get("k"), T0 + 5.9) == b"new"
    assert await one(store, Get("k"), T0 + 6) is None


async def test_put_new_stores_only_when_absent_or_expired(store: Store) -> None:
    assert await one(store, PutNew("lock", b"a", 10), T0) is True
    assert await one(store, PutNew("lock", b"b", 10), T0 + 5) is False
    assert await one(store, Get("lock"), T0 + 5) == b"a"
    assert await one(store, PutNew("lock", b"c", 10), T0 + 10) is True
    assert await one(store, Get("lock"), T0 + 19) == b"c"


async def test_take_is_single_use(store: Store) -> None:
    await one(store, Put("code", b"123456", 300), T0)
    assert await one(store, Take("code"), T0 + 1) == b"123456"
    assert await one(store, Take("code"), T0 + 2) is None
    assert await one(store, Get("code"), T0 + 2) is None
    await one(store, Put("code", b"654321", 300), T0)
    assert await one(store, Take("code"), T0 + 300) is None   # expired codes are not honoured
    assert await one(store, Take("never"), T0) is None


async def test_incr_counts_and_expires_from_the_first_increment(store: Store) -> None:
    assert await one(store, Incr("n", 10), T0) == 1
    assert await one(store, Incr("n", 10), T0 + 5) == 2
    assert await one(store, Incr("n", 10, amount=3), T0 + 9) == 5
    assert await one(store, Get("n"), T0 + 9) == b"5"
    assert await one(store, Incr("n", 10), T0 + 10) == 1   # ttl ran from T0, not from T0+9
    assert await one(store, Get("n"), T0 + 19.5) == b"1"
    assert await one(store, Get("n"), T0 + 20) is None


async def test_incr_on_a_put_value(store: Store) -> None:
    await one(store, Put("n", b"41", 10), T0)
    assert await one(store, Incr("n", 99), T0 + 1) == 42
    assert await one(store, Get("n"), T0 + 9) == b"42"   # kept the Put's expiry
    assert await one(store, Get("n"), T0 + 10) is None
    await one(store, Put("n", b"not a number", 10), T0)
    assert await one(store, Incr("n", 10, amount=2), T0 + 1) == 2   # starts over


async def test_delete_removes_value_counter_and_distinct_set(store: Store) -> None:
    await store.execute([Put("k", b"v", 60), Hit("k", W), AddDistinct("k", W, "m")], T0)
    for s in range(1, 4):
        await one(store, AddDistinct("k", W, f"m{s}"), at(s))
    assert await one(store, Delete("k"), at(3)) is True
    got = await store.execute([Get("k"), Count("k", W), CountDistinct("k", W)], at(3))
    assert got == [None, 0, 0]
    assert await one(store, Delete("k"), at(3)) is False
    assert await one(store, AddDistinct("k", W, "fresh"), at(3)) == 1


async def test_delete_reports_what_existed(store: Store) -> None:
    assert await one(store, Delete("nothing"), T0) is False
    await one(store, Hit("only-counter", W), T0)
    assert await one(store, Delete("only-counter"), T0) is True
    await one(store, AddDistinct("only-set", W, "m"), T0)
    assert await one(store, Delete("only-set"), T0) is True
    await one(store, Put("only-value", b"v", 10), T0)
    assert await one(store, Delete("only-value"), T0 + 1) is True


# ---- batches ------------------------------------------------------------------------------------


async def test_a_batch_answers_in_order_and_sees_its_own_writes(store: Store) -> None:
    await store.ban(Ban("ip:192.0.2.1", T0 + 60, "manual"), T0)
    ops: list[Op] = [
        GetBans(("ip:192.0.2.1", "net:192.0.2.0/24")),
        Hit("login:ip:192.0.2.1", W),
        Hit("login:ip:192.0.2.1", W, 2),
        AddDistinct("users:ip:192.0.2.1", W, "h1"),
        CountDistinct("users:ip:192.0.2.1", W),
        Count("login:ip:192.0.2.1", W),
        PutNew("seen:h1", b"1", 3600),
        PutNew("seen:h1", b"2", 3600),
        Put("hold:x", b"held", 30),
        Get("hold:x"),
        Take("hold:x"),
        Get("hold:x"),
        Incr("fails:h1", 600),
        Incr("fails:h1", 600),
        Delete("seen:h1"),
        Get("seen:h1"),
        GetBans(()),
    ]
    got = await store.execute(ops, T0)
    assert len(got) == len(ops)
    bans = got[0]
    assert [b.subject if b else None for b in bans] == ["ip:192.0.2.1", None]
    assert got[1:] == [1, 3, 1, 1, 3, True, False, None, b"held", b"held", None, 1, 2, True, None, []]


async def test_an_unknown_operation_is_a_type_error(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.execute(["Hit"], T0)  # type: ignore[list-item]


async def test_odd_keys_and_members(store: Store) -> None:
    key = "user:ü:名前: with spaces"
    assert await store.execute([Hit(key, W), AddDistinct(key, W, "ü"), Put(key, b"v", 5)], T0) == [1, 1, None]
    assert await store.execute([Count(key, W), CountDistinct(key, W), Get(key)], T0) == [1, 1, b"v"]


# ---- bans ---------------------------------------------------------------------------------------


async def test_ban_get_list_unban_and_version(store: Store) -> None:
    v0 = await store.bans_version()
    await store.ban(Ban("ip:203.0.113.7", T0 + 100, "velocity"), T0)
    v1 = await store.bans_version()
    assert v1 != v0
    expected = Ban("ip:203.0.113.7", T0 + 100, "velocity", created=T0)   # created defaults to now
    assert await one(store, GetBans(("ip:203.0.113.7", "ip:203.0.113.8")), T0 + 1) == [expected, None]
    assert await store.bans(T0 + 1) == [expected]

    assert await store.unban("ip:203.0.113.7", T0 + 2) is True
    v2 = await store.bans_version()
    assert v2 not in (v0, v1)
    assert await store.unban("ip:203.0.113.7", T0 + 2) is False
    assert await store.bans_version() == v2
    assert await store.bans(T0 + 2) == []
    assert await one(store, GetBans(("ip:203.0.113.7",)), T0 + 2) == [None]


async def test_a_ban_can_be_replaced(store: Store) -> None:
    await store.ban(Ban("net:2001:db8::/64", T0 + 10, "r1", created=T0 - 5), T0)
    v = await store.bans_version()
    await store.ban(Ban("net:2001:db8::/64", T0 + 500, "manual", created=T0 + 1), T0 + 1)
    assert await store.bans_version() != v
    assert await store.bans(T0 + 20) == [Ban("net:2001:db8::/64", T0 + 500, "manual", created=T0 + 1)]


async def test_bans_expire_by_now(store: Store) -> None:
    await store.ban(Ban("ip:a", T0 + 10, "r"), T0)
    await store.ban(Ban("ip:b", T0 + 1000, "r"), T0)
    assert await one(store, GetBans(("ip:a", "ip:b")), T0 + 9.9) != [None, None]
    got = await one(store, GetBans(("ip:a", "ip:b")), T0 + 10)
    assert got[0] is None and got[1] is not None
    assert [b.subject for b in await store.bans(T0 + 10)] == ["ip:b"]
    assert await store.unban("ip:a", T0 + 11) is False   # listing dropped it
    assert await store.bans(T0 + 1000) == []


async def test_many_bans(store: Store) -> None:
    for i in range(200):
        await store.ban(Ban(f"ip:10.0.{i // 250}.{i % 250}", T0 + 100 + i, "r"), T0)
    assert len(await store.bans(T0)) == 200
    assert len(await store.bans(T0 + 150)) == 149   # until > now: i > 50


# ---- isolation ----------------------------------------------------------------------------------


async def test_stores_with_different_prefixes_do_not_see_each_other(make_store: MakeStore) -> None:
    a, b = make_store("a:"), make_store("b:")
    await a.start()
    await b.start()
    try:
        await a.execute([Put("k", b"from-a", 60), Hit("c", W), AddDistinct("d", W, "m"), Incr("n", 60)], T0)
        await a.ban(Ban("ip:1", T0 + 60, "r"), T0)
        ops: list[Op] = [Get("k"), Count("c", W), CountDistinct("d", W), Get("n"), GetBans(("ip:1",))]
        assert await b.execute(ops, T0) == [None, 0, 0, None, [None]]
        assert await b.bans(T0) == []
        assert await b.bans_version() == 0
        assert await b.execute([Delete("k"), Delete("c"), Delete("d")], T0) == [False, False, False]
        assert await a.execute([Get("k"), Count("c", W), CountDistinct("d", W)], T0) == [b"from-a", 1, 1]
    finally:
        await a.close()
        await b.close()


def test_make_store_follows_the_config() -> None:
    memory = make_store_from(StoreConfig.model_validate({"max_keys": 5000, "max_members": 50}))
    assert isinstance(memory, MemoryStore)
    assert (memory.max_keys, memory.max_members) == (5000, 50)
    cfg = StoreConfig.model_validate({"backend": "redis", "url": "redis://127.0.0.1:1/0", "key_prefix": "x:"})
    redis = make_store_from(cfg)
    assert isinstance(redis, RedisStore)
    assert redis.prefix == "x:"
