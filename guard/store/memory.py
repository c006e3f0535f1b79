"""State in this process: no Redis to run, and a fixed ceiling on memory whatever the traffic.

This is the backend of a single guard instance, and it sits on the path of
every login.  An attacker decides how many keys exist (one per address, per
username hash), so memory is capped by construction rather than by expiry
alone: at most ``max_keys`` keys, least recently used evicted first, distinct
sets capped at ``max_members`` per slice, and at most ``SLICES`` live slices
per counter.  Expiry follows the ``now`` the engine passes in, never the wall
clock, so the virtual clock of tests and ``guard test`` drives it too.

Every part of a key (its value, counter and distinct set) lives in one entry,
so the LRU bound counts logical keys and ``Delete`` is one pop.  Expired
entries are reclaimed by a timing wheel: each entry is filed under the second
it may die; the buckets that come due are examined a few dozen entries per
call, so reclaiming never stalls a request the way a full scan of a million
keys would.
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

# Seconds per bucket of the expiry wheel, and how many entries one execute may
# examine when buckets are due: small enough to be invisible in a request's
# latency, large enough to outpace the rate entries are created.
_TICK = 1.0
_SWEEP_BUDGET = 64

# What Redis's HINCRBY (and the Lua script) accept as an integer value.
_INTEGER = re.compile(rb"-?[0-9]+")


class _Seen:
    """A sliding distinct set: each member is filed under the last slice it was seen in.

    Filing a member only once makes the count a sum of set sizes rather than
    a union of up to ``SLICES`` sets, which matters when an attacker fills a
    set with ``max_members`` addresses and every attempt asks for the count.
    """

    __slots__ = ("slices", "where")

    def __init__(self) -> None:
        self.slices: dict[int, set[str]] = {}
        self.where: dict[str, int] = {}

    def add(self, member: str, cur: int, cap: int) -> int:
        slices = self.slices
        here = slices.get(cur)
        if here is None:
            low = cur - SLICES
            for s in [s for s in slices if s <= low or s > cur]:
                for m in slices.pop(s):
                    del self.where[m]
            here = slices[cur] = set()
        was = self.where.get(member)
        if was != cur and len(here) < cap:
            if was is not None:
                slices[was].discard(member)
            here.add(member)
            self.where[member] = cur
        return self.count(cur)

    def count(self, cur: int) -> int:
        low = cur - SLICES
        n = 0
        for s, members in self.slices.items():
            if low < s <= cur:
                n += len(members)
        return n


def _window_sum(hits: dict[int, int], cur: int) -> int:
    low = cur - SLICES
    n = 0
    for s, c in hits.items():
        if low < s <= cur:
            n += c
    return n


class _Entry:
    __slots__ = ("due", "hits", "seen", "until", "value", "value_until")

    def __init__(self) -> None:
        self.value: bytes | int | None = None   # int: an Incr counter, kept unencoded
        self.value_until = 0.0
        self.hits: dict[int, int] | None = None  # slice index -> events
        self.seen: _Seen | None = None
        self.until = 0.0                         # when every part is dead
        self.due: int | None = None              # expiry-wheel bucket it is filed under

    def empty(self) -> bool:
        return self.value is None and not self.hits and (self.seen is None or not self.seen.where)


class MemoryStore:
    """The ``Store`` contract in a dict.  ``prefix`` is accepted for symmetry and unused:
    one process's memory is never shared, so its keys need no namespace."""

    name = "memory"

    def __init__(self, prefix: str = "lg:", max_keys: int = 1_000_000, max_members: int = 10_000) -> None:
        if max_keys < 1 or max_members < 1:
            raise ValueError("max_keys and max_members must be at least 1")
        self.prefix = prefix
        self.max_keys = max_keys
        self.max_members = max_members
        self._keys: OrderedDict[str, _Entry] = OrderedDict()
        self._wheel: dict[int, set[str]] = {}
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
        self._keys.clear()
        self._wheel.clear()
        self._ticks.clear()
        self._next_due = math.inf
        self._bans.clear()

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
        """Drop entries that are entirely dead at ``now``, examining at most ``budget``; the count dropped.

        ``execute`` calls this with a small budget whenever a bucket is due;
        call it without a budget to reclaim everything due at once.
        """
        left = math.inf if budget is None else budget
        removed = 0
        ticks, wheel, keys = self._ticks, self._wheel, self._keys
        while ticks and (ticks[0] + 1) * _TICK <= now and left > 0:
            bucket = ticks[0]
            filed = wheel[bucket]
            while filed and left > 0:
                key = filed.pop()
                left -= 1
                e = keys.get(key)
                if e is None or e.due != bucket:
                    continue
                e.due = None
                if e.until <= now:
                    del keys[key]
                    removed += 1
                else:
                    self._file(key, e)   # extended since it was filed: file it again, later
            if not filed:
                heapq.heappop(ticks)
                del wheel[bucket]
        self._next_due = (ticks[0] + 1) * _TICK if ticks else math.inf
        return removed

    def _file(self, key: str, e: _Entry) -> None:
        bucket = math.floor(e.until / _TICK)
        filed = self._wheel.get(bucket)
        if filed is None:
            filed = self._wheel[bucket] = set()
            heapq.heappush(self._ticks, bucket)
            due = (bucket + 1) * _TICK
            if due < self._next_due:
                self._next_due = due
        filed.add(key)
        e.due = bucket

    def _forget(self, key: str, e: _Entry) -> None:
        """Take ``e`` out of the wheel (it was removed from the keys)."""
        if e.due is not None:
            filed = self._wheel.get(e.due)
            if filed is not None:
                filed.discard(key)

    def _extend(self, key: str, e: _Entry, until: float) -> None:
        if until > e.until:
            e.until = until
        if e.due is None:
            self._file(key, e)

    # ---- keys ------------------------------------------------------------------------------------

    def _touch(self, key: str) -> _Entry:
        """The entry of ``key`` for writing, created when absent; now the most recently used."""
        keys = self._keys
        e = keys.get(key)
        if e is None:
            if len(keys) >= self.max_keys:
                old_key, old = keys.popitem(last=False)
                self._forget(old_key, old)
            e = keys[key] = _Entry()
        else:
            keys.move_to_end(key)
        return e

    def _read(self, key: str) -> _Entry | None:
        e = self._keys.get(key)
        if e is not None:
            self._keys.move_to_end(key)
        return e

    def _hit(self, op: Hit, now: float) -> int:
        width = slice_width(op.window)
        cur = math.floor(now / width)
        e = self._touch(op.key)
        hits = e.hits
        if hits is None:
            hits = e.hits = {cur: op.amount}
        elif cur in hits:
            hits[cur] += op.amount
        else:
            low = cur - SLICES
            for s in [s for s in hits if s <= low or s > cur]:
                del hits[s]
            hits[cur] = op.amount
        self._extend(op.key, e, (cur + SLICES) * width)
        return _window_sum(hits, cur)

    def _count(self, op: Count, now: float) -> int:
        e = self._read(op.key)
        if e is None or not e.hits:
            return 0
        return _window_sum(e.hits, math.floor(now / slice_width(op.window)))

    def _add_distinct(self, op: AddDistinct, now: float) -> int:
        width = slice_width(op.window)
        cur = math.floor(now / width)
        e = self._touch(op.key)
        seen = e.seen
        if seen is None:
            seen = e.seen = _Seen()
        n = seen.add(op.member, cur, self.max_members)
        self._extend(op.key, e, (cur + SLICES) * width)
        return n

    def _count_distinct(self, op: CountDistinct, now: float) -> int:
        e = self._read(op.key)
        if e is None or e.seen is None:
            return 0
        return e.seen.count(math.floor(now / slice_width(op.window)))

    def _get(self, key: str, now: float, take: bool) -> bytes | None:
        e = self._read(key)
        if e is None:
            return None
        value = e.value
        if value is None:
            return None
        if take or e.value_until <= now:
            e.value = None
            if e.empty():
                del self._keys[key]
                self._forget(key, e)
            if e.value_until <= now:
                return None
        return value if type(value) is bytes else str(value).encode()

    def _put(self, key: str, value: bytes, ttl: float, now: float, only_new: bool) -> bool:
        e = self._touch(key)
        if only_new and e.value is not None and e.value_until > now:
            return False
        e.value = value
        e.value_until = now + ttl
        self._extend(key, e, e.value_until)
        return True

    def _incr(self, op: Incr, now: float) -> int:
        e = self._touch(op.key)
        value = e.value
        if value is not None and e.value_until > now:
            if type(value) is int:
                e.value = value + op.amount
                return e.value
            if type(value) is bytes and _INTEGER.fullmatch(value):
                e.value = n = int(value) + op.amount
                return n
        # Absent, expired, or not an integer: the counter starts over (as on Redis).
        e.value = op.amount
        e.value_until = now + op.ttl
        self._extend(op.key, e, e.value_until)
        return op.amount

    def _delete(self, key: str, now: float) -> bool:
        e = self._keys.pop(key, None)
        if e is None:
            return False
        self._forget(key, e)
        return (e.value is not None and e.value_until > now) or bool(e.hits) or e.seen is not None
