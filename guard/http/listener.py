"""The public listening socket: binding, TLS, and PROXY protocol before either.

Without PROXY protocol the socket goes straight to ``loop.create_server``
(accepts happen in C on uvloop).  With it, the guard runs its own accept loop,
because the PROXY header comes *before* TLS and HTTP and nothing after it may be
consumed: a protocol wrapper would receive the header and the start of the TLS
ClientHello in one read, and ``start_tls`` cannot be given bytes back.  So for
each accepted socket a task peeks (``MSG_PEEK``), consumes exactly the header's
bytes (``proxyproto.header_length`` says how many), and then hands the socket
to ``loop.connect_accepted_socket`` with the TLS context, where TLS and HTTP
start on a clean byte boundary.  The header must arrive within
``timeouts.client_header`` and fit in 536 bytes (107 for v1); a missing or
malformed header closes the connection without a reply, since the peer is a
load balancer that does not speak HTTP to us before the header.

A PROXY header names the client, so whoever may send one chooses the address every
IP rule, ban and allowlist sees.  With ``proxy_protocol_from`` set, a connection
from any other peer is closed at accept, before a byte is read: a client that
reaches the port directly (a missing security group, a flat network) gets nothing,
not even an HTTP error.  Read at each accept from the live settings, so a reload
that changes the list applies to the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl

from guard import proxyproto
from guard.clientip import TrustedProxies, parse_ip
from guard.http.protocol import GuardWebServer
from guard.units import HostPort

log = logging.getLogger("guard.http")

BACKLOG = 1024
# errors from accept() that mean "try again shortly", not "the socket is broken"
_ACCEPT_RETRY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EAGAIN, errno.EPROTO, errno.EINTR})


async def bind(address: HostPort, *, reuse_port: bool, backlog: int = BACKLOG) -> socket.socket:
    """A listening, non-blocking socket; IPv6 sockets are IPv6-only, like asyncio's."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve listen address {address}")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # N worker processes bind the same port; the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """Accepts public connections for one ``GuardWebServer``."""

    def __init__(
        self, server: GuardWebServer, sock: socket.socket, ssl_context: ssl.SSLContext | None,
        proxy_protocol: bool,
    ) -> None:
        self._server = server
        self._sock = sock
        self._ssl = ssl_context
        self._proxy_protocol = proxy_protocol
        self._aio_server: asyncio.Server | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._senders: tuple[tuple[str, ...] | None, TrustedProxies | None] = (None, None)
        self.refused_peers = 0      # connections closed because their peer may not send a PROXY header
        self.port: int = sock.getsockname()[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._proxy_protocol:
            self._accept_task = loop.create_task(self._accept_loop(), name="proxy-protocol-accept")
            return
        self._aio_server = await loop.create_server(
            self._server, sock=self._sock, ssl=self._ssl, backlog=BACKLOG,
            ssl_handshake_timeout=self._server.settings.client_header if self._ssl else None,
        )

    async def close(self) -> None:
        """Stop accepting; connections already accepted are left to the server's shutdown."""
        if self._aio_server is not None:
            self._aio_server.close()
            self._aio_server = None
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
            for task in list(self._handshakes):
                task.cancel()
            if self._handshakes:
                await asyncio.gather(*self._handshakes, return_exceptions=True)
        self._sock.close()

    # ---- PROXY protocol -----------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue
                if exc.errno in _ACCEPT_RETRY:
                    log.error("accept failed (%s); retrying in 100 ms", errno.errorcode.get(exc.errno or 0))
                    await asyncio.sleep(0.1)  # backoff, not synchronisation: the fd table is full
                    continue
                raise
            conn.setblocking(False)
            if not self._may_send_proxy_header(peer):
                self.refused_peers += 1
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("closed a connection from %s: not in proxy_protocol_from", peer[0])
                conn.close()
                continue
            rt = self._server.settings
            if self._server.open_connections + len(self._handshakes) >= rt.max_connections:
                conn.close()  # nothing can be said before the PROXY header (or TLS): just close
                continue
            task = loop.create_task(self._handshake(conn, rt.client_header))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _may_send_proxy_header(self, peer: object) -> bool:
        """Whether ``proxy_protocol_from`` (unset: anyone) lets this socket peer name a client."""
        cidrs = self._server.settings.config.proxy_protocol_from
        if cidrs is None:
            return True
        if self._senders[0] is not cidrs:       # compiled once per config, not per connection
            self._senders = (cidrs, TrustedProxies(cidrs))
        senders = self._senders[1]
        ip = parse_ip(peer[0]) if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else None
        return ip is not None and senders is not None and ip in senders

    async def _handshake(self, conn: socket.socket, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(deadline):
                header = await read_proxy_header(conn)
            source = header.source[0] if header.source is not None else None
            await loop.connect_accepted_socket(
                self._server.with_peer(source), conn, ssl=self._ssl,
                ssl_handshake_timeout=deadline if self._ssl else None,
            )
        except (proxyproto.ProxyProtocolError, TimeoutError, OSError, ssl.SSLError) as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("PROXY/TLS handshake failed: %r", exc)
            conn.close()
        except BaseException:
            conn.close()
            raise


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def read_proxy_header(sock: socket.socket) -> proxyproto.ProxyHeader:
    """Consume exactly one PROXY header from ``sock``; never a byte of what follows."""
    buf = b""
    while True:
        try:
            peeked = sock.recv(proxyproto.MAX_HEADER - len(buf), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(sock)
            continue
        if not peeked:
            raise ConnectionResetError("connection closed inside the PROXY header")
        total = proxyproto.header_length(buf + peeked)
        # None: the header's end is not in sight, so every peeked byte is header
        take = len(peeked) if total is None else min(len(peeked), total - len(buf))
        buf += sock.recv(take)
        if total is not None and len(buf) == total:
            return proxyproto.parse(buf)
        if len(buf) >= proxyproto.MAX_HEADER:
            raise proxyproto.ProxyProtocolError("PROXY header too long")
        await _readable(sock)
