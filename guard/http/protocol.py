"""One client connection: the limits aiohttp's HTTP server does not enforce itself.

aiohttp's ``RequestHandler`` parses requests and runs the handler, but it has
no deadline for a request head (a slowloris client holds a connection forever
by sending a header byte every few seconds), no cap on a head's *total* size
(only per line), no per-worker connection limit, and it answers parse errors
with its own plain-text body.  ``GuardProtocol`` adds those four things.

It also ends an in-flight body whose framing breaks mid-way: aiohttp's C
parser (llhttp) only queues a 400 for after the current request, leaving that
request's payload waiting for bytes that will never be parsed.

It subclasses ``RequestHandler`` and overrides the asyncio protocol callbacks
plus ``handle_error``; it reads a few of the handler's private attributes
(``_request_count``, ``_messages``, ``_upgraded``, ``_payload_parser``,
``_request_in_progress``, ``_close``) and queues an ``_ErrInfo`` to answer an
oversized head.  That coupling is the price of not re-implementing HTTP/1.1
parsing; ``tests/test_proxy_limits.py`` and ``tests/test_robust_http.py`` pin
every behaviour here, so an aiohttp upgrade that moves them fails loudly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from time import perf_counter
from typing import Any, cast

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from guard.clientip import parse_ip
from guard.http.settings import Settings

log = logging.getLogger("guard.http")

MAX_HEADERS = 128  # header fields per request; more is an attack, not a browser
LINGER = 2.0       # after refusing a body, how long to drain it so the client reads our answer


class HeadTooLarge(BadHttpMessage):
    """The request line and headers together exceed ``limits.max_header_size``."""


def _head_size(msg: RawRequestMessage) -> int:
    """Bytes of a parsed head: request line, fields with ": " and CRLF, the empty line."""
    return len(msg.method) + len(msg.path) + 12 + sum(len(k) + len(v) + 4 for k, v in msg.raw_headers) + 2


class GuardWebServer(web.Server):
    """aiohttp's low-level server, building ``GuardProtocol`` connections that share a ``Settings``."""

    def __init__(self, handler: Callable[[web.BaseRequest], Any], *, settings: Settings) -> None:
        size = settings.max_header_size
        self._protocol_kwargs: dict[str, Any] = {
            "keepalive_timeout": settings.config.timeouts.client_idle,
            "max_line_size": size,
            "max_field_size": size,
            "max_headers": MAX_HEADERS,
            "lingering_time": LINGER,
            # bodies are forwarded as received: decompressing them would change them
            "auto_decompress": False,
            "access_log": None,  # the guard writes its own request log
        }
        super().__init__(handler, handler_cancellation=False, **self._protocol_kwargs)
        self._protocol_loop = asyncio.get_running_loop()
        self.settings = settings
        self.open_connections = 0

    def set_settings(self, settings: Settings) -> None:
        """Apply a reload: limits for every connection, parser limits for new ones."""
        self.settings = settings
        self._protocol_kwargs["keepalive_timeout"] = settings.config.timeouts.client_idle
        self._protocol_kwargs["max_line_size"] = settings.max_header_size
        self._protocol_kwargs["max_field_size"] = settings.max_header_size

    def __call__(self) -> GuardProtocol:
        return GuardProtocol(self, loop=self._protocol_loop, **self._protocol_kwargs)

    def with_peer(self, source: str | None) -> Callable[[], GuardProtocol]:
        """A protocol factory for a connection whose client address came in a PROXY header."""

        def factory() -> GuardProtocol:
            proto = self()
            proto.proxied_peer = source
            return proto

        return factory


