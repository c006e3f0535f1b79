"""State in this process: no Redis to run, and a fixed ceiling on memory whatever the traffic.

This is the backend of a single guard instance, and it sits on the path of
every login.  An attacker decides how many keys exist (one per address, per
username hash), so memory is capped by construction rather than by expiry
alone: at most ``max_keys`` keys, one not used lately evicted first, distinct
sets capped at ``max_members`` per slice, and at most ``SLICES`` live slices
per counter.  Expiry follows the ``now`` the engine passes in, never the wall
clock, so the virtual clock of tests and ``guard test`` drives it too.

The parts of a key (its value, counter and distinct set) are held in a few
parallel dicts keyed by the key, so the ``max_keys`` bound counts logical keys and
``Delete`` clears them all.  Expired keys are reclaimed by a timing wheel:
each key is filed under the second it may die; the buckets that come due are
examined a few dozen keys per call, so reclaiming never stalls a request the
way a full scan of a million keys would.

Why this layout is written by hand, and why it looks the way it does: every
full collection of the cyclic garbage collector reads every entry of every
container it tracks while the event loop waits, and an attacker sets the
number of keys.  CPython tracks a dict as soon as it holds a container (a
dict, a list, an instance, a fresh tuple), and always tracks an
``OrderedDict``, an ``array`` or a ``deque``; it never tracks str, bytes, int,
float or ``bytearray``, nor a plain dict that holds only those.  So every
table here is a plain dict of such values and nothing per key is a container
the collector sees:

- recency is a queue with second chances in a pair of dicts (key -> place,
  place -> key) instead of an ``OrderedDict`` (which alone cost 17 ms per full
  collection at 360,000 keys);
- a sliding counter is a ``bytearray`` ring of ``SLICES`` counts, packed with
  ``struct``, instead of a dict of slices;
- a distinct set is a ring of per-slice member counts, one flat dict
  ``"<set id>:<member>" -> slice`` for every set, and a per-set ``bytearray``
  log of (slice, member) records, oldest first, that expiry and ``Delete``
  replay to find the members to forget (a large set's, a few hundred per
  sweep, so dropping one never stalls a request);
- a ban is three dict entries (until, reason, created), not a ``Ban`` object.

Measured with ``bench/bench_store.py`` (about 800,000 keys): a full
collection took 122-125 ms with the former dict-per-key layout and 0.28 ms
with this one, and peak RSS fell from 737 to 615 MB; each store operation
costs about 20 % more CPU (struct packing, a string per member).
``tests/test_store_memory_gc.py`` holds it: filling the store leaves every
one of its tables untracked.  Why the store is also cut into partitions, and
why eviction gives second chances instead of moving a key on every use: see
``MemoryStore`` and ``_Partition._evict``.
"""

from __future__ import annotations

import heapq
import math
import re
import struct
from collections.abc import Iterator, Sequence
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
# Keys used lately that one eviction may send back to the tail of the queue before it
# evicts one regardless.
_SECOND_CHANCES = 16
# A dropped distinct set whose record log is longer than this (bytes) has its members
# forgotten a few hundred per sweep, not at once: a set of 100,000 members took 30 ms.
_SMALL_LOG = 4096
_BURY_BUDGET = 256
# A store is cut into one partition per this many keys of ``max_keys`` (a power of two of
# them), at most MAX_PARTITIONS: 32 partitions of 31,250 keys for the default million.
PARTITION_KEYS = 16_384
MAX_PARTITIONS = 64

# What Redis's HINCRBY (and the Lua script) accept as an integer value.
_INTEGER = re.compile(rb"-?[0-9]+")

# A ring: the newest slice written, the total of its slots, then one count per slice,
# newest first (slot k holds slice newest - k).  The window that ends at the newest slice
# is then the whole ring, and the common write (the newest slice again) touches only the
# first three numbers.
_RING = struct.Struct(f"<{2 + SLICES}q")
_HEAD = struct.Struct("<3q")     # newest, total, the newest slice's count
_EMPTY_RING = bytes(_RING.size)
_Q = struct.Struct("<q")
# A distinct set's log record: the slice, the member's length in bytes, then the member (UTF-8).
_REC = struct.Struct("<qI")


