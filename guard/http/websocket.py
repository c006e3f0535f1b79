"""WebSocket pass-through: one socket to the client, one to the upstream, messages pumped both ways.

The upstream is connected first, so a refused or failing upstream gets the
client a page instead of an upgrade that dies at once, and the subprotocol the
upstream chose is the one offered back to the client (RFC 6455 section 4.2.2).
Messages are relayed whole (fragments are reassembled by aiohttp); pings are
answered on each leg; compression is not negotiated on either leg.  A close on
one side is passed on with its code and reason, then the closing handshake is
completed with the side that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from aiohttp import ClientError, ClientWSTimeout, WSMsgType, WSServerHandshakeError, web

from guard.accesslog import RequestLog
from guard.engine import Decision, RequestFacts
from guard.http.headers import Forwarding, request_headers
from guard.http.settings import Settings
from guard.http.target import Target
from guard.http.upstream import Upstream, failure_status

log = logging.getLogger("guard.http")

# aiohttp negotiates these itself on each leg; the client's values would be wrong upstream
_HANDSHAKE = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept",
})
MAX_MESSAGE = 4 * 1024 * 1024  # per message, each direction: a bound on what one frame can pin
CLOSE_TIMEOUT = 10.0

# RFC 6455 section 7.4: codes that must never appear in a close frame
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})


def _subprotocols(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _sendable(code: int | None, fallback: int) -> int:
    if code is None or code in _UNSENDABLE or not 1000 <= code <= 4999:
        return fallback
    return code


class WebSocketRelay:
    """Relays WebSocket sessions and knows the live ones, so shutdown can say "going away" to each."""

    def __init__(self, upstream: Upstream, request_log: RequestLog) -> None:
        self.upstream = upstream
        self.log = request_log
        self.live: set[tuple[web.WebSocketResponse, _Leg]] = set()

    async def relay(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, fwd: Forwarding, target: Target,
        decision: Decision, t0: float,
    ) -> web.StreamResponse:
        loop_time = time.perf_counter  # the proxy's clock: t0 comes from it
        upstream, request_log = self.upstream, self.log
        accept = request.headers.get("Accept", "")
        if not web.WebSocketResponse().can_prepare(request).ok:
            request_log.record(facts, decision, 400, None, loop_time() - t0)
            return rt.pages.response(400, accept, close=True)
        forwarded = request_headers(request.headers, fwd, rt.host_override or target.host)
        headers = [(k, v) for k, v in forwarded if k.lower() not in _HANDSHAKE]
        protocols = _subprotocols(request.headers.getall("Sec-WebSocket-Protocol", []))
        scheme = "wss" if upstream.url("/").scheme == "https" else "ws"
        t_up = loop_time()
        try:
            up = await upstream.session.ws_connect(
                upstream.url(target.path_qs, scheme), headers=headers, protocols=protocols,
                autoclose=False, autoping=True, compress=0, max_msg_size=MAX_MESSAGE,
                timeout=ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
                server_hostname=upstream.server_hostname,
            )
        except WSServerHandshakeError as exc:
            # The upstream answered but would not upgrade: its status, our page.
            status = exc.status if 400 <= exc.status < 600 else 502
            request_log.record(facts, decision, status, loop_time() - t_up, t_up - t0)
            return rt.pages.response(status, accept)
        except (TimeoutError, ClientError, OSError) as exc:
            status = failure_status(exc)
            log.warning("upstream WebSocket failed (%d): %s", status, type(exc).__name__)
            request_log.record(facts, decision, status, None, loop_time() - t0)
            return rt.pages.response(status, accept)
        upstream_s = loop_time() - t_up
        try:
            client = web.WebSocketResponse(
                protocols=(up.protocol,) if up.protocol else (), autoclose=False, autoping=True,
                compress=False, max_msg_size=MAX_MESSAGE, timeout=CLOSE_TIMEOUT,
            )
            client.headers["Server"] = rt.pages.server_name
            await client.prepare(request)
        except BaseException:
            await up.close(code=1001)
            raise
        request_log.record(facts, decision, 101, upstream_s, loop_time() - t0 - upstream_s)
        pair = (client, up)
        self.live.add(pair)
        try:
            await _splice(client, up)
        except Exception:
            # after the 101 there is no page to send: end both legs
            log.exception("WebSocket relay failed")
            request.protocol.force_close()
        finally:
            self.live.discard(pair)
            if not up.closed:
                with contextlib.suppress(Exception):
                    await up.close(code=1001)
        return client

    async def close_all(self) -> None:
        """Shutdown: 1001 "going away" to both legs of every live session (RFC 6455 section 7.4.1)."""
        for client, up in list(self.live):
            for leg in (client, up):
                with contextlib.suppress(Exception):
                    await leg.close(code=1001, message=b"server shutting down")


class _Leg(Protocol):
    """What the relay needs of either side: aiohttp's server and client WebSockets both fit."""

    @property
    def closed(self) -> bool: ...

    async def receive(self) -> Any: ...

    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


async def _pump(src: _Leg, dst: _Leg) -> tuple[int | None, str] | None:
    """Copy messages until ``src`` closes; its close code and reason, or None if it just vanished."""
    while True:
        msg = await src.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif kind is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif kind is WSMsgType.CLOSE:
            return (msg.data, msg.extra or "")
        elif kind in (WSMsgType.PING, WSMsgType.PONG):
            continue
        else:  # CLOSING, CLOSED, ERROR
            return None


async def _splice(client: _Leg, up: _Leg) -> None:
    to_up = asyncio.create_task(_pump(client, up), name="ws-client-to-upstream")
    to_client = asyncio.create_task(_pump(up, client), name="ws-upstream-to-client")
    try:
        done, _ = await asyncio.wait((to_up, to_client), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        to_up.cancel()
        to_client.cancel()
        raise
    first = to_up if to_up in done else to_client
    other_task = to_client if first is to_up else to_up
    closer, other = (client, up) if first is to_up else (up, client)
    other_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await other_task
    try:
        result = first.result()
    except Exception:
        result = None
    if result is None:
        # one leg vanished without a close frame: 1001 "going away" to the upstream
        # for a vanished client, 1014 "bad gateway" to the client for a vanished upstream
        code, reason = (1001 if closer is client else 1014), ""
    else:
        code, reason = _sendable(result[0], 1000), result[1]
    with contextlib.suppress(Exception):
        # RFC 6455 section 5.5: a close payload is at most 125 bytes, code included
        await other.close(code=code, message=reason.encode()[:123])
    with contextlib.suppress(Exception):
        await closer.close(code=code)
