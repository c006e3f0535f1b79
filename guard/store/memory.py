"""State in this process: no Redis to run, and a fixed ceiling on memory whatever the traffic.

This is the backend of a single guard instance, and it sits on the path of
every login.  An attacker decides how many keys exist (one per address, per
username hash), so memory is capped by construction rather than by expiry
alone: at most ``max_keys`` keys, least recently used evicted first, distinct
sets capped at ``max_members`` per slice, and at most ``SLICES`` live slices
per counter.  Expiry follows the ``now`` the engine passes in, never the wall
clock, so the virtual clock of tests and ``guard test`` drives it too.

The parts of a key (its value, counter and distinct set) are held in a few
parallel dicts keyed by the key, so the LRU bound counts logical keys and
``Delete`` clears them all.  Expired keys are reclaimed by a timing wheel:
each key is filed under the second it may die; the buckets that come due are
examined a few dozen keys per call, so reclaiming never stalls a request the
way a full scan of a million keys would.

Why parallel dicts of plain values rather than an object per key: every full
collection of the cyclic garbage collector walks every object it tracks while
the event loop waits, and an attacker sets the number of keys.  With an
object (and a set or two) per key, a full store meant pauses of half a second
on every request in flight.  Here the per-key state is only str, bytes, int
and float, dicts that hold nothing else, and tuples of those: CPython does
not track them, so the collector tracks a handful of containers whatever
the number of keys (it still reads their entries, about a quarter of the
former cost).  Keep it that way: no instances, lists or sets per key.
Reading the entries is still what a full collection spends most of its time
on once the store is large (17-35 ms at 120,000 keys in ``bench/soak.py``),
which is why the worker makes full collections rare
(``guard.supervisor.settle_heap``).
"""

from __future__ import annotations

import heapq
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from guard.store.base import (
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
    Take,
    slice_width,
)

# Seconds per bucket of the expiry wheel, and how many keys one execute may
# examine when buckets are due: small enough to be invisible in a request's
# latency, large enough to outpace the rate keys are created.
_TICK = 1.0
_SWEEP_BUDGET = 64

# What Redis's HINCRBY (and the Lua script) accept as an integer value.
_INTEGER = re.compile(rb"-?[0-9]+")


def _window_sum(per_slice: dict[int, int], cur: int) -> int:
    low = cur - SLICES
    n = 0
    for s, c in per_slice.items():
        if low < s <= cur:
            n += c
    return n


