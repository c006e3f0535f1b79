"""PII under mitmproxy: pages buffered and rewritten whole, tokens swapped back in the forms that return.

The policy, the rewriter and the vault are ``guard.pii.flow``'s, shared with
``guard run``; this module only moves mitmproxy's messages through them:

- ``responseheaders``: ``plan`` reads the head.  A body the policy applies to
  (HTML, or JSON with ``pii.json`` rules) is buffered; everything else streams
  untouched.
- ``response``: ``rewrite`` runs the whole body through the rewriter, decoded
  and re-encoded around it, and fixes the headers as ``guard run`` does
  (length, coding, validators, caching).  The browser's vault cookie goes out
  only with a page that holds tokens, and the tokens are in the store before
  the page leaves.
- ``requestheaders``: ``submission`` spots a request that may carry tokens
  (the vault cookie and a form body, or a token in the query); its body is
  buffered for ``request``.
- ``request``: ``swap`` puts the original values back before the upstream
  sees the submission.

Failure policy, the same as ``guard run``'s: a value the policy selected is
never sent.  A page whose body does not decode gets a 502 page (buffered, so
there is something better to send than a cut connection); a submission whose
tokens cannot be looked up (store down) gets 503.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from mitmproxy import http

from guard.mitm.messages import MutableFields, set_raw
from guard.observe.decisionlog import clean_path
from guard.pii.encoding import DecodeError
from guard.pii.flow import HTMLPass, Kind, PIIRuntime, Plan, issued_cookie
from guard.pii.response import UNTOUCHED

if TYPE_CHECKING:
    from guard.engine import RequestFacts


class Submission(NamedTuple):
    """A request that may carry tokens: whose they would be, and whether its body is read for them."""

    browser: str
    buffered: bool


def plan(pii: PIIRuntime, facts: RequestFacts, resp: http.Response) -> Plan | None:
    """How this response's body goes through the policy (None: stream it untouched), from its head."""
    headers = resp.headers
    return pii.plan(
        facts.method, resp.status_code, headers.get("Content-Type"), headers.get_all("Content-Encoding"), facts.path
    )


async def rewrite(pii: PIIRuntime, facts: RequestFacts, req: http.Request, resp: http.Response, how: Plan) -> bool:
    """Rewrite a buffered body in place; False: it does not decode, and must not be sent (answer 502)."""
    path = facts.path
    raw = resp.raw_content or b""
    if how.kind is Kind.DETECT:
        scan = HTMLPass(pii, path, how, None, scan_only=True)
        try:
            scan.close(raw)
        except DecodeError:
            pii.skip(path, "decode-error")   # the upstream's bytes go out as they came: only counting stops
            return True
        scan.finished()
        return True
    headers = resp.headers
    page = pii.page(req.headers.get_all("Cookie"), facts.scheme == "https")
    if how.kind is Kind.JSON:
        new = await pii.json_body(path, raw, how.codings, page)
        if new is None:
            return True   # unchanged (or not JSON after all): the upstream's bytes and headers
        changes = pii.json_changes(headers.get("ETag"), headers.get("Cache-Control"), how.codings)
    else:
        if pii.unread(how, raw, path):
            # a page the policy cannot change (``rewriter.untouched``): not read, and its
            # validators still describe the bytes that go out
            UNTOUCHED.apply(MutableFields(headers))
            set_raw(resp, raw)
            return True
        rewriting = HTMLPass(pii, path, how, page)
        try:
            new = rewriting.close(raw)
        except DecodeError as exc:
            pii.skip(path, "decode-error", warn=False)
            pii.warn_once(
                "decode", "pii: %s: upstream body does not decode (%s); answered 502", clean_path(path), exc
            )
            return False
        await rewriting.flush()
        rewriting.finished()
        changes = pii.html_changes(headers.get("ETag"), headers.get("Cache-Control"), how.codings)
    changes.apply(MutableFields(headers))
    set_raw(resp, new)
    issued = issued_cookie(page)
    if issued is not None:
        headers.add("Set-Cookie", issued)
    return True


def submission(
    pii: PIIRuntime, facts: RequestFacts, req: http.Request, length: int | None, max_body: int
) -> Submission | None:
    """Whether this request may carry tokens of ours (a cheap test, for every non-login request), and whose."""
    headers = req.headers
    has_body = length != 0 if length is not None else "chunked" in headers.get("Transfer-Encoding", "").lower()
    ctype = headers.get("Content-Type")
    cookies = headers.get_all("Cookie")
    if not pii.may_carry_tokens(facts.query, has_body, ctype, cookies):
        return None
    browser = pii.submit_browser(cookies, facts.scheme == "https", facts.path)
    if browser is None:
        return None
    return Submission(browser, pii.buffers(has_body, ctype, "Content-Encoding" in headers, length, max_body))


async def swap(pii: PIIRuntime, facts: RequestFacts, req: http.Request, sub: Submission, max_body: int) -> int:
    """Swap tokens back in the request's body (when buffered) and query; a status to answer instead, or 0."""
    body = req.raw_content if sub.buffered else None
    if body is not None and len(body) > max_body:
        return 413   # chunked: no length was declared up front
    path, _, query = req.path.partition("?")
    swapped = await pii.swap(facts, sub.browser, body, req.headers.get("Content-Type"), query)
    if isinstance(swapped, int):
        return swapped
    if swapped.body is not None and swapped.body != body:
        set_raw(req, swapped.body)
    if swapped.query != query:
        req.path = f"{path}?{swapped.query}"
    return 0
