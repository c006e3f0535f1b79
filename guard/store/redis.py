"""State in Redis, so every guard instance in front of a service counts the same attempts.

A batch is one EVALSHA of ``lua/batch.lua``: one round trip per request
whatever the number of operations, and atomic, so two instances racing on the
same username never both read "4 failures" and both let a fifth through.

Redis is a dependency the guard must survive losing.  Every failure surfaces
as ``StoreError`` (the engine owns the fail-open / fail-closed policy), and a
circuit breaker stops a dead Redis from costing each request a connect
attempt: after a failure, calls fail at once for ``retry_after`` seconds, then
a single call probes and, if Redis is back, the store is in use again with no
restart.  Waiting for a pooled connection is bounded by ``timeout`` too, and
such overload does not open the breaker: Redis is answering, only slowly.

Key layout (every key of one logical key shares the hash tag ``{key}``, so a
Redis Cluster keeps them in one slot; the script derives slice keys from the
declared ones and relies on that):

- ``<prefix>c:{key}``          counter hash, one field per slice index
- ``<prefix>d:{key}``          index hash of the distinct set's live slices
- ``<prefix>d:{key}:<slice>``  one HyperLogLog per slice
- ``<prefix>k:{key}``          KV hash: value and expiry in the engine's time
- ``<prefix>bans`` / ``bans:exp`` / ``bans:ver``  subject -> JSON, subject -> until, version
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import NoScriptError, RedisError

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
    StoreError,
    Take,
    slice_width,
)

log = logging.getLogger("guard.store.redis")

SCRIPT = resources.files("guard.store").joinpath("lua/batch.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()

# Counter and distinct keys outlive their window by one slice; never by less
# than a second, so a clock a little ahead of Redis's cannot lose a live slice.
_MIN_WINDOW_PEXPIRE_MS = 1000


def _window_pexpire(window: float, width: float) -> int:
    return max(_MIN_WINDOW_PEXPIRE_MS, math.ceil((window + width) * 1000))


def _ttl_pexpire(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _ban_json(ban: Ban) -> str:
    record = {"until": ban.until, "reason": ban.reason, "created": ban.created}
    return json.dumps(record, separators=(",", ":"))


def _ban_from(subject: str, raw: bytes | None) -> Ban | None:
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return Ban(subject, float(d["until"]), str(d["reason"]), float(d["created"]))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable ban record for %s", subject)
        return None


class RedisStore:
    """The ``Store`` contract on Redis (standalone; keys are Cluster-ready, batches are not:
    a batch spans several keys' slots, plus the ban keys)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "lg:",
        timeout: float = 0.25,
        retry_after: float = 0.5,
        pool_size: int = 32,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix cannot contain { or } (they would change the hash tag)")
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        # No retries inside redis-py: a retry doubles the time a request waits on
        # a dead Redis; the breaker decides when to try again.  No CLIENT SETINFO
        # on connect: one less round trip when reconnecting after an outage.
        self._pool = ConnectionPool.from_url(
            url,
            max_connections=pool_size,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            driver_info=None,
        )
        self._redis = Redis(connection_pool=self._pool)
        self._send: Callable[..., Awaitable[Any]] = self._redis.execute_command
        # Admission to the pool: redis-py raises at once when it is exhausted;
        # waiting a bounded time is kinder to a burst.
        self._slots = asyncio.Semaphore(pool_size)
        self._down_until = 0.0     # monotonic time before which calls fail without trying
        self._probing = False      # a call is testing whether Redis is back
        self._sha = SCRIPT_SHA
        p = prefix
        self._ban_keys = (f"{p}bans", f"{p}bans:exp", f"{p}bans:ver")

    # ---- Store -----------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._load_script()
        except StoreError as exc:
            log.warning("redis unreachable at start (%s); will retry on use", exc)

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)

    async def ping(self) -> bool:
        try:
            return bool(await self._command("PING"))
        except StoreError:
            return False

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        if not ops:
            return []
        keys, argv = self._encode(ops, now)
        raw = await self._script(keys, argv)
        out: list[Any] = []
        append = out.append
        for op, r in zip(ops, raw, strict=True):
            t = type(op)
            if t is Put:
                append(None)
            elif t is PutNew or t is Delete:
                append(r == 1)
            elif type(op) is GetBans:
                append([b if (b := _ban_from(s, j)) is not None and b.until > now else None
                        for s, j in zip(op.subjects, r, strict=True)])
            else:
                append(r)
        return out

    async def ban(self, ban: Ban, now: float) -> None:
        if not ban.created:
            ban = replace(ban, created=now)
        await self._script(list(self._ban_keys), [now, SLICES, "B", ban.subject, _ban_json(ban), ban.until])

    async def unban(self, subject: str, now: float) -> bool:
        (removed,) = await self._script(list(self._ban_keys), [now, SLICES, "U", subject])
        return bool(removed == 1)

    async def bans(self, now: float) -> list[Ban]:
        (flat,) = await self._script(list(self._ban_keys), [now, SLICES, "L"])
        out: list[Ban] = []
        for i in range(0, len(flat), 2):
            ban = _ban_from(flat[i].decode(), flat[i + 1])
            if ban is not None and ban.until > now:
                out.append(ban)
        return out

    async def bans_version(self) -> int:
        raw = await self._command("GET", self._ban_keys[2])
        return int(raw) if raw is not None else 0

    # ---- encoding --------------------------------------------------------------------------------

    def _encode(self, ops: Sequence[Op], now: float) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV for ``batch.lua`` (its header documents the layout)."""
        p = self.prefix
        keys: list[str] = []
        argv: list[Any] = [now, SLICES]
        for op in ops:
            if type(op) is Hit:
                width = slice_width(op.window)
                keys.append(f"{p}c:{{{op.key}}}")
                argv += ("h", math.floor(now / width), op.amount, _window_pexpire(op.window, width))
            elif type(op) is AddDistinct:
                width = slice_width(op.window)
                cur = math.floor(now / width)
                base = f"{p}d:{{{op.key}}}"
                keys.append(base)
                keys += [f"{base}:{cur - i}" for i in range(SLICES)]
                argv += ("a", cur, op.member, _window_pexpire(op.window, width))
            elif type(op) is GetBans:
                keys.append(self._ban_keys[0])
                argv += ("b", len(op.subjects), *op.subjects)
            elif type(op) is Get:
                keys.append(f"{p}k:{{{op.key}}}")
                argv.append("g")
            elif type(op) is Count:
                keys.append(f"{p}c:{{{op.key}}}")
                argv += ("c", math.floor(now / slice_width(op.window)))
            elif type(op) is CountDistinct:
                cur = math.floor(now / slice_width(op.window))
                base = f"{p}d:{{{op.key}}}"
                keys += [f"{base}:{cur - i}" for i in range(SLICES)]
                argv.append("d")
            elif type(op) is Incr:
                keys.append(f"{p}k:{{{op.key}}}")
                argv += ("i", op.amount, now + op.ttl, _ttl_pexpire(op.ttl))
            elif type(op) is PutNew or type(op) is Put:
                keys.append(f"{p}k:{{{op.key}}}")
                argv += ("n" if type(op) is PutNew else "p", op.value, now + op.ttl, _ttl_pexpire(op.ttl))
            elif type(op) is Take:
                keys.append(f"{p}k:{{{op.key}}}")
                argv.append("t")
            elif type(op) is Delete:
                keys += (f"{p}k:{{{op.key}}}", f"{p}c:{{{op.key}}}", f"{p}d:{{{op.key}}}")
                argv.append("x")
            else:
                raise TypeError(f"not a store operation: {op!r}")
        return keys, argv

    # ---- calls -----------------------------------------------------------------------------------

    async def _script(self, keys: list[str], argv: list[Any]) -> list[Any]:
        try:
            result = await self._command("EVALSHA", self._sha, len(keys), *keys, *argv)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: load it and try once more.
            await self._load_script()
            try:
                result = await self._command("EVALSHA", self._sha, len(keys), *keys, *argv)
            except NoScriptError as exc:
                self._trip(exc)
                raise StoreError(f"redis: {exc}") from exc
        if not isinstance(result, list):
            raise StoreError(f"redis: unexpected script reply {type(result).__name__}")
        return result

    async def _load_script(self) -> None:
        sha = await self._command("SCRIPT", "LOAD", SCRIPT)
        self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)

    async def _command(self, *args: Any) -> Any:
        """One command through the breaker; every failure becomes ``StoreError``.

        ``NoScriptError`` is let through: Redis answered, the caller reloads.
        """
        probe = False
        if self._down_until:
            if self._probing or time.monotonic() < self._down_until:
                raise StoreError("redis unavailable (retrying shortly)")
            self._probing = probe = True
        try:
            slots = self._slots
            if slots.locked():
                try:
                    async with asyncio.timeout(self.timeout):
                        await slots.acquire()
                except TimeoutError:
                    raise StoreError("redis: every pooled connection is busy") from None
            else:
                await slots.acquire()   # free: returns without suspending
            try:
                result = await self._send(*args)
            finally:
                slots.release()
        except NoScriptError:
            self._recovered()
            raise
        except (RedisError, OSError) as exc:
            self._trip(exc)
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        finally:
            if probe:
                self._probing = False
        self._recovered()
        return result

    def _trip(self, exc: BaseException) -> None:
        if not self._down_until:
            log.warning("redis failed (%s: %s); skipping it for %.2fs between retries",
                        type(exc).__name__, exc, self.retry_after)
        self._down_until = time.monotonic() + self.retry_after

    def _recovered(self) -> None:
        if self._down_until:
            log.info("redis is answering again")
            self._down_until = 0.0
