"""Which Redis a ``store.url`` names: one server, a Sentinel-watched master, or a Cluster.

One URL (and so one ``GUARD_REDIS_URL``) is enough to move a deployment from a
single Redis to Sentinel or Cluster; the scheme says which:

- ``redis://``, ``rediss://``, ``unix://``: one server; redis-py parses the URL.
- ``redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/<db>]``:
  the sentinels to ask (port 26379 when omitted) and the name they monitor the
  master under.  The credentials are the master's; the sentinels are asked
  without any.
- ``redis+cluster://[user:password@]host:port[,host:port...]``: seed nodes
  (port 6379 when omitted); the client discovers the rest.  A cluster has only
  database 0.

Parsing happens once, when the config loads, so a typo is reported with its
place in guard.yaml rather than on the first request.  Nothing here imports
redis-py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

Mode = Literal["standalone", "sentinel", "cluster"]

STANDALONE_SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"
SENTINEL_PORT = 26379
CLUSTER_PORT = 6379


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``store.url``; ``url`` is kept as given for redis-py's own parser (standalone)."""

    mode: Mode
    url: str = field(repr=False)                 # may hold a password
    nodes: tuple[tuple[str, int], ...] = ()      # sentinels, or cluster seed nodes
    service: str = ""                            # sentinel: the master's name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``url``; raise ``ValueError`` saying what is wrong, never echoing the URL (it may hold a password)."""
    if url.startswith(STANDALONE_SCHEMES):
        return RedisTarget("standalone", url)
    if url.startswith(SENTINEL_SCHEME):
        rest, mode, default_port = url[len(SENTINEL_SCHEME):], "sentinel", SENTINEL_PORT
    elif url.startswith(CLUSTER_SCHEME):
        rest, mode, default_port = url[len(CLUSTER_SCHEME):], "cluster", CLUSTER_PORT
    else:
        raise ValueError(
            "expected a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL"
        )
    if "?" in rest or "#" in rest:
        raise ValueError(f"{mode} URLs take no query options or fragment")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(part, default_port) for part in netloc.split(","))
    parts = [p for p in path.split("/") if p]
    if mode == "sentinel":
        if not parts or len(parts) > 2:
            raise ValueError("a redis+sentinel URL needs the master's name as its path: "
                             "redis+sentinel://host:26379[,host:port...]/<master>[/<db>]")
        db = _db(parts[1]) if len(parts) == 2 else 0
        return RedisTarget("sentinel", url, nodes, unquote(parts[0]), db, username, password)
    if parts and parts != ["0"]:
        raise ValueError("a Redis Cluster has only database 0: write redis+cluster://host:port[,host:port...]")
    return RedisTarget("cluster", url, nodes, "", 0, username, password)


def _node(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f'bad IPv6 node "{text}": write [address]:port')
        port_text = after[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError("every node needs a host: host:port[,host:port...]")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'bad port "{port_text}" for node {host}: expected 1 to 65535')
    return host, int(port_text)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f'the database must be a number (got "{text}")')
    return int(text)
