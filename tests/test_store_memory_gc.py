"""The memory store's per-key state stays out of sight of the cyclic garbage collector.

A full collection walks every tracked object while the event loop waits, and
an attacker chooses how many keys exist.  If each key cost a tracked object,
every full collection would stall in proportion to the attacker's effort; so
filling the store must leave the number of tracked objects (nearly) unchanged.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest

from guard.store import SLICES, AddDistinct, Hit, Incr, MemoryStore, Op, Put

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
