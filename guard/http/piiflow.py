"""PII over HTTP: rewrite HTML (and JSON) responses as they stream, swap tokens back in the forms that return.

The proxy handler calls three things, each only when it can matter:

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
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import ClientError, ClientResponse, web
from multidict import CIMultiDictProxy

from guard.http.bodies import read_login_body
from guard.observe.decisionlog import clean_path
from guard.pii.encoding import BodyTransform, DecodeError, parse_content_encoding
from guard.pii.forms import find_tokens, find_tokens_query, swap_back, swap_back_query
from guard.pii.json import rewrite_json
from guard.pii.policy import Mode
from guard.pii.report import Report, Skip
from guard.pii.response import header_changes, is_rewritable, media_type
from guard.pii.rewriter import HTMLRewriter
from guard.pii.settings import PIIConfig, glob_matcher
from guard.pii.vault import (
    PageTokens,
    Vault,
    Verdict,
    cookie_name,
    new_browser_id,
    set_cookie,
    valid_browser_id,
)
from guard.store.base import StoreError

if TYPE_CHECKING:
    from guard.engine import Engine, RequestFacts
    from guard.http.target import Target

log = logging.getLogger("guard.pii")

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "application/json")
_NO_BODY = frozenset({204, 205, 206, 304})
_SKIPPED = {
    Skip.TOKENIZER_ERROR: "values emptied (the vault failed)",
    "token-limit": "values past pii.max_tokens_per_page emptied",
    Skip.OVERSIZED_TAG: "a start tag too long to inspect passed unchanged",
    Skip.UNSUPPORTED_CHARSET: "a page in a charset the rewriter cannot read passed unchanged",
    Skip.UNSUPPORTED_ENCODING: "a Content-Encoding the guard cannot decode: passed unchanged",
    Skip.BAD_JSON: "a JSON body that is malformed or above pii.max_json_size passed unchanged",
}
"""What each skip reason meant for the response, for the log line."""
_WARN_EVERY = 60.0
"""Seconds between two warnings of the same kind: a broken upstream must not flood the log."""


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


class PIIFlow:
    """The PII policy of one config, compiled; swapped with the other settings on reload."""

    __slots__ = (
        "_exclude", "_include", "_last_warning", "_submit_exclude", "engine", "json", "limit", "max_json",
        "observe_only", "policy", "reencode", "tokenizes", "ttl", "vault",
    )

    def __init__(self, cfg: PIIConfig, engine: Engine, vault: Vault | None) -> None:
        self.policy = cfg.to_policy()
        self.engine = engine       # its observer is looked up per event: it may be replaced after start
        self.vault = vault
        self.tokenizes = vault is not None and self.policy.tokenizes
        self.json = bool(self.policy.json_rules)
        # detect (audit) mode: the body must leave exactly as it came, headers and compression included
        self.observe_only = all(sel.mode is Mode.DETECT for sel in self.policy.selectors)
        self.ttl = cfg.token_ttl
        self.limit = cfg.max_tokens_per_page
        self.max_json = cfg.max_json_size
        self.reencode = cfg.reencode
        self._include = glob_matcher(cfg.paths.include)
        self._exclude = glob_matcher(cfg.paths.exclude)
        self._submit_exclude = glob_matcher(cfg.paths.submit_exclude)
        self._last_warning: dict[str, float] = {}

    # ---- responses ----------------------------------------------------------------------------

    def response(self, request: web.BaseRequest, facts: RequestFacts, up: ClientResponse,
                 resp: web.StreamResponse) -> Rewrite | None:
        """The rewrite for this response (its headers already fixed), or None to stream it untouched."""
        headers = resp.headers
        ctype = headers.get("Content-Type")
        if ctype is None:
            return None
        lowered = ctype.lower()
        encodings = headers.getall("Content-Encoding", [])
        if "html" in lowered:
            if not is_rewritable(facts.method, up.status, ctype, encodings):
                self._unsupported_encoding(facts, encodings)
                return None
            is_json = False
        elif self.json and "json" in lowered and _json_rewritable(facts.method, up.status, ctype):
            is_json = True
        else:
            return None
        if not self._wanted(facts.path):
            return None
        codings = parse_content_encoding(encodings)
        if codings is None:   # JSON only: an HTML body with an unknown coding was refused above
            self.skip(facts.path, Skip.UNSUPPORTED_ENCODING)
            return None
        page = cookie = None
        if self.tokenizes and self.vault is not None:
            secure = facts.scheme == "https"
            browser, fresh = self._browser(request.headers, secure)
            page = self.vault.page(browser, self.ttl, self.limit)
            cookie = set_cookie(browser, secure) if fresh else None
        if is_json:
            return JSONRewrite(self, facts.path, up, resp, codings, page, cookie)
        if self.observe_only:
            return HTMLDetect(self, facts.path, up, resp, codings, media_type(ctype)[1])
        header_changes(
            headers.get("ETag"), headers.get("Cache-Control"), codings,
            reencode=self.reencode, tokenizes=self.policy.tokenizes,
        ).apply(headers)
        return HTMLRewrite(self, facts.path, request, up, resp, codings, media_type(ctype)[1], page, cookie)

    def _wanted(self, path: str) -> bool:
        if self._exclude is not None and self._exclude.match(path):
            return False
        return self._include is None or self._include.match(path) is not None

    @staticmethod
    def _browser(headers: CIMultiDictProxy[str], secure: bool) -> tuple[str, bool]:
        """The browser's vault id from its cookie, or a new one (``True``: it must be set)."""
        current = _cookie(headers, cookie_name(secure))
        if current is not None and valid_browser_id(current):
            return current, False
        return new_browser_id(), True

    # ---- submissions --------------------------------------------------------------------------

    def submits(self, request: web.BaseRequest, target: Target) -> bool:
        """Whether this request may carry tokens of ours: a cheap test, run for every non-login request."""
        if not self.tokenizes:
            return False
        headers = request.headers
        if "pii_" not in target.query:
            if not request.body_exists:
                return False
            if not headers.get("Content-Type", "").lower().startswith(_FORM_TYPES):
                return False
        cookies = headers.get("Cookie")
        return cookies is not None and "lgpii=" in cookies

    async def request_swap(
        self, request: web.BaseRequest, facts: RequestFacts, target: Target, max_body: int, deadline: float
    ) -> Swap | int | None:
        """Swap tokens back in a submission: the new body and target, a status to answer, or None (as is)."""
        vault = self.vault
        browser = _cookie(request.headers, cookie_name(facts.scheme == "https"))
        if vault is None or browser is None or not valid_browser_id(browser):
            return None
        if self._submit_exclude is not None and self._submit_exclude.match(facts.path):
            return None
        ctype = request.headers.get("Content-Type")
        body: bytes | None = None
        if _buffered(request, ctype, max_body):
            read = await read_login_body(request, max_body, deadline)
            if isinstance(read, int):
                return read
            body = read
        query = target.query.encode("utf-8", "surrogateescape")
        tokens = (find_tokens(body, ctype) if body else frozenset()) | find_tokens_query(query)
        if not tokens:
            return Swap(body, target) if body is not None else None
        try:
            lookup = await vault.fetch(tokens, browser)
        except StoreError:
            self.warn_once("store", "pii: the store is unreachable; a submission with tokens is answered 503")
            return 503
        charset = lookup.codec or "utf-8"
        if body:
            result = swap_back(body, ctype, charset=charset, resolve_field=lookup.resolve)
            if result.error is not None:
                log.info("pii: submission to %s left as is (%s)", clean_path(facts.path), result.error)
            body = result.body
        if "pii_" in target.query:
            new_query = swap_back_query(query, charset=charset, resolve_field=lookup.resolve).body
            if new_query != query:
                q = new_query.decode("utf-8", "surrogateescape")
                target = target._replace(path_qs=f"{target.path}?{q}", query=q)
        self._report_rejected(facts, lookup.rejected)
        return Swap(body, target)

    def _report_rejected(self, facts: RequestFacts, rejected: list[tuple[str, Verdict]]) -> None:
        if not rejected:
            return
        observer = self.engine.observer
        unknown = 0
        refused: list[str] = []
        for name, why in rejected:
            if why is Verdict.UNKNOWN:
                unknown += 1
            else:
                observer.tamper(facts.path, name)
                refused.append(f"{name!r}:{why.value}")   # repr: a client-chosen name cannot forge a log line
        if unknown:
            observer.pii(facts.path, "token", "unknown", unknown)
            log.info("pii: %d expired or unknown token(s) emptied in a submission to %s", unknown,
                     clean_path(facts.path))
        if refused:
            # field names and reasons only: names are the form's, never a submitted value
            log.warning("pii: token tampering from %s on %s %s: %s", facts.client_ip, facts.method,
                        clean_path(facts.path), ", ".join(refused))

    # ---- reporting ----------------------------------------------------------------------------

    def report(self, path: str, report: Report, page: PageTokens | None, *, warn: bool = True) -> None:
        """Counts into the observer (kinds, modes, reasons; never a value) and a log line for skips."""
        observer = self.engine.observer
        for (kind, mode), n in report.actions.items():
            observer.pii(path, kind, mode, n)
        for kind, n in report.found.items():
            observer.pii(path, kind, "detect", n)
        if report.found:
            log.info("pii detect %s: %s", clean_path(path), _counts(report.found.items()))
        skipped = dict(report.skipped)
        if page is not None and page.refused:
            skipped["token-limit"] = page.refused
        for reason, n in skipped.items():
            observer.pii(path, reason, "skipped", n)
            if warn:
                what = _SKIPPED.get(reason, "passed unchanged")
                self.warn_once(
                    reason, "pii: %s on %s (%d in this response): %s", reason, clean_path(path), n, what
                )

    def skip(self, path: str, reason: str, *, warn: bool = True) -> None:
        """Count one thing passed by (a metric, and a log line unless the caller writes its own)."""
        report = Report()
        report.skipped[reason] += 1
        self.report(path, report, None, warn=warn)

    def _unsupported_encoding(self, facts: RequestFacts, encodings: list[str]) -> None:
        """An HTML body the guard cannot decode (a coding it does not know) passes unchanged: count it."""
        if encodings and facts.method != "HEAD" and parse_content_encoding(encodings) is None:
            self.skip(facts.path, Skip.UNSUPPORTED_ENCODING)

    def warn_once(self, what: str, msg: str, *args: object) -> None:
        now = self.engine.clock.now()
        if now < self._last_warning.get(what, 0.0):
            return
        self._last_warning[what] = now + _WARN_EVERY
        log.warning(msg, *args)

    async def flush(self, path: str, page: PageTokens | None) -> None:
        """Write a page's new tokens before the bytes carrying them leave (see the failure policy)."""
        if page is None or not page.pending:
            return
        try:
            await page.flush()
        except StoreError:
            self.skip(path, "vault-unavailable", warn=False)
            self.warn_once("vault", "pii: the store is unreachable; tokens sent in pages will not swap back")