def _ring(cur: int, amount: int) -> bytearray:
    ring = bytearray(_EMPTY_RING)
    _HEAD.pack_into(ring, 0, cur, amount, amount)
    return ring


def _moved(v: tuple[int, ...], cur: int) -> list[int]:
    """The counts of ring ``v`` once its newest slice is ``cur``, newest first.

    Forward, the slices that left the window fall off the end.  Back (a clock that
    stepped back), the slices after ``cur`` are dropped, as if they had not happened yet:
    the Redis script does the same.
    """
    d = cur - v[0]
    if d > 0:
        return [0] * d + list(v[2:SLICES + 2 - d]) if d < SLICES else [0] * SLICES
    return list(v[2 - d:]) + [0] * -d if -d < SLICES else [0] * SLICES


def _ring_add(ring: bytearray, cur: int, amount: int) -> int:
    """Add ``amount`` to slice ``cur``; the window's total after adding."""
    total: int
    top, total, newest = _HEAD.unpack_from(ring)
    if cur == top:
        total += amount
        _HEAD.pack_into(ring, 0, cur, total, newest + amount)
        return total
    counts = _moved(_RING.unpack_from(ring), cur)
    counts[0] += amount
    total = sum(counts)
    _RING.pack_into(ring, 0, cur, total, *counts)
    return total


def _ring_sum(ring: bytearray, cur: int) -> int:
    """The total of the window that ends at slice ``cur``; the ring is not changed."""
    v: tuple[int, ...] = _RING.unpack_from(ring)
    d = cur - v[0]
    if d == 0:
        return v[1]
    if d > 0:   # later: the oldest d slices have left the window
        return sum(v[2:SLICES + 2 - d]) if d < SLICES else 0
    return sum(v[2 - d:]) if -d < SLICES else 0   # earlier: the newest -d slices are after it


def _record(cur: int, member: str) -> bytes:
    """One record of a distinct set's log: ``member`` counted in slice ``cur``."""
    encoded = member.encode()
    return _REC.pack(cur, len(encoded)) + encoded


def _records(log: bytearray, start: int = 0) -> Iterator[tuple[int, int, str]]:
    """(offset after, slice, member) of each record of a distinct set's log, from ``start``."""
    end = len(log)
    off = start
    while off < end:
        s, size = _REC.unpack_from(log, off)
        body = off + _REC.size
        off = body + size
        yield off, s, log[body:off].decode()


