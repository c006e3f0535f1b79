"""The memory backend's promises beyond the contract: bounded whatever an attacker sends.

An attacker chooses how many keys exist (one per address or username), so
these tests play the attacker: rotate far more keys than fit, fill distinct
sets, and let everything expire.
"""

from __future__ import annotations

import time

from guard.store import SLICES, AddDistinct, Ban, Count, CountDistinct, Delete, Get, Hit, MemoryStore, Op, Put

W = 60.0
T0 = 1_700_000_004.0
WIDTH = W / SLICES


def filed(store: MemoryStore) -> int:
    """Entries filed in the expiry wheels: they must never outgrow the keys."""
    return sum(len(s) for part in store._parts for s in part._wheel.values())


async def test_lru_bound_holds_under_200k_rotating_keys() -> None:
    store = MemoryStore(max_keys=1000, max_members=10)
    batch = 100
    started = time.perf_counter()
    for b in range(200_000 // batch):
        now = T0 + b * 0.01
        ops: list[Op] = [Hit(f"login:ip:10.{b % 256}.{b // 256}.{i}", W) for i in range(batch)]
        ops.append(Hit("hot", W))   # used on every request: never the least recently used
        await store.execute(ops, now)
        assert len(store) <= 1000
    elapsed = time.perf_counter() - started
    assert len(store) == 1000
    assert filed(store) <= 1000
    assert await store.execute([Count("hot", W), Count("login:ip:10.0.0.0", W)], now) == [2000, 0]
    assert elapsed < 10, f"200k hits took {elapsed:.1f}s"


async def test_reads_refresh_recency_and_never_create_keys() -> None:
    store = MemoryStore(max_keys=1000, max_members=10)
    await store.execute([Put("keep", b"v", 3600)], T0)
    for i in range(5000):
        ops: list[Op] = [Get("keep"), Count(f"nothing-{i}", W), Put(f"k{i}", b"x", 3600)]
        got = await store.execute(ops, T0 + i * 0.001)
        assert got[0] == b"v"
    assert len(store) == 1000
    await store.execute([Get(f"absent-{i}") for i in range(100)], T0 + 5)
    assert len(store) == 1000


async def test_distinct_sets_stop_growing_at_max_members_per_slice() -> None:
    store = MemoryStore(max_keys=1000, max_members=10)
    got = await store.execute([AddDistinct("user:h", W, f"198.51.100.{i}") for i in range(50)], T0)
    assert got[:10] == list(range(1, 11))
    assert set(got[10:]) == {10}
    # A member already counted stays counted when the slice is full.
    assert await store.execute([AddDistinct("user:h", W, "198.51.100.3")], T0 + 1) == [10]
    # The next slice has room for max_members more.
    got = await store.execute([AddDistinct("user:h", W, f"203.0.113.{i}") for i in range(50)], T0 + WIDTH)
    assert got[-1] == 20
    # Moving a member to the full slice is refused, but it stays counted in its old slice.
    assert await store.execute([AddDistinct("user:h", W, "198.51.100.4")], T0 + WIDTH + 1) == [20]
    assert await store.execute([CountDistinct("user:h", W)], T0 + 10 * WIDTH) == [10]


async def test_a_big_distinct_set_is_counted_without_a_union() -> None:
    store = MemoryStore(max_keys=1000, max_members=10_000)
    for s in range(SLICES):
        await store.execute([AddDistinct("u", W, f"m{s}-{i}") for i in range(5000)], T0 + s * WIDTH)
    now = T0 + (SLICES - 1) * WIDTH
    started = time.perf_counter()
    for i in range(2000):
        await store.execute([AddDistinct("u", W, f"m0-{i}")], now)
    assert (await store.execute([CountDistinct("u", W)], now)) == [50_000]
    assert time.perf_counter() - started < 2.0


async def test_expired_entries_are_swept() -> None:
    store = MemoryStore(max_keys=100_000, max_members=10)
    await store.execute([Put(f"code:{i}", b"123456", 10) for i in range(5000)], T0)
    await store.execute([Hit(f"login:ip:{i}", W) for i in range(5000)], T0)
    await store.execute([Put("long", b"v", 3600), Hit("code:1", 600)], T0)
    assert len(store) == 10_001
    assert store.sweep(T0 + 9) == 0
    assert store.sweep(T0 + 11) == 4999           # values; code:1 still has a live counter
    assert store.sweep(T0 + W + 1) == 5000        # counters, once their last slice left the window
    assert len(store) == 2
    got = await store.execute([Get("code:1"), Count("code:1", 600), Get("long")], T0 + W + 1)
    assert got == [None, 1, b"v"]
    assert store.sweep(T0 + 3601) == 2
    assert len(store) == 0
    assert filed(store) == 0


async def test_execute_sweeps_a_little_at_a_time() -> None:
    store = MemoryStore(max_keys=100_000, max_members=10)
    await store.execute([Put(f"k{i}", b"v", 1) for i in range(1000)], T0)
    before = len(store)
    await store.execute([Count("x", W)], T0 + 5)
    assert 0 < before - len(store) < 1000        # a bounded step, not a full scan
    for _ in range(100):
        await store.execute([Count("x", W)], T0 + 5)
    assert len(store) == 0


async def test_rewritten_keys_are_not_swept_early() -> None:
    store = MemoryStore(max_keys=1000, max_members=10)
    await store.execute([Put("k", b"1", 5)], T0)
    await store.execute([Put("k", b"2", 100)], T0 + 4)
    assert store.sweep(T0 + 50) == 0
    assert await store.execute([Get("k")], T0 + 50) == [b"2"]
    assert store.sweep(T0 + 105) == 1


async def test_expired_bans_are_dropped_and_the_ban_table_is_bounded() -> None:
    store = MemoryStore(max_keys=1000, max_members=10)
    for i in range(1500):
        await store.ban(Ban(f"ip:{i}", T0 + 10 + i, "r"), T0)
    bans = await store.bans(T0)
    assert len(bans) == 1000
    subjects = {b.subject for b in bans}
    assert "ip:499" not in subjects and "ip:500" in subjects and "ip:1499" in subjects   # oldest went first
    assert len(await store.bans(T0 + 10 + 1400)) == 99
    assert await store.unban("ip:1000", T0 + 10 + 1400) is False   # expired, dropped by the listing


async def test_distinct_set_members_leave_with_their_key_and_their_slice() -> None:
    # Every set's members share one flat table: evicting or deleting a key, or a slice
    # leaving the window, must take the members out of it, or it would grow without bound.
    store = MemoryStore(max_keys=100, max_members=10)
    for b in range(100):
        await store.execute([AddDistinct(f"user:{b}-{i}", W, f"198.51.100.{j}") for i in range(10) for j in range(3)],
                            T0 + b * 0.01)
    assert len(store) == 100
    assert len(store._parts[0]._seen_at) == 300
    assert sum(len(log) for log in store._parts[0]._seen_log.values()) < 100 * 3 * 30
    await store.execute([Delete(f"user:99-{i}") for i in range(10)], T0 + 1)
    assert len(store._parts[0]._seen_at) == 270
    # One set used for an hour, a new member every second: members and log stay at a window's worth.
    for t in range(3600):
        got = await store.execute([AddDistinct("user:long", W, f"m{t % 90}")], T0 + 2 + t)
    assert W - WIDTH < got[0] <= W    # the members of the last 9 slices and this one's so far
    members = [m for m in store._parts[0]._seen_at if m.startswith(store._parts[0]._seen_id["user:long"])]
    assert len(members) == got[0]
    assert len(store._parts[0]._seen_log["user:long"]) < 70 * 20


async def test_recency_tables_stay_the_size_of_the_keys() -> None:
    store = MemoryStore(max_keys=50, max_members=10)
    for i in range(10_000):
        got = await store.execute([Hit(f"k{i % 80}", W), Get("hot"), Put("hot", b"v", 3600)], T0 + i * 0.001)
        assert i == 0 or got[1] == b"v"     # used on every request: never the one evicted
    assert len(store) == 50
    assert len(store._parts[0]._place) == len(store._parts[0]._at_place) == 50


async def test_an_eviction_gives_a_bounded_number_of_second_chances() -> None:
    # Keys used since they were queued go back to the tail instead of out; when every key was
    # used, one eviction still examines only a few of them, never the whole queue.
    store = MemoryStore(max_keys=1000, max_members=10)
    await store.execute([Put(f"k{i}", b"v", 3600) for i in range(1000)], T0)
    await store.execute([Get(f"k{i}") for i in range(1000)], T0 + 1)
    await store.execute([Put("new", b"v", 3600)], T0 + 2)
    held = await store.execute([Get(f"k{i}") for i in range(1000)], T0 + 3)
    gone = [i for i, v in enumerate(held) if v is None]
    assert len(gone) == 1 and gone[0] <= 16
    # Not used since: the head goes first.
    store = MemoryStore(max_keys=3, max_members=10)
    await store.execute([Put(k, b"v", 3600) for k in "abc"], T0)
    await store.execute([Get("a"), Put("d", b"v", 3600)], T0 + 1)
    assert await store.execute([Get(k) for k in "abcd"], T0 + 2) == [b"v", None, b"v", b"v"]


async def test_eviction_finds_the_head_past_a_long_run_of_deleted_keys() -> None:
    store = MemoryStore(max_keys=100, max_members=10)
    await store.execute([Put(f"k{i}", b"v", 3600) for i in range(100)], T0)
    await store.execute([Delete(f"k{i}") for i in range(90)], T0)
    await store.execute([Put(f"x{i}", b"v", 3600) for i in range(90)], T0)
    await store.execute([Put("y", b"v", 3600)], T0)
    held = await store.execute([Get(f"k{i}") for i in range(90, 100)] + [Get("x0"), Get("y")], T0)
    assert held == [None] + [b"v"] * 11
    assert len(store) == 100


async def test_a_large_store_is_partitioned_and_keeps_its_bounds() -> None:
    # A million keys are 32 partitions: no table is rebuilt at more than 1/32 of the keys.
    assert len(MemoryStore(max_keys=1_000_000)._parts) == 32
    assert len(MemoryStore(max_keys=30_000)._parts) == 1
    store = MemoryStore(max_keys=100_000, max_members=10)
    assert len(store._parts) == 4
    for b in range(300):
        await store.execute([Hit(f"login:ip:{b}.{i}", W) for i in range(1000)] + [Hit("hot", W)], T0 + b * 0.01)
    assert 99_000 < len(store) <= 100_000
    assert await store.execute([Count("hot", W)], T0 + 3) == [300]
    assert store.sweep(T0 + W + 10) > 99_000
    assert len(store) == 0 and filed(store) == 0


async def test_dropping_a_huge_distinct_set_is_spread_over_later_calls() -> None:
    # One set with 100,000 members: deleting it must not forget them all in one call (30 ms),
    # yet they are all forgotten soon after, and the key starts afresh at once.
    store = MemoryStore(max_keys=1000, max_members=10_000)
    for s in range(SLICES):
        await store.execute([AddDistinct("ip:h", W, f"user{s}-{i}") for i in range(10_000)], T0 + s * WIDTH)
    part = store._parts[0]
    assert len(part._seen_at) == 100_000
    now = T0 + (SLICES - 1) * WIDTH + 1
    assert await store.execute([Delete("ip:h")], now) == [True]
    assert 100_000 - len(part._seen_at) <= 256
    assert await store.execute([AddDistinct("ip:h", W, "user0-0"), CountDistinct("ip:h", W)], now) == [1, 1]
    calls = 0
    while part._graves:
        await store.execute([Get("other")], now)
        calls += 1
    assert len(part._seen_at) == 1
    assert 100_000 / 512 - 3 <= calls <= 100_000 / 256 + 2   # one or two sweeps of 256 per call