class GuardProtocol(RequestHandler):
    __slots__ = (
        "_body", "_guard", "_head_bytes", "_head_timer", "_open", "head_at", "peer", "peer_ip", "proxied_peer",
    )

    def __init__(self, manager: GuardWebServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._open = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._body: StreamReader | None = None  # payload of the last request head parsed
        self.head_at = 0.0  # perf_counter when the last request head was parsed: its age is its queue time
        self.proxied_peer: str | None = None
        self.peer = "0.0.0.0"
        self.peer_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    # ---- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        rt = guard.settings
        if guard.open_connections >= rt.max_connections:
            # Refuse politely: a complete 503 page, then close.  Not counted, not parsed.
            tr = cast(asyncio.Transport, transport)
            tr.write(rt.pages.raw(503))
            tr.close()
            return
        self._open = True
        guard.open_connections += 1
        addr = self.proxied_peer
        if addr is None:
            peername = transport.get_extra_info("peername")
            addr = peername[0] if isinstance(peername, tuple) else None
        ip = parse_ip(addr) if addr else None
        if ip is not None:
            self.peer_ip = ip
            self.peer = str(ip)
        super().connection_made(transport)
        # The first head is timed from accept: a connection that never speaks is cut off too.
        self._arm_head_timer(rt)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._open:
            return
        self._open = False
        self._guard.open_connections -= 1
        self._cancel_head_timer()
        self._body = None
        super().connection_lost(exc)

    # ---- request head deadline and size -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._open or self._close:
            return  # closing (``close``): aiohttp parses nothing more either
        timed = self._head_timer is not None         # a head is under way (or the first is awaited)
        in_head = timed or self._awaiting_head()     # these bytes start or continue a head
        count = self._request_count
        body = self._body
        super().data_received(data)
        limit = self._guard.settings.max_header_size
        if self._request_count != count:
            # one or more heads completed: the deadline is met, and their wait for the handler starts
            self.head_at = perf_counter()
            if timed:
                self._cancel_head_timer()
            messages = self._messages
            if body is not None and messages and isinstance(messages[-1][0], _ErrInfo) and not body.is_eof():
                self._fail_body(body)
            if in_head and messages and self._head_bytes + len(data) > limit:
                # The read that completed the head may have crossed the limit: measure it.
                msg = messages[-1][0]
                if isinstance(msg, RawRequestMessage) and _head_size(msg) > limit:
                    # answered through aiohttp's own error path, i.e. handle_error below
                    messages[-1] = (_ErrInfo(431, HeadTooLarge("request head too large"), ""), EMPTY_PAYLOAD)
            self._head_bytes = 0
            self._body = messages[-1][1] if messages else None
        elif in_head:
            # Still no complete head.  Only now is a deadline needed: the common head
            # arrives in one read and never costs a timer.
            self._head_bytes += len(data)
            if self._head_bytes > limit:
                self._refuse(431, answer=True)  # RFC 6585 section 5: too large in total
            elif not timed:
                self._arm_head_timer(self._guard.settings)

    def _fail_body(self, body: StreamReader) -> None:
        """Break the in-flight body: the parser gave up on it (bad chunk framing after the head).

        llhttp raises out of ``feed_data`` and aiohttp queues a 400 that is answered only
        after the current handler returns, while that handler may be streaming this body
        to the upstream, waiting for ever.  ``close`` stops all parsing on this connection
        (nothing after broken framing can be trusted as a request; the queued 400 is
        dropped, the handler answers), so ending the body is safe.  It ends with an
        exception, so a reader aborts and the upstream never gets a complete request
        (the Python parser sets its own, which quotes the client's bytes; ours does not).
        The order matters: while the handler runs, the exception comes first, so its
        waiting read fails instead of seeing a clean end; otherwise the handler is done
        (aiohttp's lingering read, which would log the exception as unhandled, just
        ends) or not started yet (its first read raises, whatever the order).
        """
        self.close()
        failure = RequestPayloadError("request body framing broke mid-way")
        if self._request_in_progress:
            if body.exception() is None:
                body.set_exception(failure)
            body.feed_eof()
        else:
            body.feed_eof()
            if body.exception() is None:
                body.set_exception(failure)

    def _awaiting_head(self) -> bool:
        """True between requests: the last body is complete and nothing is upgraded."""
        if self._upgraded or self._payload_parser is not None:
            return False
        body = self._body
        return body is None or body.is_eof()

    def _arm_head_timer(self, rt: Settings) -> None:
        self._head_timer = self._loop.call_later(rt.client_header, self._on_head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        # Silent close for a connection that sent nothing (RFC 9112 section 9.5
        # lets a server close idle connections); a 408 page for a partial head.
        self._refuse(408, answer=self._head_bytes > 0)

    def _refuse(self, status: int, *, answer: bool) -> None:
        self._cancel_head_timer()
        if self._request_in_progress or self._messages:
            # A response is being written on this connection: never interleave
            # bytes into it.  Stop reading and close once it is done.
            self.close()
            return
        transport = self.transport
        if answer and transport is not None:
            transport.write(self._guard.settings.pages.raw(status))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("closing connection from %s: %d before a complete request head", self.peer, status)
        self.force_close()

    # ---- errors aiohttp answers itself --------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Branded pages instead of aiohttp's plain text, which quotes the parser's error."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; the connection is closed instead")
        if isinstance(exc, (LineTooLong, HeadTooLarge)) or (
            isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message
        ):
            status = 431  # RFC 6585 section 5
        if status >= 500:
            log.error("unhandled error in request handler", exc_info=exc)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("bad request from %s: %r", self.peer, exc)
        return self._guard.settings.pages.response(status, request.headers.get("Accept", ""), close=True)
