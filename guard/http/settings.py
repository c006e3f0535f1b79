"""The proxy's side of a ``Config`` (limits, timeouts, trust, pages), compiled into one object.

Request handling reads one ``Settings`` reference per request; a reload builds a
new one and swaps the reference, so a request never sees half of an old config
and half of a new one, and nothing is parsed on the hot path.  (Rules, lists and
login endpoints are the engine's: ``Engine.reload`` swaps those the same way.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import ClientTimeout
from yarl import URL

from guard.clientip import TrustedProxies
from guard.config import Config
from guard.engine import Engine
from guard.http.pages import Pages
from guard.http.piiflow import PIIFlow
from guard.pii.vault import Vault

# A tarpit delay is a decision value; this caps what any rule can make a
# connection wait, so a misconfigured rule cannot pin connections for hours.
MAX_TARPIT = 30.0

# Settings that only take effect on restart: they shape sockets, the TLS
# context, the upstream connection pool, the store connection or the log file.
RESTART_KEYS = (
    "listen", "upstream", "upstream_tls", "tls", "proxy_protocol", "admin.listen", "store",
    "log.requests", "log.file", "limits.upstream_connections", "challenge", "observe",
)


@dataclass(frozen=True, slots=True)
class Settings:
    config: Config
    engine: Engine
    trusted: TrustedProxies
    pages: Pages
    scheme: str                       # of the public listener: X-Forwarded-Proto
    host_override: str | None         # None: forward the client's Host
    # client side
    client_header: float
    client_body: float
    max_header_size: int
    max_body_size: int
    max_connections: int
    # upstream side
    upstream_timeout: ClientTimeout   # pool wait + connect, then the wait for the response head
    upstream_idle: float              # longest silence within a response body
    max_in_flight: int                # pool size + queue: beyond it, 503 at once
    max_queue_time: float             # a head older than this when its turn comes: 503 at once
    max_loop_lag: float               # the loop this late on every tick: new requests 503 at once (0: off)
    challenge: Any = None             # guard.http.challengeflow.ChallengeFlow when configured
    pii: PIIFlow | None = None        # None: PII disabled (or no vault): responses and forms pass untouched


def build_settings(
    config: Config, engine: Engine, challenge: Any = None, vault: Vault | None = None
) -> Settings:
    """``vault``: the PII token vault (one per server); without it, values chosen for tokenize are emptied."""
    if config.host_header == "keep":
        host_override: str | None = None
    elif config.host_header == "upstream":
        host_override = URL(config.upstream).host_port_subcomponent
    else:
        host_override = config.host_header
    t, lim = config.timeouts, config.limits
    return Settings(
        config=config,
        engine=engine,
        trusted=TrustedProxies(config.trusted_proxies),
        pages=Pages(config.brand),
        scheme="https" if config.tls is not None else "http",
        host_override=host_override,
        client_header=t.client_header,
        client_body=t.client_body,
        max_header_size=lim.max_header_size,
        max_body_size=lim.max_body_size,
        max_connections=lim.max_connections,
        # The client starts sock_read only once the request body is sent, so a slow
        # upload is not mistaken for a slow upstream.  ``connect`` also bounds the
        # wait for a free pooled connection: that wait is a queue like the event loop's,
        # so it gets ``max_queue_time`` (a saturated upstream answers 504 at once rather
        # than after a minute in the guard's queue).
        upstream_timeout=ClientTimeout(
            total=None,
            connect=t.upstream_connect + lim.max_queue_time,
            sock_connect=t.upstream_connect,
            sock_read=t.upstream_read,
        ),
        upstream_idle=t.upstream_idle,
        max_in_flight=lim.upstream_connections + lim.max_pending_upstream,
        max_queue_time=lim.max_queue_time,
        max_loop_lag=lim.max_loop_lag,
        challenge=challenge,
        pii=PIIFlow(config.pii, engine, vault) if config.pii.enabled else None,
    )


def restart_needed(old: Config, new: Config) -> list[str]:
    """Names of the changed settings that a reload cannot apply."""
    return [key for key in RESTART_KEYS if _get(old, key) != _get(new, key)]


def _get(config: Config, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
