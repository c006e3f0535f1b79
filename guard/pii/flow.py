"""PII between the policy and the wire, with no transport: what both proxies do alike.

``PIIRuntime`` is one config's PII policy compiled together with the token
vault and the engine's observer.  Both adapters (``guard.http.piiflow`` for
aiohttp, ``guard.mitm.pii`` for mitmproxy) ask it the same questions and feed
it bytes; they differ only in how bytes arrive (streamed chunks or a buffered
body) and in their header types:

- ``plan``: from a response's head, whether and how its body goes through the
  policy (HTML rewrite, HTML detect, JSON by pointer), before anything is sent.
- ``page``: the browser's vault cookie and the tokens one response may issue.
- ``html_changes`` / ``json_changes``: the header fixes (length, coding,
  validators, caching) for a body that changes; ``HTMLPass`` the body itself.
- ``may_carry_tokens``, ``submit_browser``, ``buffers``, ``swap``: a submission's
  tokens swapped back into the original values.

Log lines carry kinds, counts, reasons and field names, never a value; paths go
through the decision log's ``clean_path``.  The failure policy is the one
written in ``guard.http.piiflow``: a value the policy selected is never sent;
a store outage at render time still sends the page (its tokens will not swap
back), at submit time answers 503.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from guard.observe.decisionlog import clean_path
from guard.pii.encoding import BodyTransform, DecodeError, decode_whole, output_coding, parse_content_encoding
from guard.pii.forms import find_tokens, find_tokens_query, swap_back, swap_back_query
from guard.pii.json import rewrite_json
from guard.pii.policy import Mode
from guard.pii.report import Report, Skip
from guard.pii.response import HeaderChanges, header_changes, html_body, media_type
from guard.pii.rewriter import HTMLRewriter, untouched
from guard.pii.settings import PIIConfig, glob_matcher
from guard.pii.vault import (
    PageTokens,
    Vault,
    Verdict,
    cookie_name,
    valid_browser_id,
)
from guard.store.base import StoreError

if TYPE_CHECKING:
    from guard.engine import Engine, RequestFacts

log = logging.getLogger("guard.pii")

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "application/json")
"""Request bodies that may carry tokens back (the forms the rewriter filled, and page scripts' JSON)."""
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


class Kind(StrEnum):
    HTML = "html"        # rewritten (remove, mask, tokenize)
    DETECT = "detect"    # audit mode: scanned and counted, sent byte for byte
    JSON = "json"        # read whole (bounded), rewritten by pointer


class Plan(NamedTuple):
    """How one response's body goes through the policy, decided from its head alone."""

    kind: Kind
    codings: tuple[str, ...]    # its Content-Encoding, parsed (outermost last)
    charset: str | None         # from Content-Type; the rewriter also reads <meta charset>


class Swapped(NamedTuple):
    """A submission after swap-back: its body (None: none was read) and its query (unchanged or swapped)."""

    body: bytes | None
    query: str


class PIIRuntime:
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

    def plan(
        self, method: str, status: int, content_type: str | None, encodings: list[str], path: str
    ) -> Plan | None:
        """Whether this response's body goes through the policy, and how; None: it passes untouched.

        One content-type test for a response that is not HTML (or JSON with
        JSON rules), so the rest of the site pays nothing.
        """
        if content_type is None:
            return None
        lowered = content_type.lower()
        if "html" in lowered:
            body = html_body(method, status, content_type, encodings)
            if body is None:
                self._unsupported_encoding(method, path, encodings)
                return None
            if not self._wanted(path):
                return None
            return Plan(Kind.DETECT if self.observe_only else Kind.HTML, *body)
        if not (self.json and "json" in lowered and _json_rewritable(method, status, content_type)):
            return None
        if not self._wanted(path):
            return None
        codings = parse_content_encoding(encodings)
        if codings is None:
            self.skip(path, Skip.UNSUPPORTED_ENCODING)
            return None
        return Plan(Kind.JSON, codings, media_type(content_type)[1])

    def whole_only(self, path: str) -> bool:
        """Whether a request for ``path`` must ask the upstream for whole bodies (no ``Range``).

        A 206 answer is never rewritten: a byte range of a page is not a page (the scan
        cannot know what state the tokenizer is in at its first byte), and a client may ask
        for exactly the bytes of one hidden value.  So where the policy rewrites, ``Range``
        and ``If-Range`` do not reach the upstream, which then answers 200 with the whole
        body (RFC 9110 section 14.2 lets any server ignore ``Range``).  Downloads that need
        ranges keep them through ``pii.paths.exclude``.  Detect mode rewrites nothing.
        """
        return not self.observe_only and self._wanted(path)

    def page(self, cookie_headers: Iterable[str], secure: bool) -> PageTokens | None:
        """The tokens this response may issue (``PageTokens.cookie``: the vault cookie to set if it does)."""
        if not self.tokenizes or self.vault is None:
            return None
        current = cookie_value(cookie_headers, cookie_name(secure))
        if current is not None and not valid_browser_id(current):
            current = None
        return self.vault.page(current, self.ttl, self.limit, secure=secure)

    def unread(self, plan: Plan, body: bytes, path: str) -> bool:
        """Whether a whole HTML body goes out as it came, with no rewriter built for it
        (``rewriter.untouched``).

        A body in one content coding is decoded (up to ``UNREAD_DECODED`` bytes) to be
        judged, and goes out in its original bytes when the rewriter would re-encode it in
        that same coding: no inflate-scan-deflate for a page that holds nothing to change.
        A body that does not decode is left to the full path, which reports it.
        """
        if not plan.codings:
            unread = untouched(self.policy, body, plan.charset)
        elif len(plan.codings) != 1 or output_coding(plan.codings, self.reencode) != plan.codings[0]:
            unread = False
        else:
            decoded = decode_whole(body, plan.codings[0], UNREAD_DECODED)
            unread = decoded is not None and untouched(self.policy, decoded, plan.charset)
        if unread:
            self.engine.observer.pii_page(path, False)   # a full scan counts itself (``HTMLPass``)
        return unread

    def html_changes(self, etag: str | None, cache_control: str | None, codings: tuple[str, ...]) -> HeaderChanges:
        """The header fixes for an HTML body that goes through the rewriter (see ``guard.pii.response``)."""
        return header_changes(etag, cache_control, codings, reencode=self.reencode, tokenizes=self.policy.tokenizes)

    def json_changes(self, etag: str | None, cache_control: str | None, codings: tuple[str, ...]) -> HeaderChanges:
        """The header fixes for a JSON body that changed: it goes out decoded, with its new length."""
        return header_changes(etag, cache_control, codings, reencode=False, tokenizes=self.policy.tokenizes)

    async def json_body(
        self, path: str, body: bytes, codings: tuple[str, ...], page: PageTokens | None
    ) -> bytes | None:
        """A whole JSON body rewritten by pointer (decoded, identity); None: send the upstream's bytes as they are.

        None when nothing changed, and for a body that does not decode or
        decodes past ``max_json_size`` (counted).  The new body's tokens are in
        the store before it is returned.
        """
        collect = _Collector(self.max_json)
        transform = BodyTransform(collect, codings, reencode=False)
        try:
            for _ in transform.feed(body):
                pass
            for _ in transform.close():
                pass
        except (DecodeError, _TooLarge):
            self.skip(path, "decode-error")
            return None
        report = Report()
        tokenizer = page.json_tokenize if page is not None else None
        decoded = collect.body()
        new = rewrite_json(decoded, self.policy, tokenizer, report)
        self.report(path, report, page)
        if new is decoded:
            return None
        await self.flush(path, page)
        return new

    def _wanted(self, path: str) -> bool:
        if self._exclude is not None and self._exclude.match(path):
            return False
        return self._include is None or self._include.match(path) is not None

    def _unsupported_encoding(self, method: str, path: str, encodings: list[str]) -> None:
        """An HTML body the guard cannot decode (a coding it does not know) passes unchanged: count it."""
        if encodings and method != "HEAD" and parse_content_encoding(encodings) is None:
            self.skip(path, Skip.UNSUPPORTED_ENCODING)

    # ---- submissions --------------------------------------------------------------------------

    def may_carry_tokens(
        self, query: str, has_body: bool, content_type: str | None, cookie_headers: Iterable[str]
    ) -> bool:
        """Whether this request may carry tokens of ours: a cheap test, run for every non-login request.

        It must have the vault cookie and a form body (or a token-shaped query).
        """
        if not self.tokenizes:
            return False
        if "pii_" not in query:
            if not has_body or not (content_type or "").lower().startswith(FORM_TYPES):
                return False
        return any("lgpii=" in header for header in cookie_headers)

    def submit_browser(self, cookie_headers: Iterable[str], secure: bool, path: str) -> str | None:
        """The browser whose tokens a submission may swap back; None: leave it as it is."""
        browser = cookie_value(cookie_headers, cookie_name(secure))
        if self.vault is None or browser is None or not valid_browser_id(browser):
            return None
        if self._submit_exclude is not None and self._submit_exclude.match(path):
            return None
        return browser

    @staticmethod
    def buffers(has_body: bool, content_type: str | None, encoded: bool, length: int | None, max_body: int) -> bool:
        """Whether to read this body for swap-back.

        Forms always (413 past the limit, as for logins); JSON only when its
        declared length is within the limit, so an API upload is never refused;
        never a body with a Content-Encoding (tokens cannot be found in it).
        """
        if not has_body or encoded:
            return False
        mtype = media_type(content_type)[0]
        if mtype == "application/json":
            return length is not None and length <= max_body
        return mtype in FORM_TYPES

    async def swap(
        self, facts: RequestFacts, browser: str, body: bytes | None, content_type: str | None, query: str
    ) -> Swapped | int:
        """Tokens in a submission become the original values again; 503 when the store cannot say which.

        Forwarding it with blank fields instead would make the upstream act on them.
        """
        raw_query = query.encode("utf-8", "surrogateescape")
        tokens = (find_tokens(body, content_type) if body else frozenset()) | find_tokens_query(raw_query)
        if not tokens or self.vault is None:
            return Swapped(body, query)
        try:
            lookup = await self.vault.fetch(tokens, browser)
        except StoreError:
            self.warn_once("store", "pii: the store is unreachable; a submission with tokens is answered 503")
            return 503
        charset = lookup.codec or "utf-8"
        if body:
            result = swap_back(body, content_type, charset=charset, resolve_field=lookup.resolve)
            if result.error is not None:
                log.info("pii: submission to %s left as is (%s)", clean_path(facts.path), result.error)
            body = result.body
        if "pii_" in query:
            new_query = swap_back_query(raw_query, charset=charset, resolve_field=lookup.resolve).body
            if new_query != raw_query:
                query = new_query.decode("utf-8", "surrogateescape")
        self._report_rejected(facts, lookup.rejected)
        return Swapped(body, query)

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


class HTMLPass:
    """One HTML body through the policy, decoded and re-encoded around the rewriter: fed in chunks or whole.

    ``feed`` and ``close`` raise ``DecodeError`` for a body that does not
    decode; the adapter must then not send what it has (a truncated body that
    looks complete).  With ``scan_only`` (detect mode) nothing is tokenized and
    the output is meant to be thrown away: the upstream's bytes go out.
    """

    __slots__ = ("_body", "page", "path", "rewriter", "runtime")

    def __init__(
        self, runtime: PIIRuntime, path: str, plan: Plan, page: PageTokens | None, *, scan_only: bool = False
    ) -> None:
        self.runtime = runtime
        self.path = path
        self.page = page
        tokenizer = page.tokenize if page is not None and not scan_only else None
        self.rewriter = rw = HTMLRewriter(runtime.policy, None, plan.charset, field_tokenizer=tokenizer)
        if tokenizer is not None and page is not None:
            page.codec_of = lambda: rw.codec
        self._body = BodyTransform(rw, plan.codings, reencode=runtime.reencode and not scan_only)
        runtime.engine.observer.pii_page(path, True)

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._body.feed(chunk))

    def close(self, rest: bytes = b"") -> bytes:
        return self.feed(rest) + b"".join(self._body.close())

    async def flush(self) -> None:
        """The tokens issued so far into the store: call it before sending what ``feed`` returned."""
        await self.runtime.flush(self.path, self.page)

    def finished(self) -> None:
        """Count what this body held (metrics, log lines for skips)."""
        self.runtime.report(self.path, self.rewriter.report, self.page)


UNREAD_DECODED = 4 << 20
"""``PIIRuntime.unread`` judges compressed pages up to this size decoded; larger ones take the full scan."""

RANGE_FIELDS = ("Range", "If-Range")
"""Request fields dropped where ``PIIRuntime.whole_only`` says so."""


def issued_cookie(page: PageTokens | None) -> str | None:
    """The vault cookie to set on a response whose body is complete: only when it holds tokens."""
    return page.cookie if page is not None and page.issued else None


def cookie_value(cookie_headers: Iterable[str], name: str) -> str | None:
    """One cookie's value from the request's Cookie fields (the first of that name, as servers read it)."""
    for header in cookie_headers:
        if name not in header:
            continue
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
    return None


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


def _json_rewritable(method: str, status: int, ctype: str) -> bool:
    if method == "HEAD" or status < 200 or status in _NO_BODY:
        return False
    mtype = media_type(ctype)[0]
    return mtype == "application/json" or mtype.endswith("+json")


def _counts(items: Iterable[tuple[str, int]]) -> str:
    return " ".join(f"{k}={n}" for k, n in sorted(items))
