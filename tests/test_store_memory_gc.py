"""The memory store's per-key state stays out of sight of the cyclic garbage collector.

A full collection reads every entry of every tracked container while the event
loop waits, and an attacker chooses how many keys exist.  If each key cost a
tracked object, or an entry in a tracked table, every full collection would
stall in proportion to the attacker's effort (25-30 ms at 360,000 keys with the
former dict-per-key layout).  So filling the store must leave the number of
tracked objects (nearly) unchanged, and every table that grows with the keys,
the members or the bans untracked.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest

from guard.store import SLICES, AddDistinct, Ban, Hit, Incr, MemoryStore, Op, Put

W = 60.0
T0 = 1_700_000_004.0
WIDTH = W / SLICES
N = 20_000
BATCH = 500

# Each kind of key, as the engine makes them: one op per key per batch.
KINDS: dict[str, Callable[[int], list[Op]]] = {
    "counter": lambda i: [Hit(f"login:ip:{i}", W)],
    "value": lambda i: [Put(f"acct:{i}", b"x" * 100, 3600)],
    "incr": lambda i: [Incr(f"incr:{i}", 3600)],
    "distinct set": lambda i: [AddDistinct(f"user:{i}", W, f"198.51.100.{i % 256}"),
                               AddDistinct(f"user:{i}", W, f"203.0.113.{i % 256}")],
    "all three on one key": lambda i: [Hit(f"k:{i}", W), AddDistinct(f"k:{i}", W, f"m{i}"),
                                       Put(f"k:{i}", b"v", 3600)],
}


def tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.parametrize("kind", list(KINDS))
async def test_keys_add_no_tracked_objects(kind: str) -> None:
    make = KINDS[kind]
    store = MemoryStore(max_keys=10 * N)
    before = tracked()
    for b in range(0, N, BATCH):
        await store.execute([op for i in range(b, b + BATCH) for op in make(i)], T0 + b / N)
    grown = tracked() - before
    assert len(store) == N
    assert grown < 0.01 * N, f"{kind}: {grown / N:.3f} tracked objects per key"


async def test_a_distinct_set_over_every_slice_adds_no_tracked_objects() -> None:
    store = MemoryStore(max_keys=10 * N)
    keys = N // SLICES
    before = tracked()
    for s in range(SLICES):
        await store.execute([AddDistinct(f"user:{i}", W, f"m{s}-{j}") for i in range(keys) for j in range(3)],
                            T0 + s * WIDTH)
    grown = tracked() - before
    assert len(store) == keys
    assert grown < 0.01 * keys, f"{grown / keys:.3f} tracked objects per key"


# The expiry wheel is a dict of dicts by design: one entry per second at which keys die,
# not per key, so what it costs a collection does not grow with the number of keys.  The
# graves are a short queue of dropped large sets, drained a few hundred members per sweep.
PER_SECOND = {"_wheel", "_ticks", "_graves"}


async def test_no_table_that_grows_with_the_keys_is_tracked() -> None:
    store = MemoryStore(max_keys=10 * N)
    for b in range(0, N, BATCH):
        now = T0 + b / N
        ops = [op for i in range(b, b + BATCH) for kind in KINDS.values() for op in kind(i)]
        await store.execute(ops, now)
        for i in range(b, b + BATCH, 10):
            await store.ban(Ban(f"ip:{i}", now + 3600, "r"), now)
    # Slices move on and a distinct set is evicted: expiry and eviction replay the logs.
    await store.execute([AddDistinct(f"user:{i}", W, "later") for i in range(0, N, 7)], T0 + 3 * WIDTH)
    gc.collect()
    tables = [vars(part) for part in store._parts] + [vars(store)]
    grown: dict[str, int] = {}
    tracked_tables: set[str] = set()
    for attrs in tables:
        for name, table in attrs.items():
            if isinstance(table, dict | list) and name not in PER_SECOND:
                grown[name] = grown.get(name, 0) + len(table)
                if gc.is_tracked(table) and name != "_parts":
                    tracked_tables.add(name)
    assert {"_place", "_until", "_hits", "_seen_n", "_seen_at", "_values", "_ban_until"} <= \
        {name for name, n in grown.items() if n >= N // 10}
    assert tracked_tables == set()
    assert all(len(part._wheel) < 100 for part in store._parts)
