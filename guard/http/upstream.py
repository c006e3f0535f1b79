"""The connection pool to the protected service, and what its failures mean to a client.

One ``ClientSession`` per worker, configured to be transparent: it adds no
headers the client did not send (User-Agent, Accept, Accept-Encoding,
Content-Type), keeps no cookies, follows no redirects, decompresses nothing
and ignores ``HTTP_PROXY`` from the environment.  Failures map to 502 (could
not get an answer) or 504 (the answer did not come in time), never to a page
that names the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from aiohttp import (
    ClientConnectorError,
    ClientOSError,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    ServerDisconnectedError,
    TCPConnector,
)
from yarl import URL

from guard.config import Config
from guard.http.tls import upstream_context

# Headers aiohttp would invent; the client's own are forwarded when it sent them.
SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})

# Pooled connections are dropped after this idle time.  It must be shorter than
# the upstream's keep-alive timeout (Apache's default is 5 s): reusing a
# connection the upstream is closing fails the request.
POOL_KEEPALIVE = 4.0

# Upstream response heads are trusted more than clients' but still bounded.
MAX_UPSTREAM_FIELD = 64 * 1024

# RFC 9110 section 9.2.2: only idempotent requests may be retried automatically.
RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def failure_status(exc: BaseException) -> int:
    """504 when the upstream was too slow (connect or response head), 502 for everything else."""
    return 504 if isinstance(exc, asyncio.TimeoutError) else 502


class Upstream:
    __slots__ = ("_limit", "_prefix", "_session", "_ssl", "netloc", "server_hostname", "slots")

    def __init__(self, config: Config) -> None:
        url = URL(config.upstream)
        # Targets are appended to this prefix as received (raw, still encoded).
        self._prefix = config.upstream.rstrip("/")
        self.netloc = url.host_port_subcomponent or ""
        self.server_hostname = config.upstream_tls.server_name
        self._ssl = upstream_context(config.upstream_tls) if url.scheme == "https" else True
        self._limit = config.limits.upstream_connections
        self._session: ClientSession | None = None
        # The proxy takes one of these before it asks the pool for a connection and gives it
        # back once the connection is released: asyncio's semaphore serves waiters in order
        # and lets no newcomer pass them, which aiohttp's pool queue does not promise.
        self.slots = asyncio.Semaphore(self._limit)

    async def start(self) -> None:
        connector = TCPConnector(
            limit=self._limit,
            limit_per_host=0,
            ssl=self._ssl,
            keepalive_timeout=POOL_KEEPALIVE,
            ttl_dns_cache=10,
        )
        self._session = ClientSession(
            connector=connector,
            cookie_jar=DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            trust_env=False,
            max_line_size=MAX_UPSTREAM_FIELD,
            max_field_size=MAX_UPSTREAM_FIELD,
        )

    @property
    def session(self) -> ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not called")
        return self._session

    def url(self, path_qs: str, scheme: str | None = None) -> URL:
        """The upstream URL for a target, byte for byte (``encoded=True`` re-quotes nothing)."""
        prefix = self._prefix
        if scheme is not None:  # WebSocket: ws:// or wss:// on the same authority
            prefix = scheme + prefix[prefix.index(":") :]
        return URL(prefix + path_qs, encoded=True)

    def request(
        self, method: str, path_qs: str, headers: Sequence[tuple[str, str]], data: Any,
        timeouts: ClientTimeout,
    ) -> Awaitable[ClientResponse]:
        """Send one request (not a coroutine of ours: one frame less on the hot path)."""
        return self.session.request(
            method, self.url(path_qs), headers=headers, data=data, allow_redirects=False,
            timeout=timeouts, server_hostname=self.server_hostname,
        )

    @staticmethod
    def may_retry(exc: BaseException, method: str, data: Any) -> bool:
        """Whether a failed request may be sent again, once, on a fresh connection.

        A pooled connection can be closed by the upstream just as we reuse it.
        Retrying is allowed only for idempotent methods without a body (RFC 9112
        section 9.3.1), and never after a failed connect.
        """
        return (
            data is None
            and method in RETRYABLE_METHODS
            and isinstance(exc, (ServerDisconnectedError, ClientOSError))
            and not isinstance(exc, ClientConnectorError)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
