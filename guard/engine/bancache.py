"""A local replica of the shared ban list, so non-login requests never wait on the store.

Every request must be checked against bans, but only login requests need the
store's counters.  Asking Redis on every GET would put a network round trip on
the hot path of the whole site.  Instead each worker keeps the bans in a dict
and polls the store's ban version (one tiny GET) a few times a second; a ban
made by any instance reaches every other instance within ``poll_interval``.
Login requests still check the store authoritatively in their own batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from functools import lru_cache

from guard.engine.clock import Clock
from guard.store.base import Ban, Store, StoreError

log = logging.getLogger("guard.bans")

# IPv6 attackers rotate within a /64; IPv4 botnets within a /24.  These are the
# subnet keys bans and counters aggregate to unless a rule says otherwise.
V4_PREFIX = 24
V6_PREFIX = 64


@lru_cache(maxsize=65536)
def subnet_of(ip: str, v4: int = V4_PREFIX, v6: int = V6_PREFIX) -> str:
    """``1.2.3.4`` -> ``1.2.3.0/24``; ``2001:db8::1`` -> ``2001:db8::/64``.

    On every login, twice: the ``ipaddress`` module costs ~25 us here, so the
    canonical forms are masked with ``inet_pton`` instead (and cached).
    """
    if ":" in ip:
        packed = bytearray(socket.inet_pton(socket.AF_INET6, ip))
        plen, family = v6, socket.AF_INET6
    else:
        packed = bytearray(socket.inet_pton(socket.AF_INET, ip))
        plen, family = v4, socket.AF_INET
    full, rest = divmod(plen, 8)
    if rest:
        packed[full] &= (0xFF << (8 - rest)) & 0xFF
        full += 1
    for i in range(full, len(packed)):
        packed[i] = 0
    return f"{socket.inet_ntop(family, bytes(packed))}/{plen}"


def ip_subjects(ip: str) -> tuple[str, str]:
    return (f"ip:{ip}", f"net:{subnet_of(ip)}")


class BanCache:
    __slots__ = (
        "_bans", "_clock", "_has_nets", "_pending", "_store", "_task", "_version", "max_entries", "poll_interval",
    )

    def __init__(self, store: Store, clock: Clock, poll_interval: float = 0.5, max_entries: int = 1_000_000):
        self._store = store
        self._clock = clock
        self._bans: dict[str, Ban] = {}
        self._pending: dict[str, Ban] = {}   # bans made while the store was down: written when it is back
        self._has_nets = False
        self._version: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.poll_interval = poll_interval
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._bans)

    def lookup(self, ip: str) -> Ban | None:
        """The active ban covering ``ip`` (address or its subnet), from memory."""
        if not self._bans:
            return None
        now = self._clock.now()
        ban = self._bans.get(f"ip:{ip}")
        if ban is not None and ban.until > now:
            return ban
        if self._has_nets:
            ban = self._bans.get(f"net:{subnet_of(ip)}")
            if ban is not None and ban.until > now:
                return ban
        return None

    def put(self, ban: Ban) -> None:
        """Apply a ban made in this process at once (the poll would see it a little later)."""
        if len(self._bans) < self.max_entries or ban.subject in self._bans:
            self._bans[ban.subject] = ban
            self._has_nets = self._has_nets or ban.subject.startswith("net:")

    def put_pending(self, ban: Ban) -> None:
        """A ban the store could not take: enforce it here, and write it at the next refresh."""
        self.put(ban)
        if len(self._pending) < self.max_entries:
            self._pending[ban.subject] = ban

    def drop(self, subject: str) -> None:
        self._bans.pop(subject, None)
        self._pending.pop(subject, None)

    async def refresh(self, force: bool = False) -> bool:
        """Reload when the store's ban version moved; False when the store is unreachable."""
        now = self._clock.now()
        for subject, ban in list(self._pending.items()):
            if not ban.active(now):
                del self._pending[subject]
                continue
            try:
                await self._store.ban(ban, now)
            except StoreError:
                break  # still down: keep them, and keep enforcing them locally
            del self._pending[subject]
            force = True
        try:
            version = await self._store.bans_version()
            if not force and version == self._version:
                return True
            bans = await self._store.bans(self._clock.now())
        except StoreError:
            return False
        fresh = {b.subject: b for b in bans[: self.max_entries]}
        for subject, ban in self._pending.items():  # not yet in the store: still ours to enforce
            if ban.active(now) and subject not in fresh:
                fresh[subject] = ban
        self._bans = fresh
        self._has_nets = any(s.startswith("net:") for s in fresh)
        self._version = version
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop ban propagation for good
                log.exception("ban cache refresh failed")
            await asyncio.sleep(self.poll_interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ban-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
