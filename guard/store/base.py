"""The one state-store contract that the memory and Redis backends both keep.

A request's state is read and written as one *batch* of operations, executed
atomically and, on Redis, in one round trip (a Lua script).  The engine builds
the batch; the store runs it; results come back in the same order.

Time is passed in (``now``, seconds since the epoch) rather than read by the
store, so the engine's injected clock drives windows on both backends and a
test of a 10-minute window never sleeps.

Sliding windows are sliced: a window ``w`` is cut into ``SLICES`` slices of
``w / SLICES`` seconds; a count is the sum of the slices that overlap the last
``w`` seconds, the current slice included.  An event therefore stays counted for
between ``w - w/SLICES`` and ``w`` seconds.  That bounds memory per key (at most
``SLICES`` numbers, or ``SLICES`` HyperLogLogs for distinct counts) and behaves
the same on both backends, which an exact sorted-set log would not under a
flood.

Keys are opaque strings chosen by the engine.  They must not contain ``{`` or
``}`` (the Redis backend wraps them in a hash tag so every slice of a key lives
in one Cluster slot); user-controlled parts (usernames) are hashed by the engine
before they become keys, so no PII is stored in clear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

SLICES = 10


class StoreError(Exception):
    """The store could not answer (down, timed out, full).  The engine applies the fail policy."""


def slice_width(window: float) -> float:
    """Width in seconds of one slice of ``window``; at least one millisecond."""
    width = window / SLICES
    return width if width > 0.001 else 0.001   # not max(): this runs a dozen times per login


def slice_index(now: float, window: float) -> int:
    return math.floor(now / slice_width(window))


# ---- operations -------------------------------------------------------------------------------
# Values: build one, hand it to ``execute``, never change it.  Not ``frozen``: a frozen
# dataclass sets each field through ``object.__setattr__``, three times the cost of a
# plain one, and a login builds twenty of these.


@dataclass(slots=True)
class Hit:
    """Add ``amount`` events to a sliding-window counter; result: the count after adding (int)."""

    key: str
    window: float
    amount: int = 1


@dataclass(slots=True)
class Count:
    """Read a sliding-window counter; result: int."""

    key: str
    window: float


@dataclass(slots=True)
class AddDistinct:
    """Add ``member`` to a sliding-window distinct set; result: the distinct count after adding.

    Redis answers from HyperLogLogs (about 0.8% standard error); the memory
    backend counts exactly up to ``max_members`` per slice, then stops growing.
    """

    key: str
    window: float
    member: str


@dataclass(slots=True)
class CountDistinct:
    """Read a sliding-window distinct count; result: int."""

    key: str
    window: float


@dataclass(slots=True)
class Get:
    """Result: the value (bytes) or None when absent or expired."""

    key: str


@dataclass(slots=True)
class Put:
    """Store ``value`` for ``ttl`` seconds (``ttl`` > 0); result: None."""

    key: str
    value: bytes
    ttl: float


@dataclass(slots=True)
class PutNew:
    """Store only if absent; result: True when stored (a lock or a first-seen marker)."""

    key: str
    value: bytes
    ttl: float


@dataclass(slots=True)
class Take:
    """Get and delete in one step; result: the value or None.  Single-use codes and holds."""

    key: str


@dataclass(slots=True)
class Delete:
    """Result: True when something was deleted.  Also deletes counters and distinct sets of ``key``."""

    key: str


@dataclass(slots=True)
class Incr:
    """A plain counter that expires ``ttl`` seconds after its first increment; result: the new value."""

    key: str
    ttl: float
    amount: int = 1


@dataclass(slots=True)
class GetBans:
    """Result: a list, one entry per subject: the active ``Ban`` or None."""

    subjects: tuple[str, ...]


Op = Hit | Count | AddDistinct | CountDistinct | Get | Put | PutNew | Take | Delete | Incr | GetBans


@dataclass(frozen=True, slots=True)
class Ban:
    """A ban on a subject such as ``ip:203.0.113.7`` or ``net:2001:db8::/64``."""

    subject: str
    until: float          # epoch seconds
    reason: str = ""      # rule id or "manual"
    created: float = 0.0

    def active(self, now: float) -> bool:
        return self.until > now


@runtime_checkable
class Store(Protocol):
    """What the engine needs from state, whatever keeps it."""

    name: str

    async def start(self) -> None:
        """Connect / start background tasks.  Must not raise when the backend is down."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the backend answers now (readiness)."""

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        """Run ``ops`` atomically, in one round trip; raise ``StoreError`` when unreachable."""

    async def ban(self, ban: Ban, now: float) -> None:
        """Add or replace a ban; bumps the ban version."""

    async def unban(self, subject: str, now: float) -> bool:
        """Remove a ban; True when one existed; bumps the ban version."""

    async def bans(self, now: float) -> list[Ban]:
        """Every active ban (expired ones are dropped on the way)."""

    async def bans_version(self) -> int:
        """A number that changes whenever the set of bans changes: cheap polling for caches."""