class Rewrite:
    """One response's body on its way through the PII policy.  The proxy calls, in order:
    ``start`` (before the head goes out), ``write`` per chunk, ``last`` with the rest."""

    __slots__ = ("cookie", "flow", "page", "path", "resp", "up")

    def __init__(self, flow: PIIFlow, path: str, up: ClientResponse, resp: web.StreamResponse,
                 page: PageTokens | None, cookie: str | None) -> None:
        self.flow = flow
        self.path = path
        self.up = up
        self.resp = resp
        self.page = page
        self.cookie = cookie

    async def start(self, first: bytes) -> bytes:
        return first

    async def write(self, resp: web.StreamResponse, chunk: bytes) -> None:
        await resp.write(chunk)

    async def last(self, resp: web.StreamResponse, rest: bytes) -> None:
        await resp.write_eof(rest)


class HTMLRewrite(Rewrite):
    """HTML streams through ``HTMLRewriter`` (decoded and re-encoded around it), chunk by chunk."""

    __slots__ = ("_body", "_done", "_request", "_rw")

    def __init__(self, flow: PIIFlow, path: str, request: web.BaseRequest, up: ClientResponse,
                 resp: web.StreamResponse, codings: tuple[str, ...], charset: str | None,
                 page: PageTokens | None, cookie: str | None) -> None:
        super().__init__(flow, path, up, resp, page, cookie)
        self._request = request
        self._rw = rw = HTMLRewriter(
            flow.policy, None, charset, field_tokenizer=page.tokenize if page is not None else None
        )
        if page is not None:
            page.codec_of = lambda: rw.codec
        self._body = BodyTransform(rw, codings, reencode=flow.reencode)
        self._done = False

    async def start(self, first: bytes) -> bytes:
        if not self.up.content.at_eof():
            # Streamed: the head leaves before we know whether tokens follow, so the
            # browser gets its vault cookie now.
            if self.cookie is not None:
                self.resp.headers.add("Set-Cookie", self.cookie)
            return first
        # The whole body is here (most pages): rewrite it now, so the head can say
        # Content-Length and carry the cookie only when the page holds tokens.
        out = self._run(self._all(first))
        self._done = True
        if self.cookie is not None and self.page is not None and self.page.issued:
            self.resp.headers.add("Set-Cookie", self.cookie)
        self.resp.headers["Content-Length"] = str(len(out))
        await self.flow.flush(self.path, self.page)
        self._finished()
        return out

    def _all(self, first: bytes) -> Iterator[bytes]:
        yield from self._body.feed(first)
        yield from self._body.close()

    def _run(self, pieces: Iterator[bytes]) -> bytes:
        try:
            return b"".join(pieces)
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
        out = self._run(self._body.feed(chunk))
        await self.flow.flush(self.path, self.page)
        if out:
            await resp.write(out)
        else:
            self._request.writer.send_headers()  # bytes held back must not hold back the head too

    async def last(self, resp: web.StreamResponse, rest: bytes) -> None:
        if self._done:
            await resp.write_eof(rest)
            return
        out = self._run(self._all(rest))
        await self.flow.flush(self.path, self.page)
        self._finished()
        await resp.write_eof(out)

    def _finished(self) -> None:
        self.flow.report(self.path, self._rw.report, self.page)