class _Partition:
    """A share of the keys, with its own tables, queue and expiry wheel: see ``MemoryStore``."""

    def __init__(self, max_keys: int, max_members: int) -> None:
        self.max_keys = max_keys
        self.max_members = max_members
        # Recency: a queue with second chances (CLOCK).  Each held key has an even place in
        # the queue, plus one once the key is used again; the head is the smallest place held
        # (also the first in ``_at_place``'s order), and no place below ``_oldest`` is held.
        self._place: dict[str, int] = {}
        self._at_place: dict[int, str] = {}
        self._oldest = 0
        self._next_place = 0
        self._until: dict[str, float] = {}                  # key -> when every part of it is dead
        # key -> the expiry-wheel bucket it is filed under: every key is filed exactly once.
        self._due: dict[str, int] = {}
        self._values: dict[str, bytes | int] = {}     # int: an Incr counter, kept unencoded
        self._value_until: dict[str, float] = {}
        self._hits: dict[str, bytearray] = {}         # key -> ring of events per slice
        # A sliding distinct set files each member under the last slice it was seen in, so
        # the count is a sum of per-slice counts rather than a union of up to SLICES sets.
        self._seen_n: dict[str, bytearray] = {}       # key -> ring of members per slice
        self._seen_id: dict[str, str] = {}            # key -> "<set id>:", the prefix of its members
        self._seen_log: dict[str, bytearray] = {}     # key -> its (slice, member) records, oldest first
        self._seen_at: dict[str, int] = {}            # "<set id>:<member>" -> the slice it is counted in
        self._sets_made = 0
        # Dropped sets whose members are still in ``_seen_at`` (set ids are never reused, so
        # nothing finds them there), and how far into the first one's log the forgetting is.
        self._graves: list[tuple[str, bytearray]] = []
        self._grave_at = 0
        self._wheel: dict[int, dict[str, None]] = {}        # bucket -> keys filed under it
        self._ticks: list[int] = []          # heap of the wheel's buckets
        self.next_due = math.inf             # earliest `now` at which a bucket is due

    def __len__(self) -> int:
        return len(self._place)

    # ---- expiry ----------------------------------------------------------------------------------

    def sweep(self, now: float, budget: int | None = None) -> int:
        """Drop keys that are entirely dead at ``now``, examining at most ``budget``; the count dropped.

        ``execute`` calls this with a small budget whenever a bucket is due;
        call it without a budget to reclaim everything due at once.
        """
        if self._graves:
            self._bury(_BURY_BUDGET if budget is not None else None)
        left = math.inf if budget is None else budget
        removed = 0
        ticks, wheel, due = self._ticks, self._wheel, self._due
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
                    self._unlist(key)
                    self._drop(key)
                    removed += 1
                else:
                    self._file(key, until)   # extended since it was filed: file it again, later
            if not filed:
                heapq.heappop(ticks)
                del wheel[bucket]
        self.next_due = (ticks[0] + 1) * _TICK if ticks else math.inf
        if self._graves:
            self.next_due = -math.inf   # the next operation here buries some more
        return removed

    def _bury(self, budget: int | None) -> None:
        """Forget up to ``budget`` members of dropped sets (all of them with None)."""
        at = self._seen_at
        graves = self._graves
        left = math.inf if budget is None else budget
        while graves and left > 0:
            prefix, log = graves[0]
            off = self._grave_at
            for end, _, member in _records(log, off):
                at.pop(prefix + member, None)
                off = end
                left -= 1
                if left <= 0:
                    break
            if off < len(log):
                self._grave_at = off
            else:
                del graves[0]
                self._grave_at = 0

    def _file(self, key: str, until: float) -> None:
        bucket = math.floor(until / _TICK)
        filed = self._wheel.get(bucket)
        if filed is None:
            filed = self._wheel[bucket] = {}
            heapq.heappush(self._ticks, bucket)
            due = (bucket + 1) * _TICK
            if due < self.next_due:
                self.next_due = due
        filed[key] = None
        self._due[key] = bucket

    # ---- keys ------------------------------------------------------------------------------------

    def _admit(self, key: str, until: float) -> None:
        """Add ``key`` (absent), alive until ``until``; when full, a key that was not used lately goes."""
        place = self._place
        if len(place) >= self.max_keys:
            self._evict()
        n = self._next_place
        self._next_place = n + 2
        place[key] = n
        self._at_place[n] = key
        self._until[key] = until
        self._file(key, until)

    def _evict(self) -> None:
        """Drop the key at the head of the queue, unless it was used since it was queued: that
        one goes to the tail instead (its second chance), up to ``_SECOND_CHANCES`` per eviction.

        Why not an exact LRU: moving a key to the tail on every use means a delete and an
        insert in the queue's dict, and a dict that churns is rebuilt every few hundred
        thousand inserts -- a 20 ms stall at 580,000 keys.  Marking a use rewrites a value
        in place.  The bound keeps one eviction short when every key was used lately.
        """
        place, at_place = self._place, self._at_place
        oldest = self._oldest
        chances = _SECOND_CHANCES
        while True:
            key = at_place.pop(oldest, None)
            steps = 0
            while key is None:
                steps += 1
                if steps < 8:
                    oldest += 2
                else:   # a long run of keys that expired or were deleted: jump to the head, which
                    # is the dict's first entry (places are handed out, and inserted, in order)
                    oldest = next(iter(at_place))
                key = at_place.pop(oldest, None)
            oldest += 2
            if not (place[key] & 1 and chances):
                break
            chances -= 1
            n = self._next_place
            self._next_place = n + 2
            place[key] = n
            at_place[n] = key
        self._oldest = oldest
        del place[key]
        self._drop(key)

    def _unlist(self, key: str) -> None:
        """Take ``key`` (held) out of the queue."""
        del self._at_place[self._place.pop(key) & -2]

    def _drop(self, key: str) -> None:
        """Forget every part of ``key`` and take it out of the wheel (it has left the recency order)."""
        self._until.pop(key, None)
        self._values.pop(key, None)
        self._value_until.pop(key, None)
        self._hits.pop(key, None)
        if self._seen_n.pop(key, None) is not None:
            prefix = self._seen_id.pop(key)
            log = self._seen_log.pop(key)
            if len(log) > _SMALL_LOG:
                self._graves.append((prefix, log))
                self.next_due = -math.inf
            else:
                at = self._seen_at
                for _, _, member in _records(log):
                    at.pop(prefix + member, None)
        bucket = self._due.pop(key, None)
        if bucket is not None:
            filed = self._wheel.get(bucket)
            if filed is not None:
                filed.pop(key, None)

    def _used(self, key: str) -> None:
        """``key`` (held) was used: it gets a second chance when it reaches the head of the queue."""
        place = self._place
        p = place[key]
        if not p & 1:
            place[key] = p + 1

    def _live(self, key: str) -> bool:
        """Whether ``key`` is held; a read refreshes its recency but never creates it."""
        place = self._place
        p = place.get(key)
        if p is None:
            return False
        if not p & 1:
            place[key] = p + 1
        return True

    def _extend(self, key: str, until: float) -> None:
        """A counter or distinct set was written: admit the key, or refresh its recency and life."""
        old = self._until.get(key)
        if old is None:
            self._admit(key, until)
        else:
            place = self._place   # ``_used``, inline: twice per login operation
            p = place[key]
            if not p & 1:
                place[key] = p + 1
            if until > old:
                self._until[key] = until

    def hit(self, op: Hit, now: float) -> int:
        key = op.key
        width = slice_width(op.window)
        cur = math.floor(now / width)
        self._extend(key, (cur + SLICES) * width)
        ring = self._hits.get(key)
        if ring is None:
            self._hits[key] = _ring(cur, op.amount)
            return op.amount
        return _ring_add(ring, cur, op.amount)

    def count(self, op: Count, now: float) -> int:
        if not self._live(op.key):
            return 0
        ring = self._hits.get(op.key)
        if ring is None:
            return 0
        return _ring_sum(ring, math.floor(now / slice_width(op.window)))

    def add_distinct(self, op: AddDistinct, now: float) -> int:
        key = op.key
        width = slice_width(op.window)
        cur = math.floor(now / width)
        self._extend(key, (cur + SLICES) * width)
        ring = self._seen_n.get(key)
        member = op.member
        if ring is None:
            prefix = self._seen_id[key] = f"{self._sets_made}:"
            self._sets_made += 1
            self._seen_n[key] = _ring(cur, 1)
            self._seen_at[prefix + member] = cur
            self._seen_log[key] = bytearray(_record(cur, member))
            return 1
        prefix = self._seen_id[key]
        at = self._seen_at
        ck = prefix + member
        was = at.get(ck)
        total: int
        top, total, newest = _HEAD.unpack_from(ring)
        if cur == top:
            if was == cur or newest >= self.max_members:
                return total
            if was is None:
                total += 1
            else:   # seen in an older slice of the window: it moves to this one
                off = 16 + 8 * (cur - was)
                _Q.pack_into(ring, off, _Q.unpack_from(ring, off)[0] - 1)
            _HEAD.pack_into(ring, 0, cur, total, newest + 1)
        else:
            counts = _moved(_RING.unpack_from(ring), cur)
            log = self._seen_log[key]
            # The oldest record still in the window (the usual case): nothing to forget.
            if (cur < top or (log and _Q.unpack_from(log)[0] <= cur - SLICES)) \
                    and self._forget_outside(prefix, log, top, cur) and was is not None:
                was = at.get(ck)
            added = was != cur and counts[0] < self.max_members
            if added:
                if was is not None:
                    counts[cur - was] -= 1
                counts[0] += 1
            total = sum(counts)
            _RING.pack_into(ring, 0, cur, total, *counts)
            if not added:
                return total
        at[ck] = cur
        self._seen_log[key] += _record(cur, member)
        return total

    def _forget_outside(self, prefix: str, log: bytearray, top: int, cur: int) -> bool:
        """The set's newest slice moves from ``top`` to ``cur``: forget the members counted in a
        slice that leaves the ring, and their records; True when any was forgotten."""
        at = self._seen_at
        forgot = False
        if cur > top:
            # Records are in slice order: the ones to forget lead the log.
            low = cur - SLICES
            cut = 0
            for end, s, member in _records(log):
                if s > low:
                    break
                cut = end
                ck = prefix + member
                if at.get(ck) == s:
                    del at[ck]
                    forgot = True
            if cut:
                del log[:cut]
            return forgot
        # The clock stepped back: keep only the records of slices up to ``cur``.
        kept = bytearray()
        start = 0
        for end, s, member in _records(log):
            if s <= cur:
                kept += log[start:end]
            else:
                ck = prefix + member
                if at.get(ck) == s:
                    del at[ck]
                    forgot = True
            start = end
        log[:] = kept
        return forgot

    def count_distinct(self, op: CountDistinct, now: float) -> int:
        if not self._live(op.key):
            return 0
        ring = self._seen_n.get(op.key)
        if ring is None:
            return 0
        return _ring_sum(ring, math.floor(now / slice_width(op.window)))

    def get(self, key: str, now: float, take: bool) -> bytes | None:
        if not self._live(key):
            return None
        value = self._values.get(key)
        if value is None:
            return None
        value_until = self._value_until[key]
        if take or value_until <= now:
            del self._values[key]
            del self._value_until[key]
            if key not in self._hits and key not in self._seen_n:
                self._unlist(key)
                self._drop(key)
            if value_until <= now:
                return None
        return value if type(value) is bytes else str(value).encode()

    def put(self, key: str, value: bytes, ttl: float, now: float, only_new: bool) -> bool:
        until = now + ttl
        all_until = self._until
        old = all_until.get(key)
        if old is None:
            self._admit(key, until)
        else:
            self._used(key)
            if only_new and key in self._values and self._value_until[key] > now:
                return False
            if until > old:
                all_until[key] = until
        self._values[key] = value
        self._value_until[key] = until
        return True

    def incr(self, op: Incr, now: float) -> int:
        key = op.key
        old = self._until.get(key)
        if old is not None:
            self._used(key)
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

    def delete(self, key: str, now: float) -> bool:
        if key not in self._place:
            return False
        self._unlist(key)
        value_until = self._value_until.get(key)
        held = (value_until is not None and value_until > now) or key in self._hits or key in self._seen_n
        self._drop(key)
        return held


