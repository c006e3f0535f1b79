"""The public request handler: resolve the client, ask the engine, forward, stream back.

This is the hot path, driven by aiohttp's low-level server (no router, no
middleware).  Per request it builds one ``RequestFacts``, one header list for
the upstream and one response; bodies are streamed chunk by chunk in both
directions, except login bodies, which the engine needs whole.  The common
case runs in two frames (``__call__`` and ``_forward``): every extra coroutine
layer is paid again at each suspension.

Failure policy: any unexpected exception before the response starts becomes a
branded 500 page and a logged traceback (never an empty 200); after the
response has started, the client connection is closed so a truncated body can
never pass for a complete one.  A streamed upload that fails on the client's
side (silent for ``timeouts.client_body``: 408; broken framing: 400) aborts the
upstream request the same way, and is logged as the client's failure, not the
upstream's.

Timing written to the request log: ``upstream`` is the wait for the upstream's
response head; ``overhead`` is the guard's share of the time to the first
response byte (decision, tarpit, login body read), i.e. time to first byte
minus ``upstream``.  Streaming time is neither: it is set by the client's and
the upstream's bandwidth.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from aiohttp import ClientError, ClientOSError, ClientResponse, ServerDisconnectedError, web
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

from guard.accesslog import RequestLog
from guard.clientip import forwarding_chains, resolve
from guard.engine import PASS, Action, Decision, Reason, RequestFacts, ResponseFacts
from guard.http import websocket
from guard.http.bodies import read_login_body, read_response_head, send_continue
from guard.http.headers import (
    Forwarding,
    connection_tokens,
    readable_encodings,
    request_headers,
    strip_hop_by_hop,
)
from guard.http.looplag import LoopLag
from guard.http.piiflow import with_length
from guard.http.protocol import GuardProtocol
from guard.http.settings import MAX_TARPIT, Settings
from guard.http.target import Target, match_path, parse_target
from guard.http.upstream import Upstream, failure_status
from guard.pii.flow import RANGE_FIELDS

log = logging.getLogger("guard.http")
_RANGE_FIELDS = frozenset(f.lower() for f in RANGE_FIELDS)

OVERLOADED = Decision(
    Action.UNAVAILABLE,
    (Reason("overload", "waited in the guard's queue longer than limits.max_queue_time"),),
    status=503,
)
BUSY = Decision(
    Action.UNAVAILABLE,
    (Reason("overload", "the event loop ran later than limits.max_loop_lag on every recent tick"),),
    status=503,
)


class ProxyResponse(web.StreamResponse):
    """A response carrying the upstream's headers, with no Server or Content-Type invented by aiohttp."""

    # The head waits for the first body bytes so both leave in one write (one
    # syscall, one packet); the handler flushes it early when no body is ready.
    _send_headers_immediately = False

    def __init__(self, status: int, reason: str | None, upstream_headers: CIMultiDictProxy[str]) -> None:
        super().__init__(status=status, reason=reason, headers=upstream_headers)
        strip_hop_by_hop(self.headers)
        # obs-text from the upstream (a Latin-1 or Shift_JIS cookie value, RFC 9110 section 5.5)
        # arrives as surrogate escapes; see _write_headers.
        self._obs_text = not "".join(upstream_headers.values()).isascii()

    async def _write_headers(self) -> None:
        """The head, byte for byte as the upstream sent its fields, even when they are not UTF-8.

        aiohttp's C header serializer silently drops the undecodable bytes (a legacy
        session cookie would arrive empty: a login that "works" and then does not), and
        its Python serializer raises, losing the response.  Only a head with non-ASCII
        values is serialized here; everything else takes aiohttp's path unchanged.  The
        values came through aiohttp's parser, which refuses CR and LF, and are checked
        again so that nothing can split the head.
        """
        if not self._obs_text:
            await super()._write_headers()
            return
        request = self._req
        writer = self._payload_writer
        if request is None or writer is None:
            raise RuntimeError("response head written before prepare")
        version = request.version
        lines = [f"HTTP/{version[0]}.{version[1]} {self.status} {self.reason}"]
        for name, value in self.headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError("newline in a response header")
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        # What StreamWriter.write_headers does after serializing (aiohttp 3.x): the head is
        # buffered and leaves with the first body bytes.  tests/test_robust_http.py pins it.
        stream = cast(StreamWriter, writer)
        stream._headers_buf = head
        stream._headers_written = False

    async def _prepare_headers(self) -> None:
        headers = self.headers
        had_server = "Server" in headers
        had_type = "Content-Type" in headers
        await super()._prepare_headers()
        # aiohttp names itself and its version in Server, and labels untyped bodies
        # application/octet-stream; an upstream that sent neither gets neither.
        if not had_server:
            headers.popall("Server", None)
        if not had_type:
            headers.popall("Content-Type", None)


