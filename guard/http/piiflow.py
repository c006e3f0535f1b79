"""PII over HTTP: rewrite HTML (and JSON) responses as they stream, swap tokens back in the forms that return.

The decisions and the byte work are transport-free (``guard.pii.flow``, shared
with the mitmproxy addon); this module feeds them aiohttp's streams.  The proxy
handler calls three things, each only when it can matter:

- ``PIIFlow.response`` for every upstream response, before its head goes out:
  one content-type test for a response that is not HTML (or JSON with JSON
  rules), so the rest of the site pays nothing.  For a response the policy
  applies to it fixes the headers (``guard.pii.response.header_changes``) and
  returns a ``Rewrite`` that the handler feeds the body through.
- ``PIIFlow.submits`` (cheap, synchronous) then ``PIIFlow.request_swap`` for a
  request that may carry tokens: it has the vault cookie and a form body (or a
  token-shaped query).  The body is buffered (``limits.max_body_size``, else
  413), every token is fetched in one store batch and swapped back, and the new
  body goes upstream with its own ``Content-Length``.
- ``with_length`` for the header list of a body the guard rebuilt.

Log lines carry kinds, counts, reasons and field names, never a value; paths go through the
decision log's ``clean_path`` (an e-mail address in a path is masked there too).

Failure policy.  A page is never sent with a value the policy selected: the
rewriter empties a value it cannot tokenize.  The store write of a page's tokens
happens before the bytes carrying them leave; when it fails the page still goes
out (its tokens will not swap back: a later submit arrives with empty fields)
and the failure is counted and logged, because a site whose pages stop
rendering when Redis blinks is worse than a support form that loses its hidden
fields.  A submission whose tokens cannot be looked up (store down) is answered
503: forwarding it would make the upstream act on blank fields.  A body that
fails to decode mid-stream ends with a closed connection, never a truncated
body that looks complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import ClientError, ClientResponse, web

from guard.http.bodies import read_login_body
from guard.observe.decisionlog import clean_path
from guard.pii.encoding import DecodeError
from guard.pii.flow import HTMLPass, Kind, PIIRuntime, Plan, issued_cookie
from guard.pii.report import Skip
from guard.pii.response import UNTOUCHED
from guard.pii.vault import PageTokens

if TYPE_CHECKING:
    from guard.engine import RequestFacts
    from guard.http.target import Target

log = logging.getLogger("guard.pii")


class BodyAborted(ConnectionError):
    """The rewritten body cannot be completed; the client connection is already closed."""


class Swap(NamedTuple):
    """A submission after swap-back: the body to send (None: none was read) and the target to send it to."""

    body: bytes | None
    target: Target


def with_length(headers: list[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    """The upstream header list for a body the guard rebuilt: its own Content-Length, nothing else changed."""
    out = [(k, v) for k, v in headers if k.lower() != "content-length"]
    out.append(("Content-Length", str(length)))
    return out


class PIIFlow(PIIRuntime):
    """The PII policy of one config, driven by aiohttp's request and response objects."""

    __slots__ = ()

    # ---- responses ----------------------------------------------------------------------------

    def response(self, request: web.BaseRequest, facts: RequestFacts, up: ClientResponse,
                 resp: web.StreamResponse) -> Rewrite | None:
        """The rewrite for this response (its headers already fixed), or None to stream it untouched."""
        headers = resp.headers
        plan = self.plan(
            facts.method, up.status, headers.get("Content-Type"), headers.getall("Content-Encoding", []), facts.path
        )
        if plan is None:
            return None
        if plan.kind is Kind.DETECT:
            return HTMLDetect(self, facts.path, up, resp, plan)
        if plan.kind is Kind.JSON:
            page = self.page(request.headers.getall("Cookie", []), facts.scheme == "https")
            return JSONRewrite(self, facts.path, up, resp, plan.codings, page)
        # the page's tokens are set up only if its body is read (most pages go out unread)
        return HTMLRewrite(self, facts.path, request, up, resp, plan, facts.scheme == "https")

    # ---- submissions --------------------------------------------------------------------------

    def submits(self, request: web.BaseRequest, target: Target) -> bool:
        """Whether this request may carry tokens of ours: a cheap test, run for every non-login request."""
        headers = request.headers
        return self.may_carry_tokens(
            target.query, request.body_exists, headers.get("Content-Type"), headers.getall("Cookie", [])
        )

    async def request_swap(
        self, request: web.BaseRequest, facts: RequestFacts, target: Target, max_body: int, deadline: float
    ) -> Swap | int | None:
        """Swap tokens back in a submission: the new body and target, a status to answer, or None (as is)."""
        headers = request.headers
        browser = self.submit_browser(headers.getall("Cookie", []), facts.scheme == "https", facts.path)
        if browser is None:
            return None
        ctype = headers.get("Content-Type")
        body: bytes | None = None
        if self.buffers(request.body_exists, ctype, "Content-Encoding" in headers, request.content_length, max_body):
            read = await read_login_body(request, max_body, deadline)
            if isinstance(read, int):
                return read
            body = read
        swapped = await self.swap(facts, browser, body, ctype, target.query)
        if isinstance(swapped, int):
            return swapped
        if swapped.query != target.query:
            target = target._replace(path_qs=f"{target.path}?{swapped.query}", query=swapped.query)
        elif swapped.body is None:
            return None
        return Swap(swapped.body, target)