class MemoryStore:
    """The ``Store`` contract in a few dicts.  ``prefix`` is accepted for symmetry and unused:
    one process's memory is never shared, so its keys need no namespace.

    A large store is cut into partitions by the hash of the key (a power of two of them, one
    per ``PARTITION_KEYS`` keys of ``max_keys``, at most ``MAX_PARTITIONS``), each with
    ``max_keys / n`` keys of its own.  Why: a dict that grows past its table, or has churned
    through it, is rebuilt in one step while the event loop waits -- 90-140 ms for the
    tables of 825,000 keys in one piece, measured in-process.  Partitioned, each rebuild is
    a partition's size.  A store of fewer keys is one partition, so its limits are exact.
    """

    name = "memory"

    def __init__(self, prefix: str = "lg:", max_keys: int = 1_000_000, max_members: int = 10_000) -> None:
        if max_keys < 1 or max_members < 1:
            raise ValueError("max_keys and max_members must be at least 1")
        self.prefix = prefix
        self.max_keys = max_keys
        self.max_members = max_members
        n = 1
        while n * 2 <= min(MAX_PARTITIONS, max_keys // PARTITION_KEYS):
            n *= 2
        self._parts = [_Partition(max_keys // n, max_members) for _ in range(n)]
        self._mask = n - 1
        self._turn = 0
        self._ban_until: dict[str, float] = {}        # subject -> until, oldest ban made first
        self._ban_reason: dict[str, str] = {}
        self._ban_created: dict[str, float] = {}
        self._bans_version = 0

    def __len__(self) -> int:
        """Keys held (each key's value, counter and distinct set count once)."""
        return sum(len(part) for part in self._parts)

    # ---- Store -----------------------------------------------------------------------------------

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._parts = [_Partition(part.max_keys, self.max_members) for part in self._parts]
        for d in (self._ban_until, self._ban_reason, self._ban_created):
            d.clear()

    async def ping(self) -> bool:
        return True

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        parts = self._parts
        mask = self._mask
        # Each call also looks at one partition in turn, so a partition no request touches
        # is still reclaimed.
        self._turn = turn = (self._turn + 1) & mask
        if now >= parts[turn].next_due:
            parts[turn].sweep(now, _SWEEP_BUDGET)
        out: list[Any] = []
        append = out.append
        for op in ops:
            if type(op) is GetBans:
                until = self._ban_until
                append([self._ban(s, u) if (u := until.get(s)) is not None and u > now else None
                        for s in op.subjects])
                continue
            # every op but GetBans (handled above: ``type`` is cheaper than ``isinstance``) has a key
            part = parts[hash(op.key) & mask] if mask else parts[0]  # type: ignore[union-attr]
            if now >= part.next_due:
                part.sweep(now, _SWEEP_BUDGET)
            # most frequent first: a login's batch is mostly distinct sets, counts and reads
            if type(op) is AddDistinct:
                append(part.add_distinct(op, now))
            elif type(op) is Count:
                append(part.count(op, now))
            elif type(op) is Get:
                append(part.get(op.key, now, take=False))
            elif type(op) is Hit:
                append(part.hit(op, now))
            elif type(op) is CountDistinct:
                append(part.count_distinct(op, now))
            elif type(op) is Incr:
                append(part.incr(op, now))
            elif type(op) is PutNew:
                append(part.put(op.key, op.value, op.ttl, now, only_new=True))
            elif type(op) is Put:
                part.put(op.key, op.value, op.ttl, now, only_new=False)
                append(None)
            elif type(op) is Take:
                append(part.get(op.key, now, take=True))
            elif type(op) is Delete:
                append(part.delete(op.key, now))
            else:
                raise TypeError(f"not a store operation: {op!r}")
        return out

    def sweep(self, now: float, budget: int | None = None) -> int:
        """Drop keys that are entirely dead at ``now``, examining at most ``budget`` per partition;
        the count dropped.  ``execute`` sweeps a little at a time; this reclaims at once."""
        return sum(part.sweep(now, budget) for part in self._parts)

    async def ban(self, ban: Ban, now: float) -> None:
        subject = ban.subject
        until = self._ban_until
        if subject not in until and len(until) >= self.max_keys:
            # Full: the oldest ban made goes, as the queue does for keys.
            self._forget_ban(next(iter(until)))
        until[subject] = ban.until
        self._ban_reason[subject] = ban.reason
        self._ban_created[subject] = ban.created or now
        self._bans_version += 1

    async def unban(self, subject: str, now: float) -> bool:
        if subject not in self._ban_until:
            return False
        self._forget_ban(subject)
        self._bans_version += 1
        return True

    async def bans(self, now: float) -> list[Ban]:
        until = self._ban_until
        for subject in [s for s, u in until.items() if u <= now]:
            self._forget_ban(subject)
        return [self._ban(s, u) for s, u in until.items()]

    async def bans_version(self) -> int:
        return self._bans_version

    def _ban(self, subject: str, until: float) -> Ban:
        return Ban(subject, until, self._ban_reason[subject], self._ban_created[subject])

    def _forget_ban(self, subject: str) -> None:
        del self._ban_until[subject]
        del self._ban_reason[subject]
        del self._ban_created[subject]
