"""The public listening socket: binding, accepting, TLS, and PROXY protocol before either.

The guard accepts connections itself rather than through ``loop.create_server``.
Under load uvloop accepts one connection per pass over the loop (measured: 38
accepts in 40 passes of 50 ms each, where asyncio's own loop took 206), so when
the guard is busy new connections wait in the kernel's accept queue for seconds,
clients' SYNs are dropped and retried, and ``limits.max_connections`` is never
reached, so nothing is refused.  ``bench/soak.py`` at twice capacity saw a
20-second p99 from exactly that.  Here a readiness callback accepts everything
queued (up to ``ACCEPT_BATCH``) in one pass.  A connection over
``limits.max_connections`` gets the 503 page with one ``send`` and is closed before a
transport exists.  The others go to ``loop.connect_accepted_socket``.

With PROXY protocol a task per accepted socket reads the header first,
because the PROXY header comes *before* TLS and HTTP and nothing after it may be
consumed: a protocol wrapper would receive the header and the start of the TLS
ClientHello in one read, and ``start_tls`` cannot be given bytes back.  So that
task peeks (``MSG_PEEK``), consumes exactly the header's
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
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from guard import proxyproto
from guard.clientip import TrustedProxies, parse_ip
from guard.http.looplag import LoopLag
from guard.http.protocol import GuardWebServer
from guard.units import HostPort

log = logging.getLogger("guard.http")

BACKLOG = 1024
ACCEPT_BATCH = 256
"""Connections accepted per readiness of the listening socket, before the loop runs anything else."""
LINGER = 2.0
"""Seconds a refused connection is drained before it is closed (see ``Listener._refuse``)."""
MAX_LINGERING = 4096
"""Refused connections drained at once; past that they are closed at once (a reset, not a leak)."""
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
        proxy_protocol: bool, lag: LoopLag | None = None,
    ) -> None:
        self._server = server
        self._lag = lag
        self._sock = sock
        self._ssl = ssl_context
        self._proxy_protocol = proxy_protocol
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._resume: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()  # accepted; TLS or PROXY handshake not done yet
        self._lingering: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}  # refused, draining
        self._senders: tuple[tuple[str, ...] | None, TrustedProxies | None] = (None, None)
        self.refused_peers = 0      # connections closed because their peer may not send a PROXY header
        self.refused_full = 0       # connections refused at accept: limits.max_connections reached
        self.refused_busy = 0       # connections refused at accept: the loop was late (limits.max_loop_lag)
        self.port: int = sock.getsockname()[1]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._on_acceptable)
        self._reading = True

    async def close(self) -> None:
        """Stop accepting; connections already accepted are left to the server's shutdown."""
        if self._loop is not None:
            if self._reading:
                self._loop.remove_reader(self._sock.fileno())
                self._reading = False
            if self._resume is not None:
                self._resume.cancel()
                self._resume = None
            for fd in list(self._lingering):
                self._unlinger(fd)
            self._loop = None
            for task in list(self._pending):
                task.cancel()
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
        self._sock.close()

    # ---- accepting ----------------------------------------------------------------------------

    def _on_acceptable(self) -> None:
        """Accept what is queued (up to ``ACCEPT_BATCH``), in this one pass over the loop."""
        sock = self._sock
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue
                # EMFILE and friends: the fd table is full; anything else is unexpected.  Either
                # way the listener backs off rather than spinning on a socket that stays readable.
                level = logging.ERROR if exc.errno in _ACCEPT_RETRY else logging.CRITICAL
                log.log(level, "accept failed (%s); retrying in 100 ms", errno.errorcode.get(exc.errno or 0, exc))
                self._pause(0.1)
                return
            self._admit(conn, peer)

    def _pause(self, seconds: float) -> None:
        loop = self._loop
        if loop is None or not self._reading:
            return
        loop.remove_reader(self._sock.fileno())
        self._reading = False

        def resume() -> None:
            self._resume = None
            if self._loop is not None and not self._reading:
                self._loop.add_reader(self._sock.fileno(), self._on_acceptable)
                self._reading = True

        self._resume = loop.call_later(seconds, resume)

    def _admit(self, conn: socket.socket, peer: object) -> None:
        conn.setblocking(False)
        if self._proxy_protocol and not self._may_send_proxy_header(peer):
            self.refused_peers += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("closed a connection from %s: not in proxy_protocol_from", peer)
            conn.close()
            return
        rt = self._server.settings
        full = self._server.open_connections + len(self._pending) >= rt.max_connections
        if full or (self._lag is not None and self._lag.overloaded):
            # Refused before a transport exists: past the connection limit, or while the loop
            # is late on every tick (a refusal here costs a fraction of a 503 from the HTTP
            # layer).  Plain HTTP gets the 503 page (one send to an empty socket buffer);
            # before a PROXY header or TLS nothing can be said.
            if full:
                self.refused_full += 1
            else:
                self.refused_busy += 1
            if not self._proxy_protocol and self._ssl is None:
                self._refuse(conn, rt.pages.raw(503))
            else:
                conn.close()
            return
        assert self._loop is not None
        task = self._loop.create_task(self._handshake(conn, rt.client_header))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _refuse(self, conn: socket.socket, page: bytes) -> None:
        """Send the 503 page, then close the way nginx's ``lingering_close`` does.

        Closing a socket whose request is still unread makes the kernel send a reset,
        and a reset can reach the client before the 503 does (it then sees a dropped
        connection, not an answer).  So the write side is shut, what the client sends is
        read and dropped until it closes or ``LINGER`` seconds pass, and only then is the
        socket closed.  At most ``MAX_LINGERING`` sockets linger; past that, a plain close.
        """
        loop = self._loop
        try:
            conn.send(page)
            if loop is None or len(self._lingering) >= MAX_LINGERING:
                raise OSError
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        fd = conn.fileno()
        self._lingering[fd] = (conn, loop.call_later(LINGER, self._unlinger, fd))
        loop.add_reader(fd, self._drain, fd)

    def _drain(self, fd: int) -> None:
        entry = self._lingering.get(fd)
        if entry is None:
            return
        try:
            while entry[0].recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            return          # more may come: keep lingering
        except OSError:
            pass
        self._unlinger(fd)  # EOF or an error: the client is gone

    def _unlinger(self, fd: int) -> None:
        entry = self._lingering.pop(fd, None)
        if entry is None:
            return
        conn, timer = entry
        timer.cancel()
        if self._loop is not None:
            self._loop.remove_reader(fd)
        conn.close()

    # ---- PROXY protocol -----------------------------------------------------------------------

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
        """The PROXY header (when configured), then TLS (when configured), then HTTP."""
        loop = asyncio.get_running_loop()
        try:
            factory: Callable[[], asyncio.BaseProtocol] = self._server
            if self._proxy_protocol:
                async with asyncio.timeout(deadline):
                    header = await read_proxy_header(conn)
                factory = self._server.with_peer(header.source[0] if header.source is not None else None)
            await loop.connect_accepted_socket(
                factory, conn, ssl=self._ssl, ssl_handshake_timeout=deadline if self._ssl else None,
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