class Rewrite:
    """One response's body on its way through the PII policy.  The proxy calls, in order:
    ``start`` (before the head goes out), ``write`` per chunk, ``last`` with the rest."""

    __slots__ = ("flow", "page", "path", "resp", "up")

    def __init__(self, flow: PIIFlow, path: str, up: ClientResponse, resp: web.StreamResponse,
                 page: PageTokens | None) -> None:
        self.flow = flow
        self.path = path
        self.up = up
        self.resp = resp
        self.page = page

    async def start(self, first: bytes) -> bytes:
        return first

    async def write(self, resp: web.StreamResponse, chunk: bytes) -> None:
        await resp.write(chunk)

    async def last(self, resp: web.StreamResponse, rest: bytes) -> None:
        await resp.write_eof(rest)


class HTMLRewrite(Rewrite):
    """HTML streams through ``HTMLPass`` (decoded and re-encoded around the rewriter), chunk by chunk."""

    __slots__ = ("_done", "_pass", "_plan", "_request", "_secure")

    def __init__(self, flow: PIIFlow, path: str, request: web.BaseRequest, up: ClientResponse,
                 resp: web.StreamResponse, plan: Plan, secure: bool) -> None:
        super().__init__(flow, path, up, resp, None)
        self._request = request
        self._plan = plan
        self._secure = secure
        self._pass: HTMLPass | None = None   # built when the body must be read
        self._done = False

    def _rewriter(self) -> HTMLPass:
        if self._pass is None:
            self.page = self.flow.page(self._request.headers.getall("Cookie", []), self._secure)
            self._pass = HTMLPass(self.flow, self.path, self._plan, self.page)
        return self._pass

    async def start(self, first: bytes) -> bytes:
        headers = self.resp.headers
        if not self.up.content.at_eof():
            # Streamed: the head leaves before we know whether tokens follow, so the
            # browser gets its vault cookie now.
            self._fix_headers()
            page = self._rewriter().page
            cookie = page.cookie if page is not None else None
            if cookie is not None:
                headers.add("Set-Cookie", cookie)
            return first
        # The whole body is here (most pages): rewrite it now, so the head can say
        # Content-Length and carry the cookie only when the page holds tokens.
        self._done = True
        if self.flow.unread(self._plan, first, self.path):
            UNTOUCHED.apply(headers)   # the upstream's bytes: its validators still hold
            headers["Content-Length"] = str(len(first))
            return first
        self._fix_headers()
        scan = self._rewriter()
        out = self._run(scan.close, first)
        cookie = issued_cookie(self.page)
        if cookie is not None:
            self.resp.headers.add("Set-Cookie", cookie)
        self.resp.headers["Content-Length"] = str(len(out))
        await scan.flush()
        scan.finished()
        return out

    def _fix_headers(self) -> None:
        """The head of a body that goes through the rewriter (``guard.pii.response``)."""
        headers = self.resp.headers
        self.flow.html_changes(headers.get("ETag"), headers.get("Cache-Control"), self._plan.codings).apply(headers)

    def _run(self, step: Callable[[bytes], bytes], data: bytes) -> bytes:
        try:
            return step(data)
        except DecodeError as exc:
            self.flow.skip(self.path, "decode-error", warn=False)
            self.flow.warn_once(
                "decode", "pii: %s: upstream body does not decode (%s); connection closed", clean_path(self.path),
                exc,
            )
            self.up.close()
            self._request.protocol.force_close()
            raise BodyAborted(str(exc)) from None

    async def write(self, resp: web.StreamResponse, chunk: bytes) -> None:
        scan = self._rewriter()
        out = self._run(scan.feed, chunk)
        await scan.flush()
        if out:
            await resp.write(out)
        else:
            self._request.writer.send_headers()  # bytes held back must not hold back the head too

    async def last(self, resp: web.StreamResponse, rest: bytes) -> None:
        if self._done:
            await resp.write_eof(rest)
            return
        scan = self._rewriter()
        out = self._run(scan.close, rest)
        await scan.flush()
        scan.finished()
        await resp.write_eof(out)


