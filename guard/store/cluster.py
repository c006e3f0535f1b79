"""The Redis store on a Redis Cluster: a batch split by slot, its parts sent at once, answers put back in order.

A Lua script may only touch keys of one slot, and a request's batch touches
several logical keys (the client's address, the account, the bans).  So
``execute`` groups the operations by slot, encodes each group as its own
``batch.lua`` call, and sends them all in one pipelined round per node
(redis-py's cluster pipeline writes each node's calls at once and talks to the
nodes concurrently).  A batch whose operations share one slot is a single
EVALSHA, exactly as on one server.

**Atomicity is per slot.**  Every key of one logical key shares a hash tag, so
all operations on one logical key in a batch run in one script, atomically:
two instances racing on the same username still cannot both read "4 failures".
A batch as a whole is no longer one transaction: another request's writes may
land between its parts, and when a part fails (a node down) the parts that
reached healthy nodes stay applied while the caller gets ``StoreError``.

Global keys, which every request reads and which are read together, share the
hash tag ``{global}``: the bans (index, expiries, version), ``secret:hmac`` and
the attack detector's ``atk:*`` counters (guard/engine/core.py names them).  So
a ban and its version change in one script, the detector's reads are one
consistent snapshot, and a request's global reads are one part of its batch.
Layout, next to ``redis``'s (which is unchanged for other keys):

- ``<prefix>{global}:bans`` / ``:bans:exp`` / ``:bans:ver``
- ``<prefix>c:{global}{atk:f:short}``  and so on: ``{global}`` then the usual ``{key}``

MOVED and ASK (slots moving between nodes) are followed by redis-py, which
also refreshes its slot map.  NOSCRIPT can come from any one node (restarted,
new, promoted): the script is loaded on every master and only the parts that
failed are sent again, since the others have already run.  Connection-level
failures drop the slot map, so the breaker's next probe rediscovers the
cluster (a replica promoted in place of a dead master).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from guard.store.base import (
    AddDistinct,
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
)
from guard.store.redis import Close, RedisStore, Send
from guard.store.redisurl import RedisTarget

# The engine's shared keys (guard/engine/core.py: SECRET_KEY, the attack detector).
GLOBAL_TAG = "global"
GLOBAL_KEYS = frozenset({"secret:hmac"})
GLOBAL_PREFIXES = ("atk:",)
GLOBAL_SLOT = key_slot(GLOBAL_TAG.encode())

_KEYED = (Hit, Count, AddDistinct, CountDistinct, Get, Put, PutNew, Take, Delete, Incr)


def is_global(key: str) -> bool:
    """Whether ``key`` lives in the global slot, next to the bans, rather than in a slot of its own."""
    return key in GLOBAL_KEYS or key.startswith(GLOBAL_PREFIXES)


def slot_of(key: str) -> int:
    """The Cluster slot of every Redis key of logical ``key``."""
    return GLOBAL_SLOT if is_global(key) else key_slot(key.encode())


class RedisClusterStore(RedisStore):
    """The ``Store`` contract on a Redis Cluster (``redis+cluster://`` URLs)."""

    name = "redis-cluster"
    _cluster: RedisCluster

    def __init__(
        self,
        url: str,
        prefix: str = "lg:",
        timeout: float = 0.25,
        retry_after: float = 0.5,
        pool_size: int = 32,
    ) -> None:
        super().__init__(url, prefix, timeout, retry_after, pool_size)
        g = f"{prefix}{{{GLOBAL_TAG}}}"
        self._ban_keys = (f"{g}:bans", f"{g}:bans:exp", f"{g}:bans:ver")

    def _connect(self, target: RedisTarget, pool_size: int) -> tuple[Send, Close]:
        if target.mode != "cluster":
            raise ValueError("RedisClusterStore needs a redis+cluster:// URL")
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            # Per node; the store's semaphore keeps the total in flight at pool_size.
            max_connections=pool_size,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # The breaker, not redis-py, decides when to try again (see ``redis``).
            retry=Retry(NoBackoff(), 0),
            # The servers decide whether a cluster with uncovered slots serves the
            # others (cluster-require-full-coverage); the client does not refuse.
            require_full_coverage=False,
            driver_info=None,
        )
        return self._cluster.execute_command, self._cluster.aclose

    def _tag(self, key: str) -> str:
        return f"{{{GLOBAL_TAG}}}{{{key}}}" if is_global(key) else f"{{{key}}}"

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        groups: dict[int, list[int]] = {}
        for i, op in enumerate(ops):
            if type(op) is GetBans:
                slot = GLOBAL_SLOT
            elif isinstance(op, _KEYED):
                slot = slot_of(op.key)
            else:
                raise TypeError(f"not a store operation: {op!r}")
            groups.setdefault(slot, []).append(i)
        if len(groups) <= 1:
            return await super().execute(ops, now)
        parts = [[ops[i] for i in members] for members in groups.values()]
        replies = await self._scripts([self._encode(part, now) for part in parts])
        out: list[Any] = [None] * len(ops)
        for members, part, raw in zip(groups.values(), parts, replies, strict=True):
            for i, result in zip(members, self._decode(part, raw, now), strict=True):
                out[i] = result
        return out

    async def _scripts(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[Any]]:
        """Run one ``batch.lua`` call per slot, pipelined; the replies in the calls' order."""
        replies: list[Any] = await self._command(calls, via=self._pipeline)
        again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if again:
            await self._load_script()
            retried: list[Any] = await self._command([calls[i] for i in again], via=self._pipeline)
            for i, reply in zip(again, retried, strict=True):
                if isinstance(reply, NoScriptError):
                    self._trip(reply)
                    raise StoreError(f"redis: {reply}")
                replies[i] = reply
        for reply in replies:
            if not isinstance(reply, list):
                raise StoreError(f"redis: unexpected script reply {type(reply).__name__}")
        return replies

    async def _pipeline(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One cluster pipeline of EVALSHAs.  NOSCRIPT comes back as a value; other errors raise."""
        pipe = self._cluster.pipeline()
        for keys, argv in calls:
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *argv)
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                    raise reply
        except RedisCluster.ERRORS_ALLOW_RETRY:
            # A node is gone or the slot map is stale.  The pipeline, unlike a
            # single command, does not mark the map for refresh when it may not
            # retry: closing does, so the next call rediscovers the cluster.
            await self._cluster.aclose()
            raise
        return replies