class HTMLDetect(Rewrite):
    """Detect mode: the upstream's bytes go out untouched while a decoded copy is scanned and counted."""

    __slots__ = ("_body", "_rw")

    def __init__(self, flow: PIIFlow, path: str, up: ClientResponse, resp: web.StreamResponse,
                 codings: tuple[str, ...], charset: str | None) -> None:
        super().__init__(flow, path, up, resp, None, None)
        self._rw = rw = HTMLRewriter(flow.policy, None, charset)
        self._body: BodyTransform | None = BodyTransform(rw, codings, reencode=False)

    def _scan(self, pieces: Iterator[bytes]) -> None:
        try:
            for _ in pieces:
                pass
        except DecodeError:
            self._body = None    # the client gets the body as the upstream sent it; only counting stops
            self.flow.skip(self.path, "decode-error")

    async def write(self, resp: web.StreamResponse, chunk: bytes) -> None:
        if self._body is not None:
            self._scan(self._body.feed(chunk))
        await resp.write(chunk)

    async def last(self, resp: web.StreamResponse, rest: bytes) -> None:
        body = self._body
        if body is not None:
            self._scan(body.feed(rest))
            if self._body is not None:
                self._scan(body.close())
        if self._body is not None:
            self.flow.report(self.path, self._rw.report, None)
        await resp.write_eof(rest)


