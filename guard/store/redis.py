"""State in Redis, so every guard instance in front of a service counts the same attempts.

This module serves one Redis: a standalone server, or the master that Redis
Sentinel names (``redis+sentinel://`` URLs, see ``redisurl``).  Redis Cluster
is ``cluster.RedisClusterStore``, which reuses everything here but the
connection and the splitting of batches by slot.

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

Sentinel: a new connection asks the sentinels where the master is, so when
the master dies and a replica is promoted, the breaker's next probe reaches
the new one.  Pooled connections do not ask; a master demoted while alive (a
planned switchover) would take their writes, to lose them when it rejoins as
a replica, until Sentinel reconfigures it some ten seconds later.  So while
the store runs, it asks the sentinels every ``SENTINEL_CHECK_INTERVAL``
seconds and drops its connections when the master has moved.

Key layout (every key of one logical key shares the hash tag ``{key}``, so a
Redis Cluster keeps them in one slot; the script derives slice keys from the
declared ones and relies on that; ``cluster`` changes only the global keys):

- ``<prefix>c:{key}``          counter hash, one field per slice index
- ``<prefix>d:{key}``          index hash of the distinct set's live slices
- ``<prefix>d:{key}:<slice>``  one HyperLogLog per slice
- ``<prefix>k:{key}``          KV hash: value and expiry in the engine's time
- ``<prefix>bans`` / ``bans:exp`` / ``bans:ver``  subject -> JSON, subject -> until, version
"""

from __future__ import annotations

import asyncio
import contextlib
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
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

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
from guard.store.redisurl import RedisTarget, parse_redis_url

log = logging.getLogger("guard.store.redis")

Send = Callable[..., Awaitable[Any]]
Close = Callable[[], Awaitable[None]]