class MemoryStore:
    """The ``Store`` contract in a few dicts.  ``prefix`` is accepted for symmetry and unused:
    one process's memory is never shared, so its keys need no namespace."""

    name = "memory"

    def __init__(self, prefix: str = "lg:", max_keys: int = 1_000_000, max_members: int = 10_000) -> None:
        if max_keys < 1 or max_members < 1:
            raise ValueError("max_keys and max_members must be at least 1")
        self.prefix = prefix
        self.max_keys = max_keys
        self.max_members = max_members
        self._keys: OrderedDict[str, None] = OrderedDict()   # least recently used first
        self._until: dict[str, float] = {}                  # key -> when every part of it is dead
        # key -> the expiry-wheel bucket it is filed under: every key is filed exactly once.
        self._due: dict[str, int] = {}
        self._values: dict[str, bytes | int] = {}     # int: an Incr counter, kept unencoded
        self._value_until: dict[str, float] = {}
        self._hits: dict[str, dict[int, int]] = {}    # key -> slice index -> events
        # A sliding distinct set files each member under the last slice it was seen in, so
        # the count is a sum of per-slice counts rather than a union of up to SLICES sets.
        self._seen_n: dict[str, dict[int, int]] = {}                 # key -> slice -> members in it
        self._seen_at: dict[str, dict[str, int]] = {}                # key -> member -> its slice
        self._seen_in: dict[tuple[str, int], dict[str, None]] = {}   # (key, slice) -> its members
        self._wheel: dict[int, dict[str, None]] = {}        # bucket -> keys filed under it
        self._ticks: list[int] = []          # heap of the wheel's buckets
        self._next_due = math.inf            # earliest `now` at which a bucket is due
        self._bans: dict[str, Ban] = {}
        self._bans_version = 0

    def __len__(self) -> int:
        """Keys held (each key's value, counter and distinct set count once)."""
        return len(self._keys)

    # ---- Store -----------------------------------------------------------------------------------

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for d in (self._keys, self._until, self._due, self._values, self._value_until, self._hits,
                  self._seen_n, self._seen_at, self._seen_in, self._wheel, self._bans):
            d.clear()
        self._ticks.clear()
        self._next_due = math.inf

    async def ping(self) -> bool:
        return True

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        if now >= self._next_due:
            self.sweep(now, _SWEEP_BUDGET)
        out: list[Any] = []
        append = out.append
        for op in ops:
            if type(op) is Hit:
                append(self._hit(op, now))
            elif type(op) is AddDistinct:
                append(self._add_distinct(op, now))
            elif type(op) is GetBans:
                bans = self._bans
                append([b if (b := bans.get(s)) is not None and b.until > now else None for s in op.subjects])
            elif type(op) is Get:
                append(self._get(op.key, now, take=False))
            elif type(op) is Count:
                append(self._count(op, now))
            elif type(op) is CountDistinct:
                append(self._count_distinct(op, now))
            elif type(op) is Incr:
                append(self._incr(op, now))
            elif type(op) is PutNew:
                append(self._put(op.key, op.value, op.ttl, now, only_new=True))
            elif type(op) is Put:
                self._put(op.key, op.value, op.ttl, now, only_new=False)
                append(None)
            elif type(op) is Take:
                append(self._get(op.key, now, take=True))
            elif type(op) is Delete:
                append(self._delete(op.key, now))
            else:
                raise TypeError(f"not a store operation: {op!r}")
        return out

    async def ban(self, ban: Ban, now: float) -> None:
        if not ban.created:
            ban = replace(ban, created=now)
        bans = self._bans
        if ban.subject not in bans and len(bans) >= self.max_keys:
            # Full: the oldest ban made goes, as the LRU does for keys.
            del bans[next(iter(bans))]
        bans[ban.subject] = ban
        self._bans_version += 1

    async def unban(self, subject: str, now: float) -> bool:
        if self._bans.pop(subject, None) is None:
            return False
        self._bans_version += 1
        return True

    async def bans(self, now: float) -> list[Ban]:
        bans = self._bans
        for subject in [s for s, b in bans.items() if b.until <= now]:
            del bans[subject]
        return list(bans.values())

    async def bans_version(self) -> int:
        return self._bans_version

    # ---- expiry ----------------------------------------------------------------------------------

    def sweep(self, now: float, budget: int | None = None) -> int:
        """Drop keys that are entirely dead at ``now``, examining at most ``budget``; the count dropped.

        ``execute`` calls this with a small budget whenever a bucket is due;
        call it without a budget to reclaim everything due at once.
        """
        left = math.inf if budget is None else budget
        removed = 0
        ticks, wheel, keys, due = self._ticks, self._wheel, self._keys, self._due
        all_until = self._until
        while ticks and (ticks[0] + 1) * _TICK <= now and left > 0:
            bucket = ticks[0]
            filed = wheel[bucket]
            while filed and left > 0:
                key, _ = filed.popitem()
                left -= 1
                if due.get(key) != bucket:
                    continue
                del due[key]
                until = all_until[key]
                if until <= now:
                    del keys[key]
                    self._drop(key)
                    removed += 1
                else:
                    self._file(key, until)   # extended since it was filed: file it again, later
            if not filed:
                heapq.heappop(ticks)
                del wheel[bucket]
        self._next_due = (ticks[0] + 1) * _TICK if ticks else math.inf
        return removed

    def _file(self, key: str, until: float) -> None:
        bucket = math.floor(until / _TICK)
        filed = self._wheel.get(bucket)
        if filed is None:
            filed = self._wheel[bucket] = {}
            heapq.heappush(self._ticks, bucket)
            due = (bucket + 1) * _TICK
            if due < self._next_due:
                self._next_due = due
        filed[key] = None
        self._due[key] = bucket

    # ---- keys ------------------------------------------------------------------------------------

    def _admit(self, key: str, until: float) -> None:
        """Add ``key`` (absent), alive until ``until``; the least recently used key goes when full."""
        keys = self._keys
        if len(keys) >= self.max_keys:
            old_key, _ = keys.popitem(last=False)
            self._drop(old_key)
        keys[key] = None
        self._until[key] = until
        self._file(key, until)

    def _drop(self, key: str) -> None:
        """Forget every part of ``key`` and take it out of the wheel (it has left ``_keys``)."""
        self._until.pop(key, None)
        self._values.pop(key, None)
        self._value_until.pop(key, None)
        self._hits.pop(key, None)
        per_slice = self._seen_n.pop(key, None)
        if per_slice is not None:
            del self._seen_at[key]
            seen_in = self._seen_in
            for s in per_slice:
                del seen_in[key, s]
        bucket = self._due.pop(key, None)
        if bucket is not None:
            filed = self._wheel.get(bucket)
            if filed is not None:
                filed.pop(key, None)

    def _live(self, key: str) -> bool:
        """Whether ``key`` is held; a read refreshes its recency but never creates it."""
        keys = self._keys
        if key in keys:
            keys.move_to_end(key)
            return True
        return False

    def _extend(self, key: str, until: float) -> None:
        """A counter or distinct set was written: admit the key, or refresh its recency and life."""
        old = self._until.get(key)
        if old is None:
            self._admit(key, until)
        else:
            self._keys.move_to_end(key)
            if until > old:
                self._until[key] = until

    def _hit(self, op: Hit, now: float) -> int:
        key = op.key
        width = slice_width(op.window)
        cur = math.floor(now / width)
        until = (cur + SLICES) * width
        self._extend(key, until)
        hits = self._hits.get(key)
        if hits is None:
            self._hits[key] = {cur: op.amount}
            return op.amount
        if cur in hits:
            hits[cur] += op.amount
        else:
            low = cur - SLICES
            for s in [s for s in hits if s <= low or s > cur]:
                del hits[s]
            hits[cur] = op.amount
        return _window_sum(hits, cur)

    def _count(self, op: Count, now: float) -> int:
        if not self._live(op.key):
            return 0
        hits = self._hits.get(op.key)
        if not hits:
            return 0
        return _window_sum(hits, math.floor(now / slice_width(op.window)))

    def _add_distinct(self, op: AddDistinct, now: float) -> int:
        key = op.key
        width = slice_width(op.window)
        cur = math.floor(now / width)
        until = (cur + SLICES) * width
        self._extend(key, until)
        per_slice = self._seen_n.get(key)
        if per_slice is None:
            per_slice = self._seen_n[key] = {}
            where = self._seen_at[key] = {}
        else:
            where = self._seen_at[key]
        seen_in = self._seen_in
        here = per_slice.get(cur)
        if here is None:
            low = cur - SLICES
            for s in [s for s in per_slice if s <= low or s > cur]:
                del per_slice[s]
                for m in seen_in.pop((key, s)):
                    del where[m]
            here = per_slice[cur] = 0
            seen_in[key, cur] = {}
        member = op.member
        was = where.get(member)
        if was != cur and here < self.max_members:
            if was is not None:
                per_slice[was] -= 1
                del seen_in[key, was][member]
            seen_in[key, cur][member] = None
            per_slice[cur] = here + 1
            where[member] = cur
        return _window_sum(per_slice, cur)

    def _count_distinct(self, op: CountDistinct, now: float) -> int:
        if not self._live(op.key):
            return 0
        per_slice = self._seen_n.get(op.key)
        if per_slice is None:
            return 0
        return _window_sum(per_slice, math.floor(now / slice_width(op.window)))

    def _get(self, key: str, now: float, take: bool) -> bytes | None:
        if not self._live(key):
            return None
        value = self._values.get(key)
        if value is None:
            return None
        value_until = self._value_until[key]
        if take or value_until <= now:
            del self._values[key]
            del self._value_until[key]
            if not self._hits.get(key) and not self._seen_at.get(key):
                del self._keys[key]
                self._drop(key)
            if value_until <= now:
                return None
        return value if type(value) is bytes else str(value).encode()

    def _put(self, key: str, value: bytes, ttl: float, now: float, only_new: bool) -> bool:
        until = now + ttl
        all_until = self._until
        old = all_until.get(key)
        if old is None:
            self._admit(key, until)
        else:
            self._keys.move_to_end(key)
            if only_new and key in self._values and self._value_until[key] > now:
                return False
            if until > old:
                all_until[key] = until
        self._values[key] = value
        self._value_until[key] = until
        return True

    def _incr(self, op: Incr, now: float) -> int:
        key = op.key
        old = self._until.get(key)
        if old is not None:
            self._keys.move_to_end(key)
            value = self._values.get(key)
            if value is not None and self._value_until[key] > now:
                if type(value) is int:
                    self._values[key] = n = value + op.amount
                    return n
                if type(value) is bytes and _INTEGER.fullmatch(value):
                    self._values[key] = n = int(value) + op.amount
                    return n
        # Absent, expired, or not an integer: the counter starts over (as on Redis).
        until = now + op.ttl
        if old is None:
            self._admit(key, until)
        elif until > old:
            self._until[key] = until
        self._values[key] = op.amount
        self._value_until[key] = until
        return op.amount

    def _delete(self, key: str, now: float) -> bool:
        keys = self._keys
        if key not in keys:
            return False
        del keys[key]
        value_until = self._value_until.get(key)
        held = (value_until is not None and value_until > now) or bool(self._hits.get(key)) or key in self._seen_n
        self._drop(key)
        return held