class JSONRewrite(Rewrite):
    """A JSON body is read whole (bounded), rewritten by pointer, and sent with its new length.

    Unchanged bodies, and bodies too large or undecodable, go out byte for byte
    with the upstream's headers.
    """

    __slots__ = ("_codings",)

    def __init__(self, flow: PIIFlow, path: str, up: ClientResponse, resp: web.StreamResponse,
                 codings: tuple[str, ...], page: PageTokens | None, cookie: str | None) -> None:
        super().__init__(flow, path, up, resp, page, cookie)
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
        collect = _Collector(flow.max_json)
        transform = BodyTransform(collect, self._codings, reencode=False)
        try:
            for _ in transform.feed(body):
                pass
            for _ in transform.close():
                pass
        except (DecodeError, _TooLarge):
            flow.skip(self.path, "decode-error")
            return body
        report = Report()
        tokenizer = self.page.json_tokenize if self.page is not None else None
        decoded = collect.body()
        new = rewrite_json(decoded, flow.policy, tokenizer, report)
        flow.report(self.path, report, self.page)
        if new is decoded:
            return body
        headers = self.resp.headers
        header_changes(
            headers.get("ETag"), headers.get("Cache-Control"), self._codings,
            reencode=False, tokenizes=flow.policy.tokenizes,
        ).apply(headers)
        headers["Content-Length"] = str(len(new))
        if self.cookie is not None and self.page is not None and self.page.issued:
            headers.add("Set-Cookie", self.cookie)
        await flow.flush(self.path, self.page)
        return new


class _TooLarge(Exception):
    pass


class _Collector:
    """A ``BodyRewriter`` that keeps the decoded body (bounded) and outputs nothing."""

    def __init__(self, limit: int) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size > self._limit:
            raise _TooLarge
        self._parts.append(chunk)
        return b""

    def close(self) -> bytes:
        return b""

    def body(self) -> bytes:
        return b"".join(self._parts)


def _buffered(request: web.BaseRequest, ctype: str | None, max_body: int) -> bool:
    """Whether to read this body for swap-back: forms always (413 past the limit, as for logins);
    JSON only when its declared length is within the limit, so an API upload is never refused."""
    if not request.body_exists or "Content-Encoding" in request.headers:
        return False
    mtype = media_type(ctype)[0]
    if mtype == "application/json":
        length = request.content_length
        return length is not None and length <= max_body
    return mtype in _FORM_TYPES


def _json_rewritable(method: str, status: int, ctype: str) -> bool:
    if method == "HEAD" or status < 200 or status in _NO_BODY:
        return False
    mtype = media_type(ctype)[0]
    return mtype == "application/json" or mtype.endswith("+json")


def _cookie(headers: CIMultiDictProxy[str], name: str) -> str | None:
    """One cookie's value from the request (the first of that name, as servers read it)."""
    for header in headers.getall("Cookie", []):
        if name not in header:
            continue
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
    return None


def _counts(items: Iterable[tuple[str, int]]) -> str:
    return " ".join(f"{k}={n}" for k, n in sorted(items))