SCRIPT = resources.files("guard.store").joinpath("lua/batch.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()

# How often a store behind Sentinel checks that its connections go to the master.
SENTINEL_CHECK_INTERVAL = 1.0

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
    """The ``Store`` contract on one Redis: standalone, or the master that Sentinel names."""

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
        self._master_pool: SentinelConnectionPool | None = None     # set when behind Sentinel
        self._watcher: asyncio.Task[None] | None = None
        self._send, self._close = self._connect(parse_redis_url(url), pool_size)
        # Admission to the pool: redis-py raises at once when it is exhausted;
        # waiting a bounded time is kinder to a burst.
        self._slots = asyncio.Semaphore(pool_size)
        self._down_until = 0.0     # monotonic time before which calls fail without trying
        self._probing = False      # a call is testing whether Redis is back
        self._sha = SCRIPT_SHA
        p = prefix
        self._ban_keys = (f"{p}bans", f"{p}bans:exp", f"{p}bans:ver")

    def _connect(self, target: RedisTarget, pool_size: int) -> tuple[Send, Close]:
        """The client for ``target``: how to send one command, and how to close it all."""
        if target.mode == "cluster":
            raise ValueError("a redis+cluster:// URL needs RedisClusterStore (make_store picks it)")
        # No retries inside redis-py: a retry doubles the time a request waits on
        # a dead Redis; the breaker decides when to try again.  No CLIENT SETINFO
        # on connect: one less round trip when reconnecting after an outage.
        if target.mode == "sentinel":
            # The sentinels' own clients default to three retries with backoff:
            # asking where the master is must cost one timeout at most, too.
            sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                list(target.nodes),
                sentinel_kwargs={
                    "socket_timeout": self.timeout,
                    "socket_connect_timeout": self.timeout,
                    "retry": Retry(NoBackoff(), 0),
                    "driver_info": None,
                },
            )
            master: Redis = sentinel.master_for(
                target.service,
                db=target.db,
                username=target.username,
                password=target.password,
                max_connections=pool_size,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                driver_info=None,
            )
            if isinstance(master.connection_pool, SentinelConnectionPool):
                self._master_pool = master.connection_pool

            async def close() -> None:
                try:
                    await master.aclose()
                finally:
                    await sentinel.aclose()

            return master.execute_command, close
        pool = ConnectionPool.from_url(
            target.url,
            max_connections=pool_size,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            driver_info=None,
        )
        redis = Redis(connection_pool=pool)

        async def close_standalone() -> None:
            await redis.aclose(close_connection_pool=True)

        return redis.execute_command, close_standalone

    # ---- Store -----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._master_pool is not None and self._watcher is None:
            self._watcher = asyncio.create_task(self._follow_master(self._master_pool), name="sentinel-watch")
        try:
            await self._load_script()
        except StoreError as exc:
            log.warning("redis unreachable at start (%s); will retry on use", exc)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._close()

    async def ping(self) -> bool:
        try:
            return bool(await self._command("PING"))
        except StoreError:
            return False

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        if not ops:
            return []
        keys, argv = self._encode(ops, now)
        return self._decode(ops, await self._script(keys, argv), now)

    def _decode(self, ops: Sequence[Op], raw: list[Any], now: float) -> list[Any]:
        """The contract's result types from the script's replies to ``ops``."""
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

    def _tag(self, key: str) -> str:
        """The hash-tagged part of every Redis key of logical ``key``: one slot per logical key."""
        return f"{{{key}}}"

    def _encode(self, ops: Sequence[Op], now: float) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV for ``batch.lua`` (its header documents the layout)."""
        p = self.prefix
        tag = self._tag
        keys: list[str] = []
        argv: list[Any] = [now, SLICES]
        for op in ops:
            if type(op) is Hit:
                width = slice_width(op.window)
                keys.append(f"{p}c:{tag(op.key)}")
                argv += ("h", math.floor(now / width), op.amount, _window_pexpire(op.window, width))
            elif type(op) is AddDistinct:
                width = slice_width(op.window)
                cur = math.floor(now / width)
                base = f"{p}d:{tag(op.key)}"
                keys.append(base)
                keys += [f"{base}:{cur - i}" for i in range(SLICES)]
                argv += ("a", cur, op.member, _window_pexpire(op.window, width))
            elif type(op) is GetBans:
                keys.append(self._ban_keys[0])
                argv += ("b", len(op.subjects), *op.subjects)
            elif type(op) is Get:
                keys.append(f"{p}k:{tag(op.key)}")
                argv.append("g")
            elif type(op) is Count:
                keys.append(f"{p}c:{tag(op.key)}")
                argv += ("c", math.floor(now / slice_width(op.window)))
            elif type(op) is CountDistinct:
                cur = math.floor(now / slice_width(op.window))
                base = f"{p}d:{tag(op.key)}"
                keys += [f"{base}:{cur - i}" for i in range(SLICES)]
                argv.append("d")
            elif type(op) is Incr:
                keys.append(f"{p}k:{tag(op.key)}")
                argv += ("i", op.amount, now + op.ttl, _ttl_pexpire(op.ttl))
            elif type(op) is PutNew or type(op) is Put:
                keys.append(f"{p}k:{tag(op.key)}")
                argv += ("n" if type(op) is PutNew else "p", op.value, now + op.ttl, _ttl_pexpire(op.ttl))
            elif type(op) is Take:
                keys.append(f"{p}k:{tag(op.key)}")
                argv.append("t")
            elif type(op) is Delete:
                t = tag(op.key)
                keys += (f"{p}k:{t}", f"{p}c:{t}", f"{p}d:{t}")
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
        # One word, so a cluster client knows the command (it sends it to every
        # master); redis-py splits it on the wire, so a single server sees the same.
        sha = await self._command("SCRIPT LOAD", SCRIPT)
        self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)

    async def _command(self, *args: Any, via: Send | None = None) -> Any:
        """One command (or, ``via`` another sender, one pipeline) through the breaker.

        Every failure becomes ``StoreError``.  ``NoScriptError`` is let through:
        Redis answered, the caller reloads.
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
                result = await (via or self._send)(*args)
            finally:
                slots.release()
        except NoScriptError:
            self._recovered()
            raise
        except (RedisError, RedisClusterException, OSError) as exc:
            self._trip(exc)
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        finally:
            if probe:
                self._probing = False
        self._recovered()
        return result

    async def _follow_master(self, pool: SentinelConnectionPool) -> None:
        """Drop every pooled connection once the sentinels name another master (see the module doc).

        A change is noticed whoever saw it first: this loop (``known``) or a new
        connection, which also asks and records the answer (``seen``); either
        way connections made before it, in use or idle, are dropped.
        """
        known = None
        while True:
            await asyncio.sleep(SENTINEL_CHECK_INTERVAL)
            seen = pool.master_address
            try:
                now = await pool.get_master_address()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            except (RedisError, OSError):
                continue        # requests meet the outage through the breaker
            if now != (known or now) or now != (seen or now):
                log.warning("sentinel: the master is now %s:%s; dropping connections to the old one", *now)
                await pool.disconnect()
            known = now

    def _trip(self, exc: BaseException) -> None:
        if not self._down_until:
            log.warning("redis failed (%s: %s); skipping it for %.2fs between retries",
                        type(exc).__name__, exc, self.retry_after)
        self._down_until = time.monotonic() + self.retry_after

    def _recovered(self) -> None:
        if self._down_until:
            log.info("redis is answering again")
            self._down_until = 0.0