class ClientBodyTimeout(asyncio.TimeoutError):
    """A client went silent mid-upload for ``timeouts.client_body``.

    A ``TimeoutError`` so that aiohttp's lingering read of the unread body, after
    the 408 has gone out, ends on it quietly instead of logging an error.
    """


class BodyFeed:
    """``request.content`` as the upstream client reads it, with an idle deadline.

    aiohttp's client starts its read timeout only once the request body is sent,
    so without this a client that stops mid-upload holds an upstream pool
    connection for ever.  Only waits on the client count as silence: time spent
    while the upstream is slow to take a chunk (backpressure) is not the client's.
    One timer per request, re-armed lazily at its deadline like aiohttp's
    keep-alive timer, not one per read: a read costs a clock read and a few
    attribute writes.  On expiry the body stream fails, which aborts the upload
    and with it the upstream request while its head is awaited; if the head is
    already in, the upstream's response is closed, so the pool connection is
    never left waiting on an upload that will not come.
    """

    __slots__ = ("_content", "_idle", "_loop", "_seen", "_since", "_timer", "_waiting", "failed", "response")

    def __init__(self, content: StreamReader, idle: float) -> None:
        self._content = content
        self._idle = idle
        self._loop = asyncio.get_running_loop()
        self._since = 0.0   # when the current wait for the client began
        self._seen = 0      # bytes received from the client when it began
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = False
        self.failed = 0     # the status the client earned: 408 silent, 400 broken or gone; 0 while fine
        self.response: ClientResponse | None = None  # the upstream's answer, once its head is in

    def __aiter__(self) -> BodyFeed:
        return self

    async def __anext__(self) -> bytes:
        content = self._content
        loop = self._loop
        self._since = now = loop.time()
        self._seen = content.total_bytes
        if self._timer is None:
            self._timer = loop.call_at(now + self._idle, self._check)
        self._waiting = True
        try:
            chunk = await content.readany()
        except Exception:
            # silent (the timer failed the stream), or broken framing or a reset: the client's fault
            self._fail(self.failed or 400)
            raise
        finally:
            self._waiting = False
        if not chunk:
            self.stop()
            raise StopAsyncIteration
        return chunk

    def _fail(self, status: int) -> None:
        self.failed = status
        self.stop()
        if self.response is not None:
            # The upload is over, so nothing would end an answer that waits for the rest of
            # it.  Closed from outside this task: it is aiohttp's writer, which closing cancels.
            self._loop.call_soon(self.response.close)

    def _check(self) -> None:
        self._timer = None
        content = self._content
        if not self._waiting or content.total_bytes != self._seen or content.is_eof():
            return  # not waiting on the client, or it just spoke: the next read re-arms
        deadline = self._since + self._idle
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check)
            return
        self.failed = 408
        content.set_exception(ClientBodyTimeout())  # wakes the read above, which fails the rest

    def stop(self) -> None:
        """No more deadline: the body ended, failed, or the request is over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ProxyHandler:
    """Callable given to aiohttp's low-level ``web.Server``; ``rt`` is swapped on reload."""

    __slots__ = (
        "_in_flight", "_quiet_until", "_suppressed", "_time", "busy", "full", "lag", "log", "queued_out", "rt",
        "shed", "upstream", "websockets",
    )

    def __init__(self, rt: Settings, upstream: Upstream, request_log: RequestLog) -> None:
        self.rt = rt
        self.upstream = upstream
        self.log = request_log
        self._in_flight = 0
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds
        self._time = time.perf_counter
        self._quiet_until = 0.0
        self._suppressed = 0
        self.shed = 0  # requests answered 503 for waiting longer than limits.max_queue_time
        self.busy = 0  # requests answered 503 because the loop was late (limits.max_loop_lag)
        self.full = 0  # requests answered 503: limits.max_pending_upstream were already waiting
        self.queued_out = 0  # requests answered 503 after max_queue_time in line for an upstream connection
        self.lag = LoopLag(rt.max_loop_lag)
        self.websockets = websocket.WebSocketRelay(upstream, request_log)

    def follow_lag(self) -> None:
        """Measure the loop's lag while ``limits.max_loop_lag`` is on (after start and every reload)."""
        limit = self.rt.max_loop_lag
        self.lag.limit = limit
        if limit > 0:
            self.lag.start()
        else:
            self.lag.stop()

    @property
    def in_flight(self) -> int:
        """Requests waiting on or streaming from the upstream right now."""
        return self._in_flight

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.rt
        t0 = self._time()
        method = request.method
        proto = cast(GuardProtocol, request.protocol)
        headers = request.headers
        peer = proto.peer
        if 0.0 < proto.head_at < t0 - rt.max_queue_time:
            self.shed += 1
            return self._unavailable(request, rt, proto, t0, OVERLOADED)
        if self.lag.overloaded:
            self.busy += 1
            return self._unavailable(request, rt, proto, t0, BUSY)
        trusted = not rt.trusted.empty and proto.peer_ip is not None and proto.peer_ip in rt.trusted
        if trusted:
            xff, fwd_list = forwarding_chains(rt.config.forwarded_header, lambda n: headers.getall(n, ()))
            client_ip, _ = resolve(peer, rt.trusted, xff, fwd_list)
        else:
            client_ip = peer  # forwarding headers from an untrusted peer are ignored
        raw = request.raw_path
        # A request target is ASCII (RFC 3986).  llhttp refuses others; the Python parser
        # lets them through and aiohttp's client would drop the undecodable bytes on the way
        # out, so the upstream would get another path than the rules saw.
        target = parse_target(raw) if raw.isascii() else None
        host = headers.get("Host")
        if target is None or not forwardable(headers):
            facts = RequestFacts(client_ip, method, "", headers=headers, peer=peer, scheme=rt.scheme)
            return self._page(request, rt, facts, PASS, 400, t0, close=True)
        if target.host is not None:
            host = target.host
        path = match_path(target.path)
        engine = rt.engine
        login = engine.match_login(method, path)
        facts = RequestFacts(
            client_ip, method, path, target.query, host or "", rt.scheme, headers, peer, login,
            content_type=headers.get("Content-Type", "") if login is not None else "",
        )
        if trusted and headers.get("X-Forwarded-Proto", "").lower() == "https":
            facts.scheme = "https"  # a trusted hop terminated TLS: cookies get Secure
        try:
            decision = await engine.on_request(facts)
            if not decision.forwards:
                return self._refuse(request, rt, facts, decision, t0)
            flow = rt.challenge
            if flow is not None and method == "POST" and path == flow.path:
                resp: web.StreamResponse = await flow.answer(request, rt, facts)
                self.log.record(facts, decision, resp.status, None, self._time() - t0)
                return resp
            if login is not None:
                answer = await self._login(request, rt, facts, decision, t0)
                if isinstance(answer, web.StreamResponse):
                    return answer
                decision = answer
                if decision.action is Action.CHALLENGE and not decision.shadow:
                    fwd = Forwarding(peer, trusted, rt.scheme, host, rt.config.forwarded_header)
                    return await self._challenge(request, rt, facts, target, fwd, decision, t0)
            if decision.action is Action.TARPIT and decision.delay > 0 and not decision.shadow:
                await asyncio.sleep(min(decision.delay, MAX_TARPIT))
            fwd = Forwarding(peer, trusted, rt.scheme, host, rt.config.forwarded_header)
            if "Upgrade" in headers and is_websocket(headers):
                return await self.websockets.relay(request, rt, facts, fwd, target, decision, t0)
            pii = rt.pii
            if pii is not None and login is None and pii.submits(request, target):
                # a form of ours coming back: PII tokens become the original values again
                swap = await pii.request_swap(request, facts, target, rt.max_body_size, rt.client_body)
                if isinstance(swap, int):
                    return self._page(request, rt, facts, decision, swap, t0, close=swap != 503)
                if swap is not None:
                    facts.body, target = swap
            return await self._forward(request, rt, facts, target, fwd, decision, t0)
        except Exception:
            # Only code before a response starts gets here (after that, _forward and the
            # WebSocket relay handle their own failures by closing the connection).
            # The failure policy: a bug is a 500 page and a traceback in our log, never an empty 200.
            log.exception("request handling failed")
            return self._page(request, rt, facts, PASS, 500, t0, close=True)

    async def _login(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, decision: Decision, t0: float
    ) -> Decision | web.StreamResponse:
        """Buffer the body and run the login phase: the decision to go on with, or the answer."""
        body = await read_login_body(request, rt.max_body_size, rt.client_body)
        if isinstance(body, int):
            return self._page(request, rt, facts, decision, body, t0, close=True)
        facts.body = body
        later = await rt.engine.on_login(facts)
        if later.action is Action.CHALLENGE and not later.shadow and rt.challenge is not None:
            return later  # the caller runs the second factor
        if not later.forwards:
            return self._refuse(request, rt, facts, later, t0)
        return decision if later.action is Action.PASS else later

    async def _challenge(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, target: Target,
        fwd: Forwarding, decision: Decision, t0: float,
    ) -> web.StreamResponse:
        """The challenge action: step-up after the password, or hold before the upstream."""
        flow = rt.challenge
        upstream_s: float | None = None
        resp: web.StreamResponse | None  # typed here: ``Settings.challenge`` is Any
        if flow.mode == "before_upstream":
            resp, status = await flow.before_upstream(request, rt, facts, target, fwd)
        else:
            resp, status, upstream_s = await flow.step_up(request, rt, facts, target, fwd, decision)
        if resp is None:
            return self._refuse(request, rt, facts, decision, t0)
        self.log.record(facts, decision, status, upstream_s, self._time() - t0)
        return resp

    async def _forward(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, target: Target,
        fwd: Forwarding, decision: Decision, t0: float,
    ) -> web.StreamResponse:
        if self._in_flight >= rt.max_in_flight:
            # limits.max_pending_upstream: queueing more would only add latency and memory
            self.full += 1
            return self._page(request, rt, facts, decision, 503, t0)
        # RFC 9112 section 3.2.2: an absolute-form target's authority replaces Host
        out_headers = request_headers(request.headers, fwd, rt.host_override or target.host)
        if "Range" in request.headers and rt.pii is not None and rt.pii.whole_only(facts.path):
            out_headers = [(k, v) for k, v in out_headers if k.lower() not in _RANGE_FIELDS]
        peek = 0
        data: object = None
        feed: BodyFeed | None = None
        if facts.login is not None:
            peek = rt.engine.response_peek(facts.login)
            if peek:
                out_headers = readable_encodings(out_headers)  # so the outcome classifier can read it
            data = facts.body or None
        elif facts.body is not None:  # buffered by the PII swap-back: sent with its new length
            data, facts.body = facts.body, None  # the PII it carries now must not reach any observer
            out_headers = with_length(out_headers, len(data))
        elif request.body_exists:
            await send_continue(request)
            content = request.content  # streamed: aiohttp keeps Content-Length, or chunks
            # a body that came whole with its head cannot stall: no deadline to keep
            whole = content.is_eof() and content.exception() is None
            data = content if whole else (feed := BodyFeed(content, rt.client_body))

        # ---- the upstream's head (and what of the body came with it) ----
        upstream, method, path_qs = self.upstream, request.method, target.path_qs
        slots = upstream.slots
        self._in_flight += 1   # waiting for a slot counts: limits.max_pending_upstream bounds the line
        if slots.locked():
            # Every pooled connection is busy: wait in line, first come first served, for what
            # is left of limits.max_queue_time.  aiohttp's own pool queue lets a newcomer take a
            # connection freed for a waiter, so under overload some waited 7 s, then got a 504.
            proto = cast(GuardProtocol, request.protocol)
            since = proto.head_at if proto.head_at > 0.0 else t0
            try:
                async with asyncio.timeout(since + rt.max_queue_time - self._time()):
                    await slots.acquire()
            except BaseException as exc:
                self._in_flight -= 1
                if feed is not None:
                    feed.stop()
                if not isinstance(exc, TimeoutError):
                    raise
                self.queued_out += 1
                return self._unavailable(request, rt, proto, t0, OVERLOADED, facts)
        else:
            await slots.acquire()   # free: returns at once
        up: ClientResponse | None = None
        try:
            t_up = self._time()
            try:
                try:
                    up = await upstream.request(method, path_qs, out_headers, data, rt.upstream_timeout)
                except (ServerDisconnectedError, ClientOSError) as exc:
                    if not upstream.may_retry(exc, method, data):
                        raise  # a pooled connection closed under us: once more on a fresh one
                    up = await upstream.request(method, path_qs, out_headers, None, rt.upstream_timeout)
                if feed is not None:
                    feed.response = up  # from now on a stalled upload must close the answer too
                # The first body bytes: what the outcome classifier needs, or whatever came
                # with the head, so that head and body can leave in one write.
                first = await read_response_head(up, peek) if peek else up.content.read_nowait()
            except (TimeoutError, ClientError, OSError) as exc:
                if up is not None:
                    up.close()
                if feed is not None and feed.failed:
                    # the upload failed on the client's side: its unread rest makes the connection unusable
                    return self._page(request, rt, facts, decision, feed.failed, t0, close=True)
                status = failure_status(exc)
                self._upstream_failed(exc, status)
                return self._page(request, rt, facts, decision, status, t0)
            upstream_s = self._time() - t_up
            status = up.status
            extra_cookies: list[str] = []
            if facts.login is not None:
                outcome = await rt.engine.on_response(facts, ResponseFacts(status, up.headers, first))
                extra_cookies = rt.engine.after_login(facts, outcome)
                reset = await rt.engine.forced_reset(facts, outcome)
                if reset is not None:
                    # an exposed account: send it to the password reset, not into the session
                    up.close()
                    self.log.record(facts, decision, 303, upstream_s, self._time() - t0 - upstream_s)
                    return web.Response(status=303, headers={"Location": reset, "Cache-Control": "no-store"})

            # ---- the client's response ----
            resp = ProxyResponse(status, up.reason, up.headers)
            for cookie in extra_cookies:
                resp.headers.add("Set-Cookie", cookie)
            pii = rt.pii
            rewrite = pii.response(request, facts, up, resp) if pii is not None else None
            content = up.content
            overhead = self._time() - t0 - upstream_s
            logged = False
            try:
                if rewrite is not None:
                    first = await rewrite.start(first)  # may fix the head: it has not left yet
                await resp.prepare(request)  # the head is buffered until the first body write
                if content.at_eof():
                    # the whole body is already here (small pages, redirects): one write in all
                    self.log.record(facts, decision, status, upstream_s, overhead)
                    logged = True
                    await (resp.write_eof(first) if rewrite is None else rewrite.last(resp, first))
                    return resp
                if first:
                    await (resp.write(first) if rewrite is None else rewrite.write(resp, first))
                else:
                    request.writer.send_headers()  # a body slow to come must not hold back the head
                conn = up.connection
                if conn is not None and conn.protocol is not None:
                    conn.protocol.read_timeout = rt.upstream_idle  # now: the longest silence in a body
                    conn.protocol.start_timeout()  # re-arm: the running timer still has upstream_read
                while True:
                    try:
                        chunk = await content.readany()
                    except (TimeoutError, ClientError, OSError) as exc:
                        # The upstream failed mid-body, or was cut because the upload did.  Closing
                        # the client connection is the only honest signal left: a short or
                        # unterminated body (RFC 9112 section 8).
                        if feed is not None and feed.failed:
                            status = feed.failed  # logged as what ended it: the client's upload
                        else:
                            self._upstream_failed(exc, 0)
                        up.close()
                        request.protocol.force_close()
                        return resp
                    if not chunk:
                        break
                    await (resp.write(chunk) if rewrite is None else rewrite.write(resp, chunk))
                self.log.record(facts, decision, status, upstream_s, overhead)
                logged = True
                await (resp.write_eof() if rewrite is None else rewrite.last(resp, b""))
            except ConnectionError:
                up.close()  # the client left: the rest of the body is not worth reading
            except Exception:
                log.exception("streaming the response failed")
                up.close()
                request.protocol.force_close()
            finally:
                if not logged:
                    self.log.record(facts, decision, status, upstream_s, overhead)
            return resp
        finally:
            self._in_flight -= 1
            if feed is not None:
                feed.stop()
            if up is not None:
                up.release()  # back to the pool if the body was read to the end; closed otherwise
            slots.release()

    def _unavailable(
        self, request: web.BaseRequest, rt: Settings, proto: GuardProtocol, t0: float, why: Decision,
        facts: RequestFacts | None = None,
    ) -> web.StreamResponse:
        """Overload: a 503 page with ``Retry-After`` at once (no rules, no upstream: microseconds).

        ``OVERLOADED``: this request waited in the event loop longer than
        ``limits.max_queue_time``.  Past capacity, every admitted request waits its turn on
        the one loop, and serving the late ones spends the guard's time on answers nobody
        reads while fresh requests wait behind them (the same idea as CoDel's sojourn time).

        ``BUSY``: the loop is late on every tick (``guard.http.looplag``), so new work is
        refused until the work already admitted is done.

        The connection is closed either way: a keep-alive client would send its next request
        at once and get another 503 through the whole HTTP layer, while a new connection is
        refused at accept for a fraction of that (``guard.http.listener``), or lands on
        another worker or machine.
        """
        if facts is None:
            facts = RequestFacts(proto.peer, request.method, "", headers=request.headers, peer=proto.peer,
                                 scheme=rt.scheme)
        resp = self._page(request, rt, facts, why, 503, t0, close=True)
        resp.headers["Retry-After"] = "1"
        return resp

    def _upstream_failed(self, exc: BaseException, status: int) -> None:
        """One warning a second at most: an upstream outage must not become a log flood."""
        now = self._time()
        if now < self._quiet_until:
            self._suppressed += 1
            return
        what = f"answered {status}" if status else "failed mid-response"
        log.warning(
            "upstream %s: %s (%d more since the last warning)", what, type(exc).__name__, self._suppressed
        )
        self._quiet_until = now + 1.0
        self._suppressed = 0

    def _refuse(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, decision: Decision, t0: float
    ) -> web.StreamResponse:
        status = decision.status or (503 if decision.action is Action.UNAVAILABLE else 403)
        return self._page(request, rt, facts, decision, status, t0)

    def _page(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, decision: Decision,
        status: int, t0: float, *, close: bool = False,
    ) -> web.StreamResponse:
        self.log.record(facts, decision, status, None, self._time() - t0)
        return rt.pages.response(status, request.headers.get("Accept", ""), close=close)


def forwardable(headers: CIMultiDictProxy[str]) -> bool:
    """Whether every field value can reach the upstream byte for byte.

    aiohttp decodes non-UTF-8 bytes in a value (obs-text, RFC 9110 section 5.5:
    Latin-1, Shift_JIS) with surrogateescape, and its client cannot write them
    back: the C header writer silently drops them, the Python one raises.  A
    proxy that alters a header it forwards disagrees with the upstream about
    what the client sent, so such a request is refused with a 400 instead.
    One ``isascii`` over all values joined; only non-ASCII values, rare, are
    encoded to tell UTF-8 text (passed) from undecodable bytes.
    """
    values = headers.values()
    if "".join(values).isascii():   # the usual case, in two C calls
        return True
    for value in values:
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:  # a surrogate: bytes that were not UTF-8
                return False
    return True


def is_websocket(headers: CIMultiDictProxy[str]) -> bool:
    """RFC 6455 section 4.2.1: ``Upgrade: websocket`` with ``upgrade`` among the Connection tokens."""
    upgrade = headers.get("Upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        return False
    return "upgrade" in connection_tokens(headers.getall("Connection", ()))
