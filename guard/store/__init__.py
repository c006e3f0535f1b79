"""Where the guard keeps its state: one contract (``base``), in this process or in Redis.

The engine only ever sees ``Store``; ``make_store`` is the one place that
turns the ``store:`` section of guard.yaml into a backend.  For Redis, the
URL's scheme picks the kind (``redisurl``): one server or a Sentinel-watched
master (``RedisStore``), or a Cluster (``RedisClusterStore``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    Store,
    StoreError,
    Take,
    slice_index,
    slice_width,
)
from guard.store.cluster import RedisClusterStore
from guard.store.memory import MemoryStore
from guard.store.redis import RedisStore
from guard.store.redisurl import parse_redis_url

if TYPE_CHECKING:
    from guard.config import StoreConfig

__all__ = [
    "SLICES", "AddDistinct", "Ban", "Count", "CountDistinct", "Delete", "Get", "GetBans", "Hit", "Incr",
    "MemoryStore", "Op", "Put", "PutNew", "RedisClusterStore", "RedisStore", "Store", "StoreError", "Take",
    "make_store",
    "slice_index", "slice_width",
]


def make_store(cfg: StoreConfig) -> Store:
    if cfg.backend == "redis":
        kind = RedisClusterStore if parse_redis_url(cfg.url).mode == "cluster" else RedisStore
        return kind(cfg.url, cfg.key_prefix, cfg.timeout, cfg.retry_after, cfg.pool_size)
    return MemoryStore(cfg.key_prefix, cfg.max_keys, cfg.max_members)