class HTMLDetect(Rewrite):
    """Detect mode: the upstream's bytes go out untouched while a decoded copy is scanned and counted."""

    __slots__ = ("_pass",)

    def __init__(self, flow: PIIFlow, path: str, up: ClientResponse, resp: web.StreamResponse, plan: Plan) -> None:
        super().__init__(flow, path, up, resp, None)
        self._pass: HTMLPass | None = HTMLPass(flow, path, plan, None, scan_only=True)

    def _scan(self, step: Callable[[HTMLPass], object]) -> None:
        scan = self._pass
        if scan is None:
            return
        try:
            step(scan)
        except DecodeError:
            self._pass = None    # the client gets the body as the upstream sent it; only counting stops
            self.flow.skip(self.path, "decode-error")

    async def write(self, resp: web.StreamResponse, chunk: bytes) -> None:
        self._scan(lambda scan: scan.feed(chunk))
        await resp.write(chunk)

    async def last(self, resp: web.StreamResponse, rest: bytes) -> None:
        self._scan(lambda scan: scan.close(rest))
        if self._pass is not None:
            self._pass.finished()
        await resp.write_eof(rest)


class JSONRewrite(Rewrite):
    """A JSON body is read whole (bounded), rewritten by pointer, and sent with its new length.

    Unchanged bodies, and bodies too large or undecodable, go out byte for byte
    with the upstream's headers.
    """

    __slots__ = ("_codings",)

    def __init__(self, flow: PIIFlow, path: str, up: ClientResponse, resp: web.StreamResponse,
                 codings: tuple[str, ...], page: PageTokens | None) -> None:
        super().__init__(flow, path, up, resp, page)
        self._codings = codings

    async def start(self, first: bytes) -> bytes:
        flow = self.flow
        raw = [first]
        size = len(first)
        content = self.up.content
        try:
            while not content.at_eof():
                chunk = await content.readany()
                if not chunk:
                    break
                raw.append(chunk)
                size += len(chunk)
                if size > flow.max_json:
                    flow.skip(self.path, Skip.BAD_JSON)
                    return b"".join(raw)   # the rest streams as is
        except (TimeoutError, ClientError, OSError) as exc:
            raise BodyAborted(f"upstream failed in a JSON body: {type(exc).__name__}") from None
        body = b"".join(raw)
        new = await flow.json_body(self.path, body, self._codings, self.page)
        if new is None:
            return body
        headers = self.resp.headers
        flow.json_changes(headers.get("ETag"), headers.get("Cache-Control"), self._codings).apply(headers)
        headers["Content-Length"] = str(len(new))
        cookie = issued_cookie(self.page)
        if cookie is not None:
            headers.add("Set-Cookie", cookie)
        return new
