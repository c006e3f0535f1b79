"""Time as an injected dependency, so a 10-minute window is tested in milliseconds."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock: windows, bans and TTLs are shared across machines)."""
        ...


class SystemClock:
    __slots__ = ()

    def now(self) -> float:
        return time.time()


class VirtualClock:
    """A clock that only moves when told to: ``guard test`` and unit tests."""

    __slots__ = ("_t",)

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a virtual clock does not go backwards")
        self._t += seconds

    def set(self, t: float) -> None:
        self._t = t
